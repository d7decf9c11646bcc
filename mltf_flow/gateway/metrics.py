"""The gateway's ``/metrics`` (Prometheus text format): requests, latency, auth failures, submissions.

Counters live in a registry of the gateway's own (not prometheus_client's global one: two gateways in one
process, as in tests, keep their counts apart); the submissions per state are read from the database when
scraped, so they are right after a restart.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mltf_flow.gateway.store import Store


class Metrics:
    def __init__(self, store: Store) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("mltf_gateway_requests", "HTTP requests answered", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("mltf_gateway_request_seconds", "time to answer a request", registry=self.registry)
        self.auth_failures = Counter("mltf_gateway_auth_failures", "requests refused for their token",
                                     registry=self.registry)
        self.submissions = Counter("mltf_gateway_submissions_accepted", "submissions accepted", ["kind"],
                                   registry=self.registry)
        self.registry.register(_States(store))

    def render(self) -> tuple[str, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry).decode(), CONTENT_TYPE_LATEST


class _States:
    """Submissions per state, from the database at each scrape."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from mltf_flow.gateway.store import STATES

        family = GaugeMetricFamily("mltf_gateway_submissions", "submissions by state", labels=["state"])
        counts = self.store.counts()
        for state in STATES:
            family.add_metric([state], counts.get(state, 0))
        yield family

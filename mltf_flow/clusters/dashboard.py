"""What a profile's ``dashboard_address`` means to Dask's scheduler, including "no dashboard".

Dask's scheduler always starts an HTTP server (health, metrics, and the Bokeh dashboard when enabled).
Its address is ``dashboard_address``, and ``None`` does *not* mean "none": the server then listens on
the default port 8787 (``Scheduler(dashboard_address=None)`` -> ``default_port=8787``; dask-jobqueue's
``scheduler_options`` even default to ``":8787"``). A cluster that wants no dashboard therefore takes the
port a user's real dashboard is meant to have, and Dask warns "Port 8787 is already in use" when it is.
So "no dashboard" is spelled here as: no Bokeh dashboard (``dashboard=False``) and the HTTP server on an
ephemeral loopback port (``127.0.0.1:0``; ``":0"`` would listen on every interface).
"""

from __future__ import annotations

from typing import Any

#: Where the scheduler's HTTP server listens when no dashboard is wanted: any free port, loopback only.
NO_DASHBOARD_ADDRESS = "127.0.0.1:0"


def scheduler_options(address: str | None) -> dict[str, Any]:
    """``Scheduler`` keyword arguments (dask-jobqueue's ``scheduler_options``) for ``address``; None (or
    empty): no dashboard, and no fixed port."""
    if address:
        return {"dashboard_address": address}
    return {"dashboard": False, "dashboard_address": NO_DASHBOARD_ADDRESS}


def local_cluster_options(address: str | None) -> dict[str, Any]:
    """``distributed.LocalCluster`` keyword arguments for ``address`` (None or empty: no dashboard).
    LocalCluster turns ``dashboard_address`` into the scheduler's ``dashboard`` flag itself; its
    ``scheduler_kwargs`` win over that, which is how the flag is switched off here."""
    if address:
        return {"dashboard_address": address}
    return {"dashboard_address": NO_DASHBOARD_ADDRESS, "scheduler_kwargs": {"dashboard": False}}


def enabled(address: str | None) -> bool:
    """Whether a cluster made with ``address`` serves a dashboard worth linking to."""
    return bool(address)

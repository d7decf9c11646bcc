"""Pre-submit hooks: work the gateway does before anything reaches SLURM.

A hook has two halves, so that the user hears at once whether the request can go ahead and the batch system
sees nothing until the inputs are there:

``prepare(ctx)``
    runs while the request is answered (quick): checks, and starting slow work (a Rucio rule is created
    here). A :class:`~mltf_flow.errors.RequestRejected` (or a :class:`~mltf_flow.errors.ConfigError`) fails
    the submission and becomes the answer (400, with the message).
``wait(ctx)``
    runs in the background while the submission is ``staging``: blocks until the work is done and returns
    parameter values to replace (a staged dataset's local path), or raises to fail the submission
    (the message is the submission's). It must call ``ctx.check_cancelled()`` now and then.

Both halves must be idempotent: after a restart the gateway runs them again for submissions that had not
got past them (a rule that exists is found, not created twice).

Sites add their own (a quota check, a container choice) by naming a callable in the gateway's configuration,
``hooks: [rucio, "site_hooks:quota"]``; it is called with the gateway's settings and returns the hook.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mltf_flow.errors import ConfigError, GatewayError, StagingError

if TYPE_CHECKING:
    from mltf_flow.gateway.settings import GatewaySettings
    from mltf_flow.gateway.store import Submission

_log = logging.getLogger(__name__)


class Cancelled(GatewayError):
    """The submission was cancelled while a hook waited."""


@dataclass
class HookContext:
    """What a hook sees of a submission. ``note`` records progress (a message and details, shown by
    ``GET /submissions/{id}``)."""

    submission: Submission
    params: dict[str, Any]
    work_dir: Path
    note: Callable[[str, Mapping[str, Any]], None]
    is_cancelled: Callable[[], bool]

    def check_cancelled(self) -> None:
        if self.is_cancelled():
            raise Cancelled("cancelled while staging")


class PreSubmitHook(Protocol):
    name: str

    def prepare(self, ctx: HookContext) -> None: ...

    def wait(self, ctx: HookContext) -> dict[str, Any]: ...


def rucio_params(params: Mapping[str, Any]) -> dict[str, str]:
    """The parameters whose value is a ``rucio://`` DID."""
    return {k: v for k, v in params.items() if isinstance(v, str) and v.startswith("rucio://")}


class RucioStaging:
    """The built-in hook: every ``rucio://`` parameter is staged to the facility's RSE before the job is
    submitted (rule created at once, job only when the rule is OK and the replicas verified; a STUCK rule
    fails the submission with the rule id). Project submissions get the staged dataset's manifest (as a
    pipeline's stage step gives it: local paths, sizes, checksums) in place of the DID; pipelines keep the DID
    and find the rule OK when their staging step runs."""

    name = "rucio"

    def __init__(self, settings: GatewaySettings) -> None:
        from mltf_flow.config.rucio import RucioSettings

        self.rucio = settings.rucio or RucioSettings()

    def _stager(self, ctx: HookContext, uri: str, progress: Callable[..., None] | None = None) -> Any:
        from mltf_flow.staging.rucio import RucioStager
        from mltf_flow.staging.uri import parse_dataset_uri

        try:
            parsed = parse_dataset_uri(uri)
        except ConfigError as exc:
            raise ConfigError(f"parameter value {uri!r}: {exc}") from None
        return RucioStager(parsed, self.rucio, cache_dir=ctx.work_dir / "rucio-cache", progress=progress)

    def prepare(self, ctx: HookContext) -> None:
        rules: dict[str, str] = {}
        for name, uri in rucio_params(ctx.params).items():
            stager = self._stager(ctx, uri)
            try:
                stager.check()
                if self.rucio.mode == "rule":
                    rules[name] = stager.find_or_create_rule()
            except StagingError as exc:
                raise ConfigError(f"parameter {name}={uri}: {exc}") from None
        if rules:
            ctx.note("staging: waiting for Rucio rule(s) " + ", ".join(f"{r} ({n})" for n, r in rules.items()),
                     {"rucio_rules": rules})

    def wait(self, ctx: HookContext) -> dict[str, Any]:
        replaced: dict[str, Any] = {}
        for name, uri in rucio_params(ctx.params).items():
            def progress(state: str, ok: int, replicating: int, stuck: int, files: int, *, _name: str = name) -> None:
                ctx.check_cancelled()
                ctx.note(f"staging {_name}: rule {state}, {ok}/{files} files OK, {replicating} replicating, "
                         f"{stuck} stuck", {})

            stager = self._stager(ctx, uri, progress)
            manifest = stager.stage()
            if ctx.submission.kind == "project":
                replaced[name] = str(self._local_input(ctx, name, manifest))
        return replaced

    @staticmethod
    def _local_input(ctx: HookContext, name: str, manifest: Mapping[str, Any]) -> Path:
        """The staged dataset's manifest (what a pipeline's stage step gives its consumers: the files' local
        paths, sizes and checksums), written into the submission's directory."""
        out = ctx.work_dir / "inputs" / f"{name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        return out


def load_hooks(settings: GatewaySettings) -> list[PreSubmitHook]:
    """The configured hooks, in order (``rucio`` or ``module:callable``)."""
    hooks: list[PreSubmitHook] = []
    for spec in settings.hooks:
        if spec == "rucio":
            hooks.append(RucioStaging(settings))
            continue
        module, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"gateway configuration: hooks: {spec!r} cannot be loaded ({exc}); write "
                              "'module:callable' with the module on the gateway's PYTHONPATH.") from None
        hooks.append(factory(settings))
    return hooks

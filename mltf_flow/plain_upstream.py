"""A plain Luigi task as the requirement of a step: its identity (family + parameters) stands in for a key."""

from __future__ import annotations

from pathlib import Path

import luigi

from mltf_flow.config import Settings
from mltf_flow.errors import ConfigError


class PlainUpstream:
    """A plain Luigi task as a requirement: its identity (family + parameters) stands in for a key."""

    def __init__(self, task: luigi.Task) -> None:
        self.task = task

    def upstream_key(self) -> str | None:
        return str(self.task.task_id) if self.task.complete() else None

    def dataset_inputs(self) -> list[dict[str, str]]:
        return []

    def output_spec(self, output: str) -> str:
        return output or "manifest"

    def resolve_output(self, output: str | None, settings: Settings) -> str:
        raise ConfigError(f"requirement {self.task.task_family} is not a pipeline step: it has no outputs to "
                          "feed a parameter. Use it for ordering only (no inputs: entry for it).")

    def upstream_run_id(self) -> str | None:
        return None

    def manifest_file(self) -> Path | None:
        return None


__all__ = ["PlainUpstream"]

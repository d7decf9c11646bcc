"""MLflowRunTarget: a step's output is a complete MLflow run with the step's cache key.

``exists()`` is Luigi's whole contract: True when the experiment holds a run with this key whose status
is FINISHED **and** whose tag ``mltf.complete`` is ``true`` (set only by our launcher after exit code 0
and verified outputs). It never imports mlflow; see :mod:`mltf_flow.run_index`.
"""

from __future__ import annotations

from collections.abc import Callable

import luigi

from mltf_flow.errors import RunNotFound
from mltf_flow.run_index import RunRef, run_index


class MLflowRunTarget(luigi.Target):
    """The newest complete run with cache key ``key()`` in ``experiment``.

    ``key`` is a callable because computing it may need upstream results (a manifest digest) that do
    not exist yet; it returns None then, and the target does not exist.
    """

    def __init__(
        self, tracking_uri: str, experiment: str, key: Callable[[], str | None], prefetch_limit: int = 5000
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self._key = key
        self.prefetch_limit = prefetch_limit

    def run_ref(self) -> RunRef | None:
        """The complete run, or None."""
        key = self._key()
        if key is None:
            return None
        return run_index(self.tracking_uri, self.prefetch_limit).find_complete(self.experiment, key)

    def exists(self) -> bool:
        return self.run_ref() is not None

    def __repr__(self) -> str:
        # Luigi prints targets in "Unfulfilled dependency" messages: say which run was looked for.
        try:
            key = self._key()
        except Exception as exc:  # a repr must not raise; say why the key is unknown
            key = f"<key unavailable: {type(exc).__name__}>"
        shown = key[:16] if key and not key.startswith("<") else key or "<after upstream steps>"
        return f"MLflowRunTarget(experiment={self.experiment!r}, cache key {shown})"

    @property
    def run_id(self) -> str:
        ref = self.run_ref()
        if ref is None:
            raise RunNotFound(f"no complete run in experiment {self.experiment!r} for this step yet")
        return ref.run_id


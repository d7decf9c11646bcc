"""Writes what the MLflow UI shows of a pipeline's lineage beyond tags: a parent run's name and description
(after each step under it opens or settles) and a run's inputs as MLflow datasets (the runs table's Dataset
column). The text is :mod:`mltf_flow.run_description`'s; step runs get theirs from
:mod:`mltf_flow.step_lineage`. Imported only where runs are written (it uses mlflow's entities).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mltf_flow.redaction import strip_credentials
from mltf_flow.run_description import ChildFacts, ParentFacts, parent_description, parent_name
from mltf_flow.tags import (
    MLFLOW_NOTE,
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_RUN_NAME,
    TAG_CHANGED_PARAMS,
    TAG_FAILED_STEPS,
    TAG_PIPELINE,
    TAG_STEP,
    TAG_UPSTREAM_RUN_IDS,
)

if TYPE_CHECKING:
    from mltf_flow.tracking import Tracker

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoggedDataset:
    """A run's input as MLflow records it: a name, a digest and a source."""

    name: str
    digest: str
    #: Where it is: a dataset URI (``file://``, ``rucio://``) or ``runs:/<run id>/<artifact>``.
    uri: str
    #: ``mlflow.data.context`` (what the run used it for).
    context: str


def log_datasets(tracker: Tracker, run_id: str, datasets: Sequence[LoggedDataset]) -> None:
    """Log a run's inputs as MLflow datasets (MLflow keeps at most 36 characters of a digest)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = [
        DatasetInput(
            Dataset(name=d.name[:500], digest=d.digest[:36], source_type=d.uri.partition(":")[0] or "local",
                    source=json.dumps({"uri": d.uri}), schema=None, profile=None),
            tags=[InputTag("mlflow.data.context", d.context)],
        )
        for d in datasets
    ]
    tracker.client.log_inputs(run_id, datasets=inputs)


def describe_parent(tracker: Tracker, parent_id: str) -> None:
    """Name and describe a parent run after the step runs under it; what people see is never worth failing a
    pipeline: an error is logged, not raised."""
    try:
        _describe_parent(tracker, parent_id)
    except Exception as exc:
        _log.warning(f"warning: could not name and describe pipeline run {parent_id} ({type(exc).__name__}: "
                     f"{strip_credentials(str(exc))})")


def _describe_parent(tracker: Tracker, parent_id: str) -> None:
    """The target is the step that started last (steps start after what they require); the name gathers what
    differs from the defaults; the description links every step run and the upstream runs reused."""
    client = tracker.client
    parent = client.get_run(parent_id)
    experiment_id = str(parent.info.experiment_id)
    children = client.search_runs([experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_id}'",
                                  order_by=["attributes.start_time ASC"], max_results=500)
    if not children:
        return
    ran = [ChildFacts(c.data.tags.get(TAG_STEP, ""), str(c.info.run_id), c.data.tags.get(MLFLOW_RUN_NAME, ""))
           for c in children]
    own = {c.run_id for c in ran}
    reused: dict[str, str] = {}
    changed: dict[str, dict[str, str]] = {}
    for child in children:
        tags = child.data.tags
        try:
            upstream = json.loads(tags.get(TAG_UPSTREAM_RUN_IDS) or "{}")
            changed[tags.get(TAG_STEP, "")] = json.loads(tags.get(TAG_CHANGED_PARAMS) or "{}")
        except ValueError:
            continue
        reused.update({step: run for step, run in upstream.items() if run not in own})
    target = ran[-1].step
    pipeline = parent.data.tags.get(TAG_PIPELINE, "")
    failed = [s for s in parent.data.tags.get(TAG_FAILED_STEPS, "").split(",") if s]
    text = parent_description(ParentFacts(experiment_id, pipeline, target, ran, reused, failed))
    tracker.set_tags(parent_id, {MLFLOW_RUN_NAME: parent_name(pipeline, target, changed), MLFLOW_NOTE: text})


__all__ = ["LoggedDataset", "describe_parent", "log_datasets"]

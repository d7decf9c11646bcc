"""The pipeline as a picture (mltf_flow.pipeline_graph, mltf_flow.pipeline_svg), on values: columns after what
each step needs, the status lines and rich tree of ``mltf-flow status``, and an SVG that parses, names every
step with its state and escapes what users wrote."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import luigi
from rich.console import Console

from mltf_flow.pipeline_graph import CACHED, STAGED, WILL_RUN, StepNode, layers, status_lines, status_tree
from mltf_flow.pipeline_svg import outcome_states, render_svg

SVG = "{http://www.w3.org/2000/svg}"
# A diamond: stage -> (features, calib) -> train.
NODES = [
    StepNode("S", "stage", STAGED, detail="2 file(s)  file:///data/jets", kind="stage"),
    StepNode("F", "features", CACHED, "9c1e" * 16, "3f2a" * 8, upstream=("S",)),
    StepNode("C", "calib", CACHED, "77aa" * 16, "1b1b" * 8, upstream=("S",)),
    StepNode("T", "train", WILL_RUN, "5039" * 16, reasons=("code changed: train.py",), detail="vs run 32011ded…",
             upstream=("F", "C")),
]


def test_each_step_comes_in_a_column_after_every_step_it_needs() -> None:
    assert [[n.name for n in column] for column in layers(list(reversed(NODES)))] == [
        ["stage"], ["calib", "features"], ["train"]]


def test_a_chain_deeper_than_the_recursion_limit_is_laid_out() -> None:
    chain = [StepNode(f"s{i}", f"s{i}", WILL_RUN, upstream=(f"s{i - 1}",) if i else ()) for i in range(3000)]
    assert len(layers(chain)) == 3000


def test_status_lines_say_the_run_found_for_each_key_and_why_a_step_reruns() -> None:
    lines = status_lines(NODES)
    assert lines[1] == "features  cached  run 3f2a3f2a…  (key 9c1e9c1e…)"
    assert lines[3:] == ["train     will run  (key 50395039…)  vs run 32011ded…",
                         "            because code changed: train.py"]


def test_the_tree_starts_at_the_target_and_draws_a_shared_step_once() -> None:
    console = Console(record=True, width=200)
    console.print(status_tree(NODES, "pipeline jets, step train"))
    text = console.export_text()
    assert text.splitlines()[1].startswith("└── train  will run")
    assert "why: code changed: train.py" in text
    assert text.count("stage  staged") == 2 and text.count("(see above)") == 1


def test_the_svg_parses_and_names_each_step_with_its_state() -> None:
    nodes = [*NODES[:3], StepNode("X", "a<b & \"c\"", "failed", upstream=("F",))]
    root = ET.fromstring(render_svg(nodes, "jets <invocation 1>"))
    steps = {g.get("data-step"): g.get("data-state") for g in root.iter(f"{SVG}g")}
    assert steps == {"stage": "staged", "features": "cached", "calib": "cached", 'a<b & "c"': "failed"}
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "jets <invocation 1>" in texts and 'a<b & "c"' in texts and "cached  key 9c1e9c1e9c1e" in texts
    assert len(list(root.iter(f"{SVG}line"))) == 3  # one arrow per requirement


class _Done(luigi.Task):
    def complete(self) -> bool:
        return True


class _Fails(luigi.Task):
    def complete(self) -> bool:
        return False

    def run(self) -> None:
        raise RuntimeError("boom")


class _Ok(luigi.Task):
    done = False

    def requires(self) -> _Done:
        return _Done()

    def run(self) -> None:
        type(self).done = True

    def complete(self) -> bool:
        return type(self).done


class _After(luigi.Task):
    def complete(self) -> bool:
        return False

    def requires(self) -> list[luigi.Task]:
        return [_Fails(), _Ok()]


def test_outcome_states_come_from_luigis_summary_of_a_real_build() -> None:
    result = luigi.build([_After()], local_scheduler=True, detailed_summary=True, log_level="CRITICAL")
    assert outcome_states(result.worker) == {_Done().task_id: "cached", _Ok().task_id: "ran",
                                             _Fails().task_id: "failed", _After().task_id: "not run"}

"""Run names and descriptions (mltf_flow.run_description): pure text from values."""

from __future__ import annotations

from mltf_flow.run_description import (
    MAX_NAME,
    ChildFacts,
    DatasetFacts,
    ParentFacts,
    StepFacts,
    UpstreamFacts,
    changed_params,
    experiment_link,
    parent_description,
    parent_name,
    run_link,
    run_name,
    stage_description,
    step_description,
)

TRAINING = "workflowType=machine_learning"


def test_changed_params_compares_values_as_mlproject_types_print_them() -> None:
    params = {"epochs": 12, "lr": 0.003, "hidden": 32, "flag": True, "name": "x"}
    defaults = {"epochs": 8, "lr": 0.003, "hidden": 32, "flag": False}
    # "name" has no default: it always differs
    assert changed_params(params, defaults) == {"epochs": "12", "flag": "true", "name": "x"}
    assert changed_params({"lr": 0.003}, {"lr": 0.003}) == {}


def test_run_name_shows_at_most_three_parameters_then_a_count() -> None:
    assert run_name("features", {}) == "features"
    assert run_name("features", {"max_constituents": "32"}) == "features (max_constituents=32)"
    many = {"a": "1", "b": "2", "c": "3", "d": "4", "e": "5"}
    assert run_name("train", many) == "train (a=1, b=2, c=3, +2 more)"


def test_run_name_cuts_long_values_and_long_names() -> None:
    name = run_name("train", {"path": "/very/long/" + "x" * 200})
    assert "…" in name and len(name) < 60
    long_title = run_name("t" * 200, {"a": "1"})
    assert len(long_title) == MAX_NAME and long_title.endswith("…")


def test_parent_name_prefixes_other_steps_parameters() -> None:
    changed = {"features": {"max_constituents": "32"}, "train": {"epochs": "12"}}
    expected = "jet_tagging: train (epochs=12, features.max_constituents=32)"
    assert parent_name("jet_tagging", "train", changed) == expected
    assert parent_name("jet_tagging", "train", {"train": {}}) == "jet_tagging: train"


def test_links_are_relative_and_ask_for_the_training_view() -> None:
    assert run_link("3", "abc") == f"#/experiments/3/runs/abc?{TRAINING}"
    diff = "mltf/uncommitted.diff"
    assert run_link("3", "abc", diff) == f"#/experiments/3/runs/abc/artifacts/{diff}?{TRAINING}"
    assert experiment_link("3") == f"#/experiments/3?{TRAINING}"


def _facts(**over: object) -> StepFacts:
    values: dict[str, object] = dict(
        experiment_id="1", run_id="trainrun", pipeline="jet_tagging", step="train", entry_point="train",
        cache_key="k" * 64, parent_id="parentrun", changed={"epochs": "12"},
        upstream=[UpstreamFacts("features", "1", "featrun", "features (max_constituents=32)", ("features.mltft",))],
        datasets=[DatasetFacts("file:///data/jets", "d" * 64, ("1", "featrun", "mltf/inputs/stage.manifest.json"),
                               via="features")],
        commit="c0ffee" * 7, dirty=True, diff_artifact="mltf/uncommitted.diff", env_manager="uv",
        env_hash="e" * 64, env_prefix="/envs/abc", profile="slurm-ci", dashboard="http://node:8787/status",
        slurm_jobs=[("17", "/logs/mltf-worker-17.out")],
    )
    values.update(over)
    return StepFacts(**values)  # type: ignore[arg-type]


def test_step_description_links_the_lineage() -> None:
    text = step_description(_facts())
    assert f"[features (max_constituents=32)](#/experiments/1/runs/featrun?{TRAINING}) (read: `features.mltft`)" in text
    assert "dataset `file:///data/jets` (read by features): manifest digest `dddddddddddddddd`" in text
    assert f"[manifest](#/experiments/1/runs/featrun/artifacts/mltf/inputs/stage.manifest.json?{TRAINING})" in text
    assert (f"commit `c0ffeec0ffee` + uncommitted changes "
            f"([diff](#/experiments/1/runs/trainrun/artifacts/mltf/uncommitted.diff?{TRAINING}))") in text
    assert "environment: uv, hash `eeeeeeeeeeee` at `/envs/abc`" in text
    assert "SLURM job 17: log `/logs/mltf-worker-17.out`" in text
    assert "[http://node:8787/status](http://node:8787/status)" in text
    assert f"[pipeline run](#/experiments/1/runs/parentrun?{TRAINING})" in text
    assert "`epochs=12`" in text
    assert "Outcome" not in text  # until the run ends
    assert "None" not in text


def test_step_description_without_git_lineage_or_outcome_says_so() -> None:
    text = step_description(_facts(commit=None, dirty=False, upstream=[], datasets=[], slurm_jobs=[], dashboard="",
                                   env_prefix=None, changed={}, outcome="command exited 0 after 3.0 s"))
    assert "code: not in git" in text and "- none" in text
    assert "**Outcome:** command exited 0 after 3.0 s" in text
    assert "SLURM" not in text and "dashboard" not in text and "None" not in text


def test_parent_description_lists_steps_run_and_reused() -> None:
    text = parent_description(ParentFacts("1", "jet_tagging", "train", [ChildFacts("train", "t1", "train (epochs=12)")],
                                          {"features": "f0"}, failed=["train"]))
    assert f"- **train**: [train (epochs=12)](#/experiments/1/runs/t1?{TRAINING})" in text
    assert f"- **features**: [run f0](#/experiments/1/runs/f0?{TRAINING})" in text
    assert "**Failed:** train" in text


def test_stage_description_names_dataset_digest_and_rule() -> None:
    text = stage_description("rucio://test:jets", "a" * 64, 3, rule_id="r1", rse_expression="SITE_A")
    assert "`rucio://test:jets`" in text and "`aaaaaaaaaaaaaaaa`, 3 files" in text
    assert "Rucio rule `r1` to `SITE_A`" in text
    assert "Rucio" not in stage_description("file:///d", "a" * 64, 1)


def test_changed_params_never_show_a_secret() -> None:
    changed = changed_params({"api_token": "s3cr3t-TOKEN-value", "db": "postgresql://u:pw-CANARY@h/db", "lr": "0.1"},
                             {"lr": "0.01"})
    assert "s3cr3t-TOKEN-value" not in str(changed) and "pw-CANARY" not in str(changed)
    assert set(changed) == {"api_token", "db", "lr"} and changed["lr"] == "0.1"
    assert "s3cr3t" not in run_name("main", changed)

"""`mltf-flow tune`, `run --from-study` and `mltf-flow optuna-dashboard` given bad input: exit code 2, one message
that names what was wrong and what there is, no traceback. The installed ``mltf-flow`` in subprocesses, as a user
types it, on a copy of the example project; no trial runs."""

from __future__ import annotations

import importlib.util
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna

from tests.helpers import BIN, EXAMPLE, REPO, Result, run_cmd


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "jet_tagging"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "data", "mlruns"))
    (tmp_path / "bad_space.yaml").write_text("lr: {type: float, low: 1.0e-4, high: 0.1, log: true}\n"
                                             "learning_rate: {type: float, low: 0.1, high: 1}\n")
    return project


def test_bad_tune_invocations_say_what_without_a_traceback(tmp_path: Path) -> None:
    project, space = _project(tmp_path), tmp_path / "bad_space.yaml"
    work = tmp_path / "work"  # the test's MLTF_FLOW_WORK_DIR (tests/conftest.py), with an empty MLflow store
    # A study that exists, of another name: --from-study lists it.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(storage=f"sqlite:///{work / 'optuna.db'}", study_name="other")
    env = {"PYTHONPATH": str(REPO)}
    empty_work = {**env, "MLTF_FLOW_WORK_DIR": str(tmp_path / "no-studies-here")}
    cases: list[tuple[list[str], str, dict[str, str]]] = [
        (["tune", str(project)],
         "mltf-flow tune: give --study NAME (a study of pipeline.yaml) or --step, --metric, --space.", env),
        (["tune", str(project), "--step", "train", "--space", str(space)],
         "mltf-flow tune: give --study NAME (a study of pipeline.yaml) or --metric.", env),
        (["tune", str(project), "--study", "nosuch"],
         f"{project / 'pipeline.yaml'}: no study 'nosuch'; studies are: sweep.", env),
        (["tune", str(project), "--step", "train", "--metric", "val_accuracy", "--space", str(space)],
         f"{space}: parameter 'learning_rate' is not a parameter of entry point 'train' (it has: epochs, lr, hidden, "
         "batch_size, seed, optimizer, momentum).", env),
        (["tune", str(project), "--study", "sweep", "--n-trials", "0"], "key 'n_trials': expected greater than or "
         "equal to 1, found 0.", env),
        (["tune", str(project), "--step", "train", "--metric", "val_accuracy", "--space", str(tmp_path / "nosuch")],
         f"search space file {tmp_path / 'nosuch'} does not exist.", env),
        (["run", str(project), "--step", "train", "--from-study", "nosuch"],
         f"--from-study 'nosuch': no such study in sqlite:///{work / 'optuna.db'} (studies there: other).", env),
        (["run", str(project), "--step", "train", "--from-study", "nosuch"],
         f"--from-study 'nosuch': no studies yet (sqlite:///{tmp_path / 'no-studies-here' / 'optuna.db'} does not "
         "exist).", empty_work),
        (["optuna-dashboard"],
         f"no studies yet: sqlite:///{tmp_path / 'no-studies-here' / 'optuna.db'} does not exist.", empty_work),
    ]
    if importlib.util.find_spec("cmaes") is None:  # Optuna's CMA-ES sampler needs it: said before any trial
        cases.append((["tune", str(project), "--study", "sweep", "--sampler", "cmaes"],
                      "sampler 'cmaes' needs cmaes, which is not installed here: pip install cmaes", env))
    with ThreadPoolExecutor(max_workers=4) as pool:
        results: list[Result] = list(pool.map(
            lambda case: run_cmd([str(BIN / "mltf-flow"), *case[0]], env=case[2], timeout=120), cases))
    wrong = [
        f"mltf-flow {' '.join(args)}: exit code {result.returncode}, expected 2 and a message naming {names!r}:\n"
        f"{result.output[-2000:]}"
        for (args, names, _), result in zip(cases, results, strict=True)
        if result.returncode != 2 or names not in result.stderr or "Traceback" in result.output
    ]
    assert not wrong, "\n\n".join(wrong)
    assert not (tmp_path / "no-studies-here").exists()  # asking created no store and no study file

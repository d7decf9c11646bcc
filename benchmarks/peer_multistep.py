"""First full run of the example pipeline vs a driver in the style of MLflow's multistep example.

Two goals of issue 16, measured in one run, interleaved, each run on an empty store:

1. **first full run**: ``luigi --module pipelines Train`` (staging, features, DDP training; a fresh work dir,
   so a fresh sqlite store) against :func:`drive`, a driver written like MLflow's
   ``examples/multistep_workflow/main.py``: one parent run, an ``_already_ran`` check per entry point
   (a search of the store, as there), then ``mlflow.projects.run(<project>, entry_point, parameters,
   env_manager="local")`` per entry point, the next step's input taken from the previous run's artifact URI.
   Goal: ours <= 1.1x the peer at equal parallelism.
2. **gap**: seconds from the features run's end (its ``end_time`` in the store) to the first ``train.py``
   process starting (a ``sitecustomize`` put first on ``PYTHONPATH`` by this script writes each entry-point
   process's start time). Goal: <= 1 s for ours; the peer's gap is printed beside it.

Fairness (same project, same data, same parallelism ``N`` = the ``local`` profile's ``workers``):

* features: ours runs the entry point with ``DASK_SCHEDULER_ADDRESS`` of the profile's Dask LocalCluster
  (``N`` worker processes, 1 thread each); the peer starts the same LocalCluster (``N`` processes, 1 thread,
  the same memory limit) and passes its address the same way, so ``features.py`` maps its files over ``N``
  workers in both. Cluster start counts for both.
* train: ours runs ``N`` DDP ranks (one per Dask worker, torchrun variables, gloo); the peer runs the same
  MLproject command under ``torchrun --standalone --nproc-per-node N`` (the run created with MLflow's own
  ``get_or_create_run``/``get_entry_point_command`` as the local backend does, then ended FINISHED/FAILED as
  ``mlflow.projects.run`` ends it). With ``N = 1`` the peer uses plain ``mlflow.projects.run`` (no launcher,
  the cheapest single process); ours still goes through its one-rank DDP launcher.
* both use ``env_manager=local`` (the venv's python first on PATH), the same sqlite store kind, the same
  parameters.
* the peer does no staging (a manifest of names, paths and sizes is written without checksums) and
  verifies nothing: what ours does on top (checksums, lineage, outputs verified, leases) is ours to pay for.

Each side runs once unmeasured first (bytecode caches written, page cache warm; ``PYTHONDONTWRITEBYTECODE`` is
dropped for both), then the measured runs alternate which side goes first. Medians; the load average is
printed with each run (the machines are shared: only ratios measured side by side mean something).
``--quick``: one repeat on 2 small files with 1 epoch (for ``make bench``).

    python benchmarks/peer_multistep.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_report import report
from timed_command import timed

REPO = Path(__file__).resolve().parent.parent
PROJECT = REPO / "pipelines" / "jet_tagging"
BIN = Path(sys.executable).parent
RATIO_GOAL = 1.1
GAP_GOAL_S = 1.0

#: Put first on PYTHONPATH of every run: records when an entry point's Python process starts.
_START_HOOK = '''import os, sys, time
_f = os.environ.get("MLTF_BENCH_START_LOG")
if _f and sys.argv and sys.argv[0].endswith(("train.py", "features.py")):
    with open(_f, "a") as _h:
        _h.write(f"{os.path.basename(sys.argv[0])} {os.environ.get('RANK', '-')} {time.time():.3f}\\n")
'''


# -- the peer: a multistep-style driver ---------------------------------------------------------------
def _already_ran(client: Any, experiment_id: str, entry_point: str, parameters: dict[str, str]) -> Any:
    """As in MLflow's multistep example: a FINISHED run of the entry point with these parameters."""
    for run in client.search_runs([experiment_id], f"tags.`mlflow.project.entryPoint` = '{entry_point}'"):
        if all(run.data.params.get(k) == v for k, v in parameters.items()) and run.info.status == "FINISHED":
            return run
    return None


def _torchrun(experiment_id: str, parameters: dict[str, str], nproc: int) -> str:
    """``train`` as MLflow's local backend runs it, with torchrun in front of the command; the run id."""
    import mlflow
    from mlflow.projects import utils as project_utils
    from mlflow.projects._project_spec import load_project

    work_dir = project_utils.fetch_and_validate_project(str(PROJECT), None, "train", parameters)
    project = load_project(work_dir)
    active = project_utils.get_or_create_run(None, str(PROJECT), experiment_id, work_dir, None, "train",
                                             parameters)
    run_id = active.info.run_id
    command = project_utils.get_entry_point_command(project, "train", parameters, None)[0]
    env = {**os.environ, **project_utils.get_run_env_vars(run_id, experiment_id)}
    launcher = [str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={nproc}", "--no-python",
                "bash", "-c", command]
    code = subprocess.call(launcher, cwd=work_dir, env=env)
    mlflow.tracking.MlflowClient().set_terminated(run_id, "FINISHED" if code == 0 else "FAILED")
    if code != 0:
        raise SystemExit(f"train failed with exit code {code}")
    return str(run_id)


def drive(data: Path, workers: int, epochs: int) -> None:
    """The peer driver (run in its own process, timed from outside like ``luigi``)."""
    import mlflow
    from distributed import LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit="2GB",
                      dashboard_address=":0") as cluster:
        os.environ["DASK_SCHEDULER_ADDRESS"] = cluster.scheduler_address
        client = mlflow.tracking.MlflowClient()
        experiment_id = client.create_experiment(
            "jet_tagging", artifact_location=(Path(os.environ["PEER_WORK_DIR"]) / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment_id):
            manifest = Path(os.environ["PEER_WORK_DIR"]) / "manifest.json"
            files = sorted(data.glob("*.root"))
            manifest.write_text(json.dumps({"files": [{"name": f.name, "path": str(f), "size": f.stat().st_size}
                                                      for f in files]}))
            params = {"manifest": str(manifest)}
            features = _already_ran(client, experiment_id, "features", params)
            if features is None:
                submitted = mlflow.projects.run(str(PROJECT), "features", parameters=params, env_manager="local",
                                                experiment_id=experiment_id)
                features = client.get_run(submitted.run_id)
            artifact = features.info.artifact_uri.removeprefix("file://") + "/features.mltft"
            train_params = {"features": artifact, "epochs": str(epochs)}
            if _already_ran(client, experiment_id, "train", train_params) is None:
                if workers > 1:
                    _torchrun(experiment_id, train_params, workers)
                else:
                    mlflow.projects.run(str(PROJECT), "train", parameters=train_params, env_manager="local",
                                        experiment_id=experiment_id)


# -- measuring ----------------------------------------------------------------------------------------
def _gap(db: Path, starts: Path) -> float:
    """Seconds from the features run's end to the first train.py process start."""
    with sqlite3.connect(db) as con:
        rows = con.execute("select end_time from runs r join tags t on t.run_uuid = r.run_uuid "
                           "where t.key = 'mlflow.project.entryPoint' and t.value = 'features'").fetchall()
    ended = rows[0][0] / 1000
    train = [float(line.split()[2]) for line in starts.read_text().splitlines() if line.startswith("train.py")]
    return min(train) - ended


def measure(kind: str, workers: int, data: Path, epochs: int, tmp: Path, hook: Path, n: int) -> tuple[float, float]:
    """One first run (``ours`` or ``peer``) on an empty store: (seconds, gap seconds)."""
    work = tmp / f"{kind}-{workers}-{n}"
    work.mkdir()
    starts = work / "starts.txt"
    env = dict(os.environ, MLTF_BENCH_START_LOG=str(starts),
               PYTHONPATH=os.pathsep.join([str(hook), str(REPO), os.environ.get("PYTHONPATH", "")]))
    # Both sides run with their bytecode cached, as installed software does (see warm-up in main).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if kind == "ours":
        env.update(MLTF_FLOW_WORK_DIR=str(work), LUIGI_CONFIG_PATH=str(REPO / "configs/luigi.cfg"),
                   MLTF_FLOW_SET__LOCAL__WORKERS=str(workers))
        cmd = [str(BIN / "luigi"), "--module", "pipelines", "Train", "--dataset", str(data), "--epochs",
               str(epochs), "--local-scheduler", "--no-lock", "--log-level", "WARNING"]
        seconds = timed(cmd, env, REPO)
        db = next(work.rglob("*.db"))
    else:
        db = work / "mlflow.db"
        # env_manager=local runs `python` from PATH: this venv's, as in an activated venv.
        env.update(MLFLOW_TRACKING_URI=f"sqlite:///{db}", PEER_WORK_DIR=str(work),
                   MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true", PATH=f"{BIN}{os.pathsep}{env['PATH']}")
        cmd = [sys.executable, __file__, "--drive", "--data", str(data), "--workers", str(workers),
               "--epochs", str(epochs)]
        seconds = timed(cmd, env, work)
    return seconds, _gap(db, starts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 repeat, 2 small files, 1 epoch")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="parallelism levels")
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        drive(args.data, args.workers[0], args.epochs)
        return
    repeats, epochs = (1, 1) if args.quick else (args.repeats, 8)
    size = ["--n-files", "2", "--events-per-file", "1000"] if args.quick else []
    with tempfile.TemporaryDirectory(prefix="mltf-peer-") as name:
        tmp = Path(name)
        hook = tmp / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(_START_HOOK)
        data = tmp / "data"
        subprocess.run([sys.executable, str(PROJECT / "generate.py"), "--out-dir", str(data), *size], check=True,
                       capture_output=True)
        # One unmeasured run of each: bytecode caches written, page cache warm, for both sides alike.
        for kind in ("ours", "peer"):
            measure(kind, 1, data, 1, tmp, hook, -1)
        print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
        for workers in args.workers:
            times: dict[str, list[float]] = {"ours": [], "peer": []}
            gaps: dict[str, list[float]] = {"ours": [], "peer": []}
            for n in range(repeats):
                order = ("ours", "peer") if n % 2 == 0 else ("peer", "ours")
                for kind in order:
                    seconds, gap = measure(kind, workers, data, epochs, tmp, hook, n)
                    times[kind].append(seconds)
                    gaps[kind].append(gap)
                    print(f"  {workers} worker(s) {kind}: {seconds:6.2f} s, gap {gap:5.2f} s "
                          f"(load {os.getloadavg()[0]:.2f})", flush=True)
            ours, peer = statistics.median(times["ours"]), statistics.median(times["peer"])
            report(f"first full run vs multistep-style driver, {workers} worker(s)", ours / peer, goal=RATIO_GOAL,
                   better="lower", detail=f"{ours:.1f} s vs {peer:.1f} s, median of {repeats}, {epochs} epoch(s), "
                                          f"load {os.getloadavg()[0]:.1f}")
            gap, peer_gap = statistics.median(gaps["ours"]), statistics.median(gaps["peer"])
            report(f"features end -> train start, {workers} worker(s)", gap, goal=GAP_GOAL_S, better="lower",
                   unit="s", detail=f"peer {peer_gap:.2f} s, median of {repeats}")


if __name__ == "__main__":
    main()

"""HPO overhead: N trials of a trivial objective through an mltf_flow study vs a plain Optuna loop, in one run.

Both sides run the same command (``bash -c "python objective.py --x X --y Y"``, a script that computes
f(x, y) in microseconds and, when it has an MLflow run, logs it through the REST API: importing mlflow would
cost 1.3 s a trial) in processes on the same two Dask workers: the local profile's LocalCluster, started once
by this process and used by both.

* plain:      ``optuna.create_study()`` in memory, ``RandomSampler(seed)``, ``study.optimize(n_jobs=2)``; each
              trial ``client.submit(subprocess.run, ...)`` on the cluster, the value read from its stdout.
* mltf_flow:  ``mltf-flow tune PROJECT --study bench`` (in this process, against a real ``mlflow server``):
              the step has ``run_on: worker`` (DaskWorkerLauncher: the command on a Dask worker, as plain's),
              random sampler with the same seed, pruner none, no baseline trial, 2 trials at once. Each trial is
              a claimed, leased, verified step run (a child of the study run) with its lineage.

Printed: the wall time of each, the overhead per trial, ``(mltf_flow - plain) / N``, against the goal of
issue 18 (<= 50 ms a trial). Plain is timed before and after mltf_flow; the faster of the two is the baseline
(a shared machine drifts: the overhead is never understated).

Then the cached case, with the tracking server's requests counted in its access log (uvicorn's, one line a
request; a marker request closes each count, so no line is missed or counted twice):

* the same command again, in a process of its own: the study step is complete (a cached no-op): every
  request of the command;
* a new study whose N trials are all identical to complete runs (direction ``minimize`` -> ``maximize``
  changes the study's identity, not the points a seeded random sampler proposes): the requests of the check
  that finds the N trials complete (:func:`mltf_flow.tune.study.known_results`: one search, a page per
  1,000 runs) against the goal (<= 5 round trips); the whole command's requests are printed for scale.

    python benchmarks/hpo_overhead.py [--trials 1000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from bench_report import report

GOAL_MS = 50.0
GOAL_ROUND_TRIPS = 5
SEED = 7
WORKERS = 2  # the local profile's
BIN = Path(sys.executable).parent

OBJECTIVE = '''"""f(x, y), logged to the trial's MLflow run over REST (no mlflow import: 1.3 s)."""
import json
import os
import sys
import time
import urllib.request

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
x, y = float(args["--x"]), float(args["--y"])
value = (x - 1.0) ** 2 + (y + 2.0) ** 2
run_id = os.environ.get("MLFLOW_RUN_ID")
if run_id:
    body = {"run_id": run_id, "key": os.environ.get("MLTF_TUNE_METRIC", "loss"), "value": value,
            "timestamp": int(time.time() * 1000), "step": 0}
    request = urllib.request.Request(os.environ["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/runs/log-metric",
                                     json.dumps(body).encode(), {"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=60).read()
print(f"value={value!r}")
'''

MLPROJECT = """name: hpo_bench
entry_points:
  objective:
    parameters:
      x: {type: float, default: 0.0}
      y: {type: float, default: 0.0}
    command: "python objective.py --x {x} --y {y}"
"""

PIPELINE = """name: hpo_bench
steps:
  objective:
    entry_point: objective
    run_on: worker          # the command on a Dask worker, as the plain loop runs it
    code: [objective.py]
studies:
  bench:
    step: objective
    metric: loss
    direction: minimize
    sampler: random
    seed: SEED
    pruner: none
    include_defaults: false
    space:
      x: {type: float, low: -5.0, high: 5.0}
      y: {type: float, low: -5.0, high: 5.0}
""".replace("SEED", str(SEED))


def write_project(root: Path) -> Path:
    """The objective's MLflow project, committed to git as a user's project is (its lineage has a commit)."""
    root.mkdir()
    (root / "objective.py").write_text(OBJECTIVE)
    (root / "MLproject").write_text(MLPROJECT)
    (root / "pipeline.yaml").write_text(PIPELINE)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "hpo bench"]):
        subprocess.run([*git, *cmd], cwd=root, check=True)
    return root


# -- the tracking server and its access log ----------------------------------------------------------------
class Server:
    """A real ``mlflow server`` on 127.0.0.1 whose uvicorn access log (one line a request) is a file."""

    def __init__(self, root: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.uri = f"http://127.0.0.1:{port}"
        self.log = root / "server.log"
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--uvicorn-opts", "--access-log"],
            stdout=self._out, stderr=subprocess.STDOUT,
            env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
        )
        deadline = time.monotonic() + 120
        while True:  # readiness poll
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"mlflow server did not start:\n{self.log.read_text()[-3000:]}") from None
                time.sleep(0.2)
        self._counted = self._mark()

    def _mark(self) -> int:
        """Close a count: a marker request, then the log up to its line (every request answered before the
        marker was sent is logged before it: uvicorn logs a request when it starts its response)."""
        marker = uuid.uuid4().hex
        with urllib.request.urlopen(f"{self.uri}/health?mark={marker}", timeout=30):
            pass
        deadline = time.monotonic() + 30
        while True:
            lines = self.log.read_text(errors="replace").splitlines()
            at = [i for i, line in enumerate(lines) if marker in line]
            if at:
                return at[0]
            if time.monotonic() > deadline:
                raise SystemExit(f"marker request {marker} never reached the server's log {self.log}")
            time.sleep(0.05)

    def requests_since_mark(self) -> list[str]:
        """The API requests answered since the last count (its marker excluded), and start a new count."""
        start = self._counted
        end = self._mark()
        lines = self.log.read_text(errors="replace").splitlines()[start + 1 : end]
        self._counted = end
        return [m.group(1) for line in lines if (m := re.search(r'"([A-Z]+ /api/\S+)', line))]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._out.close()


# -- the plain Optuna loop ---------------------------------------------------------------------------------
def _value(stdout: str) -> float:
    match = re.search(r"value=(\S+)", stdout)
    if match is None:
        raise RuntimeError(f"objective printed no value: {stdout!r}")
    return float(match.group(1))


def plain_loop(client: Any, project: Path, n: int) -> float:
    """Seconds for N trials of the plain loop."""
    import optuna

    command = "python objective.py --x {x} --y {y}"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

    def objective(trial: optuna.Trial) -> float:
        x, y = trial.suggest_float("x", -5.0, 5.0), trial.suggest_float("y", -5.0, 5.0)
        done = client.submit(subprocess.run, ["bash", "-c", command.format(x=x, y=y)], cwd=str(project), env=env,
                             capture_output=True, text=True, check=True, pure=False).result()
        return _value(done.stdout)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=SEED))
    start = time.perf_counter()
    study.optimize(objective, n_trials=n, n_jobs=WORKERS)
    elapsed = time.perf_counter() - start
    assert len(study.trials) == n and all(t.value is not None for t in study.trials)
    return elapsed


# -- mltf_flow ---------------------------------------------------------------------------------------------
def tune(project: Path, n: int, *more: str) -> float:
    """Seconds of ``mltf-flow tune PROJECT --study bench --n-trials N`` run in this process."""
    from mltf_flow.cli import main

    start = time.perf_counter()
    code = main(["tune", str(project), "--study", "bench", "--n-trials", str(n), *more])
    elapsed = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"mltf-flow tune exited {code}")
    return elapsed


def tune_process(project: Path, n: int) -> float:
    """Seconds of the same ``mltf-flow tune`` in a process of its own (nothing remembered from this one)."""
    start = time.perf_counter()
    done = subprocess.run([str(BIN / "mltf-flow"), "tune", str(project), "--study", "bench", "--n-trials", str(n)],
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the cached study command failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return elapsed


def study_run(uri: str, direction: str) -> Any:
    """The (complete) study run of the study with ``direction``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("hpo_bench")
    assert exp is not None
    (study,) = [r for r in client.search_runs([exp.experiment_id], "tags.`mltf.role` = 'study'", max_results=100)
                if r.data.params.get("study.direction") == direction]
    assert study.data.tags.get("mltf.complete") == "true", study.data.tags
    return study


def trial_runs(uri: str, n: int) -> list[Any]:
    """The runs of the first study's trials (checked: N, each complete with its value)."""
    from mlflow.tracking import MlflowClient

    study = study_run(uri, "minimize")
    trials = MlflowClient(uri).search_runs([study.info.experiment_id],
                                           f"tags.`mlflow.parentRunId` = '{study.info.run_id}'", max_results=5000)
    ok = [r for r in trials if r.info.status == "FINISHED" and r.data.tags.get("mltf.complete") == "true"
          and "loss" in r.data.metrics]
    assert len(ok) == n, f"{len(ok)} of {len(trials)} trial runs complete with a loss, expected {n}"
    return trials


def cached_trials(uri: str, work: Path) -> int:
    """How many trials of the second study (direction maximize) were found cached (each, or it fails)."""
    import optuna
    from optuna.trial import TrialState

    name = study_run(uri, "maximize").data.tags["mltf.study.name"]
    trials = optuna.load_study(study_name=name, storage=f"sqlite:///{work / 'optuna.db'}").get_trials()
    assert all(t.state == TrialState.COMPLETE and t.user_attrs.get("cached") for t in trials), trials[:3]
    return len(trials)


def count_known_results(server: Server) -> tuple[int, int]:
    """Round trips of the check that finds every complete run of the step (what a new study's trials are
    looked up in), and how many runs it found."""
    from mltf_flow.config import load_settings
    from mltf_flow.tracking import Tracker
    from mltf_flow.tune.study import known_results

    tracker = Tracker(load_settings())
    exp = tracker.client.get_experiment_by_name("hpo_bench")
    assert exp is not None
    server.requests_since_mark()
    found = known_results(tracker, exp.experiment_id, "objective", "loss")
    return len(server.requests_since_mark()), len(found)


def summary(requests: list[str]) -> str:
    by: dict[str, int] = {}
    for r in requests:
        what = r.split("?", 1)[0].split("/api/2.0/", 1)[-1]
        what = "artifacts (upload)" if what.startswith("mlflow-artifacts/") else what
        by[what] = by.get(what, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(by.items(), key=lambda kv: -kv[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000, help="trials of each study (default 1000)")
    parser.add_argument("--quick", action="store_true", help="100 trials")
    args = parser.parse_args()
    n = 100 if args.quick else args.trials
    with tempfile.TemporaryDirectory(prefix="mltf-bench-") as tmp:
        root = Path(tmp)
        project = write_project(root / "project")
        server = Server(root)
        os.environ.update(MLTF_FLOW_WORK_DIR=str(root / "work"), MLFLOW_TRACKING_URI=server.uri,
                          MLTF_FLOW_ENV_MANAGER="local", MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true")
        os.environ.pop("MLTF_FLOW_PROFILE_FILES", None)
        from mltf_flow.clusters import session
        from mltf_flow.clusters.profiles import get_profile

        try:
            session.mark_main_process()
            client = session.client_for(get_profile("local"))
            client.wait_for_workers(WORKERS)
            print(f"{n} trials of a trivial objective, {WORKERS} at a time on {WORKERS} Dask workers "
                  f"(LocalCluster), tracking server {server.uri} (load {os.getloadavg()[0]:.1f})", flush=True)
            plain_before = plain_loop(client, project, n)
            server.requests_since_mark()
            print(f"  plain Optuna loop:        {plain_before:8.1f} s", flush=True)
            ours = tune(project, n)
            ours_requests = server.requests_since_mark()
            print(f"  mltf_flow study:          {ours:8.1f} s, {len(ours_requests)} tracking requests "
                  f"({len(ours_requests) / n:.1f} a trial: {summary(ours_requests)})", flush=True)
            plain_after = plain_loop(client, project, n)
            print(f"  plain Optuna loop again:  {plain_after:8.1f} s", flush=True)
            trial_runs(server.uri, n)
            plain = min(plain_before, plain_after)  # the faster: the overhead is never understated
            overhead_ms = 1000 * (ours - plain) / n
            print(f"  per trial: plain {1000 * plain / n:.1f} ms, mltf_flow {1000 * ours / n:.1f} ms (2 at a time)")
            server.requests_since_mark()

            rerun = tune_process(project, n)
            rerun_requests = server.requests_since_mark()
            print(f"  the same command again, a new process (cached no-op): {rerun:.2f} s, "
                  f"{len(rerun_requests)} requests "
                  f"({summary(rerun_requests)})")
            check_trips, found = count_known_results(server)
            new = tune(project, n, "--direction", "maximize")
            new_requests = server.requests_since_mark()
            assert cached_trials(server.uri, root / "work") == n
            print(f"  a new study of the same {n} points (all cached): {new:.2f} s, {len(new_requests)} requests "
                  f"in all ({summary(new_requests)})")
            print(f"  its check of the {found} complete runs (known_results): {check_trips} round trip(s)")
        finally:
            session.close_all()
            server.stop()
    report(f"hpo overhead per trial over a plain optuna loop ({n} trials)", overhead_ms, goal=GOAL_MS,
           better="lower", unit=" ms",
           detail=f"mltf_flow {ours:.1f} s vs plain {plain:.1f} s ({plain_before:.1f} s, {plain_after:.1f} s) "
                  f"for {n} trials on {WORKERS} workers, {len(ours_requests) / n:.1f} tracking requests a trial; "
                  f"load {os.getloadavg()[0]:.1f}")
    report(f"round trips of the completeness check of {n} cached trials", check_trips, goal=GOAL_ROUND_TRIPS,
           better="lower", unit="",
           detail=f"known_results found {found} runs; cached no-op study command {len(rerun_requests)} requests; "
                  f"a new study of {n} cached trials {len(new_requests)} requests in all")


if __name__ == "__main__":
    main()

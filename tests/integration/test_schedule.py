"""Scheduled pipelines (mltf_flow.schedule) against a real `mlflow server`, the single-node SLURM and cron.

The pipeline (projects/scheduled) stages a dataset directory, counts its files (``features``) and "trains" on
the count (``train``): a nightly retrain in miniature. Each test records its fires in an experiment of its own
on the session's server.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import BIN, MlflowServer, git_project, read_until, run_cmd, run_mltf, wait_until
from tests.integration.mlflow_queries import client
from tests.receivers import SmtpServer, WebhookReceiver

PROJECT = Path(__file__).parent / "projects" / "scheduled"
HOST_B = ["unshare", "--uts", "--fork", "sh", "-c", 'hostname node-b-of-test && exec "$@"', "sh"]
needs_uts = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                               reason="another host name needs a UTS namespace (root and unshare)")


class Pipeline:
    """The project, its dataset and the experiment its runs go to, for one test."""

    def __init__(self, root: Path, server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> None:
        self.project = git_project(PROJECT, root / "project")
        self.data = root / "data"
        self.data.mkdir()
        for name in ("run1.root", "run2.root"):
            (self.data / name).write_bytes(os.urandom(256))
        self.experiment = f"scheduled-{uuid.uuid4().hex[:8]}"
        self.uri = server.uri
        monkeypatch.setenv("MLTF_FLOW_TRACKING_URI", server.uri)
        monkeypatch.setenv("MLTF_FLOW_EXPERIMENT", self.experiment)
        monkeypatch.chdir(root)

    def target(self, *extra: str) -> list[str]:
        return [str(self.project), "--step", "train", "-P", f"stage.dataset={self.data}", *extra]

    def runs(self) -> list[Any]:
        c = client(self.uri)
        exp = c.get_experiment_by_name(self.experiment)
        if exp is None:
            return []
        return list(c.search_runs([exp.experiment_id], max_results=500, order_by=["attributes.start_time ASC"]))

    def step_runs(self) -> list[Any]:
        return [r for r in self.runs() if r.data.tags.get("mltf.role") == "step"]

    def fires(self, name: str) -> list[Any]:
        return [r for r in self.runs() if r.data.tags.get("mltf.schedule") == name]

    def ended_fires(self, name: str) -> list[Any]:
        return [r for r in self.fires(name) if "mltf.schedule.outcome" in r.data.tags]


@pytest.fixture
def pipeline(tmp_path: Path, mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> Pipeline:
    return Pipeline(tmp_path, mlflow_server, monkeypatch)


def outcome(run: Any) -> str:
    return str(run.data.tags["mltf.schedule.outcome"])


def start(args: list[str], *, prefix: list[str] | None = None, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen[str]:
    """`mltf-flow ARGS` in the background, in its own process group (output merged)."""
    full = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    return subprocess.Popen([*(prefix or []), str(BIN / "mltf-flow"), *args], env=full, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


class Output:
    """Everything a background process prints, collected by a thread, so a test can wait on two at once."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc, self.lines = proc, list[str]()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def says(self, words: str) -> bool:
        return any(words in line for line in list(self.lines))

    def finish(self, timeout: float = 180) -> tuple[int, str]:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            rc = self.proc.wait()
        self._thread.join(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return rc, "".join(self.lines)


@pytest.fixture
def removed() -> Iterator[list[str]]:
    """Names of schedules a test added: removed at the end even if the test failed (no job left queued)."""
    names: list[str] = []
    yield names
    for name in names:
        run_mltf("schedule", "remove", name)


@pytest.mark.slurm
def test_a_slurm_schedule_fires_every_minute_and_reruns_only_what_is_stale(
    pipeline: Pipeline, removed: list[str]
) -> None:
    added = run_mltf("schedule", "add", "nightly", "--every", "1m", *pipeline.target())
    assert added.returncode == 0, added.output
    removed.append("nightly")
    assert "SLURM job" in added.output and "holds the next fire" in added.output
    # Fire 1 (at once): the pipeline runs.
    wait_until(lambda: len(pipeline.ended_fires("nightly")) >= 1, 120, "the first fire")
    (first,) = pipeline.ended_fires("nightly")
    assert outcome(first) == "ran: stage, features, train", first.data.tags
    assert first.data.tags["mltf.schedule.via"] == "slurm" and first.data.tags["mltf.schedule.job_id"]
    assert first.data.tags["mltf.schedule.next"].startswith("SLURM job ")
    steps = pipeline.step_runs()
    assert sorted(r.data.tags["mltf.step"] for r in steps) == ["features", "train"]
    assert all(r.data.tags["mlflow.parentRunId"] == first.info.run_id for r in steps)
    # A fire by hand right after: nothing changed, nothing runs, and the fire is in the history all the same.
    # (By hand rather than the next minute's SLURM fire: a minute less of the suite, and the same code path.)
    by_hand = run_mltf("schedule", "fire", "nightly")
    assert by_hand.returncode == 0, by_hand.output
    second = next(f for f in pipeline.ended_fires("nightly") if f.data.tags["mltf.schedule.via"] == "manual")
    assert outcome(second) == "nothing to do" and second.info.status == "FINISHED"
    assert len(pipeline.step_runs()) == 2
    # A new file in the dataset: the next minute's SLURM fire stages it again and reruns features and training.
    # (A fire that was already past staging when the file appeared says "nothing to do"; the one after runs.)
    changed_ms = time.time() * 1000
    (pipeline.data / "run3.root").write_bytes(os.urandom(256))

    def rerun() -> Any:
        return next((f for f in pipeline.ended_fires("nightly") if f.data.tags["mltf.schedule.via"] == "slurm"
                     and f.info.end_time > changed_ms and outcome(f).startswith("ran")), None)

    third = wait_until(rerun, 150, "a SLURM fire after the change to rerun the pipeline")
    assert outcome(third) == "ran: stage, features, train"
    new = [r for r in pipeline.step_runs() if r.data.tags["mlflow.parentRunId"] == third.info.run_id]
    assert sorted(r.data.tags["mltf.step"] for r in new) == ["features", "train"]
    assert next(r for r in new if r.data.tags["mltf.step"] == "features").data.metrics["files"] == 3
    slots = [f.data.tags["mltf.schedule.slot"] for f in pipeline.ended_fires("nightly")
             if f.data.tags["mltf.schedule.via"] == "slurm"]
    assert len(set(slots)) == len(slots) >= 2  # slots of the grid, one SLURM fire each
    job = next(line for line in run_mltf("schedule", "show", "nightly").output.splitlines() if "#SBATCH --job-name"
               in line).split("=", 1)[1]
    # Removing it leaves no job in squeue (the pending next fire is cancelled).
    gone = run_mltf("schedule", "remove", "nightly")
    assert gone.returncode == 0, gone.output
    removed.clear()
    queue = subprocess.run(["squeue", "-h", f"--name={job}"], capture_output=True, text=True, check=True)
    assert queue.stdout.strip() == ""
    assert "no schedules" in run_mltf("schedule", "list").output


@needs_uts
def test_a_fire_and_a_manual_run_from_two_hosts_run_each_step_once(
    pipeline: Pipeline, tmp_path: Path, removed: list[str]
) -> None:
    # Host A fires the schedule; host B (its own host name and work directory: another machine sharing only
    # the project, the data and the tracking server) runs the same pipeline by hand at the same moment.
    added = run_mltf("schedule", "add", "hourly", "--every", "1h", "--via", "none", *pipeline.target())
    assert added.returncode == 0, added.output
    gate = tmp_path / "gate"
    held = {"STEP_GATE": str(gate), "MLTF_FLOW_LEASE_SECONDS": "5"}
    fire = Output(start(["schedule", "fire", "hourly"], env=held))
    manual = Output(start(["run", *pipeline.target()], prefix=HOST_B, cwd=tmp_path,
                          env={**held, "MLTF_FLOW_WORK_DIR": str(tmp_path / "host-b-work")}))
    # One of them holds features at the gate, the other waits for its result.
    try:
        wait_until(lambda: (fire.says("AT GATE features") and manual.says("waiting for its result"))
                   or (manual.says("AT GATE features") and fire.says("waiting for its result")), 120,
                   "one invocation holding features and the other waiting for it")
    except AssertionError as exc:
        for proc in (fire.proc, manual.proc):
            os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"{exc}\nfire:\n{fire.finish()[1][-3000:]}\n"
                             f"manual:\n{manual.finish()[1][-3000:]}") from None
    finally:
        gate.touch()
    gate.touch()
    rc_fire, out_fire = fire.finish()
    rc_manual, out_manual = manual.finish()
    assert rc_fire == 0, out_fire
    assert rc_manual == 0, out_manual
    assert out_fire.count("waiting for its result") + out_manual.count("waiting for its result") >= 1
    steps = pipeline.step_runs()
    assert sorted(r.data.tags["mltf.step"] for r in steps) == ["features", "train"], [
        (r.data.tags["mltf.step"], r.info.status, r.data.tags.get("mltf.host")) for r in steps]
    assert all(r.info.status == "FINISHED" and r.data.tags["mltf.complete"] == "true" for r in steps)
    assert not [r for r in pipeline.runs() if r.info.status == "KILLED"]
    (fire_run,) = pipeline.fires("hourly")
    assert fire_run.data.tags["mltf.schedule.via"] == "manual" and fire_run.info.status == "FINISHED"


@needs_uts
def test_a_killed_fire_is_stale_within_its_lease_and_the_next_fire_reruns_its_step(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    lease = {"MLTF_FLOW_LEASE_SECONDS": "3"}
    assert run_mltf("schedule", "add", "hourly", "--every", "1h", "--via", "none", *pipeline.target()).returncode == 0
    # The first fire runs on another host and is killed (SIGKILL: nothing ends its runs) while features runs.
    first = start(["schedule", "fire", "hourly"], prefix=HOST_B, env={**lease, "STEP_GATE": str(tmp_path / "never")})
    read_until(first, "AT GATE features")
    (held,) = pipeline.step_runs()
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate(timeout=60)
    # The next fire (this host) finds the earlier fire unfinished, waits out its lease, ends it, reaps its step
    # run and runs the step again.
    begun = time.monotonic()
    second = run_mltf("schedule", "fire", "hourly", env=lease)
    took = time.monotonic() - begun
    assert second.returncode == 0, second.output
    lost, ran = pipeline.fires("hourly")
    assert lost.info.status == "KILLED" and outcome(lost).startswith("lost")
    assert outcome(ran) == "ran: features, train"  # staged by the killed fire already
    waited = re.fullmatch(r"waited (\d+) s for fire (\w+) \(slot .*\) to end", ran.data.tags["mltf.schedule.overlap"])
    assert waited is not None and waited.group(2) == lost.info.run_id, ran.data.tags["mltf.schedule.overlap"]
    assert int(waited.group(1)) <= 3 + 2 + 5  # its lease (3 s), a poll (2 s), and slack for a busy machine
    old = client(pipeline.uri).get_run(held.info.run_id)
    assert old.info.status == "KILLED" and old.data.tags["mltf.error"] == "the lease of its owner expired"
    redone = next(r for r in pipeline.step_runs() if r.data.tags["mltf.step"] == "features"
                  and r.info.run_id != held.info.run_id)
    assert redone.data.tags["mltf.replaces_run_ids"] == held.info.run_id
    print(f"the next fire found the killed one stale and reran its steps in {took:.1f} s (lease 3 s)")


def test_a_fire_skips_while_the_previous_fire_runs_when_told_to(pipeline: Pipeline, tmp_path: Path) -> None:
    added = run_mltf("schedule", "add", "often", "--every", "1h", "--via", "none", "--if-running", "skip",
                     *pipeline.target())
    assert added.returncode == 0, added.output
    gate = tmp_path / "gate"
    first = start(["schedule", "fire", "often"], env={"STEP_GATE": str(gate)})
    seen = read_until(first, "AT GATE features")
    try:
        second = run_mltf("schedule", "fire", "often")
    finally:
        gate.touch()
    out = first.communicate(timeout=180)[0]
    assert first.returncode == 0, seen + out
    assert second.returncode == 0, second.output
    ran, skipped = pipeline.fires("often")
    assert outcome(ran) == "ran: stage, features, train"
    assert outcome(skipped) == f"skipped: fire {ran.info.run_id} (slot {ran.data.tags['mltf.schedule.slot']}) is " \
                               "still running"
    assert len(pipeline.step_runs()) == 2  # the skipped fire started no step
    shown = run_mltf("schedule", "show", "often").output
    assert "skipped: fire" in shown and "ran: stage, features, train" in shown


def test_date_partitioned_fires_use_luigis_range_daily(tmp_path: Path, mlflow_server: MlflowServer,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # A user's own dated task, scheduled through Luigi's RangeDaily: each fire fills the days still missing.
    (tmp_path / "dated.py").write_text(
        "import luigi\nfrom luigi.tools.range import RangeDaily  # noqa: F401 (luigi --module dated RangeDaily)\n\n\n"
        "class Day(luigi.Task):\n    date = luigi.DateParameter()\n\n"
        "    def output(self):\n        return luigi.LocalTarget(f'days/{self.date}.txt')\n\n"
        "    def run(self):\n        with self.output().open('w') as out:\n            out.write('done\\n')\n")
    monkeypatch.setenv("MLTF_FLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.chdir(tmp_path)
    experiment = f"dated-{uuid.uuid4().hex[:8]}"
    start_day = time.strftime("%Y-%m-%d", time.localtime(time.time() - 3 * 86400))
    added = run_cmd([str(BIN / "mltf-flow"), "schedule", "add", "days", "--cron", "0 1 * * *", "--via", "none",
                     "--pipeline", experiment, "--luigi", "--module", "dated", "RangeDaily", "--of", "Day",
                     "--start", start_day], cwd=tmp_path)
    assert added.returncode == 0, added.output
    first = run_cmd([str(BIN / "mltf-flow"), "schedule", "fire", "days"], cwd=tmp_path)
    assert first.returncode == 0, first.output
    assert len(list((tmp_path / "days").glob("*.txt"))) == 4  # the three days before today, and today
    again = run_cmd([str(BIN / "mltf-flow"), "schedule", "fire", "days"], cwd=tmp_path)
    assert again.returncode == 0, again.output
    c = client(mlflow_server.uri)
    exp = c.get_experiment_by_name(experiment)
    fires = c.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    assert [f.data.tags["mltf.schedule.outcome"] for f in fires] == ["ran: Day x4, RangeDaily", "nothing to do"]


@pytest.mark.cron
def test_a_cron_schedule_is_a_crontab_line_whose_command_fires(pipeline: Pipeline, tmp_path: Path) -> None:
    before = subprocess.run(["crontab", "-l"], capture_output=True, text=True).stdout
    added = run_mltf("schedule", "add", "viacron", "--cron", "0 3 1 1 *", "--via", "cron", *pipeline.target())
    try:
        assert added.returncode == 0, added.output
        table = subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=True).stdout.splitlines()
        (line,) = [entry for entry in table if entry.startswith("0 3 1 1 * ")]
        # cron runs the line with sh and an almost empty environment: so does this test.
        fired = subprocess.run(["env", "-i", "HOME=/root", "LOGNAME=root", "SHELL=/bin/sh", "PATH=/usr/bin:/bin",
                                "sh", "-c", line.removeprefix("0 3 1 1 * ")], capture_output=True, text=True,
                               timeout=300)
        assert fired.returncode == 0, fired.stdout + fired.stderr
        (fire,) = pipeline.fires("viacron")
        assert fire.data.tags["mltf.schedule.via"] == "cron" and outcome(fire) == "ran: stage, features, train"
    finally:
        gone = run_mltf("schedule", "remove", "viacron")
    assert gone.returncode == 0, gone.output
    after = subprocess.run(["crontab", "-l"], capture_output=True, text=True).stdout
    assert after == before  # every other line as it was


def test_a_failing_fire_is_reported_grouped_on_the_console_the_run_by_mail_and_webhook_without_secrets(
    pipeline: Pipeline, tmp_path: Path, smtp_server: SmtpServer, webhook_receiver: WebhookReceiver
) -> None:
    password, hook, token = (f"CANARY{i}-{uuid.uuid4().hex[:10]}" for i in range(3))
    env = {"MLTF_FLOW_NOTIFY_EMAIL": "ops@example.org", "MLTF_FLOW_SMTP_URL": smtp_server.url("bot"),
           "MLTF_FLOW_SMTP_PASSWORD": password, "MLTF_FLOW_NOTIFY_WEBHOOK": f"{webhook_receiver.base}/hooks/{hook}",
           "MLFLOW_TRACKING_TOKEN": token}
    added = run_mltf("schedule", "add", "nightly", "--every", "1d", "--via", "none",
                     *pipeline.target("-P", "train.mode=fail"), env=env)
    assert added.returncode == 0, added.output
    fired = run_mltf("schedule", "fire", "nightly", env=env)
    out = fired.output
    assert fired.returncode == 30, out[-4000:]
    (fire,) = pipeline.fires("nightly")
    assert fire.info.status == "FAILED" and outcome(fire) == "failed: train"
    # The console: the grouped report, not Luigi's traceback wall.
    assert "Traceback" not in out
    title = f"schedule nightly fire {fire.data.tags['mltf.schedule.slot']}: FAILED, 1 failure(s), 1 cause(s)"
    assert title in out and "exit code 4" in out and "training diverged: loss is nan at epoch 3" in out
    # The artifact on the fire's parent run.
    mlflow = client(pipeline.uri)
    names = {a.path for a in mlflow.list_artifacts(fire.info.run_id, "mltf")}
    assert {"mltf/failure_report.md", "mltf/failure_report.json"} <= names
    report = Path(mlflow.download_artifacts(fire.info.run_id, "mltf/failure_report.md", str(tmp_path)))
    markdown = report.read_text()
    assert "training diverged" in markdown and "**schedule**: nightly" in markdown
    # One e-mail and one webhook POST.
    (mail,) = smtp_server.mails
    assert mail.message["Subject"] == f"[mltf-flow] {title}" and "training diverged" in mail.body
    (post,) = webhook_receiver.posts
    assert post.json["event"] == "failure" and post.path == f"/hooks/{hook}"
    # No secret anywhere: console, artifact, e-mail, webhook body, the schedule's file, the fire's log.
    definition = Path(os.environ["MLTF_FLOW_WORK_DIR"]) / "schedules" / "nightly" / "schedule.json"
    places = {"console": out, "report": markdown, "e-mail": mail.raw.decode(), "webhook": post.body.decode(),
              "schedule.json": definition.read_text(), "tags": repr(fire.data.tags)}
    assert [(name, c) for name, text in places.items() for c in (password, hook, token) if c in text] == []

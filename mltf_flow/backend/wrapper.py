"""Inside the job, around the command: ``python -m mltf_flow.backend.wrapper SPEC [--abort MESSAGE]``.

The job script ``exec``s this as its last line, so SLURM's signals reach it and its exit code is the job's.
It owns the MLflow run's status from here on, because MLflow alone gets it wrong (a script that calls
``sys.exit(3)`` after ``start_run()`` ends FINISHED; one killed by SIGTERM stays RUNNING forever):

1. it writes the job's record (:mod:`mltf_flow.backend.record`) and, in a thread, marks the run RUNNING
   before the command starts and tags it with the node and job id while it starts;
2. it builds or activates the Python environment (:mod:`mltf_flow.pyenv` for ``virtualenv``);
3. it runs the command (once, or once per ``srun`` task with the torchrun variables when the job has
   several tasks), its output going to the job's log;
4. SIGUSR1 (``--signal=B:USR1@N``, SLURM's warning before the time limit) is noted and, if configured,
   passed on to the command; SIGTERM/SIGINT/SIGHUP (scancel, time limit, preemption) stop the command
   (SIGTERM, then SIGKILL after ``kill_grace``) and SLURM is asked why;
5. a command that stops for the time limit after a checkpoint (exit code 75, :mod:`mltf_flow.time_limit`), or
   that SLURM's time limit stopped after a newer checkpoint than it started from, is continued: the job's
   script is submitted again and the run stays open for it (:mod:`mltf_flow.backend.segments`);
6. the outcome goes to the record first, then to the run: ``FINISHED`` + ``mltf.complete=true`` only for
   exit code 0 (and only if the command did not end the run FAILED itself), ``FAILED`` for a non-zero
   exit or a time limit, ``KILLED`` for a cancellation; tags ``mltf.exit_code``, ``mltf.slurm.state``,
   ``mltf.slurm.reason`` and ``mltf.error``; the job's log is uploaded as ``mltf/slurm-<jobid>.out``; then
   the record says ``tracked`` (a ``SubmittedRun.wait()`` watching it returns).

All of this stays well inside SLURM's ``KillWait`` (30 s by default) between SIGTERM and SIGKILL.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Generic, TypeVar, cast

from mltf_flow.backend.record import CONTINUED, ENDED, REQUEUED, RUNNING, JobRecord
from mltf_flow.backend.run_writer import RunWriter, rest_writer
from mltf_flow.backend.segments import SEGMENT_ENV
from mltf_flow.backend.spec import JobSpec
from mltf_flow.launch.local import Stopped
from mltf_flow.slurm.states import FAILED, FINISHED, KILLED, SCHEDULED
from mltf_flow.tags import (
    TAG_CHECKPOINT_EPOCH,
    TAG_COMPLETE,
    TAG_ERROR,
    TAG_EXIT_CODE,
    TAG_SEGMENT_PREFIX,
    TAG_SEGMENTS,
    TAG_SLURM_BATCH_HOST,
    TAG_SLURM_JOB_ID,
    TAG_SLURM_NODES,
    TAG_SLURM_PRE_TIMEOUT_SIGNAL_AT,
    TAG_SLURM_REASON,
    TAG_SLURM_RESTARTS,
    TAG_SLURM_STATE,
)
from mltf_flow.time_limit import EXIT_CONTINUE, MARGIN_ENV

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Tags a requeued attempt must not inherit from the one before.
_STALE_TAGS = (TAG_ERROR, TAG_EXIT_CODE, TAG_SLURM_STATE, TAG_SLURM_REASON, TAG_COMPLETE)
T = TypeVar("T")


@dataclass
class Outcome:
    status: str
    exit_code: int
    slurm_state: str
    reason: str
    error: str | None = None
    #: The job that continues the command (the run stays open for it).
    next_job: str | None = None


def _say(message: str) -> None:
    print(f"mltf_flow: {message}", flush=True)


def _signal_state(job_id: str, pre_timeout: bool) -> tuple[str, str]:
    """(SLURM state, reason) behind a stop signal. At SIGTERM time SLURM shows the job as COMPLETING and
    keeps the cause in its reason (``TimeLimit`` for a time limit, ``None`` for scancel)."""
    from mltf_flow.slurm.query import job_state_now

    state = job_state_now(job_id) if job_id != "local" else None
    if state is None:  # SLURM cannot be asked: the pre-timeout warning is the only clue
        return ("TIMEOUT", "TimeLimit") if pre_timeout else ("CANCELLED", "stopped by a signal (SLURM not asked)")
    if state.terminal:
        return state.state, _real_reason(state.reason) or state.info.meaning
    if state.restarts is not None and state.restarts > int(os.environ.get("SLURM_RESTART_COUNT") or 0):
        # SLURM counted one more start than this attempt's: the job goes back to the queue.
        return "REQUEUED", "requeued (scontrol requeue, preemption or node failure): it will run again"
    reason = _real_reason(state.reason)
    lowered = reason.lower()
    if "timelimit" in lowered:
        return "TIMEOUT", reason
    if "preempt" in lowered:
        return "PREEMPTED", reason
    if "node" in lowered and "fail" in lowered:
        return "NODE_FAIL", reason
    return "CANCELLED", reason or "cancelled (scancel, or an administrator)"


def _real_reason(reason: str | None) -> str:
    """SLURM's reason, or "" where it gives none (it says ``None`` or ``(null)``: a word, not a reason)."""
    return "" if not reason or reason in ("None", "(null)") else reason


def _outcome_of_signal(signum: int, job_id: str, pre_timeout: bool) -> Outcome:
    from mltf_flow.slurm.states import info

    state, reason = _signal_state(job_id, pre_timeout)
    if state == "REQUEUED":  # not an end: the run waits for the next attempt
        return Outcome(SCHEDULED, 128 + signum, state, reason)
    status = info(state).run_status if info(state).terminal else KILLED
    name = signal.Signals(signum).name
    return Outcome(status, 128 + signum, state, reason, f"the job received {name}: {state} ({reason})")


def _outcome_of_exit(code: int, tail: Sequence[str]) -> Outcome:
    if code == 0:
        return Outcome(FINISHED, 0, "COMPLETED", "")
    if code < 0:  # killed by a signal nobody sent us: the kernel's OOM killer, most often
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        error = f"the command was killed by {name} (out of memory?)"
        return Outcome(FAILED, 128 - code, "FAILED", f"killed by {name}", _with_tail(error, tail))
    return Outcome(FAILED, code, "FAILED", "NonZeroExitCode", _with_tail(f"the command exited with code {code}", tail))


def _with_tail(text: str, tail: Sequence[str]) -> str:
    lines = "\n".join(f"  {line}" for line in list(tail)[-20:])
    return f"{text}; last lines of stderr:\n{lines}" if lines else text


def _reason_tag(outcome: Outcome) -> dict[str, str]:
    """``mltf.slurm.reason``, absent while there is none (never the word None)."""
    return {TAG_SLURM_REASON: outcome.reason} if outcome.reason else {}


class _Call(threading.Thread, Generic[T]):
    """A call to MLflow in a thread of its own (started at once); :meth:`result` returns or raises what it did.
    Not ``concurrent.futures``: importing it costs every job 12 ms before its outcome is recorded."""

    def __init__(self, fn: Callable[..., T], *args: Any) -> None:
        super().__init__(name="mltf-mlflow-call", daemon=True)
        self._fn, self._args = fn, args
        self._value: T | None = None
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self._value = self._fn(*self._args)
        except BaseException as exc:  # raised in the caller's thread, by result()
            self._error = exc

    def result(self) -> T:
        self.join()
        if self._error is not None:
            raise self._error
        return cast(T, self._value)


class Wrapper:
    def __init__(self, spec_path: Path) -> None:
        self.spec_path = spec_path
        self.spec = JobSpec.read(spec_path)
        self.job_id = os.environ.get("SLURM_JOB_ID", "local")
        self.host = socket.gethostname()
        self.child_pid: int | None = None
        self.pre_timeout_at: float | None = None
        self.stopping = False
        self.segment = int(os.environ.get(SEGMENT_ENV) or 1)
        #: The run's checkpoint epoch when this job started: a newer one at the time limit means progress.
        self.epoch_at_start: str | None = None
        self._writer: RunWriter | None = None
        #: Set once the run is RUNNING (or cannot be): the command may start.
        self._running = threading.Event()
        #: Set once the run has this attempt's tags too (or cannot have them): the outcome may be recorded.
        self._writer_ready = threading.Event()

    # -- MLflow -------------------------------------------------------------------------------------------
    def _connect(self, writer: RunWriter | None = None) -> None:
        """Mark the run RUNNING with this attempt's tags, through ``writer`` or else MLflow's client
        (:mod:`mltf_flow.backend.run_writer`)."""
        try:
            writer = writer or self._client_writer()
            self._start_run(writer)
            self._writer = writer
        except BaseException as exc:  # recorded; the command runs anyway and the record still tells
            _say(f"cannot update MLflow run {self.spec.run_id} ({type(exc).__name__}: {exc}); the job's record "
                 f"{self.spec.record_path} keeps its outcome")
        finally:
            self._running.set()
            self._writer_ready.set()

    def _client_writer(self) -> RunWriter:
        from mltf_flow.backend.run_writer import ClientWriter

        return ClientWriter(self.spec.tracking_uri)

    def _running_tags(self) -> dict[str, str]:
        return {TAG_SLURM_JOB_ID: self.job_id, TAG_SLURM_BATCH_HOST: self.host,
                TAG_SLURM_NODES: os.environ.get("SLURM_JOB_NODELIST", self.host),
                TAG_SLURM_RESTARTS: os.environ.get("SLURM_RESTART_COUNT", "0"), TAG_SLURM_STATE: "RUNNING"}

    def _start_run(self, writer: RunWriter) -> None:
        running = self._running_tags()
        if os.environ.get("SLURM_RESTART_COUNT", "0") in ("", "0") and self.segment == 1:
            # A first attempt has no previous outcome to clear and starts from the checkpoint the run had when
            # it was submitted (the spec's): the command starts once the run is RUNNING, and the tags follow
            # while it starts (the outcome waits for them). One round trip before the command instead of three.
            self.epoch_at_start = self.spec.checkpoint_epoch
            writer.set_status(self.spec.run_id, "RUNNING")
            self._running.set()
            writer.set_tags(self.spec.run_id, running)
            return
        _, tags = writer.status_and_tags(self.spec.run_id)
        self.epoch_at_start = tags.get(TAG_CHECKPOINT_EPOCH)
        for key in _STALE_TAGS:
            if key in tags:  # a requeued attempt or a new segment: the previous one's outcome no longer applies
                writer.delete_tag(self.spec.run_id, key)
        if self.segment > 1:
            running.update({TAG_SEGMENTS: str(self.segment),
                            f"{TAG_SEGMENT_PREFIX}{self.segment}": f"job {self.job_id}: running"})
        writer.set_tags(self.spec.run_id, running)
        writer.set_status(self.spec.run_id, "RUNNING")

    def writer(self, timeout: float = 60.0) -> RunWriter | None:
        self._writer_ready.wait(timeout)
        return self._writer

    # -- signals ---------------------------------------------------------------------------------------
    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            return  # already stopping (SLURM may signal every process of the job, and repeat)
        self.stopping = True
        raise Stopped(signum)

    def _on_usr1(self, signum: int, frame: FrameType | None) -> None:
        self.pre_timeout_at = time.time()
        _say(f"SLURM's pre-timeout signal arrived at {time.strftime('%H:%M:%S')}: the time limit is near")
        if self.spec.forward_pre_timeout_signal and self.child_pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.child_pid, signal.SIGUSR1)

    def _install(self) -> None:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGUSR1, self._on_usr1)

    # -- the command -------------------------------------------------------------------------------------
    def command_env(self) -> dict[str, str]:
        from mltf_flow.fabric.spec import resolve_fabric

        spec = self.spec
        env = {k: v for k, v in os.environ.items()
               if k not in ("MLTF_INVOCATION_ID", "MLTF_MAIN_PID") and not k.startswith("MLTF_DASK_")
               and not k.startswith("MLFLOW_HTTP_REQUEST_")}
        env.update(spec.env)
        env.update(MLFLOW_TRACKING_URI=spec.tracking_uri, MLFLOW_RUN_ID=spec.run_id,
                   MLFLOW_EXPERIMENT_ID=spec.experiment_id, MLTF_SLURM_JOB_DIR=spec.job_dir)
        env[MARGIN_ENV] = f"{spec.stop_margin:g}"  # when mltf_flow.time_limit asks the command to stop
        if spec.env_manager == "virtualenv":
            from mltf_flow.pyenv import PythonEnv, ensure_env

            target = ensure_env(PythonEnv.from_mapping(spec.python_env or {}, "python_env"), spec.env_hash,
                                Path(spec.env_root), Path(spec.project_dir), log=_say)
            env["PATH"] = f"{target / 'bin'}{os.pathsep}{env.get('PATH', '')}"
            env["VIRTUAL_ENV"] = str(target)
            env.pop("PYTHONHOME", None)
            helpers = self._helpers_overlay()
            env["PYTHONPATH"] = os.pathsep.join(filter(None, (helpers, env.get("PYTHONPATH"))))
        else:
            env["PATH"] = f"{spec.local_bin}{os.pathsep}{env.get('PATH', '')}"
            prefix = Path(spec.local_bin).parent
            if (prefix / "pyvenv.cfg").is_file():
                env["VIRTUAL_ENV"] = str(prefix)
        if spec.tasks == 1:
            env.update(resolve_fabric(spec.fabric, interface=spec.interface).env)
        return env

    def _helpers_overlay(self) -> str:
        """``mltf_flow`` alone, for built environments (see :func:`mltf_flow.pyenv.helpers_overlay`)."""
        if not self.spec.helpers_dir:
            return ""
        from mltf_flow.pyenv import helpers_overlay

        return str(helpers_overlay(Path(self.spec.job_dir) / "pylib"))

    def command(self, env: dict[str, str]) -> str:
        """The command line to run: the entry point's, or ``srun`` of it once per task."""
        import shlex
        import shutil

        if self.spec.tasks == 1:
            return self.spec.command
        from mltf_flow.ddp.launcher import free_port

        srun = shutil.which("srun") or "srun"
        env["MLTF_MASTER_ADDR"] = self._master_addr()
        env["MLTF_MASTER_PORT"] = str(free_port())
        args = [srun, f"--ntasks={self.spec.tasks}", "--kill-on-bad-exit=1", "--label"]
        if os.environ.get("SLURM_CPUS_PER_TASK"):  # srun no longer inherits it from sbatch (SLURM 22.05)
            args.append(f"--cpus-per-task={os.environ['SLURM_CPUS_PER_TASK']}")
        args += [sys.executable, "-m", "mltf_flow.backend.task", str(self.spec_path)]
        _say(f"{self.spec.tasks} tasks, rank 0 at {env['MLTF_MASTER_ADDR']}:{env['MLTF_MASTER_PORT']}")
        return shlex.join(args)

    def _master_addr(self) -> str:
        """The allocation's first host (the batch host), on the profile's interface when it names one."""
        if self.spec.interface:
            import psutil

            for addr in psutil.net_if_addrs().get(self.spec.interface, []):
                if addr.family == socket.AF_INET:
                    return str(addr.address)
        import subprocess

        nodelist = os.environ.get("SLURM_JOB_NODELIST")
        if nodelist:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 check=False, timeout=30)
            if out.returncode == 0 and out.stdout.split():
                return out.stdout.split()[0]
        return self.host

    # -- the run -----------------------------------------------------------------------------------------
    def run(self) -> int:
        from mltf_flow.launch.local import run_streaming

        self._install()
        try:
            JobRecord(self.job_id, RUNNING, host=self.host).write(self.spec.record_path)
            # The run is marked RUNNING in a thread while the environment is prepared: over REST (a few
            # milliseconds of waiting on the server) or with MLflow's client (1-2 s to import first).
            threading.Thread(target=self._connect, args=(rest_writer(self.spec.tracking_uri),), name="mltf-mlflow",
                             daemon=True).start()
            _say(f"job {self.job_id} on {self.host}: MLflow run {self.spec.run_id}; "
                 f"command: {self.spec.display_command}")
            env = self.command_env()
            command = self.command(env)
            # The run is marked RUNNING before the command starts: a quick command that ends its own run
            # must not find it set RUNNING again afterwards (the import behind it overlaps the env build).
            self._running.wait(120)

            def remember(pid: int) -> None:
                self.child_pid = pid

            ended = run_streaming(
                command, cwd=Path(self.spec.project_dir), env=env,
                log_path=Path(self.spec.job_dir) / f"command-{self.job_id}.log",
                display=self.spec.display_command, tail_lines=self.spec.stderr_tail_lines, echo_prefix="",
                on_start=remember, stop_grace=self.spec.kill_grace,
            )
            outcome = _outcome_of_exit(ended.exit_code, ended.tail)
            if ended.exit_code == EXIT_CONTINUE:
                outcome = self._continue(outcome, "time limit (the command stopped after a checkpoint)")
        except Stopped as stop:
            outcome = _outcome_of_signal(stop.signum, self.job_id, self.pre_timeout_at is not None)
            if outcome.slurm_state == "TIMEOUT" and self._checkpoint_advanced():
                outcome = self._continue(outcome, "time limit (stopped by SLURM after a newer checkpoint)")
        except Exception as exc:
            from mltf_flow.errors import EnvBuildError

            what = "building the environment failed" if isinstance(exc, EnvBuildError) else "the wrapper failed"
            outcome = Outcome(FAILED, 1, "FAILED", what, f"{what}: {type(exc).__name__}: {exc}")
        return self.finish(outcome)

    def _checkpoint_advanced(self) -> bool:
        writer = self.writer(timeout=5)
        if writer is None:
            return False
        try:
            epoch = writer.status_and_tags(self.spec.run_id)[1].get(TAG_CHECKPOINT_EPOCH)
        except Exception:  # the tracking server cannot say: no continuation on a guess
            return False
        return epoch is not None and epoch != self.epoch_at_start

    def _continue(self, stopped: Outcome, why: str) -> Outcome:
        """Submit the next segment (mltf_flow.backend.segments); the run stays open. Where that cannot be,
        the run ends FAILED, saying why."""
        from mltf_flow.backend.segments import continue_run

        writer = self.writer()
        if writer is None:
            return Outcome(FAILED, stopped.exit_code, "TIMEOUT", "time limit",
                           f"{why}, but the MLflow run cannot be reached to continue it in a new job")
        try:
            done = continue_run(self.spec, self.job_id, writer, why)
        except Exception as exc:
            return Outcome(FAILED, stopped.exit_code, "TIMEOUT", "time limit",
                           f"{why}; continuing it failed: {type(exc).__name__}: {exc}")
        if done.next_job is None:
            return Outcome(FAILED, stopped.exit_code, "TIMEOUT", f"time limit, {done.segment} segments", done.error)
        _say(f"segment {done.segment} ends here ({why}); job {done.next_job} continues MLflow run {self.spec.run_id}")
        return Outcome(SCHEDULED, 0, "CONTINUED", f"time limit: continued in job {done.next_job}",
                       next_job=done.next_job)

    def abort(self, message: str) -> int:
        """A setup line of the job script failed (``mltf_abort``): record that, end the job."""
        JobRecord(self.job_id, RUNNING, host=self.host).write(self.spec.record_path)
        self._connect(rest_writer(self.spec.tracking_uri))
        return self.finish(Outcome(FAILED, 1, "FAILED", message, f"the job script failed: {message}"))

    def finish(self, outcome: Outcome) -> int:
        # Signals from here on must not interrupt the bookkeeping (SLURM repeats SIGTERM to every process).
        self.stopping = True
        if outcome.error:
            _say(outcome.error)
        reason = f": {outcome.reason}" if outcome.reason else ""
        _say(f"ending MLflow run {self.spec.run_id} as {outcome.status} (exit code {outcome.exit_code}, "
             f"{outcome.slurm_state}{reason})")
        sys.stdout.flush()
        sys.stderr.flush()
        phase = CONTINUED if outcome.next_job else REQUEUED if outcome.status == SCHEDULED else ENDED
        record = JobRecord(self.job_id, phase, outcome.status, outcome.exit_code, outcome.slurm_state,
                           outcome.reason, tracked=False, host=self.host, next_job=outcome.next_job)
        record.write(self.spec.record_path)
        writer = self.writer()
        if writer is not None:
            try:
                status = self._track(writer, outcome)
                JobRecord(**{**record.__dict__, "status": status, "tracked": True}).write(self.spec.record_path)
            except Exception as exc:
                _say(f"could not record the outcome on MLflow run {self.spec.run_id}: {type(exc).__name__}: {exc}")
        return outcome.exit_code

    def _track(self, writer: RunWriter, outcome: Outcome) -> str:
        """Record ``outcome`` on the run; returns the status the run got."""
        run_id = self.spec.run_id
        if outcome.status == SCHEDULED:  # requeued or continued: the next attempt or job takes over
            if outcome.next_job:  # this job's log stays with the run: the next one writes its own
                self._upload_log(writer)
            # Status first, state tag last: whoever sees the tag REQUEUED finds the run SCHEDULED already.
            writer.set_status(run_id, SCHEDULED)
            writer.set_tags(run_id, {TAG_SLURM_STATE: outcome.slurm_state, **_reason_tag(outcome)})
            return SCHEDULED
        # Three round trips at a time where they do not depend on each other: the log goes up and, for exit
        # code 0, the run's status is asked while the outcome's tags are written (the tags of exit code 0 are
        # the same whatever the answer, unless it says the command ended its run itself).
        status = outcome.status
        current = _Call(writer.status_and_tags, run_id) if status == FINISHED else None
        upload = _Call(self._upload_log, writer, current)
        writer.set_tags(run_id, self._outcome_tags(outcome, status))
        if current is not None and current.result()[0] in (FAILED, KILLED):
            # The command ended its own run FAILED/KILLED and then exited 0: its word stands.
            status = current.result()[0]
            outcome.error = f"the command exited 0 but ended its MLflow run {status}"
            writer.set_tags(run_id, self._outcome_tags(outcome, status))
        writer.terminate(run_id, status)
        upload.result()  # the log is there before the run is complete
        if status == FINISHED:
            # Last: a run is complete only once everything else about it is recorded (pipelines trust this tag).
            writer.set_tags(run_id, {TAG_COMPLETE: "true"})
        return status

    def _outcome_tags(self, outcome: Outcome, status: str) -> dict[str, str]:
        tags = {TAG_EXIT_CODE: str(outcome.exit_code), TAG_SLURM_STATE: outcome.slurm_state, **_reason_tag(outcome)}
        if outcome.error:
            tags[TAG_ERROR] = outcome.error[:5000]
        if self.pre_timeout_at is not None:
            tags[TAG_SLURM_PRE_TIMEOUT_SIGNAL_AT] = time.strftime("%Y-%m-%dT%H:%M:%S",
                                                                     time.localtime(self.pre_timeout_at))
        if self.segment > 1:
            why = f" ({outcome.reason})" if outcome.reason else ""
            how = "finished" if status == FINISHED else f"ended {status}: {outcome.slurm_state}{why}"
            tags[f"{TAG_SEGMENT_PREFIX}{self.segment}"] = f"job {self.job_id}: {how}"
        return tags

    def _upload_log(self, writer: RunWriter, after: threading.Thread | None = None) -> None:
        if after is not None:  # the run's look-up, which tells the REST writer where the artifacts go
            after.join()
        log = self.spec.log_path(self.job_id)
        if log.is_file():
            try:
                writer.log_artifact(self.spec.run_id, str(log), "mltf")
            except Exception as exc:  # the outcome matters more than the log
                _say(f"could not upload {log}: {exc}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mltf_flow.backend.wrapper")
    parser.add_argument("spec", type=Path)
    parser.add_argument("--abort", default=None, help="a setup line failed: record this message and end the job")
    args = parser.parse_args(argv)
    wrapper = Wrapper(args.spec)
    return wrapper.abort(args.abort) if args.abort is not None else wrapper.run()


if __name__ == "__main__":
    sys.exit(main())

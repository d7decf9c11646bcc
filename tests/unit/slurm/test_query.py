"""Job-state lookups (mltf_flow.slurm.query): the squeue/scontrol/sacct parsers on text in SLURM's own
formats, and JobMonitor answered by a small stand-in for the SLURM commands in the conditions a test cluster
cannot show (controller down, accounting enabled, slurmdbd unreachable). JobMonitor against the real SLURM
(unknown ids, a held job, batching and snapshots) is in tests/integration/slurm/test_job_monitor.py."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mltf_flow.errors import SlurmUnavailable
from mltf_flow.slurm.query import (
    JobMonitor,
    monitor,
    parse_sacct,
    parse_scontrol,
    parse_squeue,
)
from mltf_flow.slurm.states import FAILED, FINISHED, KILLED, SCHEDULED, JobState

SEP = "\x1f"
GONE = "slurm_load_jobs error: Invalid job id specified\n"

# `scontrol show job -o 26` of a held job on this repository's CI cluster (SLURM 22.05), verbatim.
HELD_LINE = (
    "JobId=26 JobName=mltf-unit-probe UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=0 Nice=0 "
    "Account=(null) QOS=(null) JobState=PENDING Reason=JobHeldUser Dependency=(null) Requeue=1 Restarts=0 "
    "BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:00 TimeLimit=UNLIMITED TimeMin=N/A "
    "SubmitTime=2026-12-01T18:56:51 EligibleTime=Unknown AccrueTime=Unknown StartTime=Unknown EndTime=Unknown "
    "Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-12-01T18:56:51 Scheduler=Main "
    "Partition=debug AllocNode:Sid=localhost:6954 ReqNodeList=(null) ExcNodeList=(null) NodeList= NumNodes=1 "
    "NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=16566M,node=1,billing=1 Socks/Node=* "
    "NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 MinMemoryNode=0 MinTmpDiskNode=0 Features=(null) "
    "DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=(null) WorkDir=/tmp "
    "StdErr=/dev/null StdIn=/dev/null StdOut=/dev/null Power= \n"
)


def ended_line(job_id: str, state: str, reason: str, exit_code: str, nodes: str) -> str:
    """HELD_LINE as the same job would read once ended on ``nodes``."""
    return (HELD_LINE.replace("JobId=26", f"JobId={job_id}").replace("JobState=PENDING", f"JobState={state}")
            .replace("Reason=JobHeldUser", f"Reason={reason}").replace("ExitCode=0:0", f"ExitCode={exit_code}")
            .replace("NodeList= ", f"NodeList={nodes} "))


# ------------------------------------------------------------------------------------------- parsers


def test_parse_squeue() -> None:
    text = "\n".join([
        SEP.join(("101", "RUNNING", "None", "vm")),
        SEP.join(("102", "PENDING", "ReqNodeNotAvail, Reserved for maintenance (x)", "")),
        "",
        SEP.join(("103", "CD", "", "vm[1-2]")),
        "garbage without separators",
        SEP.join(("", "RUNNING", "None", "vm")),
    ])
    states = parse_squeue(text)
    assert states == {
        "101": JobState("101", "RUNNING", reason="None", nodes="vm", source="squeue"),
        "102": JobState("102", "PENDING", reason="ReqNodeNotAvail, Reserved for maintenance (x)", source="squeue"),
        "103": JobState("103", "COMPLETED", nodes="vm[1-2]", source="squeue"),
    }
    assert states["101"].describe() == "RUNNING: running"


def test_parse_squeue_two_fields() -> None:
    assert parse_squeue(f"7{SEP}PENDING\n") == {"7": JobState("7", "PENDING", source="squeue")}


def test_parse_scontrol_ended_job() -> None:
    state = parse_scontrol(ended_line("31", "FAILED", "NonZeroExitCode", "3:0", "vm"))
    assert state == JobState("31", "FAILED", reason="NonZeroExitCode", exit_code=3, signal=0, nodes="vm",
                             source="scontrol", restarts=0)
    assert state.run_status == FAILED


def test_parse_scontrol_signal_and_null_nodes() -> None:
    line = ended_line("32", "CANCELLED", "None", "0:15", "(null)")
    state = parse_scontrol(line)
    assert state is not None
    assert (state.state, state.exit_code, state.signal, state.nodes) == ("CANCELLED", 0, 15, None)
    assert state.run_status == KILLED


def test_parse_scontrol_held_job() -> None:
    state = parse_scontrol(HELD_LINE)
    assert state is not None
    assert (state.job_id, state.state, state.reason, state.exit_code, state.signal) == (
        "26", "PENDING", "JobHeldUser", 0, 0)
    assert state.run_status == SCHEDULED


def test_parse_scontrol_pending_job_has_no_nodes() -> None:
    state = parse_scontrol(HELD_LINE)
    assert state is not None
    assert state.nodes is None


@pytest.mark.parametrize("text", ["", "\n", "slurm_load_jobs error: Invalid job id specified",
                                  "JobId=5 JobName=x Reason=None", "JobState=RUNNING Reason=None"])
def test_parse_scontrol_without_a_job(text: str) -> None:
    assert parse_scontrol(text) is None


def test_parse_sacct() -> None:
    text = "\n".join([
        "201|CANCELLED by 1000|0:15|None|vm",
        "202|COMPLETED|0:0||vm[1-2]",
        "203|TIMEOUT|0:1|TimeLimit|vm",
        "204|OUT_OF_MEMORY|0:125",
        "205|FAILED",  # too few columns
        "|COMPLETED|0:0|None|vm",
        "",
    ])
    states = parse_sacct(text)
    assert states == {
        "201": JobState("201", "CANCELLED", reason="None", exit_code=0, signal=15, nodes="vm", source="sacct"),
        "202": JobState("202", "COMPLETED", exit_code=0, signal=0, nodes="vm[1-2]", source="sacct"),
        "203": JobState("203", "TIMEOUT", reason="TimeLimit", exit_code=0, signal=1, nodes="vm", source="sacct"),
        "204": JobState("204", "OUT_OF_MEMORY", exit_code=0, signal=125, source="sacct"),
    }
    assert states["201"].run_status == KILLED
    assert states["202"].run_status == FINISHED
    assert states["203"].describe() == "TIMEOUT (TimeLimit): killed at its time limit"


def test_one_monitor_per_process() -> None:
    assert monitor() is monitor()


# ----------------------------------------------------------------- a SLURM in another condition


@dataclass
class StandInSlurm:
    """Answers squeue/scontrol/sacct as a SLURM in some condition would: tool -> (rc, stdout, stderr)."""

    answers: dict[str, tuple[int, str, str]]
    calls: list[str] = field(default_factory=list)

    def __call__(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        tool = os.path.basename(args[0])
        self.calls.append(tool)
        rc, out, err = self.answers[tool]
        return subprocess.CompletedProcess(list(args), rc, out, err)


@pytest.fixture
def slurm_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """JobMonitor looks the commands up on PATH before running them through its runner: executables of those
    names come first on PATH (the stand-in answers; these are never run), with or without a SLURM here."""
    bin_dir = tmp_path / "slurm-bin"
    bin_dir.mkdir()
    for tool in ("squeue", "scontrol", "sacct"):
        path = bin_dir / tool
        path.write_text("#!/bin/sh\necho 'the stand-in should have answered' >&2\nexit 99\n")
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_unreachable_controller_raises(slurm_tools: None) -> None:
    down = (1, "", "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n")
    slurm = StandInSlurm({"squeue": down, "scontrol": down, "sacct": (0, "", "")})
    with pytest.raises(SlurmUnavailable, match="Unable to contact slurm controller"):
        JobMonitor(runner=slurm).lookup(["123"])
    with pytest.raises(SlurmUnavailable):
        JobMonitor(runner=slurm).states(["123", "124"])


def test_unreachable_controller_on_scontrol_raises(slurm_tools: None) -> None:
    slurm = StandInSlurm({"squeue": (1, "", GONE),
                          "scontrol": (1, "", "slurm_load_jobs error: Unable to contact slurm controller\n"),
                          "sacct": (0, "", "")})
    with pytest.raises(SlurmUnavailable, match="scontrol show job 123"):
        JobMonitor(runner=slurm).lookup(["123"])


def test_sacct_answers_for_forgotten_jobs(slurm_tools: None) -> None:
    slurm = StandInSlurm({"squeue": (1, "", GONE), "scontrol": (1, "", GONE),
                          "sacct": (0, "123|TIMEOUT|0:15|TimeLimit|vm\n", "")})
    mon = JobMonitor(runner=slurm)
    result = mon.lookup(["123", "124"])
    assert result == {"123": JobState("123", "TIMEOUT", reason="TimeLimit", exit_code=0, signal=15, nodes="vm",
                                      source="sacct"), "124": None}
    assert mon.sacct_available is True
    assert slurm.calls == ["squeue", "scontrol", "scontrol", "sacct"]


def test_terminal_squeue_state_gets_scontrols_exit_code(slurm_tools: None) -> None:
    slurm = StandInSlurm({"squeue": (0, SEP.join(("55", "FAILED", "NonZeroExitCode", "vm")) + "\n", ""),
                          "scontrol": (0, ended_line("55", "FAILED", "NonZeroExitCode", "3:0", "vm"), ""),
                          "sacct": (0, "", "")})
    result = JobMonitor(runner=slurm).lookup(["55"])
    assert result == {"55": JobState("55", "FAILED", reason="NonZeroExitCode", exit_code=3, signal=0, nodes="vm",
                                     source="squeue")}
    assert "sacct" not in slurm.calls


def test_unreachable_slurmdbd_is_asked_again(slurm_tools: None) -> None:
    # sacct's words when slurmdbd is down (seen at a site whose dbd host is named slurmdbd-...).
    dbd_down = (1, "", "sacct: error: _open_persist_conn: failed to open persistent connection to host:"
                       "slurmdbd-slurm-24-production.example.org:6829: Connection refused\n"
                       "sacct: error: Sending PersistInit msg: Connection refused\n"
                       "sacct: error: Problem talking to the database: Connection refused\n")
    slurm = StandInSlurm({"squeue": (1, "", GONE), "scontrol": (1, "", GONE), "sacct": dbd_down})
    mon = JobMonitor(runner=slurm)
    assert mon.lookup(["123"]) == {"123": None}
    mon.lookup(["123"])
    assert slurm.calls.count("sacct") == 2


def test_parse_scontrol_restart_count() -> None:
    # The wrapper tells a requeue from a cancellation by SLURM's Restarts going past its own attempt's count.
    held = parse_scontrol(HELD_LINE)
    assert held is not None and held.restarts == 0
    requeued = parse_scontrol(HELD_LINE.replace("Restarts=0", "Restarts=2"))
    assert requeued is not None and requeued.restarts == 2

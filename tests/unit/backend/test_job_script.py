"""The sbatch script of an ``mlflow run --backend mltf`` job (mltf_flow.backend.script.render_script): its
#SBATCH lines, the setup lines and the wrapper exec; the script run with bash (a stand-in interpreter
records how the wrapper would be started). The real SLURM's ``sbatch --test-only`` verdict on it is in
tests/integration/slurm/test_job_preflight.py."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mltf_flow.backend.config import BackendConfig, parse_backend_config
from mltf_flow.backend.script import ScriptInputs, render_script
from tests.helpers import REPO_PROFILES, isolate_profiles

RUN_ID = "0123456789abcdef0123456789abcdef"
TRACKING = "http://127.0.0.1:5000/path?x=1&y=2"


@pytest.fixture(autouse=True)
def _profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_profiles(tmp_path, monkeypatch, REPO_PROFILES)


def inputs_for(tmp_path: Path, project: str = "project") -> ScriptInputs:
    project_dir = tmp_path / project
    project_dir.mkdir(exist_ok=True)
    job_dir = tmp_path / "work" / "jobs" / RUN_ID
    return ScriptInputs(
        run_id=RUN_ID, experiment_id="7", tracking_uri=TRACKING, project_dir=str(project_dir), job_dir=str(job_dir),
        spec_path=str(job_dir / "spec.json"), job_name="mltf-jet_tagging-train",
        display_command="python train.py --lr 0.1\n--epochs 2", entry_point="train", env_manager="local",
    )


def render(tmp_path: Path, raw: dict[str, Any]) -> tuple[str, BackendConfig, ScriptInputs]:
    config = parse_backend_config(raw)
    inputs = inputs_for(tmp_path)
    return render_script(config, inputs), config, inputs


def sbatch_lines(script: str) -> list[str]:
    return [line[len("#SBATCH "):] for line in script.splitlines() if line.startswith("#SBATCH ")]


# -------------------------------------------------------------------------------------- the text


def test_sbatch_lines(tmp_path: Path) -> None:
    script, _, inputs = render(tmp_path, {"profile": "slurm-ci"})
    assert script.startswith("#!/bin/bash\n")
    assert sbatch_lines(script) == [
        "--job-name=mltf-jet_tagging-train",
        f"--output={tmp_path}/work/jobs/{RUN_ID}/slurm-%j.out",
        "--open-mode=append",
        f"--chdir={inputs.project_dir}",
        "--partition=debug", "--time=00:30:00", "--nodes=1", "--ntasks=1", "--cpus-per-task=1", "--mem=954M",
        "--signal=B:USR1@120",
        "--export=ALL",
    ]


def test_output_is_absolute_in_the_job_dir(tmp_path: Path) -> None:
    script, _, inputs = render(tmp_path, {})
    [output] = [line for line in sbatch_lines(script) if line.startswith("--output=")]
    path = Path(output.removeprefix("--output="))
    assert path.is_absolute()
    assert path.parent == Path(inputs.job_dir)
    assert path.name == "slurm-%j.out"


def test_all_directives_precede_the_first_command(tmp_path: Path) -> None:
    """sbatch stops reading #SBATCH lines at the first command."""
    script, _, _ = render(tmp_path, {"profile": "mltf-a6000", "modules": ["cuda/12.4"],
                                     "environment": {"A": "1"}, "exports": ["HF_HOME"]})
    lines = script.splitlines()
    last_directive = max(i for i, line in enumerate(lines) if line.startswith("#SBATCH"))
    first_command = min(i for i, line in enumerate(lines[1:], 1) if line.strip() and not line.startswith("#"))
    assert last_directive < first_command


def test_resources_of_a_gpu_profile(tmp_path: Path) -> None:
    script, config, _ = render(tmp_path, {"profile": "mltf-a6000", "nodes": 2, "time": "00:05:00"})
    lines = sbatch_lines(script)
    assert lines[4:-2] == config.directives()
    assert lines[4:-2] == ["--partition=mltf", "--account=mltf_users", "--time=00:05:00", "--nodes=2",
                           "--ntasks-per-node=4", "--cpus-per-task=16", "--mem=190735M", "--gres=gpu:4",
                           "--exclusive"]
    assert lines[-2] == "--signal=B:USR1@30"
    assert "# entry point 'train' of " in script and "; 8 task(s)" in script


def test_no_signal_directive_when_disabled(tmp_path: Path) -> None:
    script, _, _ = render(tmp_path, {"pre_timeout_signal": 0})
    assert not [line for line in sbatch_lines(script) if line.startswith("--signal")]
    assert sbatch_lines(script)[-1] == "--export=ALL"


def test_comments_and_wrapper(tmp_path: Path) -> None:
    script, config, inputs = render(tmp_path, {"profile": "slurm-ci", "exports": ["HF_HOME", "WANDB_MODE"]})
    wrapper = f"{shlex.quote(config.python)} -m mltf_flow.backend.wrapper {shlex.quote(inputs.spec_path)}"
    lines = script.splitlines()
    assert f"# mltf_flow: `mlflow run --backend mltf` job of MLflow run {RUN_ID} (experiment 7, tracking {TRACKING})" \
        in lines
    assert "# command: python train.py --lr 0.1 --epochs 2" in lines  # one comment line, newline folded
    assert f"# settings from: --backend-config, profile 'slurm-ci' ({REPO_PROFILES})" in lines
    assert "# exports (propagated by --export=ALL): HF_HOME, WANDB_MODE" in lines
    assert f'mltf_abort() {{ exec {wrapper} --abort "$1"; }}' in lines
    assert lines[-1] == f"exec {wrapper}"
    assert script.endswith(f"exec {wrapper}\n")
    assert sum(line.startswith("exec ") for line in lines) == 1


def test_setup_lines_in_order(tmp_path: Path) -> None:
    script, _, _ = render(tmp_path, {"profile": "mltf-a6000", "modules": ["cuda/12.4", "gcc"],
                                     "environment": {"GREETING": "hello world"}})
    lines = script.splitlines()
    expected = [
        "module load cuda/12.4 || mltf_abort 'module load cuda/12.4 failed'",
        "module load gcc || mltf_abort 'module load gcc failed'",
        "export GREETING='hello world'",
        "module load cuda 2>/dev/null || true",  # the profile's prologue
        f"export MLFLOW_TRACKING_URI={shlex.quote(TRACKING)}",
        f"export MLFLOW_RUN_ID={RUN_ID}",
        "export MLFLOW_EXPERIMENT_ID=7",
    ]
    positions = [lines.index(line) for line in expected]
    assert positions == sorted(positions)
    assert min(i for i, line in enumerate(lines) if line.startswith("mltf_abort() {")) < positions[0]
    # The profile's gds section: a cufile.json per job, exported before the wrapper starts.
    assert any(line.startswith("export CUFILE_ENV_PATH_JSON=") for line in lines[positions[-1]:])


def test_fabric_variables_are_exported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    extra = tmp_path / "fabric-profiles.yaml"
    extra.write_text(yaml.safe_dump({"sock": {"extends": "slurm-ci",
                                              "fabric": {"kind": "socket", "socket_ifname": "eth0"}}}))
    monkeypatch.setenv("MLTF_FLOW_PROFILE_FILES", f"{REPO_PROFILES}:{extra}")
    script, _, _ = render(tmp_path, {"profile": "sock"})
    assert "export GLOO_SOCKET_IFNAME=eth0" in script.splitlines()
    proc, _, env = run_script(tmp_path, {"profile": "sock"})
    assert proc.returncode == 0, proc.stderr
    # NCCL's "exact match" prefix survives the shell.
    assert (env["NCCL_SOCKET_IFNAME"], env["GLOO_SOCKET_IFNAME"], env["NCCL_IB_DISABLE"]) == ("=eth0", "eth0", "1")


@pytest.mark.parametrize("profile", ["slurm", "slurm-ci", "slurm-ci-gpu", "mltf-a6000"])
def test_bash_accepts_the_script(tmp_path: Path, profile: str) -> None:
    script, _, _ = render(tmp_path, {"profile": profile, "modules": ["cuda/12.4"],
                                     "environment": ["PATH=$PATH:/opt/bin", "QUOTED=\"a b\""],
                                     "exports": ["HF_HOME"]})
    path = tmp_path / "job.sh"
    path.write_text(script)
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------- the script, run by bash


def stand_in_python(tmp_path: Path) -> Path:
    """An 'interpreter' that writes the arguments it was started with and its environment, then exits 0."""
    path = tmp_path / "bin" / "python"
    path.parent.mkdir()
    path.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$OUT/args"\nenv > "$OUT/env"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


Ran = tuple[subprocess.CompletedProcess[str], list[str], dict[str, str]]


def run_script(tmp_path: Path, raw: dict[str, Any]) -> Ran:
    python = stand_in_python(tmp_path)
    script, _, _ = render(tmp_path, {"profile": "slurm-ci", "python": str(python), **raw})
    path = tmp_path / "job.sh"
    path.write_text(script)
    out = tmp_path / "out"
    out.mkdir()
    env = {"PATH": os.defpath, "OUT": str(out), "HOME": str(tmp_path)}
    proc = subprocess.run(["bash", str(path)], capture_output=True, text=True, timeout=30, env=env,
                          cwd=tmp_path)
    args = (out / "args").read_text().splitlines() if (out / "args").exists() else []
    seen = dict(line.split("=", 1) for line in (out / "env").read_text().splitlines() if "=" in line) \
        if (out / "env").exists() else {}
    return proc, args, seen


def test_script_execs_the_wrapper_with_the_run_environment(tmp_path: Path) -> None:
    proc, args, env = run_script(tmp_path, {"environment": {"GREETING": "hello world"}})
    assert proc.returncode == 0, proc.stderr
    assert args == ["-m", "mltf_flow.backend.wrapper", str(inputs_for(tmp_path).spec_path)]
    assert env["MLFLOW_TRACKING_URI"] == TRACKING
    assert env["MLFLOW_RUN_ID"] == RUN_ID
    assert env["MLFLOW_EXPERIMENT_ID"] == "7"
    assert env["GREETING"] == "hello world"


def test_failed_module_load_aborts_through_the_wrapper(tmp_path: Path) -> None:
    proc, args, env = run_script(tmp_path, {"modules": ["nosuch/1.0"], "environment": {"GREETING": "hi"}})
    assert proc.returncode == 0, proc.stderr
    assert args == ["-m", "mltf_flow.backend.wrapper", str(inputs_for(tmp_path).spec_path), "--abort",
                    "module load nosuch/1.0 failed"]
    assert "GREETING" not in env  # nothing after the failed line ran
    assert "MLFLOW_RUN_ID" not in env

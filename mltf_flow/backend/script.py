"""The sbatch script of one ``mlflow run --backend mltf`` job.

It is short on purpose: resource directives, the job's shell setup (modules, the config's ``environment``,
the profile's prologue, the fabric and GPUDirect Storage settings, MLflow's run variables), then ``exec``
of our wrapper, which builds or activates the Python environment, runs the command and records how it
ended. The command itself lives in ``spec.json`` (a comment shows it), so no quoting of it into
``bash -c '...'`` can break it (one of mlflow-slurm's defects).

Choices that differ from mlflow-slurm, each for a reason:

* ``--chdir`` is the project directory (mlflow-slurm runs in the submit directory, so only
  ``mlflow run .`` works there);
* ``--output`` is an absolute path in the job's directory, found again by whoever polls the job;
* ``--export=ALL``: PATH, HOME, the venv and credentials reach the job from the submitting shell, and
  nothing secret is written here (this script is kept as an MLflow artifact);
* ``--signal=B:USR1@N``: SLURM warns the wrapper before the time limit, so a timeout is told apart from
  ``scancel``;
* ``--open-mode=append``: a requeued job (preemption, node failure) keeps the log of its first attempt.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from mltf_flow.backend.config import BackendConfig


@dataclass(frozen=True)
class ScriptInputs:
    """What a script needs besides the config (all paths absolute)."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    project_dir: str
    job_dir: str
    spec_path: str
    job_name: str
    display_command: str
    entry_point: str
    env_manager: str


def _comment(text: str) -> str:
    return "# " + text.replace("\n", " ")


def _path(value: str) -> str:
    """A path as an #SBATCH value: sbatch splits unquoted values at spaces, and takes double quotes."""
    return f'"{value}"' if any(c.isspace() for c in value) else value


def render_script(config: BackendConfig, inputs: ScriptInputs) -> str:
    """The job script (see the module docstring)."""
    from mltf_flow.fabric.gds import gds_settings
    from mltf_flow.fabric.spec import static_env

    lines = ["#!/bin/bash"]
    lines.append(f"#SBATCH --job-name={inputs.job_name}")
    lines.append(f"#SBATCH --output={_path(inputs.job_dir + '/slurm-%j.out')}")
    lines.append("#SBATCH --open-mode=append")
    lines.append(f"#SBATCH --chdir={_path(inputs.project_dir)}")
    lines.extend(f"#SBATCH {d}" for d in config.directives())
    if config.signal_seconds:
        lines.append(f"#SBATCH --signal=B:USR1@{config.signal_seconds}")
    lines.append("#SBATCH --export=ALL")
    lines += [
        "",
        _comment(f"mltf_flow: `mlflow run --backend mltf` job of MLflow run {inputs.run_id} "
                 f"(experiment {inputs.experiment_id}, tracking {inputs.tracking_uri})"),
        _comment(f"entry point {inputs.entry_point!r} of {inputs.project_dir}; environment: {inputs.env_manager}; "
                 f"{config.tasks} task(s)"),
        _comment(f"command: {inputs.display_command}"),
        _comment(f"settings from: {', '.join(sorted(set(config.sources.values())))}"),
    ]
    if config.exports:
        lines.append(_comment(f"exports (propagated by --export=ALL): {', '.join(config.exports)}"))
    wrapper = f"{shlex.quote(config.python)} -m mltf_flow.backend.wrapper {shlex.quote(inputs.spec_path)}"
    lines += [
        "",
        "# A setup line that fails ends the job through the wrapper, which records why on the MLflow run.",
        f'mltf_abort() {{ exec {wrapper} --abort "$1"; }}',
    ]
    for module in config.modules:
        lines.append(f"module load {module} || mltf_abort {shlex.quote(f'module load {module} failed')}")
    lines.extend(config.environment)
    lines.extend(config.prologue)
    run_env = {"MLFLOW_TRACKING_URI": inputs.tracking_uri, "MLFLOW_RUN_ID": inputs.run_id,
               "MLFLOW_EXPERIMENT_ID": inputs.experiment_id}
    # NCCL and cuFile read their settings once per process: they are set before anything starts.
    run_env.update(static_env(config.fabric, config.interface))
    lines.extend(f"export {k}={shlex.quote(v)}" for k, v in run_env.items())
    gds = gds_settings(config.gds, f"profile {config.profile!r}")
    if gds.enabled:
        lines.extend(gds.prologue())
    lines += ["", f"exec {wrapper}", ""]
    return "\n".join(lines)

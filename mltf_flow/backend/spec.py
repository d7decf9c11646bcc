"""What one job runs: ``spec.json`` in the job's directory, written at submission, read by the wrapper.

Nothing secret is in it (it is also kept as an MLflow artifact): the command refers to secret parameters
as placeholders ``@@MLTF_SECRET_<NAME>@@``, whose values reach the job through sbatch's environment and the
command through its own (:mod:`mltf_flow.secret_args`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltf_flow.atomic import write_json
from mltf_flow.errors import ConfigError

if TYPE_CHECKING:
    from mltf_flow.fabric.spec import FabricSpec

SPEC_VERSION = 1


@dataclass(frozen=True)
class JobSpec:
    run_id: str
    experiment_id: str
    tracking_uri: str
    project_dir: str
    #: The entry point's command as ``mlflow run`` computes it (run with ``bash -c``).
    command: str
    #: The command as logs show it (secret values masked).
    display_command: str
    job_dir: str
    #: ``local`` (the submitting interpreter's environment) or ``virtualenv`` (built on the node).
    env_manager: str = "local"
    #: Directory of the interpreter whose environment ``local`` means (first on PATH).
    local_bin: str = ""
    #: The project's python_env.yaml contents (for ``virtualenv``), its hash and where envs are cached.
    python_env: dict[str, Any] | None = None
    env_hash: str = ""
    env_root: str = ""
    #: Processes: more than one runs the command once per ``srun`` task with the torchrun variables.
    tasks: int = 1
    #: The profile's fabric section (a plain mapping once read back from spec.json in the job).
    fabric: FabricSpec = None
    interface: str | None = None
    kill_grace: float = 10.0
    forward_pre_timeout_signal: bool = False
    #: Seconds before the time limit at which the command is asked to stop after a checkpoint (MLTF_STOP_MARGIN),
    #: and how often the job is submitted again to continue it (mltf_flow.continuation).
    stop_margin: float = 120.0
    max_restarts: int = 10
    #: The run's checkpoint epoch when the job was submitted (``mltf.checkpoint.epoch`` of a pre-created run):
    #: where a first attempt starts from (a requeued attempt or a later segment reads the run's).
    checkpoint_epoch: str | None = None
    system_metrics: bool = True
    stderr_tail_lines: int = 30
    #: Extra environment of the command (never secrets).
    env: dict[str, str] = field(default_factory=dict)
    #: Directory holding the mltf_flow package, made importable in built environments (its job-side
    #: helpers: checkpoint, ddp, tensorfile).
    helpers_dir: str = ""
    version: int = SPEC_VERSION

    @property
    def script_path(self) -> Path:
        """The job's script, submitted again for each continuation."""
        return Path(self.job_dir) / "job.sh"

    @property
    def record_path(self) -> Path:
        return Path(self.job_dir) / "status.json"

    def log_path(self, job_id: str) -> Path:
        """The SLURM output file of job ``job_id`` (``#SBATCH --output`` with ``%j``)."""
        return Path(self.job_dir) / f"slurm-{job_id}.out"

    def write(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def read(cls, path: Path) -> JobSpec:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"job spec {path} cannot be read: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"job spec {path} is not a job spec (a JSON object); resubmit the run.")
        if data.get("version") != SPEC_VERSION:
            raise ConfigError(f"job spec {path} has version {data.get('version')}, expected {SPEC_VERSION}: "
                              "submitted by another mltf_flow version; resubmit the run.")
        try:
            return cls(**data)
        except TypeError as exc:  # missing or unknown fields
            raise ConfigError(f"job spec {path} is incomplete or damaged ({exc}); resubmit the run.") from exc

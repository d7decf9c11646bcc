"""Settings of mltf_flow: where they come from and what they resolve to.

Precedence, lowest first: shipped ``defaults.yaml`` < site file ``/etc/mltf_flow/config.yaml`` <
user file ``~/.config/mltf_flow/config.yaml`` < the file in ``$MLTF_FLOW_CONFIG`` <
environment variables ``MLTF_FLOW_<KEY>`` < keyword arguments to :func:`load_settings`.
Unknown keys in a file warn (they are usually typos); values of the wrong type raise
:class:`~mltf_flow.errors.ConfigError` naming the file and key.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mltf_flow.errors import ConfigError

_DEFAULTS = Path(__file__).with_name("defaults.yaml")
_SITE_FILES = (Path("/etc/mltf_flow/config.yaml"), Path("~/.config/mltf_flow/config.yaml"))
_TYPES: dict[str, tuple[type, ...]] = {
    "work_dir": (str,),
    "tracking_uri": (str, type(None)),
    "artifact_root": (str, type(None)),
    "experiment": (str, type(None)),
    "prefetch_limit": (int,),
    "stderr_tail_lines": (int,),
    "profile": (str,),
    "env_manager": (str, type(None)),
    "env_root": (str, type(None)),
}


@dataclass(frozen=True)
class Settings:
    """Resolved settings; every path is absolute."""

    work_dir: Path
    tracking_uri: str
    artifact_root: Path
    experiment: str | None
    prefetch_limit: int
    stderr_tail_lines: int
    profile: str = "local"
    #: --env-manager of steps that do not choose one; None = MLflow's default for the project.
    env_manager: str | None = None
    #: Where built environments live (shared by the nodes); default $MLFLOW_ENV_ROOT or ~/.mlflow/envs.
    env_root: Path | None = None

    @property
    def is_local_store(self) -> bool:
        """True when the tracking store is a file on this machine (sqlite), not a server."""
        return self.tracking_uri.startswith("sqlite:")

    def experiment_for(self, pipeline: str) -> str:
        """The experiment a pipeline's runs go to."""
        return self.experiment or pipeline


# Parsed files by (path, size, mtime): settings and profiles are resolved at many call sites per process
# (every complete() of a cached rerun), and parsing YAML was most of a cached rerun's time. An edited file
# has another size or mtime and is read again.
_PARSED: dict[tuple[str, int, int], dict[str, Any]] = {}


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping (empty file: empty mapping); errors name the file."""
    try:
        stat = path.stat()
        memo_key: tuple[str, int, int] | None = (str(path), stat.st_size, stat.st_mtime_ns)
    except OSError:
        memo_key = None  # read_text below says what is wrong with it
    if memo_key in _PARSED:
        return copy.deepcopy(_PARSED[memo_key])
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}). Fix the file or remove it.") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, found {type(data).__name__}.")
    if memo_key is not None:
        _PARSED[memo_key] = copy.deepcopy(data)
    return data


def _merge(into: dict[str, Any], data: dict[str, Any], source: str) -> None:
    for key, value in data.items():
        if key not in _TYPES:
            warnings.warn(
                f"{source}: unknown setting {key!r} ignored (known: {', '.join(sorted(_TYPES))})",
                stacklevel=3,
            )
            continue
        if not isinstance(value, _TYPES[key]) or isinstance(value, bool):
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in _TYPES[key])
            raise ConfigError(f"{source}: setting {key!r} must be {expected}, found {value!r}.")
        into[key] = value


def _env_value(key: str, raw: str) -> Any:
    if _TYPES[key][0] is int:
        try:
            return int(raw)
        except ValueError as exc:
            raise ConfigError(f"environment MLTF_FLOW_{key.upper()}={raw!r} is not an integer.") from exc
    return raw


def load_settings(**overrides: Any) -> Settings:
    """Resolve settings from every source (see the module docstring)."""
    values: dict[str, Any] = {}
    _merge(values, read_yaml_mapping(_DEFAULTS), str(_DEFAULTS))
    files = [p.expanduser() for p in _SITE_FILES]
    if os.environ.get("MLTF_FLOW_CONFIG"):
        explicit = Path(os.environ["MLTF_FLOW_CONFIG"]).expanduser()
        if not explicit.is_file():
            raise ConfigError(f"MLTF_FLOW_CONFIG={explicit} does not exist. Point it at a YAML file or unset it.")
        files.append(explicit)
    for path in files:
        if path.is_file():
            _merge(values, read_yaml_mapping(path), str(path))
    if overrides.get("tracking_uri") is None and values.get("tracking_uri") is None and os.environ.get(
        "MLFLOW_TRACKING_URI"
    ):
        values["tracking_uri"] = os.environ["MLFLOW_TRACKING_URI"]
    for key in _TYPES:
        env = os.environ.get(f"MLTF_FLOW_{key.upper()}")
        if env:
            values[key] = _env_value(key, env)
    _merge(values, {k: v for k, v in overrides.items() if v is not None}, "load_settings() arguments")

    work_dir = Path(values["work_dir"]).expanduser().resolve()
    tracking_uri = values.get("tracking_uri") or f"sqlite:///{work_dir / 'mlflow.db'}"
    if tracking_uri.startswith("file:") or ("://" not in tracking_uri and not tracking_uri.startswith("sqlite:")):
        raise ConfigError(
            f"tracking_uri {tracking_uri!r} is not supported: use sqlite:///ABSOLUTE/PATH/mlflow.db or an "
            "http(s):// MLflow server (MLflow's file store is in maintenance mode)."
        )
    artifact_root = Path(values.get("artifact_root") or work_dir / "artifacts").expanduser().resolve()
    if values["prefetch_limit"] < 0 or values["stderr_tail_lines"] < 1:
        raise ConfigError("prefetch_limit must be >= 0 and stderr_tail_lines >= 1.")
    return Settings(
        work_dir=work_dir,
        tracking_uri=tracking_uri,
        artifact_root=artifact_root,
        experiment=values.get("experiment"),
        prefetch_limit=values["prefetch_limit"],
        stderr_tail_lines=values["stderr_tail_lines"],
        profile=values.get("profile", "local"),
        env_manager=_env_manager(values.get("env_manager")),
        env_root=Path(values["env_root"]).expanduser().resolve() if values.get("env_root") else None,
    )


def _env_manager(value: str | None) -> str | None:
    from mltf_flow.environment import MANAGERS

    if value is not None and value not in MANAGERS:
        raise ConfigError(f"setting env_manager={value!r} (MLTF_FLOW_ENV_MANAGER or a config file) must be one of "
                          f"{', '.join(MANAGERS)}, or unset for MLflow's default.")
    return value

"""Settings of mltf_flow: where they come from, their schema, and what they resolve to.

Precedence, lowest first: shipped ``defaults.yaml`` < site file ``/etc/mltf_flow/config.yaml`` <
user file ``~/.config/mltf_flow/config.yaml`` < the file in ``$MLTF_FLOW_CONFIG`` <
environment variables ``MLTF_FLOW_<SETTING>`` (``MLTF_FLOW_PROFILE``, ``MLTF_FLOW_PROFILE_FILES``, ...) <
keyword arguments to :func:`load_settings`. Unknown keys in a file warn (they are usually typos); values
of the wrong type raise :class:`~mltf_flow.errors.ConfigError` naming the file and key. The result is
memoised per process by its inputs (the files' stamps, the variables, the directory, the arguments) and
remembered across invocations by :mod:`mltf_flow.config.memo` (so a cached rerun does not import pydantic).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from mltf_flow.config.fields import Before, Ge, StrictBool, StrictInt, StrictStr
from mltf_flow.config.files import read_yaml_mapping, stamp
from mltf_flow.config.memo import remembered
from mltf_flow.config.notify import SMTP_PASSWORD_ENV, check_addresses, check_smtp_url, check_webhook
from mltf_flow.config.schema import Schema, validate
from mltf_flow.errors import ConfigError

_DEFAULTS = Path(__file__).resolve().parent.parent / "defaults.yaml"
_SITE_FILES = (Path("/etc/mltf_flow/config.yaml"), Path("~/.config/mltf_flow/config.yaml"))
#: Variables that were renamed: using one is an error that names its successor.
RETIRED_VARIABLES = {
    "MLTF_FLOW_PROFILES": "MLTF_FLOW_PROFILE_FILES (the profile files, separated by ':')",
    "MLTF_FLOW_PROFILE__": "MLTF_FLOW_SET__<PROFILE>__<KEY> (one key of one profile)",
}


@dataclass(frozen=True, kw_only=True)
class SettingsLayer(Schema):
    """One source of settings (a file, the environment, arguments): only the keys it sets count."""

    joiner: ClassVar[str] = ": "
    expect: ClassVar[dict[str, str]] = {
        "prefetch_limit": "a whole number >= 0", "stderr_tail_lines": "a whole number >= 1",
        "profile_files": "a list of profile files", "lease_seconds": "a whole number of seconds >= 3",
        "wait_for_running": "true or false", "notify_on": "failure, always or never",
        "notify_email": "a list of e-mail addresses",
    }

    work_dir: StrictStr = ""
    tracking_uri: StrictStr | None = None
    artifact_root: StrictStr | None = None
    experiment: StrictStr | None = None
    prefetch_limit: Annotated[StrictInt, Ge(0)] = 0
    stderr_tail_lines: Annotated[StrictInt, Ge(1)] = 1
    profile: StrictStr = "local"
    env_manager: StrictStr | None = None
    env_root: StrictStr | None = None
    profile_files: tuple[StrictStr, ...] = ()
    lease_seconds: Annotated[StrictInt, Ge(3)] = 60
    wait_for_running: StrictBool = True
    notify_on: Literal["failure", "always", "never"] = "failure"
    notify_email: Annotated[tuple[StrictStr, ...], Before(check_addresses)] = ()
    notify_from: StrictStr | None = None
    smtp_url: Annotated[StrictStr, Before(check_smtp_url)] | None = None
    notify_webhook: Annotated[StrictStr, Before(check_webhook)] | None = None
    optuna_storage: StrictStr | None = None
    optuna_dashboard: StrictStr = "http://127.0.0.1:8080"


#: Every setting's name (``MLTF_FLOW_<NAME>`` sets it from the environment).
SETTING_KEYS = tuple(f.name for f in fields(SettingsLayer))
#: Settings whose variables are read as whole numbers.
_WHOLE_NUMBERS = ("prefetch_limit", "stderr_tail_lines", "lease_seconds")
#: Settings whose variables are read as yes/no, and the words for it.
_YES_NO = ("wait_for_running",)
#: Settings whose variables are lists separated by commas.
_COMMA_LISTS = ("notify_email",)
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass(frozen=True, kw_only=True)
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
    #: Profile files read after the shipped, site and user ones (mltf_flow.clusters.profiles), in order.
    profile_files: tuple[Path, ...] = ()
    #: How long a run's owner's lease lasts (mltf_flow.lease); renewed every third of it.
    lease_seconds: int = 60
    #: A step that another invocation is running: wait for its result (True) or fail with exit code 10.
    wait_for_running: bool = True
    #: When the outcome of an invocation is sent (mltf_flow.failure_report): failure, always or never.
    notify_on: str = "failure"
    #: Who gets it by e-mail (through smtp_url), and from which address (None: <user>@<this host>).
    notify_email: tuple[str, ...] = ()
    notify_from: str | None = None
    #: smtp://, smtp+starttls:// or smtps://[user@]host[:port] (mltf_flow.config.notify); no password.
    smtp_url: str | None = None
    #: A URL that receives the outcome as a JSON POST (shown as its origin only: its path is often a token).
    notify_webhook: str | None = None
    #: Where Optuna studies are stored (an RDB URL Optuna supports: sqlite, postgresql, mysql); None: a sqlite
    #: file next to the MLflow store (mltf_flow.tune.spec.storage_url).
    optuna_storage: str | None = None
    #: Where ``mltf-flow optuna-dashboard`` serves the studies (links on study runs point there).
    optuna_dashboard: str = "http://127.0.0.1:8080"

    @property
    def is_local_store(self) -> bool:
        """True when the tracking store is a file on this machine (sqlite), not a server."""
        return self.tracking_uri.startswith("sqlite:")

    def experiment_for(self, pipeline: str) -> str:
        """The experiment a pipeline's runs go to."""
        return self.experiment or pipeline


_RESOLVED: dict[tuple[Any, ...], Settings] = {}


def check_retired_variables(environ: Mapping[str, str]) -> None:
    """A renamed variable that is still set fails here, naming the variable to use instead."""
    for name in sorted(environ):
        for old, new in RETIRED_VARIABLES.items():
            if name == old or (old.endswith("__") and name.startswith(old)):
                raise ConfigError(f"${name} is no longer read: use {new} instead, then unset {name}.")


def load_settings(**overrides: Any) -> Settings:
    """Resolve settings from every source (see the module docstring)."""
    check_retired_variables(os.environ)
    files = [_DEFAULTS, *(p.expanduser() for p in _SITE_FILES)]
    if os.environ.get("MLTF_FLOW_CONFIG"):
        explicit = Path(os.environ["MLTF_FLOW_CONFIG"]).expanduser()
        if not explicit.is_file():
            raise ConfigError(f"MLTF_FLOW_CONFIG={explicit} does not exist. Point it at a YAML file or unset it.")
        files.append(explicit)
    # The SMTP password is no setting: it takes no part in the key of the remembered settings.
    env = tuple(sorted((k, v) for k, v in os.environ.items() if (k.startswith("MLTF_FLOW_") and k != SMTP_PASSWORD_ENV)
                       or k == "MLFLOW_TRACKING_URI"))
    key = (tuple(stamp(f) for f in files), env, os.getcwd(), tuple(sorted((k, repr(v)) for k, v in overrides.items())))
    if key not in _RESOLVED:
        present = [f for f in files if f.is_file()]
        settings = remembered("settings", present, key[1:], lambda: _resolve(present, overrides))
        _check_profile_files(settings)
        _RESOLVED[key] = settings
    return _RESOLVED[key]


def _layer(values: dict[str, Any], data: Mapping[str, Any], where: Callable[[str], str], base: Path,
           origins: dict[str, str] | None = None) -> None:
    """Check ``data`` (one source) and merge the keys it sets into ``values`` (and where each came from into
    ``origins``)."""
    known = {k: v for k, v in data.items() if k in SETTING_KEYS}
    for unknown in sorted(set(data) - set(known), key=str):
        warnings.warn(f"{where(unknown)}: unknown setting {unknown!r} ignored (known: {', '.join(SETTING_KEYS)})",
                      stacklevel=4)
    layer = validate(SettingsLayer, known, where)
    for name in known:  # only what this source sets
        values[name] = getattr(layer, name)
        if origins is not None:
            origins[name] = where(name)
    if "profile_files" in known:  # relative to the file that names them
        values["profile_files"] = tuple((base / Path(p).expanduser()).resolve() for p in layer.profile_files)


def _always(where: str) -> Callable[[str], str]:
    return lambda _key: where


def _from_environment() -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in SETTING_KEYS:
        variable = f"MLTF_FLOW_{name.upper()}"
        raw = os.environ.get(variable)
        if not raw:
            continue
        if name in _WHOLE_NUMBERS:
            try:
                values[name] = int(raw)
            except ValueError as exc:
                raise ConfigError(f"environment {variable}={raw!r} is not an integer.") from exc
        elif name == "profile_files":
            values[name] = [entry for entry in raw.split(os.pathsep) if entry]
        elif name in _COMMA_LISTS:
            values[name] = [entry.strip() for entry in raw.split(",") if entry.strip()]
        elif name in _YES_NO:
            if raw.lower() not in _BOOLEANS:
                raise ConfigError(f"environment {variable}={raw!r} is not true or false.")
            values[name] = _BOOLEANS[raw.lower()]
        else:
            values[name] = raw
    return values


def _resolve(files: list[Path], overrides: Mapping[str, Any]) -> Settings:
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for path in files:
        _layer(values, read_yaml_mapping(path), _always(str(path)), path.parent, origins)
    if overrides.get("tracking_uri") is None and values.get("tracking_uri") is None and os.environ.get(
        "MLFLOW_TRACKING_URI"
    ):
        values["tracking_uri"] = os.environ["MLFLOW_TRACKING_URI"]
    _layer(values, _from_environment(), lambda k: f"${'MLTF_FLOW_' + k.upper()}", Path.cwd(), origins)
    _layer(values, {k: v for k, v in overrides.items() if v is not None}, _always("load_settings() arguments"),
           Path.cwd(), origins)
    if values.get("notify_email") and not values.get("smtp_url"):
        raise ConfigError(f"{origins['notify_email']}: key 'notify_email' needs key 'smtp_url' (set neither, or "
                          "add e.g. smtp_url: smtp+starttls://mail.example.org to the same file, or set "
                          "MLTF_FLOW_SMTP_URL).")

    work_dir = Path(values["work_dir"]).expanduser().resolve()
    tracking_uri = values.get("tracking_uri") or f"sqlite:///{work_dir / 'mlflow.db'}"
    if tracking_uri.startswith("file:") or ("://" not in tracking_uri and not tracking_uri.startswith("sqlite:")):
        raise ConfigError(
            f"tracking_uri {tracking_uri!r} is not supported: use sqlite:///ABSOLUTE/PATH/mlflow.db or an "
            "http(s):// MLflow server (MLflow's file store is in maintenance mode)."
        )
    return Settings(
        work_dir=work_dir,
        tracking_uri=tracking_uri,
        artifact_root=Path(values.get("artifact_root") or work_dir / "artifacts").expanduser().resolve(),
        experiment=values.get("experiment"),
        prefetch_limit=values["prefetch_limit"],
        stderr_tail_lines=values["stderr_tail_lines"],
        profile=values.get("profile", "local"),
        env_manager=_env_manager(values.get("env_manager")),
        env_root=Path(values["env_root"]).expanduser().resolve() if values.get("env_root") else None,
        profile_files=tuple(values.get("profile_files", ())),
        lease_seconds=values["lease_seconds"],
        wait_for_running=values["wait_for_running"],
        notify_on=values.get("notify_on", "failure"),
        notify_email=tuple(values.get("notify_email", ())),
        notify_from=values.get("notify_from"),
        smtp_url=values.get("smtp_url"),
        notify_webhook=values.get("notify_webhook"),
        optuna_storage=values.get("optuna_storage"),
        optuna_dashboard=values.get("optuna_dashboard", "http://127.0.0.1:8080"),
    )


def _check_profile_files(settings: Settings) -> None:
    for path in settings.profile_files:
        if not path.is_file():
            raise ConfigError(f"profile_files names {path}, which does not exist. Fix the path "
                              "(MLTF_FLOW_PROFILE_FILES or profile_files in a settings file) or remove it.")


def _env_manager(value: str | None) -> str | None:
    from mltf_flow.environment import MANAGERS

    if value is not None and value not in MANAGERS:
        raise ConfigError(f"setting env_manager={value!r} (MLTF_FLOW_ENV_MANAGER or a config file) must be one of "
                          f"{', '.join(MANAGERS)}, or unset for MLflow's default.")
    return value

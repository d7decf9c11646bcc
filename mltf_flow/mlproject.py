"""MLproject files: entry points, typed parameters, and validation before anything runs.

Two readers share one model:

* :func:`read_project` is the fast path used for cache keys and completeness checks. It follows the
  rules of MLflow's ``mlflow.projects._project_spec.load_project`` (file name matched
  case-insensitively, bare-string parameters are a type without default, type defaults to
  ``string``, one environment field at most) without importing mlflow, which costs 1-2 s and would
  be paid by every ``luigi`` invocation. Tests check that both readers agree.
* :func:`mlflow_command` renders the command ``mlflow run`` would run with exactly the rules of MLflow's
  ``EntryPoint.compute_command`` (``path`` values made absolute, ``uri`` values checked, every value and
  extra key ``shlex``-quoted, extras appended as ``--key value``, script entry points), without importing
  mlflow on the way to a step's start; the cases only MLflow can finish (a remote ``path`` it downloads, a
  value it rejects, a default only its own YAML holds) go to MLflow itself. Tests compare both renderings.

Parameter values are normalised to their declared type (:meth:`Parameter.normalise`), so ``100``,
``"100"`` and ``100.0`` are one ``int`` value and ``1e-3`` and ``0.001`` one ``float`` value.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shlex
import urllib.parse
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from mltf_flow.config.files import load_yaml, stamp, yaml_problem
from mltf_flow.errors import ConfigError, ParameterError
from mltf_flow.invocation import invocation_id

ParamValue = int | float | str

_TYPE_ALIASES = {
    "int": "int",
    "integer": "int",
    "long": "int",
    "float": "float",
    "double": "float",
    "number": "float",
    "string": "string",
    "str": "string",
    "path": "path",
    "uri": "uri",
}
_INT64_MAX = 2**63 - 1
_ENV_FIELDS = ("docker_env", "python_env", "conda_env")
_SCRIPT_COMMANDS = {".py": "python", ".sh": "bash"}


def _parse_decimal(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise ValueError("booleans are not numbers here")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation as exc:
        raise ValueError(str(value)) from exc
    if not number.is_finite():
        raise ValueError(str(value))
    return number


@dataclass(frozen=True)
class Parameter:
    """One entry-point parameter as declared in MLproject."""

    name: str
    type: str
    default: ParamValue | None
    declared_type: str

    @property
    def required(self) -> bool:
        return self.default is None

    def normalise(self, value: Any, *, entry_point: str = "?") -> ParamValue:
        """The canonical value of ``value`` for this parameter's type.

        Raises :class:`ParameterError` when the value does not parse as the declared type.
        """
        where = f"parameter {self.name!r} of entry point {entry_point!r} (type {self.declared_type})"
        if self.type == "int":
            try:
                number = _parse_decimal(value)
            except ValueError:
                raise ParameterError(f"{where}: {value!r} is not an integer. Pass e.g. {self.name}=10.") from None
            if number != number.to_integral_value():
                raise ParameterError(f"{where}: {value!r} is not a whole number. Pass e.g. {self.name}=10.")
            if abs(number) > _INT64_MAX:  # no entry point reads 1e400 as an int (argparse, torch, numpy)
                raise ParameterError(f"{where}: {value!r} is beyond the range of a 64-bit integer. "
                                     f"Pass e.g. {self.name}=10.")
            return int(number)
        if self.type == "float":
            try:
                number = _parse_decimal(value)
            except ValueError:
                raise ParameterError(
                    f"{where}: {value!r} is not a finite number. Pass e.g. {self.name}=0.001."
                ) from None
            # float(Decimal) rounds correctly, so 1e-3 and 0.001 give the same float, hence one key.
            result = float(number)
            if not math.isfinite(result):  # 1e400: a finite decimal that no float holds
                raise ParameterError(f"{where}: {value!r} is beyond the range of a float (about ±1.8e308). "
                                     f"Pass e.g. {self.name}=0.001.")
            return result
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ParameterError(f"{where}: expected a string, got {type(value).__name__} {value!r}.")
        text = str(value)
        if self.type == "uri":
            if not urllib.parse.urlparse(text).scheme:
                raise ParameterError(
                    f"{where}: {text!r} is not a URI (no scheme). Pass e.g. file:///data/x or rucio://scope:name."
                )
            return text
        if self.type == "path":
            parsed = urllib.parse.urlparse(text)
            if parsed.scheme and len(parsed.scheme) > 1 and parsed.scheme != "file":
                return text  # remote path (runs:/, s3://): MLflow downloads it at launch
            local = parsed.path if parsed.scheme == "file" else text
            return os.path.abspath(os.path.expanduser(local))
        return text


def _parameter(name: str, spec: Any, where: str) -> Parameter:
    if isinstance(spec, str):
        declared, default = spec, None
    elif isinstance(spec, Mapping):
        declared, default = str(spec.get("type", "string")), spec.get("default")
    else:
        raise ConfigError(f"{where}: parameter {name!r} must be a type name or a mapping, found {spec!r}.")
    ptype = _TYPE_ALIASES.get(declared.lower())
    if ptype is None:
        # MLflow accepts any type name and treats it as a string; so do we, loudly.
        warnings.warn(
            f"{where}: parameter {name!r} has type {declared!r}, which MLflow treats as a string "
            f"(known types: {', '.join(sorted(set(_TYPE_ALIASES.values())))})",
            stacklevel=4,
        )
        ptype = "string"
    param = Parameter(name=name, type=ptype, default=None, declared_type=declared)
    if default is not None:
        try:
            # MLflow str()s whatever YAML made of a default (true, 2024-01-01, ...) for non-numbers.
            default = param.normalise(default) if ptype in ("int", "float") else str(default)
        except ParameterError as exc:
            raise ConfigError(f"{where}: default of {exc}") from None
        param = Parameter(name=name, type=ptype, default=default, declared_type=declared)
    return param


@dataclass(frozen=True)
class EntryPoint:
    """An entry point: a command template and its typed parameters."""

    name: str
    command: str
    parameters: dict[str, Parameter] = field(default_factory=dict)
    #: True for scripts run as entry points (``train.py``): every parameter is passed as ``--key value``.
    is_script: bool = False

    def normalise(
        self, given: Mapping[str, Any], *, allow_extra: bool = False, filled_later: Iterable[str] = ()
    ) -> dict[str, ParamValue]:
        """Validate ``given`` and return every parameter (defaults merged) normalised to its type.

        Unknown parameters are an error unless ``allow_extra`` (then they are kept as strings and
        appended to the command as ``--key value``, like ``mlflow run`` does). Parameters in
        ``filled_later`` (fed from upstream outputs at launch) are neither required nor returned.
        """
        later = set(filled_later)
        ghost = sorted(later - set(self.parameters))
        if ghost and not self.is_script:
            raise ParameterError(
                f"entry point {self.name!r} has no parameter {', '.join(map(repr, ghost))} to receive an "
                f"upstream output; its parameters are: {', '.join(self.parameters) or 'none'}."
            )
        given = {k: v for k, v in given.items() if k not in later}
        unknown = sorted(set(given) - set(self.parameters))
        if unknown and not (allow_extra or self.is_script):
            known = ", ".join(f"{p.name} ({p.declared_type})" for p in self.parameters.values()) or "none"
            raise ParameterError(
                f"entry point {self.name!r} has no parameter {', '.join(map(repr, unknown))}; "
                f"its parameters are: {known}. Fix the name, declare it in MLproject, or allow extra "
                "parameters (they are then passed as --key value)."
            )
        missing = [
            p.name for p in self.parameters.values()
            if p.required and given.get(p.name) is None and p.name not in later
        ]
        if missing:
            raise ParameterError(
                f"entry point {self.name!r} needs a value for {', '.join(map(repr, missing))} (no default in "
                f"MLproject). Pass it, e.g. -P {missing[0]}=VALUE."
            )
        values: dict[str, ParamValue] = {}
        for name, param in self.parameters.items():
            if name in later:
                continue
            raw = given.get(name)
            values[name] = param.normalise(param.default if raw is None else raw, entry_point=self.name)
        for name in unknown:
            values[name] = str(given[name])
        return values


@dataclass(frozen=True)
class Project:
    """An MLflow project directory as mltf_flow sees it."""

    root: Path
    name: str
    entry_points: dict[str, EntryPoint]
    env_type: str | None
    env_spec: dict[str, Any] | None
    mlproject_path: Path | None

    def entry_point(self, name: str) -> EntryPoint:
        """The entry point ``name``; scripts (``x.py``, ``x.sh``) work as in ``mlflow run``."""
        if name in self.entry_points:
            return self.entry_points[name]
        suffix = Path(name).suffix
        if suffix in _SCRIPT_COMMANDS and (self.root / name).is_file():
            return EntryPoint(name=name, command=f"{_SCRIPT_COMMANDS[suffix]} {name}", is_script=True)
        if self.mlproject_path is None:
            scripts = sorted(p.name for p in self.root.iterdir() if p.suffix in _SCRIPT_COMMANDS and p.is_file())
            raise ConfigError(
                f"{self.root} has no MLproject file, so {name!r} must be a .py/.sh script there, and it is not "
                f"({'scripts here: ' + ', '.join(scripts) if scripts else 'there are no scripts here'}). Pass the "
                "directory that holds your MLproject, or run `mltf-flow init DIR` to start one."
            )
        known = ", ".join(sorted(self.entry_points)) or "none"
        raise ConfigError(
            f"{self.mlproject_path or self.root}: no entry point {name!r}; entry points are: {known} "
            "(or a .py/.sh script in the project directory)."
        )

    def env_files(self) -> list[Path]:
        """Files that define the project's software environment (hashed into cache keys)."""
        files: list[Path] = []
        spec = self.env_spec or {}
        if self.env_type in ("python_env", "conda_env"):
            ref = spec.get("file")
            if ref:
                files.append(self.root / ref)
        for path in list(files):
            if path.is_file() and path.suffix in (".yaml", ".yml"):
                # python_env.yaml may pull requirements files in with "-r file.txt".
                text = path.read_text()
                for req in re.findall(r"^\s*-\s*-r\s+(\S+)", text, flags=re.M):
                    files.append(path.parent / req)
        return files

    def env_hash(self) -> str:
        """sha256 over the environment declaration and the contents of the files it names."""
        digest = hashlib.sha256()
        digest.update(repr((self.env_type, sorted((self.env_spec or {}).items()))).encode())
        for path in self.env_files():
            digest.update(str(path.relative_to(self.root)).encode())
            digest.update(path.read_bytes() if path.is_file() else b"<missing>")
        return digest.hexdigest()


def find_mlproject(directory: Path) -> Path | None:
    """The MLproject file of ``directory`` (name matched case-insensitively, as MLflow does)."""
    for entry in sorted(os.listdir(directory)):
        if entry.lower() == "mlproject":
            return directory / entry
    return None


def read_project(directory: str | os.PathLike[str]) -> Project:
    """Read the MLflow project in ``directory`` without importing mlflow (see module docstring).

    Read once per invocation and shared by every step of the project (a 1,000-step DAG asks 1,000 times);
    an edited MLproject, or a file added to or removed from the directory, is read again."""
    given = os.fspath(directory)
    key = given if os.path.isabs(given) else (os.getcwd(), given)
    held = _READ.get(key)
    if held is not None and held[0] == invocation_id() and held[1] == _version(held[2]):
        return held[2]
    root = Path(directory).expanduser().resolve()
    if not root.is_dir():
        raise ConfigError(f"project directory {root} does not exist. Pass the directory that holds MLproject.")
    project = _read_project(root, find_mlproject(root))
    _READ[key] = (invocation_id(), _version(project), project)
    return project


#: directory as given -> (invocation, version, project): read once per invocation (see read_project).
_READ: dict[Any, tuple[str, Any, Project]] = {}


def _version(project: Project) -> tuple[Any, ...]:
    # The directory's mtime changes when an entry is added, removed or renamed (MLproject, python_env.yaml).
    return (stamp(project.root), None if project.mlproject_path is None else stamp(project.mlproject_path))


def _read_project(root: Path, path: Path | None) -> Project:
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = load_yaml(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: {yaml_problem(exc)}.") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, found {type(loaded).__name__}.")
        data = loaded or {}
    where = str(path or root)
    env_fields = [f for f in _ENV_FIELDS if f in data]
    if len(env_fields) > 1:
        raise ConfigError(f"{where}: a project may declare one environment, found {', '.join(env_fields)}.")
    env_type: str | None = None
    env_spec: dict[str, Any] | None = None
    if env_fields:
        env_type = env_fields[0]
        raw = data[env_type]
        env_spec = {"file": raw} if isinstance(raw, str) else dict(raw or {})
    else:
        for candidate, kind in (("python_env.yaml", "python_env"), ("conda.yaml", "conda_env")):
            if (root / candidate).is_file():
                env_type, env_spec = kind, {"file": candidate}
                break
    entry_points: dict[str, EntryPoint] = {}
    raw_eps = data.get("entry_points") or {}
    if not isinstance(raw_eps, Mapping):
        raise ConfigError(f"{where}: entry_points must be a mapping of name -> {{command, parameters}}.")
    for ep_name, ep in raw_eps.items():
        ep_where = f"{where}: entry point {ep_name!r}"
        if not isinstance(ep, Mapping) or not isinstance(ep.get("command"), str):
            raise ConfigError(f"{ep_where} needs a 'command' string.")
        params = ep.get("parameters") or {}
        if not isinstance(params, Mapping):
            raise ConfigError(f"{ep_where}: parameters must be a mapping.")
        entry_points[str(ep_name)] = EntryPoint(
            name=str(ep_name),
            command=ep["command"],
            parameters={str(k): _parameter(str(k), v, ep_where) for k, v in params.items()},
        )
    return Project(
        root=root,
        name=str(data.get("name") or root.name),
        entry_points=entry_points,
        env_type=env_type,
        env_spec=env_spec,
        mlproject_path=path,
    )


def command_values(values: Mapping[str, ParamValue]) -> dict[str, str]:
    """Parameter values as strings for the command line (floats without a spurious exponent)."""
    return {k: repr(v) if isinstance(v, float) else str(v) for k, v in values.items()}


def mlflow_command(project: Project, entry_point: str, values: Mapping[str, ParamValue], storage_dir: Path) -> str:
    """The shell command ``mlflow run`` would run for these values (see the module docstring)."""
    storage_dir.mkdir(parents=True, exist_ok=True)
    strings = command_values(values)
    rendered = _render(project, entry_point, strings)
    return rendered if rendered is not None else _mlflow_rendered(project, entry_point, strings, storage_dir)


def _local_path(value: str) -> str | None:
    """MLflow's ``get_local_path_or_none`` on POSIX: a path without scheme or a ``file:`` URI without host,
    percent-decoded as ``url2pathname`` decodes it; None for anything remote."""
    parsed = urllib.parse.urlparse(value)
    if parsed.scheme and not (parsed.scheme == "file" and not parsed.netloc):
        return None
    return urllib.parse.unquote(parsed.path if value.startswith("file:") else value)


def _render(project: Project, entry_point: str, strings: Mapping[str, str]) -> str | None:
    """``EntryPoint.compute_command`` of MLflow 3 (``mlflow.projects._project_spec``), or None where only
    MLflow can finish (then it renders, downloads or rejects)."""
    if os.name != "posix":
        return None
    ep = project.entry_points.get(entry_point)
    if ep is not None:
        command, declared = ep.command, ep.parameters
    else:  # MLflow's get_entry_point: a .py/.sh name not declared runs as a script (no existence check)
        runner = {".py": "python", ".sh": os.environ.get("SHELL", "bash")}.get(os.path.splitext(entry_point)[1])
        if runner is None:
            return None
        command, declared = f"{runner} {shlex.quote(entry_point)}", {}
    if any(name not in strings for name in declared):
        return None  # MLflow would take the raw YAML default: let it
    params: dict[str, str] = {}
    for name, param in declared.items():
        value = strings[name]
        if param.declared_type == "path":  # MLflow compares the declared type as written
            local = _local_path(value)
            if local is None or not os.path.exists(local):
                return None  # a download into storage_dir, or MLflow's own "no such file" error
            value = os.path.abspath(local)
        elif param.declared_type == "uri" and not urllib.parse.urlparse(value).scheme:
            return None  # MLflow's "Expected URI" error
        params[name] = shlex.quote(value)
    try:
        formatted = command.format(**params)
    except (KeyError, IndexError, ValueError):
        return None  # a placeholder MLflow fails on: its error
    extras = [f"--{shlex.quote(key)} {shlex.quote(value)}" for key, value in strings.items() if key not in declared]
    return " ".join([formatted, *extras])


def _mlflow_rendered(project: Project, entry_point: str, strings: Mapping[str, str], storage_dir: Path) -> str:
    """The command as MLflow's own loader and ``compute_command`` make it (imports mlflow: 1-2 s)."""
    from mlflow.exceptions import MlflowException
    from mlflow.projects import _project_spec

    try:
        spec = _project_spec.load_project(str(project.root))
        ep = spec.get_entry_point(entry_point)
        return str(ep.compute_command(dict(strings), str(storage_dir)))
    except MlflowException as exc:
        raise ConfigError(f"{project.root}: MLflow rejected entry point {entry_point!r}: {exc.message}") from exc

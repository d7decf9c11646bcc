"""Secret parameter values reach a step's command through its environment, never through any argv.

``ps`` (``/proc/PID/cmdline``) shows every user every process's arguments; a process's environment is
readable only by its owner. So a parameter that is secret (:func:`mltf_flow.redaction.is_secret_param`: a
secret-looking name, or a URL with a password) is handed to MLflow's command template as a placeholder
``@@MLTF_SECRET_<NAME>@@``, and its value travels in the environment variable ``MLTF_SECRET_<NAME>``:

- ``bash -c`` leaves the placeholder alone (no ``$``), so neither the shell nor the program it starts has
  the value in its argv;
- a Python entry point (``python train.py --api-token {api_token}``) receives the value in ``sys.argv``:
  the directory ``mltf_flow/argv_site`` is put first on its ``PYTHONPATH``, and the ``sitecustomize`` there
  swaps placeholders for values when the interpreter starts, before the script runs;
- any other program sees the placeholder and reads the value from ``$MLTF_SECRET_<NAME>`` itself.

The launchers (driver, worker, ddp, and the ``mlflow run --backend mltf`` job wrapper) all run commands
through :func:`mltf_flow.launch.local.run_streaming`, which calls :func:`command_env` and masks the values in
every line of output it logs.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mltf_flow.redaction import SECRET_ENV_PREFIX, is_secret_param, secret_env_name

SITE_DIR = Path(__file__).resolve().parent / "argv_site"
#: Parameter types MLflow checks or rewrites when it computes the command: the placeholder cannot stand in
#: for the value there, so the value is swapped for it in the computed command instead.
_CHECKED_TYPES = ("path", "uri")


def placeholder(env_name: str) -> str:
    return f"@@{env_name}@@"


def split(values: Mapping[str, Any], types: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(values for MLflow's command template, secret environment): every secret parameter of ``values``
    (``types``: parameter name -> MLproject type) is a placeholder in the first and its value in the second."""
    command_values, env = dict(values), {}
    for name, value in values.items():
        if is_secret_param(name, value):
            env[secret_env_name(name)] = str(value)
            if types.get(name) not in _CHECKED_TYPES:
                command_values[name] = placeholder(secret_env_name(name))  # shlex.quote leaves it alone
    return command_values, env


def hide(command: str, env: Mapping[str, str]) -> str:
    """``command`` with secret values still in it (parameters of checked types) replaced by placeholders."""
    for env_name, value in sorted(env.items(), key=lambda kv: len(kv[1]), reverse=True):
        for form in (shlex.quote(value), value):
            command = command.replace(form, placeholder(env_name))
    return command


def secret_values(env: Mapping[str, str]) -> list[str]:
    """The secret values an environment carries (to mask in output)."""
    return [v for k, v in env.items() if k.startswith(SECRET_ENV_PREFIX) and v]


def command_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for a command: with secrets in it, the argv hook first on ``PYTHONPATH``."""
    out = dict(env)
    if secret_values(out):
        rest = [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(SITE_DIR)]
        out["PYTHONPATH"] = os.pathsep.join([str(SITE_DIR), *rest])
    return out


__all__ = ["SITE_DIR", "command_env", "hide", "placeholder", "secret_values", "split"]

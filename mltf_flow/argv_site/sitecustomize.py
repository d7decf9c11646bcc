"""Put secret parameter values into ``sys.argv`` inside the entry point's own Python process.

mltf_flow runs a command that templates a secret parameter (``--api-token {api_token}``) with a
placeholder in its argv (``@@MLTF_SECRET_API_TOKEN@@``) and the value in the environment variable of that
name. This directory is put first on the command's ``PYTHONPATH``; Python imports this module at startup,
before the script, and replaces the placeholders in ``sys.argv`` with the values. ``/proc/PID/cmdline`` (what
``ps`` shows any user) keeps the placeholder. Standard library only; a ``sitecustomize`` further down
``sys.path`` (the environment's own) still runs afterwards. See ``mltf_flow.secret_args``.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import sys

_PLACEHOLDER = re.compile(r"@@(MLTF_SECRET_[A-Z0-9_]+)@@")


def _reveal(argv: list[str]) -> None:
    def value(match: re.Match[str]) -> str:
        return os.environ.get(match.group(1), match.group(0))

    argv[:] = [_PLACEHOLDER.sub(value, arg) if "@@MLTF_SECRET_" in arg else arg for arg in argv]


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


if hasattr(sys, "argv"):
    _reveal(sys.argv)
_chain()

"""User-input errors at the front ends: checked before anything runs, reported as one line with exit code 2.

A user-input error is a :class:`~mltf_flow.errors.ConfigError` (a flag, a parameter, a file, a variable the
user can fix). Where it surfaces:

* ``mltf-flow run`` / ``status`` call :func:`validate_tree` before Luigi starts: every step's parameters,
  environment, profile and dataset; ``cli.main`` prints the error and exits 2.
* ``luigi --module M Task``: Luigi parses the command line and calls ``complete()`` itself, and would print
  "Will not run ... due to error in complete() method" with a traceback and exit with ``scheduling_error``.
  So the step classes check the whole tree in the root's first ``complete()`` and run ``complete()`` and
  ``deps()`` inside :func:`input_errors`: on Luigi's command line, in the process that builds the DAG, an
  input error prints one line, its traceback goes to the debug log, and ``SystemExit(2)`` ends the command
  (it passes Luigi's ``except Exception`` handlers, as argparse's own exit 2 does). Luigi's parameter
  parsing (``--epochs abc``) is wrapped by :func:`name_parse_errors` to name the parameter.

Anywhere else (``luigi.build`` from Python, tests, Luigi's forked task processes) the error propagates
unchanged.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import luigi
from luigi.cmdline_parser import CmdlineParser
from luigi.task_register import Register

from mltf_flow.errors import EXIT_BAD_INPUT, ConfigError, ParameterError

_log = logging.getLogger(__name__)
_front_end: list[bool] = [False]
_validated: set[str] = set()


def on_luigi_command_line() -> bool:
    """True while ``luigi --module ...`` (Luigi's own command line) schedules or runs, in its main process."""
    return CmdlineParser.get_instance() is not None and multiprocessing.parent_process() is None


def exits_on_input_error() -> bool:
    """True where an input error ends the process with exit code 2 (see the module docstring)."""
    return (_front_end[0] or CmdlineParser.get_instance() is not None) and multiprocessing.parent_process() is None


@contextmanager
def front_end() -> Iterator[None]:
    """``mltf-flow run``: input errors that surface inside ``luigi.build`` end the command with exit code 2."""
    _front_end[0] = True
    try:
        yield
    finally:
        _front_end[0] = False


def report_and_exit(exc: ConfigError) -> NoReturn:
    """One line on stderr, the traceback at debug level, exit code 2."""
    _log.debug("input error", exc_info=exc)
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "mltf-flow"
    print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_BAD_INPUT)


@contextmanager
def input_errors() -> Iterator[None]:
    """Around Luigi hooks (``complete()``, ``deps()``): an input error ends a front end's process (exit 2)."""
    try:
        yield
    except ConfigError as exc:
        if exits_on_input_error():
            report_and_exit(exc)
        raise


# -- the whole tree, before anything runs --------------------------------------------------------------------


def validate_tree(task: Any, seen: set[str] | None = None) -> None:
    """Check every step's parameters, environment, profile and dataset before Luigi starts anything: each
    step class says what it checks in ``check_input()``, which returns the tasks it requires."""
    seen = _validated if seen is None else seen
    todo = [task]  # depth first, each step before what it requires, as a recursion would: iterative, since a
    while todo:    # 1,000-step chain is deeper than Python's recursion limit
        current = todo.pop()
        if current.task_id in seen:
            continue
        seen.add(current.task_id)
        check = getattr(current, "check_input", None)
        deps = [dep for dep in (check() if check is not None else ()) if isinstance(dep, luigi.Task)]
        todo.extend(reversed(deps))


def check_tracking_server() -> None:
    """A tracking server that does not answer is found here, before Luigi starts anything, not when the first
    step opens its run (mltf_flow.tracking_server: bounded retries, a line each, then one message)."""
    from mltf_flow.config import load_settings

    settings = load_settings()
    if not settings.is_local_store:
        from mltf_flow.tracking_server import check_server

        check_server(settings.tracking_uri)


def check_luigi_command_line(root: Any) -> None:
    """On Luigi's command line, once: no empty flag of a step, then the whole tree (:func:`validate_tree`)."""
    if not on_luigi_command_line() or root.task_id in _validated:
        return
    empty = empty_flags()
    if empty:
        flags = ", ".join(empty)
        raise ConfigError(
            f"{flags}: empty value (an unset shell variable?); Luigi would silently use the default instead. "
            f"Pass a value, or leave {flags} out to use the default."
        )
    check_tracking_server()
    validate_tree(root)


def empty_flags() -> list[str]:
    """Flags of our steps given as an empty string (Luigi drops them and uses the default)."""
    parser = CmdlineParser.get_instance()
    if parser is None:
        return []
    args = parser.known_args
    found: list[str] = []
    for task_name, without_section, param_name, _param in Register.get_all_params():
        if without_section:
            continue
        try:
            cls = Register.get_task_cls(task_name)
        except Exception:  # an ambiguous or vanished family: not ours to check
            continue
        if not hasattr(cls, "check_input"):  # not one of our steps
            continue
        dests = [f"{task_name}_{param_name}"] + ([param_name] if task_name == args.root_task else [])
        found += ["--" + dest.replace("_", "-") for dest in dests if getattr(args, dest, None) == ""]
    return sorted(set(found))


# -- Luigi's parameter parsing ----------------------------------------------------------------------------


def name_parse_errors(cls: type[luigi.Task]) -> None:
    """Make the parse errors of ``cls``'s Luigi parameters name the parameter (``--epochs 'abc'``)."""
    # Not cls.get_params(): it reads every attribute, and ABCMeta has not finished the class yet.
    for klass in cls.__mro__:
        for name, param in vars(klass).items():
            if isinstance(param, luigi.Parameter) and "parse" not in vars(param):  # once per parameter object
                param.parse = _named_parse(param, name)  # type: ignore[method-assign]


def _named_parse(param: luigi.Parameter, name: str) -> Callable[[Any], Any]:
    original: Callable[[Any], Any] = param.parse
    flag = "--" + name.replace("_", "-")

    def parse(text: Any) -> Any:
        try:
            value = original(text)
        except (ValueError, TypeError) as exc:
            _fail(ParameterError(f"Luigi parameter {flag} {text!r}: {_expected(param, flag, exc)}"))
        if isinstance(value, float) and not math.isfinite(value):
            _fail(ParameterError(f"Luigi parameter {flag} {text!r}: not a finite number (nan, inf and values "
                                 f"beyond about ±1.8e308 are not allowed). Pass e.g. {flag} 0.001."))
        return value

    return parse


def _expected(param: luigi.Parameter, flag: str, exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        kind = "a JSON list" if isinstance(param, luigi.ListParameter | luigi.TupleParameter) else "a JSON object"
        example = "'[1, 2]'" if "list" in kind else "'{\"epochs\": 3}'"
        return (f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}, char {exc.pos}). "
                f"Pass {kind}, e.g. {flag} {example}.")
    if isinstance(param, luigi.IntParameter):
        return f"not an integer. Pass e.g. {flag} 3."
    if isinstance(param, luigi.FloatParameter):
        return f"not a number. Pass e.g. {flag} 0.001."
    if isinstance(param, luigi.BoolParameter):
        return f"not true or false. Pass {flag} true or {flag} false."
    return f"{exc}."


def _fail(exc: ParameterError) -> NoReturn:
    if on_luigi_command_line():
        report_and_exit(exc)
    raise exc


__all__ = [
    "EXIT_BAD_INPUT", "check_luigi_command_line", "empty_flags", "exits_on_input_error",
    "front_end", "input_errors", "name_parse_errors", "on_luigi_command_line", "report_and_exit", "validate_tree",
]

"""Test environments, as dask-jobqueue does it: a test that needs a real SLURM, the Rucio test server or a CUDA
GPU carries the marker of that environment (``slurm``, ``rucio``, ``gpu``), and the run says which
environments it provides (``browser``: Debian's chromium for the MLflow UI tests):

    pytest -E slurm -E rucio        (or -E slurm,rucio; `make test` asks for slurm and rucio as root)

* a test marked with an environment that was **not requested** is skipped, with the option to pass as reason;
* a test marked with an environment that **was requested** but does not answer here **fails** (in its setup,
  before any fixture runs) saying what was probed and how to provide it, so a CI machine that lost its SLURM
  cannot pass with the SLURM tests skipped.

Each environment is probed once per session, on the first test that needs it. Registered as a plugin by
tests/conftest.py; the markers themselves are declared in pyproject.toml ([tool.pytest.ini_options]).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.helpers import REPO

RUCIO_PYTHON = REPO / ".venv-rucio" / "bin" / "python"
SLURM_COMMANDS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")


def _probe_slurm() -> str | None:
    missing = [tool for tool in SLURM_COMMANDS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not on PATH"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`sinfo -h` did not answer: {exc}"
    if proc.returncode != 0:
        return f"`sinfo -h` failed (exit code {proc.returncode}): {proc.stderr.strip()}"
    if not proc.stdout.strip():
        return "`sinfo -h` lists no partition"
    return None


def _probe_rucio() -> str | None:
    if not RUCIO_PYTHON.exists():
        return f"{RUCIO_PYTHON} does not exist"
    try:
        proc = subprocess.run([str(RUCIO_PYTHON), "-c", "import rucio, gunicorn"], capture_output=True, text=True,
                              timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{RUCIO_PYTHON} did not run: {exc}"
    if proc.returncode != 0:
        return f"{RUCIO_PYTHON} cannot import rucio and gunicorn: {proc.stderr.strip()[-500:]}"
    return None


def _probe_cron() -> str | None:
    if shutil.which("crontab") is None:
        return "crontab is not on PATH"
    proc = subprocess.run(["crontab", "-l"], capture_output=True, text=True, timeout=20)
    if proc.returncode != 0 and "no crontab" not in proc.stderr:
        return f"`crontab -l` failed (exit code {proc.returncode}): {proc.stderr.strip()}"
    return None


#: Debian's chromium, which the browser tests drive through Playwright (its own browser download is not used).
CHROMIUM = "chromium"


def _probe_browser() -> str | None:
    if shutil.which(CHROMIUM) is None:
        return f"{CHROMIUM} is not on PATH"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"playwright is not installed in this venv: {exc}"
    return None


def _probe_gpu() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed in this venv"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA GPU (torch.cuda.is_available() is False)"
    return None


@dataclass(frozen=True)
class Environment:
    needs: str
    provide: str
    probe: Callable[[], str | None]


ENVIRONMENTS = {
    "slurm": Environment("a running SLURM (sbatch, squeue, scontrol, scancel, sinfo answering)",
                         "start the single-node test cluster: sudo tests/infra/slurm.sh up", _probe_slurm),
    "rucio": Environment("the Rucio test server's venv (.venv-rucio with the `rucio` package)",
                         "build it: make rucio-venv", _probe_rucio),
    "cron": Environment("cron's crontab command (Debian package cron)", "install it as root: make cron",
                        _probe_cron),
    "browser": Environment("Debian's headless chromium and the playwright package", "install it as root: make chromium",
                           _probe_browser),
    "gpu": Environment("a CUDA GPU that torch sees", "run on a machine with an NVIDIA GPU and a CUDA build of torch",
                       _probe_gpu),
}
_REQUESTED = pytest.StashKey[frozenset[str]]()
_PROBED = pytest.StashKey[dict[str, str | None]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "-E", "--environment", action="append", default=[], metavar="NAME[,NAME]", dest="environments",
        help=f"run the tests that need environment NAME ({', '.join(ENVIRONMENTS)}); repeatable or comma-separated. "
             "Tests of environments not requested are skipped; a requested one that is missing fails its tests.",
    )


def requested(config: pytest.Config) -> frozenset[str]:
    return config.stash[_REQUESTED]


def pytest_configure(config: pytest.Config) -> None:
    names = {name.strip() for value in config.getoption("environments") for name in value.split(",") if name.strip()}
    unknown = sorted(names - ENVIRONMENTS.keys())
    if unknown:
        raise pytest.UsageError(f"unknown test environment(s) {unknown}: choose from {', '.join(ENVIRONMENTS)}")
    config.stash[_REQUESTED] = frozenset(names)
    config.stash[_PROBED] = {}


def pytest_report_header(config: pytest.Config) -> str:
    names = requested(config)
    others = [name for name in ENVIRONMENTS if name not in names]
    asked = ", ".join(sorted(names)) or "none"
    return f"test environments requested: {asked} (tests needing {', '.join(others) or 'nothing else'} are skipped)"


def _environments_of(item: pytest.Item) -> list[str]:
    return [name for name in ENVIRONMENTS if item.get_closest_marker(name) is not None]


#: Fixtures that only work in an environment: a test that uses one must carry the environment's marker.
IMPLIED_BY_FIXTURES = {"rucio": {"rucio_server"}}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    names = requested(config)
    unmarked = []
    for item in items:
        marked = _environments_of(item)
        for env, fixtures in IMPLIED_BY_FIXTURES.items():
            if env not in marked and fixtures & set(getattr(item, "fixturenames", ())):
                unmarked.append(f"{item.nodeid} (uses {', '.join(sorted(fixtures))}: mark it {env})")
        for name in marked:
            if name not in names:
                item.add_marker(pytest.mark.skip(
                    reason=f"needs {ENVIRONMENTS[name].needs}: not requested (run with -E {name})"))
    if unmarked:
        raise pytest.UsageError("tests need an environment they are not marked with:\n  " + "\n  ".join(unmarked))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A requested environment that is missing fails the test before its fixtures run."""
    probed = item.config.stash[_PROBED]
    for name in _environments_of(item):
        if name not in requested(item.config):
            continue  # skipped by its marker
        if name not in probed:
            probed[name] = ENVIRONMENTS[name].probe()
        problem = probed[name]
        if problem is not None:
            env = ENVIRONMENTS[name]
            pytest.fail(f"test environment {name!r} was requested (-E {name}) but is not available here: {problem}. "
                        f"It needs {env.needs}; {env.provide}, or do not request it.", pytrace=False)

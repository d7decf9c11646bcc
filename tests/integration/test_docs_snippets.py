"""The docs' tested snippets (tests/docs_snippets.py) run as a stranger would: in an empty directory outside the
repository, HOME overridden, only ``mltf-flow``/``luigi``/``python`` of the test venv on PATH (none of the
repository's settings: no MLTF_FLOW_PROFILE_FILES, no LUIGI_CONFIG_PATH, no PYTHONPATH), the embedded default
store, and MLTF_FLOW_ENV_MANAGER=local so no environment is built. Blocks marked for a test environment run only
when the run asks for it (-E slurm, ...); then that environment must answer."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.docs_snippets import environments_of, marked_blocks, script
from tests.environments import ENVIRONMENTS, requested
from tests.helpers import BIN, REPO, run_cmd
from tests.parallel import ONE_PER_MACHINE

pytestmark = pytest.mark.slow

PAGES = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
TESTED = [page for page in PAGES if any(b.kind == "test" for b in marked_blocks(page))]
#: Pages with blocks for a one-per-machine environment (SLURM's queue, the crontab) run in the machine group
#: (tests/parallel.py), from test_docs_snippets_machine.py; the others run here, beside it.
ON_THE_MACHINE = [page for page in TESTED if environments_of(marked_blocks(page)) & set(ONE_PER_MACHINE)]
ANYWHERE = [page for page in TESTED if page not in ON_THE_MACHINE]


def stranger_env(home: Path) -> dict[str, str]:
    """A clean environment: what a user who pip-installed mltf_flow has, nothing of this repository's."""
    system_path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    return {
        "PATH": f"{BIN}{os.pathsep}{system_path}",
        "HOME": str(home),
        "USER": os.environ.get("USER", "root"),
        "LOGNAME": os.environ.get("LOGNAME", "root"),
        "LANG": "C.UTF-8",
        "TMPDIR": str(home / "tmp"),
        "MLTF_FLOW_ENV_MANAGER": "local",
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "120",
    }


@pytest.mark.parametrize("page", ANYWHERE, ids=[str(p.relative_to(REPO)) for p in ANYWHERE])
def test_tested_snippets_run_as_written(page: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    run_page(page, tmp_path, request)


def run_page(page: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Run the page's tested blocks (those of the environments asked for) as a stranger; fail naming the block."""
    blocks = marked_blocks(page)
    asked = requested(request.config)
    environments = {"embedded"} | (environments_of(blocks) & asked)
    for name in sorted(environments - {"embedded"}):  # asked for: it must answer, as for marked tests
        problem = ENVIRONMENTS[name].probe()
        assert problem is None, f"{page.name} has {name} blocks and -E {name} was requested, but: {problem}"
    home, cwd = tmp_path / "home", tmp_path / "stranger"
    for directory in (home / "tmp", cwd):
        directory.mkdir(parents=True)
    body = script(blocks, environments)
    (tmp_path / "snippets.sh").write_text(body)
    started = time.monotonic()
    result = run_cmd(["env", "-i", *(f"{k}={v}" for k, v in stranger_env(home).items()),
                      "bash", "-euo", "pipefail", str(tmp_path / "snippets.sh")], cwd=cwd, timeout=900)
    took = time.monotonic() - started
    assert result.returncode == 0, (
        f"a tested snippet of {page.relative_to(REPO)} failed (exit code {result.returncode}) after {took:.0f} s; "
        f"the last '>>>' line names the block:\n{result.stdout[-6000:]}"
    )
    # Every block that was to run did (a script that ended early, e.g. in an unclosed here-document, fails).
    ran = [b.where for b in blocks if b.kind == "test" and b.arg in environments]
    missing = [where for where in ran if f">>> {where}\n" not in result.stdout]
    assert not missing, f"blocks of {page.name} that never ran: {missing}\n{result.stdout[-3000:]}"

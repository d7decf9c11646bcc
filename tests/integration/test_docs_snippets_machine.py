"""The docs' tested snippets of pages with blocks for SLURM or cron (see test_docs_snippets.py): in the machine
group of tests/parallel.py, one test after another with the other tests of the single SLURM node and the
crontab."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.integration.test_docs_snippets import ON_THE_MACHINE, run_page

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("page", ON_THE_MACHINE, ids=[str(p.relative_to(REPO)) for p in ON_THE_MACHINE])
def test_tested_snippets_that_use_the_machine_run_as_written(page: Path, tmp_path: Path,
                                                             request: pytest.FixtureRequest) -> None:
    run_page(page, tmp_path, request)

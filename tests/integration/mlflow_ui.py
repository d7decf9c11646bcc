"""The MLflow UI as a person sees it, for browser tests: a real `mlflow server` over a store a pipeline already
wrote (no second pipeline run), Debian's headless chromium driven by Playwright, and screenshots kept where CI
collects them (``test-artifacts/screenshots/`` under the repository, or ``$MLTF_TEST_ARTIFACTS/screenshots``)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.environments import CHROMIUM
from tests.helpers import REPO


def screenshots_dir() -> Path:
    root = Path(os.environ.get("MLTF_TEST_ARTIFACTS") or REPO / "test-artifacts")
    path = root / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def browser_page() -> Iterator[Any]:
    """A page of Debian's headless chromium (Playwright's own browser download is never used)."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which(CHROMIUM)
    assert executable is not None  # the `browser` environment's probe checked it
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            context.set_default_timeout(60_000)  # the first page load compiles MLflow's bundle on 2 busy cores
            yield context.new_page()
        finally:
            browser.close()

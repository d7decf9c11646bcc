"""The MLflow UI as a person sees it, for browser tests: a real `mlflow server` over a store a pipeline already
wrote (no second pipeline run), Debian's headless chromium driven by Playwright, and screenshots kept where CI
collects them (``test-artifacts/screenshots/`` under the repository, or ``$MLTF_TEST_ARTIFACTS/screenshots``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.environments import CHROMIUM
from tests.helpers import BIN, REPO, free_port


def screenshots_dir() -> Path:
    root = Path(os.environ.get("MLTF_TEST_ARTIFACTS") or REPO / "test-artifacts")
    path = root / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def served_store(tracking_uri: str, scratch: Path) -> Iterator[str]:
    """A real `mlflow server` over an existing sqlite store (its runs' artifacts stay where the pipeline put
    them); yields its URL."""
    port = free_port()
    scratch.mkdir(parents=True, exist_ok=True)
    log_path = scratch / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", tracking_uri, "--artifacts-destination",
             str(scratch / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, cwd=scratch,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:  # readiness poll: /health answers once it serves
                if proc.poll() is not None:
                    raise RuntimeError(f"mlflow server exited: {log_path.read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not answer /health within 120 s: {log_path.read_text()}")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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

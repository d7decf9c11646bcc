"""The fault suite's size, printed at the end of a run that collected it: "N bad inputs, M kill phases, K places
searched" (issue 14, item 8), counted from the tables the tests run over."""

from __future__ import annotations

import pytest


def suite_counts() -> dict[str, int]:
    from mltf_flow.phases import PHASES
    from tests.faults.test_bad_inputs import CASES
    from tests.faults.test_kills import KILLS
    from tests.integration.test_secrets import PLACES

    return {"bad inputs": len(CASES), "named phases": len(PHASES), "kill points": len(KILLS),
            "places searched for secrets": len(PLACES)}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    counts = ", ".join(f"{n} {what}" for what, n in suite_counts().items())
    terminalreporter.write_line(f"fault suite: {counts} (+ a SLURM kill and a tracking-server restart)")

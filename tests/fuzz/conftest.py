"""The ``fuzz`` marker, and one summary line per fuzz test at the end of the run."""

from __future__ import annotations

import pytest

from .harness import BUDGET_VARIABLE, RESULTS


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"fuzz: a time-budgeted Hypothesis fuzz session over real sockets ({BUDGET_VARIABLE})",
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    terminalreporter.section("fuzz sessions")
    for result in RESULTS:
        terminalreporter.write_line(str(result))

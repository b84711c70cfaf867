"""Chaos runs: the module cluster and a summary of the faults each run injected."""

from __future__ import annotations

from typing import Any

from .harness import SUMMARIES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SUMMARIES:
        terminalreporter.section("chaos runs")
        for line in SUMMARIES:
            terminalreporter.write_line(line)

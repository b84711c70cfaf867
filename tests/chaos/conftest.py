"""Chaos runs: the module cluster and a summary of the faults each run injected."""

from __future__ import annotations

from typing import Any

import pytest

from .harness import SUMMARIES, Settings


@pytest.fixture
def seconds(request: pytest.FixtureRequest) -> float:
    """Seconds of fault injection for this test: the bounded default (``@bounded``), or
    an equal share of ``GEVENTC_CHAOS_SECONDS`` among the chaos tests selected."""
    default: float = request.function.chaos_seconds
    total = Settings.from_env().seconds
    if total is None:
        return default
    selected = [
        item
        for item in request.session.items
        if hasattr(getattr(item, "function", None), "chaos_seconds")
    ]
    return max(default, total / max(1, len(selected)))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SUMMARIES:
        terminalreporter.section("chaos runs")
        for line in SUMMARIES:
            terminalreporter.write_line(line)

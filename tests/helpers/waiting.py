"""Waiting in tests until a condition holds, with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable

import gevent


def wait_until(
    condition: Callable[[], object], timeout: float, what: str, *, interval: float = 0.01
) -> float:
    """Poll ``condition()`` every ``interval`` seconds until it is true and return how
    many seconds that took; an :class:`AssertionError` naming ``what`` after ``timeout``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout}s"
        gevent.sleep(interval)
    return time.monotonic() - started

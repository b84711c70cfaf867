"""Reading recipe channels in tests, with deadlines."""

from __future__ import annotations

import time
from typing import Any, TypeVar

from geventc import Channel, ElectionEvent, ElectionStatus, LeaderElector

T = TypeVar("T")


def next_of(channel: Channel[Any], kind: type[T], timeout: float = 10.0) -> T:
    """The next event of ``kind`` on ``channel``; other events (e.g. RecipeError
    reports) are skipped; :class:`geventc.errors.ChannelTimeout` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        event = channel.get(timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(event, kind):
            return event


def next_status(elector: LeaderElector, timeout: float = 10.0) -> ElectionEvent:
    """The elector's next ElectionEvent (skipping RecipeError reports)."""
    return next_of(elector.channel, ElectionEvent, timeout)


def wait_for(
    elector: LeaderElector, status: ElectionStatus, timeout: float = 10.0
) -> ElectionEvent:
    """The elector's first ElectionEvent of ``status`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        event = next_status(elector, max(0.01, deadline - time.monotonic()))
        if event.status is status:
            return event

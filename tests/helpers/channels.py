"""Reading recipe channels in tests, with deadlines."""

from __future__ import annotations

import time
from typing import Any, TypeVar

from geventc import Channel

T = TypeVar("T")


def next_of(channel: Channel[Any], kind: type[T], timeout: float = 10.0) -> T:
    """The next event of ``kind`` on ``channel``; other events (e.g. RecipeError
    reports) are skipped; :class:`geventc.errors.ChannelTimeout` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        event = channel.get(timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(event, kind):
            return event

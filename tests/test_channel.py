"""Channel: a closable, never-blocking queue; reading it with a timeout."""

from __future__ import annotations

import time

import gevent
import pytest

from geventc import Channel
from geventc.errors import ChannelClosed, ChannelTimeout, EtcdError, InvalidArgument, Timeout


def test_get_with_a_timeout_raises_a_geventc_timeout() -> None:
    channel: Channel[int] = Channel()
    started = time.monotonic()
    try:
        channel.get(timeout=0.05)
    except Exception as exc:  # an Exception, unlike gevent.Timeout
        caught: BaseException = exc
    else:
        pytest.fail("get() returned without an event")
    assert isinstance(caught, ChannelTimeout) and isinstance(caught, Timeout | EtcdError)
    assert 0.05 <= time.monotonic() - started < 2.0
    assert "0.05" in str(caught)
    channel.put(1)  # the channel is still usable
    assert channel.get(timeout=0.05) == 1


def test_events_put_before_close_are_read_then_iteration_ends() -> None:
    channel: Channel[int] = Channel()
    for item in range(3):
        channel.put(item)
    channel.close()
    channel.put(99)  # ignored once closed
    assert list(channel) == [0, 1, 2]
    with pytest.raises(ChannelClosed):
        channel.get(timeout=0.05)


def test_a_waiting_reader_is_woken_by_put_and_by_close() -> None:
    channel: Channel[str] = Channel()
    gevent.spawn_later(0.05, channel.put, "late")
    assert channel.get(timeout=5) == "late"
    gevent.spawn_later(0.05, channel.close)
    with pytest.raises(ChannelClosed):
        channel.get(timeout=5)


def test_bounds_and_snapshots() -> None:
    bounded: Channel[int] = Channel(2)
    for item in range(5):
        bounded.put(item)
    assert (bounded.dropped, bounded.get_nowait(), bounded.get_nowait()) == (3, 3, 4)
    latest: Channel[int] = Channel(latest_only=True)
    for item in range(5):
        latest.put(item)
    assert (latest.dropped, len(latest), latest.get_nowait()) == (0, 1, 4)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(InvalidArgument, match="maxsize"):
            Channel(bad)  # type: ignore[arg-type]
    for timeout in (float("nan"), "1", True):
        with pytest.raises(InvalidArgument, match="timeout"):
            Channel().get(timeout=timeout)  # type: ignore[arg-type]

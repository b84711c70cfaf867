"""Channel: a closable, never-blocking queue; reading it with a timeout."""

from __future__ import annotations

import contextlib
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


def test_a_group_put_keeps_each_members_newest_item_once() -> None:
    channel: Channel[str] = Channel(latest_per_source=True)
    group, other = object(), object()
    channel.put("single", source=other)
    channel.put_group("g1", group, ["m1", "m2", "m3"])
    assert len(channel) == 4
    channel.put_group("g2", group, ["m1", "m2", "m3"])  # replaces, keeps the group's place
    assert len(channel) == 4
    assert channel.get_nowait() == "single"
    assert channel.get_nowait() == "g2"  # one member read it; two still to
    channel.put("single2", source=other)
    channel.put_group("g3", group, ["m1", "m2", "m3", "m4"])  # every member's newest, once
    assert len(channel) == 5
    assert [channel.get_nowait() for _ in range(5)] == ["g3"] * 4 + ["single2"]
    assert channel.get_nowait() is None and len(channel) == 0
    channel.put_group("empty", group, [])
    assert len(channel) == 0
    channel.put_group("g4", group, ["m1", "m2"])  # read, then a new entry at the end
    reader = iter(channel)
    assert next(reader) == "g4"
    channel.put_group("g5", group, ["m1", "m2"])  # renewed while the iteration is in it
    assert [next(reader), next(reader)] == ["g5", "g5"]
    assert len(channel) == 0
    channel.put("mine", source=other)
    with pytest.raises(InvalidArgument, match="group"):
        channel.put_group("clash", other, ["m1"])
    channel.close()
    channel.put_group("ignored", group, ["m1"])
    assert list(channel) == ["mine"]


def test_a_group_put_on_other_channels_is_a_put_per_member() -> None:
    events: Channel[int] = Channel()
    events.put_group(1, object(), ["a", "b"])
    assert [events.get_nowait(), events.get_nowait(), events.get_nowait()] == [1, 1, None]
    newest: Channel[int] = Channel(latest_only=True)
    newest.put_group(2, object(), ["a", "b"])
    assert len(newest) == 1 and newest.get_nowait() == 2


def test_put_each_wakes_every_reader_in_order_and_skips_closed_channels() -> None:
    channels: list[Channel[int]] = [Channel(latest_only=True) for _ in range(100)]
    order: list[int] = []

    def read(index: int) -> None:
        with contextlib.suppress(ChannelClosed):
            order.append(index * 1000 + channels[index].get(timeout=5))

    readers = [gevent.spawn(read, i) for i in range(100)]
    gevent.idle()  # every reader waits
    channels[7].close()
    Channel.put_each(3, {i: c for i, c in enumerate(channels)})
    gevent.joinall(readers, timeout=5)
    assert order == [i * 1000 + 3 for i in range(100) if i != 7]  # woken in order
    assert channels[7].get_nowait() is None
    lone: Channel[int] = Channel()  # no reader waiting: the item just waits
    Channel.put_each(4, {"a": lone})
    assert lone.get_nowait() == 4


def test_a_source_joining_a_group_never_reads_older_after_newer() -> None:
    """A source whose own item is pending joins a group whose newer item is pending
    too: the group's stands for both, at the group's place; no older item follows."""
    channel: Channel[str] = Channel(latest_per_source=True)
    group, joining, other = object(), object(), object()
    channel.put_group("g1", group, ["m1", "m2"])
    channel.put("own old", source=joining)
    channel.put("x", source=other)
    channel.regroup(joining, group)  # it now hands out its items with the group
    channel.put_group("g2", group, ["m1", "m2", joining])
    assert len(channel) == 4
    assert list(_drain(channel)) == ["g2", "g2", "g2", "x"]
    assert len(channel) == 0
    channel.put("again", source=joining)  # its passed place is not read twice
    channel.regroup(other, group)  # nothing of the group pending: nothing to take over
    assert list(_drain(channel)) == ["again"]
    channel.put("own", source=joining)
    channel.put_group("g3", group, ["m1"])
    channel.regroup(joining, group)  # its item came before the group's: taken over
    assert channel.get(timeout=1) == "g3" and channel.get_nowait() == "g3"
    assert channel.get_nowait() is None and len(channel) == 0


def _drain(channel: Channel[str]) -> list[str]:
    """Every item pending in ``channel`` now."""
    read = []
    while len(channel):
        item = channel.get_nowait()
        assert item is not None
        read.append(item)
    return read


def test_bulk_puts_refuse_what_is_not_a_collection() -> None:
    channel: Channel[int] = Channel(latest_per_source=True)
    with pytest.raises(InvalidArgument, match="channels must map sources to channels"):
        Channel.put_each(1, [channel])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="members must be a collection of sources"):
        channel.put_group(1, "group", "abc")
    with pytest.raises(InvalidArgument, match="members must be a collection of sources"):
        channel.put_group(1, "group", 5)  # type: ignore[arg-type]
    assert len(channel) == 0  # nothing was put

"""A shared prefix watch hands its listeners events consistent with the state and
revision of the same update (found by the watch-guarantee chaos run,
``tests/chaos/test_watch_guarantees.py``; fake sources here, no etcd).

- etcd answers a watch that resumes behind (after a failover) with one response of
  many revisions. A key listener (``WatchHub.subscribe(prefix, listener, key=...)``)
  used to get one update per event, each with the response's last revision and the
  state after all of them: an update "delete k at 3" said k existed as of 5.
- A listener joining with read-your-writes can make the copy's revision jump to a
  read's; events the stream still held (already reflected) used to be handed out
  after that under the newer revision, with states etcd never had at it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gevent
from gevent.pool import Group

from geventc.watch import PrefixUpdate, PrefixWatch
from geventc.wire import Event, EventType, Header, KeyValue, RangeResult, WatchResponse


class _Stream:
    """A watch stream that answers one response, then waits."""

    def __init__(self, responses: list[WatchResponse], start_revision: int) -> None:
        self.responses = responses
        self.start_revision = start_revision
        self.confirmed_at = 0.0
        self.endpoint = "fake"

    def __iter__(self) -> Iterator[WatchResponse]:
        for response in self.responses:
            self.start_revision = response.events[-1].kv.mod_revision + 1
            yield response
        gevent.sleep(3600)

    def cancel(self) -> None:
        pass


class _Source:
    written_revision = 0

    def __init__(self, response: WatchResponse) -> None:
        self.response = response

    def get_prefix(self, prefix: bytes) -> RangeResult:
        kv = KeyValue(key=b"/p/k", value=b"v1", create_revision=2, mod_revision=2)
        return RangeResult(header=Header(revision=2), kvs=(kv,), count=1)

    def watch(self, key: bytes, **kwargs: Any) -> _Stream:
        return _Stream([self.response], kwargs["start_revision"])


def _put(key: bytes, value: bytes, rev: int, create: int) -> Event:
    return Event(
        EventType.PUT, KeyValue(key=key, value=value, create_revision=create, mod_revision=rev)
    )


def test_a_key_listener_gets_the_events_of_its_key_in_one_response_together() -> None:
    batch = WatchResponse(
        header=Header(revision=5),
        events=(
            Event(EventType.DELETE, KeyValue(key=b"/p/k", mod_revision=3)),
            _put(b"/p/other", b"x", 4, 4),
            _put(b"/p/k", b"v2", 5, 5),
        ),
    )
    group = Group()
    watch = PrefixWatch(_Source(batch), b"/p/", group)
    updates: list[PrefixUpdate] = []
    watch.add(updates.append, b"/p/k")
    try:
        with gevent.Timeout(5):
            while watch.revision < 5:
                gevent.sleep(0.01)
        gevent.sleep(0.01)
    finally:
        watch.close()
    after_first = [u for u in updates if u.revision == 5]
    assert len(after_first) == 1, [u.events for u in after_first]
    (update,) = after_first
    assert [(e.type, e.kv.mod_revision) for e in update.events] == [
        (EventType.DELETE, 3),
        (EventType.PUT, 5),
    ]
    assert update.state[b"/p/k"].value == b"v2"


class _HeldStream(_Stream):
    """A watch stream whose responses come only once ``release`` is set."""

    def __init__(self, responses: list[WatchResponse], start_revision: int, release: Any) -> None:
        super().__init__(responses, start_revision)
        self.release = release

    def __iter__(self) -> Iterator[WatchResponse]:
        self.release.wait()
        yield from super().__iter__()


def test_events_a_catch_up_read_already_reflects_are_not_handed_out_as_newer() -> None:
    """A listener joining with read-your-writes can make the copy's revision jump to a
    read's (the copy already equals it: what the stream still holds nets out to no
    change, e.g. a key created and deleted). Those held events must not then be handed
    out under that newer revision: "put k" labelled revision 5 says k exists at 5."""
    from gevent.event import Event as Flag

    release = Flag()
    created = _put(b"/p/t", b"tmp", 3, 3)
    deleted = Event(EventType.DELETE, KeyValue(key=b"/p/t", mod_revision=4))
    reads = iter([2, 5])

    class Source(_Source):
        written_revision = 5

        def get_prefix(self, prefix: bytes) -> RangeResult:
            kv = KeyValue(key=b"/p/k", value=b"v1", create_revision=2, mod_revision=2)
            return RangeResult(header=Header(revision=next(reads)), kvs=(kv,), count=1)

        def watch(self, key: bytes, **kwargs: Any) -> _Stream:
            responses = [
                WatchResponse(header=Header(revision=3), events=(created,)),
                WatchResponse(header=Header(revision=4), events=(deleted,)),
            ]
            return _HeldStream(responses, kwargs["start_revision"], release)

    group = Group()
    watch = PrefixWatch(Source(_NO_RESPONSE), b"/p/", group)
    updates: list[tuple[PrefixUpdate, dict[bytes, KeyValue]]] = []
    try:
        with gevent.Timeout(5):
            while not watch.synced:
                gevent.sleep(0.01)
            # (an update's state is a live view: keep what it was when handed out)
            watch.add(lambda u: updates.append((u, dict(u.state))), fresh_after=5)
            release.set()
            gevent.sleep(0.05)
    finally:
        watch.close()
    assert updates and updates[0][0].revision == 5
    for update, state in updates:
        # every state handed out as of revision >= 5 is etcd's state at 5: no /p/t
        assert b"/p/t" not in state, update
        assert all(e.kv.mod_revision > 5 for e in update.events if not update.resynced), update


_NO_RESPONSE = WatchResponse(header=Header(revision=0))

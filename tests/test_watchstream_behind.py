"""A watch that resumes on a member behind what it already delivered (an isolated
member, or one still catching up after a restart) fails over to another member; only
when no member has the history does it report :class:`Compacted`.

Found by the watch-guarantee chaos run (``tests/chaos/test_watch_guarantees.py``, seed
7 of a long run): a watcher paused while a member was cut off from its peers resumed
its streams on that member, 48 revisions behind, and every stream ended with
``Compacted`` ("its data was lost or replaced") although nothing was compacted and the
other two members had every revision."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from helpers.fake_gateway import FakeGateway, Reply, chunk, http

from geventc.errors import Compacted
from geventc.testing.plugin import EtcdTestContext

WATCH = "/v3/watch"


def behind(revision: int) -> Reply:
    """A member that confirms watches at ``revision`` (behind) and sends nothing more."""
    created = json.dumps({"result": {"header": {"revision": str(revision)}, "created": True}})
    return Reply(http(200, chunk(created.encode() + b"\n"), chunked=True), after="hang")


@pytest.fixture
def fake() -> Iterator[FakeGateway]:
    with FakeGateway() as gateway:
        yield gateway


def test_a_watch_resumed_on_a_member_behind_fails_over(
    etcd: EtcdTestContext, fake: FakeGateway
) -> None:
    fake.routes[WATCH] = behind(1)
    client = etcd.client([*etcd.endpoints, fake.endpoint], timeout=2.0, connect_timeout=0.2)
    writer = etcd.client()
    with client.watch(etcd.key("b")) as watch:
        writer.put(etcd.key("b"), "one")
        assert next(watch).events[0].kv.value == b"one"
        client.transport.mark_failed(etcd.endpoints[0])  # the next connection: the fake
        watch.stall("test")
        writer.put(etcd.key("b"), "two")
        assert [e.kv.value for e in next(watch).events] == [b"two"]
    assert fake.paths() == [WATCH]


def test_a_watch_whose_every_member_is_behind_reports_compacted(
    etcd: EtcdTestContext, fake: FakeGateway
) -> None:
    fake.routes[WATCH] = behind(1)
    client = etcd.client([*etcd.endpoints, fake.endpoint], timeout=2.0, connect_timeout=0.2)
    with client.watch(etcd.key("c")) as watch:
        etcd.client().put(etcd.key("c"), "one")
        assert next(watch).events[0].kv.value == b"one"
        client.transport.endpoints = [fake.endpoint]  # only the member behind is left
        client.transport._current = 0
        watch.stall("test")
        with pytest.raises(Compacted, match="behind"):
            next(watch)

"""KV and transactions against a real etcd."""

from __future__ import annotations

import gevent
import pytest

from geventc import Compare, Op, PutResult, RangeResult
from geventc.testing.plugin import EtcdTestContext


def test_put_get_round_trip_str_and_bytes(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    first = client.put(etcd.key("a"), "héllo")
    kv = client.get(etcd.key("a"))
    assert kv is not None
    assert kv.value == "héllo".encode() and kv.value_str == "héllo"
    assert kv.key_str == etcd.key("a") and kv.key == etcd.key("a").encode()
    assert kv.create_revision == kv.mod_revision == first.header.revision and kv.version == 1
    second = client.put(etcd.key("a").encode(), b"\x00\xff", prev_kv=True)
    assert second.header.revision > first.header.revision
    assert second.prev_kv is not None and second.prev_kv.value == "héllo".encode()
    again = client.get(etcd.key("a"))
    assert again is not None and again.value == b"\x00\xff" and again.version == 2


def test_get_missing_key_is_none(etcd: EtcdTestContext) -> None:
    assert etcd.client().get(etcd.key("missing")) is None


def test_get_at_an_old_revision(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    old = client.put(etcd.key("r"), "1").header.revision
    client.put(etcd.key("r"), "2")
    kv = client.get(etcd.key("r"), revision=old)
    assert kv is not None and kv.value == b"1"
    assert client.get(etcd.key("r"), serializable=True) is not None


def test_get_prefix_options(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    for name in ("c", "a", "b"):
        client.put(etcd.key("p", name), name * 2)
    client.put(etcd.key("pother"), "x")
    result = client.get_prefix(etcd.key("p/"))
    assert [kv.key_str for kv in result.kvs] == [etcd.key("p", n) for n in "abc"]
    assert result.count == 3 and not result.more
    assert result.header.revision > 0
    limited = client.get_prefix(etcd.key("p/"), limit=2, sort_target="CREATE", sort_order="DESCEND")
    assert [kv.key_str[-1] for kv in limited.kvs] == ["b", "a"]
    assert limited.more and limited.count == 3
    keys = client.get_prefix(etcd.key("p/"), keys_only=True)
    assert all(kv.value == b"" for kv in keys.kvs) and len(keys.kvs) == 3
    counted = client.get_prefix(etcd.key("p/"), count_only=True)
    assert counted.kvs == () and counted.count == 3
    created_first = client.get_prefix(
        etcd.key("p/"), max_create_revision=result.kvs[2].create_revision
    )
    assert [kv.key_str[-1] for kv in created_first.kvs] == ["c"]


def test_delete_and_delete_prefix(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    client.put(etcd.key("d", "1"), "1")
    client.put(etcd.key("d", "2"), "2")
    client.put(etcd.key("keep"), "k")
    gone = client.delete(etcd.key("d", "1"), prev_kv=True)
    assert gone.deleted == 1 and gone.prev_kvs[0].value == b"1"
    assert client.delete(etcd.key("d", "1")).deleted == 0
    assert client.delete_prefix(etcd.key("d/")).deleted == 1
    assert client.get_prefix(etcd.prefix).count == 1


def test_txn_create_if_absent(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    key = etcd.key("job")

    def create(owner: str) -> bool:
        result = client.txn(
            compare=[Compare.create_revision(key) == 0],
            success=[Op.put(key, owner)],
            failure=[Op.get(key)],
        )
        return result.succeeded

    outcomes = [gevent.spawn(create, f"w{i}") for i in range(10)]
    gevent.joinall(outcomes, raise_error=True)
    assert sum(g.value for g in outcomes) == 1
    lost = client.txn([Compare.create_revision(key) == 0], [Op.put(key, "x")], [Op.get(key)])
    assert not lost.succeeded
    read = lost.responses[0]
    assert isinstance(read, RangeResult) and read.kvs[0].value.startswith(b"w")


def test_txn_value_compare_and_nested(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    key = etcd.key("v")
    client.put(key, "x")
    result = client.txn(
        compare=[Compare.value(key) == "x", Compare.version(key) > 0],
        success=[
            Op.put(key, "y", prev_kv=True),
            Op.txn([Compare.value(key) == "x"], [Op.put(etcd.key("w"), "nested")], []),
        ],
    )
    assert result.succeeded
    put, nested = result.responses
    assert isinstance(put, PutResult) and put.prev_kv is not None and put.prev_kv.value == b"x"
    assert nested.succeeded  # type: ignore[union-attr]
    assert client.get(etcd.key("w")) is not None
    client.delete(key)
    # a VALUE compare on a missing key is false
    assert not client.txn([Compare.value(key) == ""], [Op.put(key, "z")]).succeeded


def test_compact_then_old_revision_is_gone(etcd: EtcdTestContext) -> None:
    from geventc.errors import Compacted

    client = etcd.client()
    old = client.put(etcd.key("c"), "1").header.revision
    now = client.put(etcd.key("c"), "2").header.revision
    client.compact(now)
    with pytest.raises(Compacted):
        client.get(etcd.key("c"), revision=old)

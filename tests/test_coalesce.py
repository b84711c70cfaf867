"""Request coalescing: concurrent single operations sent as shared txns, against a real
etcd. Each caller must get exactly its own result or error."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import pytest
from helpers.waiting import wait_until

from geventc import Client, Compare, Op
from geventc.errors import ConnectionFailed, InvalidArgument, LeaseNotFound, Timeout
from geventc.testing import free_port
from geventc.testing.plugin import EtcdTestContext


def _together(count: int, call: Callable[[int], Any]) -> list[Any]:
    """Run ``call(i)`` in ``count`` greenlets started together; their results in order."""
    greenlets = [gevent.spawn(call, i) for i in range(count)]
    gevent.joinall(greenlets, raise_error=True, timeout=30)
    assert all(g.ready() for g in greenlets)
    return [g.value for g in greenlets]


def test_concurrent_puts_each_get_their_own_result(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    for i in range(40):
        client.put(etcd.key(f"k{i}"), f"old{i}")
    before = client.transport.requests
    results = _together(40, lambda i: client.put(etcd.key(f"k{i}"), f"new{i}", prev_kv=True))
    assert client.transport.requests - before < 40 / 4, "the puts were not coalesced"
    for i, result in enumerate(results):
        assert result.prev_kv is not None and result.prev_kv.value == f"old{i}".encode()
        kv = client.get(etcd.key(f"k{i}"))
        assert kv is not None and kv.value == f"new{i}".encode()
        assert kv.mod_revision == result.header.revision


def test_concurrent_gets_and_deletes_each_get_their_own_result(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    for i in range(0, 30, 2):  # only the even keys exist
        client.put(etcd.key(f"k{i}"), f"v{i}")
    values = _together(30, lambda i: client.get(etcd.key(f"k{i}")))
    for i, kv in enumerate(values):
        assert (kv.value if kv else None) == (f"v{i}".encode() if i % 2 == 0 else None)
    prefixes = _together(3, lambda i: client.get_prefix(etcd.key(f"k{i}")))
    assert [sorted(kv.key_str for kv in r.kvs) for r in prefixes] == [
        [etcd.key("k0")],
        [etcd.key(f"k{i}") for i in (10, 12, 14, 16, 18)],
        [etcd.key(f"k{i}") for i in (2, 20, 22, 24, 26, 28)],
    ]
    deleted = _together(30, lambda i: client.delete(etcd.key(f"k{i}"), prev_kv=True))
    for i, result in enumerate(deleted):
        assert result.deleted == (1 if i % 2 == 0 else 0)
        assert [kv.value for kv in result.prev_kvs] == ([f"v{i}".encode()] if i % 2 == 0 else [])
    assert client.get_prefix(etcd.key("")).count == 0


def test_more_than_128_callers_split_into_several_txns(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    coalescer = client.coalescer
    assert coalescer is not None
    batches, before = coalescer.batches, client.transport.requests
    results = _together(300, lambda i: client.put(etcd.key(f"many/{i}"), str(i)))
    sent = coalescer.batches - batches
    assert sent >= 3  # 128 operations per txn at most
    assert client.transport.requests - before <= sent + 3
    # one revision per request: each txn (and each lone put) is one write
    assert len({r.header.revision for r in results}) == client.transport.requests - before
    listed = client.get_prefix(etcd.key("many/"))
    assert sorted(int(kv.value) for kv in listed.kvs) == list(range(300))


def test_duplicate_keys_go_to_different_txns(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    key = etcd.key("same")
    results = _together(20, lambda i: client.put(key, str(i), prev_kv=True))
    revisions = sorted(r.header.revision for r in results)
    assert len(set(revisions)) == 20, "two puts of one key shared a revision"
    last = max(results, key=lambda r: r.header.revision)
    kv = client.get(key)
    assert kv is not None and kv.mod_revision == last.header.revision and kv.version == 20
    # each put saw the value of the put just before it in revision order
    by_revision = sorted(results, key=lambda r: r.header.revision)
    for earlier, later in itertools.pairwise(by_revision):
        assert later.prev_kv is not None and later.prev_kv.mod_revision == earlier.header.revision


def test_a_dead_lease_fails_only_its_own_put(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    live = client.grant(30)
    dead = client.grant(30)
    client.revoke(dead)

    def put(i: int) -> object:
        try:
            return client.put(etcd.key(f"l{i}"), str(i), lease=dead if i == 7 else live)
        except LeaseNotFound as exc:
            return exc

    results = _together(20, put)
    assert isinstance(results[7], LeaseNotFound)
    assert not any(isinstance(r, Exception) for i, r in enumerate(results) if i != 7)
    kvs = client.get_prefix(etcd.key("l")).kvs
    assert sorted(int(kv.value) for kv in kvs) == [i for i in range(20) if i != 7]
    assert all(kv.lease == live.id for kv in kvs)


def test_reads_are_linearizable_and_see_earlier_writes(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    key = etcd.key("seen")

    def write_then_read(i: int) -> bool:
        client.put(f"{key}/{i}", "x")
        kv = client.get(f"{key}/{i}")  # after this caller's put returned: must see it
        return kv is not None and kv.value == b"x"

    assert all(_together(100, write_then_read))


def test_an_interrupted_caller_does_not_disturb_the_others(etcd: EtcdTestContext) -> None:
    client = etcd.client()

    def put(i: int) -> object:
        if i % 5 == 0:
            with gevent.Timeout(0.0001, False):
                client.put(etcd.key(f"t{i}"), "x")
            return None
        return client.put(etcd.key(f"t{i}"), "x")

    results = _together(50, put)
    assert all(r is not None for i, r in enumerate(results) if i % 5)
    keys = {kv.key_str for kv in client.get_prefix(etcd.key("t")).kvs}
    assert {etcd.key(f"t{i}") for i in range(50) if i % 5} <= keys
    assert client.put(etcd.key("after"), "ok").header.revision > 0  # nothing left stuck


def test_a_failed_trip_reaches_every_caller_as_its_own_error() -> None:
    client = Client(f"http://127.0.0.1:{free_port()}", timeout=2, connect_timeout=0.5)

    def get(i: int) -> object:
        try:
            return client.get(f"k{i}")
        except (ConnectionFailed, Timeout) as exc:
            return exc

    results = _together(30, get)
    assert all(isinstance(r, ConnectionFailed | Timeout) for r in results)
    assert len({id(r) for r in results}) == 30  # each caller raised its own exception object


def test_switching_it_off_sends_one_request_per_call(etcd: EtcdTestContext) -> None:
    client = etcd.client(coalesce=False)
    assert client.coalescer is None
    before = client.transport.requests
    _together(30, lambda i: client.put(etcd.key(f"off{i}"), "x"))
    assert client.transport.requests - before == 30


def test_a_lone_caller_sends_the_plain_request(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    coalescer = client.coalescer
    assert coalescer is not None
    for i in range(5):
        client.put(etcd.key(f"seq{i}"), "x")
        assert client.get(etcd.key(f"seq{i}")) is not None
    assert coalescer.batches == 0


def test_small_max_txn_ops_is_respected(etcd: EtcdTestContext) -> None:
    client = etcd.client(max_txn_ops=4)
    coalescer = client.coalescer
    assert coalescer is not None
    _together(40, lambda i: client.put(etcd.key(f"small{i}"), "x"))
    assert coalescer.coalesced <= 4 * coalescer.batches
    assert client.get_prefix(etcd.key("small"), count_only=True).count == 40


@pytest.mark.parametrize("bad", [{"coalesce": "yes"}, {"max_txn_ops": 0}, {"max_txn_ops": "8"}])
def test_bad_coalescing_options_are_refused(etcd: EtcdTestContext, bad: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        Client(etcd.endpoints, **bad)  # type: ignore[arg-type]


# --- callers' txns, nested in a batch -----------------------------------------------------


def _create(client: Client, key: str, value: str) -> Any:
    return client.txn([Compare.create_revision(key) == 0], [Op.put(key, value)], [Op.get(key)])


def test_concurrent_txns_are_coalesced_and_each_gets_its_own_outcome(
    etcd: EtcdTestContext,
) -> None:
    client = etcd.client()
    for i in range(0, 60, 3):  # every third key exists already
        client.put(etcd.key(f"c{i}"), "old")
    before = client.transport.requests
    results = _together(60, lambda i: _create(client, etcd.key(f"c{i}"), f"new{i}"))
    assert client.transport.requests - before <= 3, "the txns were not coalesced"
    for i, result in enumerate(results):
        assert result.succeeded == (i % 3 != 0)
        if i % 3 == 0:  # its own failure branch: the key's current value
            (read,) = result.responses
            assert [kv.value for kv in read.kvs] == [b"old"]
        kv = client.get(etcd.key(f"c{i}"))
        assert kv is not None and kv.value == (b"old" if i % 3 == 0 else f"new{i}".encode())


def test_127_creates_fit_one_batch_with_their_nested_operations(etcd: EtcdTestContext) -> None:
    # etcd counts the entries of a nested txn against --max-txn-ops together with the
    # outer ones: 128 nested creates would be refused as a whole, and every caller would
    # then send its own txn
    client = etcd.client()
    coalescer = client.coalescer
    assert coalescer is not None
    before, batches = client.transport.requests, coalescer.batches
    results = _together(254, lambda i: _create(client, etcd.key(f"n{i}"), "x"))
    assert all(r.succeeded for r in results)
    # the first caller finds nothing on its way and sends its own txn; the rest gather,
    # and no batch was refused (each of its callers would then have sent its own)
    assert client.transport.requests - before <= coalescer.batches - batches + 1 <= 6


def test_a_txn_never_shares_a_batch_with_a_write_of_a_key_it_compares(
    etcd: EtcdTestContext,
) -> None:
    # write skew: each txn writes the key the other compares. Applied one after the
    # other, at most one can succeed; in one batch (every compare evaluated before any
    # write) both would
    client = etcd.client()
    for round_ in range(20):
        x, y = etcd.key(f"x{round_}"), etcd.key(f"y{round_}")
        results = _together(
            2,
            lambda i, x=x, y=y: client.txn(
                [Compare.version(y if i == 0 else x) == 0], [Op.put(x if i == 0 else y, "1")]
            ),
        )
        assert [r.succeeded for r in results].count(True) == 1


def test_a_txn_with_a_nested_txn_is_sent_alone(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    coalescer = client.coalescer
    assert coalescer is not None
    results = _together(
        10,
        lambda i: client.txn([], [Op.txn([], [Op.put(etcd.key(f"deep{i}"), "x")])]),
    )
    assert all(r.succeeded for r in results)
    assert coalescer.batches == 0
    assert client.get_prefix(etcd.key("deep"), count_only=True).count == 10


def test_reads_of_one_key_share_a_batch(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    client.put(etcd.key("hot"), "v")
    before = client.transport.requests
    values = _together(50, lambda i: client.get(etcd.key("hot")))
    assert all(kv is not None and kv.value == b"v" for kv in values)
    assert client.transport.requests - before <= 3  # the first alone, two halves


# --- pipelining ---------------------------------------------------------------------------


def _in_flight(client: Client) -> list[int]:
    """Wrap the client's transport to record how many txns were on their way at once."""
    seen = [0, 0]  # now, most
    call = client.transport.call

    def counting(path: str, body: Any, **options: Any) -> Any:
        if path == "/v3/kv/txn":
            seen[0] += 1
            seen[1] = max(seen)
        try:
            return call(path, body, **options)
        finally:
            if path == "/v3/kv/txn":
                seen[0] -= 1

    client.transport.call = counting  # type: ignore[method-assign]
    return seen


def test_more_than_one_batch_is_in_flight_but_no_more_than_the_bound(
    etcd: EtcdTestContext,
) -> None:
    client = etcd.client()
    coalescer = client.coalescer
    assert coalescer is not None
    seen = _in_flight(client)

    def work(i: int) -> int:
        for j in range(10):
            client.put(etcd.key(f"pipe/{i}/{j % 3}"), str(j))
        return i

    _together(64, work)
    assert 2 <= seen[1] <= coalescer.max_inflight
    listed = client.get_prefix(etcd.key("pipe/"))
    assert listed.count == 64 * 3
    assert all(kv.value == b"9" for kv in listed.kvs if kv.key_str.endswith("/0"))


def test_a_caller_interrupted_while_its_batch_waits_is_never_applied(
    etcd: EtcdTestContext,
) -> None:
    client = etcd.client()
    coalescer = client.coalescer
    assert coalescer is not None
    gate = gevent.event.Event()
    call = client.transport.call

    def held(path: str, body: Any, **options: Any) -> Any:
        if path == "/v3/kv/txn":
            gate.wait()  # every batch in flight stays in flight
        return call(path, body, **options)

    client.transport.call = held  # type: ignore[method-assign]
    first = [gevent.spawn(client.put, etcd.key(f"w{i}"), "x") for i in range(2 * 64)]
    # two batches in flight: the next batch waits for one of them
    wait_until(lambda: coalescer._inflight[True] == coalescer.max_inflight, 5, "two batches")
    waiting = [gevent.spawn(client.put, etcd.key(f"late{i}"), "x") for i in range(10)]
    wait_until(lambda: len(coalescer._waiting[True]) == 1, 5, "a waiting batch")
    for greenlet in waiting[:5]:
        greenlet.kill(Timeout("given up"), block=True)
    gate.set()
    gevent.joinall([*first, *waiting[5:]], raise_error=True, timeout=30)
    keys = {kv.key_str for kv in client.get_prefix(etcd.key("late")).kvs}
    assert keys == {etcd.key(f"late{i}") for i in range(5, 10)}
    assert client.get_prefix(etcd.key("w"), count_only=True).count == 128


def test_the_footprint_of_a_batch_agrees_with_pairwise_overlap() -> None:
    # the union of ranges a write batch keeps must answer "does this op touch a key the
    # batch touches" exactly as checking every pair of ranges would
    import random

    from geventc.coalesce import Span, _Footprint

    def end(span: Span) -> bytes | None:  # None: every key from the start on
        if not span[1]:
            return span[0] + b"\0"
        return None if span[1] == b"\0" else span[1]

    def overlap(a: Span, b: Span) -> bool:
        a_end, b_end = end(a), end(b)
        return (a_end is None or b[0] < a_end) and (b_end is None or a[0] < b_end)

    def span(rng: random.Random) -> Span:
        key = bytes(rng.choice(b"abc") for _ in range(rng.randint(1, 3)))
        roll = rng.random()
        if roll < 0.5:
            return key, b""
        if roll < 0.6:
            return key, b"\0"
        stop = bytes(rng.choice(b"abcd") for _ in range(rng.randint(1, 3)))
        return (key, stop) if stop > key else (key, b"")

    rng = random.Random(14)
    for _ in range(3000):
        footprint, added = _Footprint(), []
        for _ in range(rng.randint(0, 8)):
            touched = span(rng)
            footprint.add(touched)
            added.append(touched)
        asked = span(rng)
        assert footprint.overlaps(asked) == any(overlap(asked, a) for a in added)


def test_a_full_batch_is_sent_before_the_greenlets_ready_after_it_have_run(
    etcd: EtcdTestContext,
) -> None:
    # thousands of greenlets spawned at once: a batch that filled up goes to etcd at
    # the loop's next turn, not once every greenlet spawned after it has run (its
    # leader's turn comes only then)
    import time

    client = etcd.client()
    coalescer = client.coalescer
    assert coalescer is not None
    sent: list[str] = []
    call = client.transport.call

    def recorded(path: str, body: Any, **options: Any) -> Any:
        sent.append(path)
        return call(path, body, **options)

    client.transport.call = recorded  # type: ignore[method-assign]
    puts = [gevent.spawn(client.put, etcd.key(f"full/{i}"), "x") for i in range(130)]
    seen: list[bool] = []

    def busy() -> None:  # a greenlet with work of its own, ready to run meanwhile
        spin = time.perf_counter() + 0.0001
        while time.perf_counter() < spin:
            pass
        seen.append("/v3/kv/txn" in sent)

    others = [gevent.spawn(busy) for _ in range(1000)]
    gevent.joinall([*puts, *others], raise_error=True, timeout=30)
    assert any(seen), "the full batch waited for every ready greenlet"
    assert all(g.value.header.revision > 0 for g in puts)
    assert client.get_prefix(etcd.key("full/"), count_only=True).count == 130

"""Counter against a real etcd: atomic adds from many greenlets and two connectors,
compare-and-set, the stored format, garbage at the key, bad input, and writes whose
answer is lost (never applied twice)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from helpers.waiting import wait_until

import geventc
from geventc.errors import IndeterminateWrite, InvalidArgument, ProtocolError
from geventc.recipes.counter import INT64_MAX, INT64_MIN, Counter
from geventc.testing import EtcdServer, FaultProxy
from geventc.wire import TxnResult


def test_missing_key_is_zero_and_values_are_decimal_text(conn: geventc.Connector) -> None:
    counter = conn.counter("/hits")
    assert counter.get() == 0
    assert conn.get("/hits") is None  # reading does not create the key
    assert counter.add() == 1
    assert counter.add(41) == 42
    stored = conn.get("/hits")
    assert stored is not None and stored.value == b"42"
    assert counter.add(-50) == -8
    assert conn.get("/hits").value == b"-8"  # type: ignore[union-attr]
    counter.set(INT64_MIN)
    assert counter.get() == INT64_MIN
    counter.reset()
    assert counter.get() == 0 and conn.get("/hits").value == b"0"  # type: ignore[union-attr]
    assert Counter(conn, "hits").get() == 0  # "hits" and "/hits" are one key
    assert repr(counter) == "Counter('/hits')"


def test_concurrent_adds_lose_and_repeat_nothing(
    conn: geventc.Connector, other: geventc.Connector
) -> None:
    """40 greenlets on two connectors add 1 five times each at once: every add returns
    a distinct new value, and the final value is the number of adds."""
    counters = [conn.counter("/shared"), other.counter("/shared")]
    returned: list[int] = []

    def worker(index: int) -> None:
        for _ in range(5):
            returned.append(counters[index % 2].add())

    gevent.joinall([gevent.spawn(worker, i) for i in range(40)], raise_error=True, timeout=30)
    assert len(returned) == 200
    assert sorted(returned) == list(range(1, 201))  # each increment seen exactly once
    assert counters[0].get() == counters[1].get() == 200


def test_concurrent_mixed_adds_sum_up(conn: geventc.Connector, other: geventc.Connector) -> None:
    """Adds of different signs and sizes from both connectors: the final value is the
    sum of the acknowledged adds."""
    counters = [conn.counter("/mixed"), other.counter("/mixed")]
    acknowledged: list[int] = []

    def worker(index: int) -> None:
        for step in (index + 1, -(index % 3), 7):
            counters[index % 2].add(step)
            acknowledged.append(step)

    gevent.joinall([gevent.spawn(worker, i) for i in range(30)], raise_error=True, timeout=30)
    assert counters[1].get() == sum(acknowledged)


def test_compare_and_set(conn: geventc.Connector) -> None:
    counter = conn.counter("/cas")
    assert counter.compare_and_set(1, 5) is False  # absent counts as 0
    assert conn.get("/cas") is None
    assert counter.compare_and_set(0, 5) is True
    assert counter.compare_and_set(4, 9) is False
    assert counter.get() == 5
    assert counter.compare_and_set(5, 9) is True
    assert counter.get() == 9
    conn.put("/cas", "+9")  # what strconv.Atoi also reads as 9
    assert counter.compare_and_set(9, 10) is True
    assert conn.get("/cas").value == b"10"  # type: ignore[union-attr]


def test_concurrent_compare_and_set_has_one_winner(
    conn: geventc.Connector, other: geventc.Connector
) -> None:
    counters = [conn.counter("/race"), other.counter("/race")]
    counters[0].set(3)
    greenlets = [gevent.spawn(counters[i % 2].compare_and_set, 3, 100 + i) for i in range(20)]
    gevent.joinall(greenlets, raise_error=True, timeout=20)
    winners = [i for i, g in enumerate(greenlets) if g.value]
    assert len(winners) == 1
    assert counters[0].get() == 100 + winners[0]


def test_int64_bounds(conn: geventc.Connector) -> None:
    counter = conn.counter("/big")
    counter.set(INT64_MAX)
    with pytest.raises(InvalidArgument, match="int64"):
        counter.add(1)
    assert counter.get() == INT64_MAX  # nothing was written
    counter.set(INT64_MIN)
    with pytest.raises(InvalidArgument, match="int64"):
        counter.add(-1)
    assert counter.add(INT64_MAX) == -1


@pytest.mark.parametrize(
    "garbage", [b"abc", b"", b" 4", b"4\n", b"1_000", b"1.5", b"9223372036854775808", b"\xff"]
)
def test_garbage_at_the_key_is_reported(conn: geventc.Connector, garbage: bytes) -> None:
    """A value strconv.Atoi would refuse is no counter: every call says so and writes
    nothing (the message does not quote the value)."""
    conn.put("/junk", garbage)
    counter = conn.counter("/junk")
    for call in (counter.get, counter.add, lambda: counter.compare_and_set(0, 1)):
        with pytest.raises(ProtocolError, match="not a counter") as caught:
            call()
        assert "'/junk'" in str(caught.value)
        if garbage.strip():
            assert repr(garbage) not in str(caught.value)
    assert conn.get("/junk").value == garbage  # type: ignore[union-attr]
    counter.set(3)  # set overwrites whatever is there
    assert counter.get() == 3


def test_bad_input(conn: geventc.Connector) -> None:
    with pytest.raises(InvalidArgument, match="Connector"):
        Counter("http://127.0.0.1:2379", "/x")  # type: ignore[arg-type]
    for path in ("", 5, None):
        with pytest.raises(InvalidArgument, match="path"):
            conn.counter(path)  # type: ignore[arg-type]
    counter = conn.counter("/x")
    for bad in ("1", True, 1.0, None, 2**63, -(2**63) - 1):
        with pytest.raises(InvalidArgument, match="n must"):
            counter.add(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="n must"):
            counter.set(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="expected"):
        counter.compare_and_set("0", 1)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="new"):
        counter.compare_and_set(0, 2**64)
    assert conn.get("/x") is None  # nothing was written


# --- lost answers ----------------------------------------------------------------------


class FaultyConnector(geventc.Connector):
    """A real connector that runs the next hook of ``before_txn`` just before each txn
    it sends: a network fault hits exactly the counter's guarded write."""

    def __init__(self, endpoint: str, timeout: float) -> None:
        super().__init__(geventc.Client([endpoint], timeout=timeout))
        self.before_txn: list[Callable[[], object]] = []
        self.txns = 0

    def __enter__(self) -> FaultyConnector:
        return self

    def txn(self, *args: Any, **kwargs: Any) -> TxnResult:
        self.txns += 1
        if self.before_txn:
            self.before_txn.pop(0)()
        return super().txn(*args, **kwargs)


@pytest.fixture
def proxy(private_server: EtcdServer) -> Iterator[FaultProxy]:
    with FaultProxy(private_server.endpoint) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def direct(private_server: EtcdServer) -> Iterator[geventc.Connector]:
    with geventc.connect(private_server.endpoints) as connector:
        yield connector


def _held_requests(proxy: FaultProxy) -> bool:
    """True when the proxy holds bytes of a request (the test harness's internals)."""
    return any(pipe.held for link in proxy._links for pipe in link.pipes)


def _drop_the_request(proxy: FaultProxy) -> None:
    """Hold the next request, then kill it with its connection (etcd never sees it)
    and heal before its sender runs again."""
    proxy.cut("to_server")

    def drop() -> None:
        wait_until(lambda: _held_requests(proxy), 5, "the request held by the proxy")
        proxy.reset()
        proxy.heal()

    gevent.spawn(drop)


def test_lost_answer_raises_and_is_never_reapplied(
    direct: geventc.Connector, proxy: FaultProxy
) -> None:
    """The add's txn reaches etcd but its answer (and the resend's) is lost: add raises
    IndeterminateWrite, and the counter went up exactly once: the resend, guarded by the
    same mod revision, could not apply a second time."""
    direct.counter("/lost").set(10)
    with FaultyConnector(proxy.endpoint, timeout=1.0) as faulty:
        faulty.before_txn.append(lambda: proxy.cut("to_client"))
        with pytest.raises(IndeterminateWrite, match="may or may not") as caught:
            faulty.counter("/lost").add(5)
        assert faulty.txns == 2  # the txn and its resend
        assert "not re-applied" in str(caught.value)
        proxy.heal()
    assert direct.counter("/lost").get() == 15
    stored = direct.get("/lost")
    assert stored is not None and stored.version == 2  # the set and one add


def test_lost_request_is_resent_once_and_applies_once(
    direct: geventc.Connector, proxy: FaultProxy
) -> None:
    """The add's txn is sent but dropped before etcd (its connection is reset): the
    resend of the same guarded txn applies it, once, and add returns normally."""
    direct.counter("/dropped").set(10)
    with FaultyConnector(proxy.endpoint, timeout=5.0) as faulty:
        faulty.before_txn.append(lambda: _drop_the_request(proxy))
        assert faulty.counter("/dropped").add(5) == 15
        assert faulty.txns == 2
    stored = direct.get("/dropped")
    assert stored is not None and stored.value == b"15" and stored.version == 2


def test_lost_answer_of_a_first_add_is_not_resent(
    direct: geventc.Connector, proxy: FaultProxy
) -> None:
    """While the key is absent (guard create_revision == 0, which a delete would make
    true again) a lost answer is reported at once, never resent."""
    with FaultyConnector(proxy.endpoint, timeout=5.0) as faulty:
        faulty.before_txn.append(lambda: _drop_the_request(proxy))
        with pytest.raises(IndeterminateWrite, match="may or may not"):
            faulty.counter("/fresh").add(5)
        assert faulty.txns == 1
    assert direct.get("/fresh") is None  # the dropped request was never applied

"""STM (etcd ``concurrency.STM`` semantics) against a real etcd: the bank-transfer
invariant under concurrency per isolation level, Go's guards per level (which
interference re-runs ``apply``, which does not), snapshot reads, re-reads without a
round trip, retries, prefetch, apply's exceptions, lost answers and bad input."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from helpers.waiting import wait_until

import geventc
from geventc.errors import (
    IndeterminateWrite,
    InvalidArgument,
    ProtocolError,
    RetriesExhausted,
)
from geventc.stm import STM, Isolation, run_stm
from geventc.testing import EtcdServer, FaultProxy
from geventc.testing.plugin import EtcdTestContext
from geventc.wire import TxnResult

ACCOUNTS = [f"/bank/{i}" for i in range(5)]
GUARDED = [Isolation.SERIALIZABLE_SNAPSHOT, Isolation.SERIALIZABLE, Isolation.REPEATABLE_READS]


class CountingConnector(geventc.Connector):
    """A real connector that counts its txns and runs the next ``before_txn`` hook just
    before each one (to interfere at an exact step)."""

    def __init__(self, endpoints: list[str], namespace: str | None = None, **options: Any):
        super().__init__(geventc.Client(endpoints, **options), namespace)
        self.before_txn: list[Callable[[], object] | None] = []
        self.txns = 0

    def __enter__(self) -> CountingConnector:
        return self

    def txn(self, *args: Any, **kwargs: Any) -> TxnResult:
        self.txns += 1
        hook = self.before_txn.pop(0) if self.before_txn else None
        if hook is not None:
            hook()
        return super().txn(*args, **kwargs)


@pytest.fixture
def counting(etcd: EtcdTestContext, conn_namespace: str) -> Iterator[CountingConnector]:
    with CountingConnector(etcd.endpoints, conn_namespace) as connector:
        yield connector


def _balances(conn: geventc.Connector) -> list[int]:
    balances = []
    for key in ACCOUNTS:
        kv = conn.get(key)
        assert kv is not None, f"account {key} vanished"
        balances.append(int(kv.value))
    return balances


def _run_transfers(
    conns: list[geventc.Connector], isolation: Isolation | str, greenlets: int, each: int
) -> int:
    """``greenlets`` greenlets each make ``each`` random transfers between the accounts
    (never overdrawing); the number of transfers made."""
    made: list[bool] = []

    def transfers(index: int) -> None:
        rng = random.Random(index)
        for _ in range(each):
            source, target = rng.sample(ACCOUNTS, 2)
            amount = rng.randint(1, 60)

            def transfer(
                tx: STM, source: str = source, target: str = target, amount: int = amount
            ) -> bool:
                balance = int(tx.get(source))
                if balance < amount:
                    return False
                tx.put(source, str(balance - amount))
                tx.put(target, str(int(tx.get(target)) + amount))
                return True

            made.append(conns[index % 2].stm(transfer, isolation=isolation))

    jobs = [gevent.spawn(transfers, i) for i in range(greenlets)]
    gevent.joinall(jobs, raise_error=True, timeout=60)
    assert all(job.successful() for job in jobs)
    return sum(made)


@pytest.mark.parametrize(
    "isolation", [*GUARDED, "serializable-snapshot", "SERIALIZABLE", "repeatable_reads"]
)
def test_transfers_keep_the_total(
    conn: geventc.Connector, other: geventc.Connector, isolation: Isolation | str
) -> None:
    """Concurrent transfers from two connectors: the levels that guard the read set keep
    the bank's total, and no account goes negative."""
    for key in ACCOUNTS:
        conn.put(key, "100")
    made = _run_transfers([conn, other], isolation, greenlets=16, each=4)
    assert made > 0
    balances = _balances(conn)
    assert sum(balances) == 500 and min(balances) >= 0, balances


@pytest.mark.parametrize("isolation", [Isolation.SERIALIZABLE_SNAPSHOT, Isolation.REPEATABLE_READS])
def test_transfers_through_different_members_keep_the_total(
    etcd_cluster: EtcdTestContext, isolation: Isolation
) -> None:
    """On a 3-member cluster, each connector on one member: repeatable reads read the
    member's own (possibly lagging) state, as Go does, and the read-set guard still
    keeps the total."""
    namespace = etcd_cluster.prefix.strip("/")
    first, last = etcd_cluster.endpoints[0], etcd_cluster.endpoints[-1]
    with (
        geventc.connect([first], namespace=namespace) as one,
        geventc.connect([last], namespace=namespace) as other,
    ):
        for key in ACCOUNTS:
            one.put(key, "100")
        assert _run_transfers([one, other], isolation, greenlets=10, each=3) > 0
        balances = _balances(other)
        assert sum(balances) == 500 and min(balances) >= 0, balances


def test_read_committed_transfers_commit(conn: geventc.Connector, other: geventc.Connector) -> None:
    """READ_COMMITTED has no guard (lost updates are allowed): every run commits once."""
    for key in ACCOUNTS:
        conn.put(key, "100")
    _run_transfers([conn, other], Isolation.READ_COMMITTED, greenlets=8, each=3)
    assert all(conn.get(key) is not None for key in ACCOUNTS)


def test_transaction_view(conn: geventc.Connector, other: geventc.Connector) -> None:
    """get/get_bytes/put/delete/rev inside apply: own writes are visible to the
    transaction only, until it commits; absent keys read as "" and revision 0."""
    conn.put("/a", "1")
    conn.put("/bin", b"\xff\x00")
    mod_a = conn.get("/a").mod_revision  # type: ignore[union-attr]

    def apply(tx: STM) -> tuple[Any, ...]:
        seen = (tx.get("/a"), tx.get("a"), tx.get("/none"), tx.rev("/a"), tx.rev("/none"))
        tx.put("/a", "2")
        tx.put("/new", b"bytes")
        tx.delete("/bin")
        inside = (tx.get("/a"), tx.get_bytes("/new"), tx.get("/bin"), tx.rev("/a"))
        outside = other.get("/a").value  # type: ignore[union-attr]
        return seen, inside, outside

    seen, inside, outside = conn.stm(apply)
    assert seen == ("1", "1", "", mod_a, 0)
    assert inside == ("2", b"bytes", "", mod_a)  # rev is the read revision, as in Go
    assert outside == b"1"  # nothing is written before the commit
    assert other.get("/a").value == b"2"  # type: ignore[union-attr]
    assert other.get("/new").value == b"bytes"  # type: ignore[union-attr]
    assert other.get("/bin") is None

    def binary(tx: STM) -> bytes:
        return tx.get_bytes("/raw")

    conn.put("/raw", b"\xff")
    assert conn.stm(binary) == b"\xff"
    with pytest.raises(ProtocolError, match="get_bytes"):
        conn.stm(lambda tx: tx.get("/raw"))


def _interfering(
    conn: geventc.Connector,
    other: geventc.Connector,
    isolation: Isolation,
    read: list[str],
    write: str,
    touch: str,
) -> tuple[int, list[list[str]]]:
    """Run a transaction that reads ``read`` and writes ``write``, while ``other``
    writes ``touch`` during its first run; (runs, what each run read)."""
    runs: list[list[str]] = []

    def apply(tx: STM) -> None:
        values = [tx.get(key) for key in read[:1]]
        if not runs:
            other.put(touch, "touched")
        values += [tx.get(key) for key in read[1:]]
        runs.append(values)
        tx.put(write, "written")

    conn.stm(apply, isolation=isolation)
    return len(runs), runs


@pytest.mark.parametrize("isolation", list(Isolation))
def test_a_changed_read_reruns_apply_except_read_committed(
    conn: geventc.Connector, other: geventc.Connector, isolation: Isolation
) -> None:
    """A key read, then changed by another writer before the commit: the guarded levels
    re-run apply on the fresh value; READ_COMMITTED commits the first run."""
    conn.put("/k", "old")
    runs, seen = _interfering(conn, other, isolation, ["/k"], "/out", "/k")
    if isolation is Isolation.READ_COMMITTED:
        assert runs == 1
    else:
        assert runs == 2 and seen == [["old"], ["touched"]]
    assert conn.get("/out").value == b"written"  # type: ignore[union-attr]


@pytest.mark.parametrize("isolation", list(Isolation))
def test_a_write_after_the_snapshot_conflicts_only_in_serializable_snapshot(
    conn: geventc.Connector, other: geventc.Connector, isolation: Isolation
) -> None:
    """A key written but not read, changed by another writer after the first read:
    only SERIALIZABLE_SNAPSHOT guards the write set (``mod_revision < first + 1``)."""
    conn.put("/r", "x")
    conn.put("/w", "old")
    runs, _ = _interfering(conn, other, isolation, ["/r"], "/w", "/w")
    assert runs == (2 if isolation is Isolation.SERIALIZABLE_SNAPSHOT else 1)
    assert conn.get("/w").value == b"written"  # type: ignore[union-attr]


@pytest.mark.parametrize("isolation", list(Isolation))
def test_snapshot_levels_read_at_the_first_read(
    conn: geventc.Connector, other: geventc.Connector, isolation: Isolation
) -> None:
    """A key changed after the first read: the serializable levels read its value at
    the first read's revision (and then conflict on it), the others the new value."""
    conn.put("/first", "1")
    conn.put("/second", "old")
    runs, seen = _interfering(conn, other, isolation, ["/first", "/second"], "/out", "/second")
    if isolation.snapshot:
        assert seen == [["1", "old"], ["1", "touched"]]
    elif isolation is Isolation.REPEATABLE_READS:
        assert seen == [["1", "touched"]] and runs == 1
    else:
        assert seen == [["1", "touched"]]


@pytest.mark.parametrize(
    ("isolation", "txns"),
    [(Isolation.SERIALIZABLE_SNAPSHOT, 3), (Isolation.SERIALIZABLE, 3), ("repeatable_reads", 4)],
)
def test_serializable_reruns_reuse_the_failed_commits_reads(
    counting: CountingConnector, other: geventc.Connector, isolation: Isolation | str, txns: int
) -> None:
    """As in Go, a failed serializable commit re-reads its read set in its failure
    branch: the re-run reads no key again (read, commit, commit); repeatable reads
    reads again (read, commit, read, commit)."""
    other.put("/hot", "0")
    touched: list[bool] = []

    def apply(tx: STM) -> str:
        value = tx.get("/hot")
        if not touched:
            touched.append(True)
            other.put("/hot", "1")
        tx.put("/hot", str(int(value) + 10))
        return value

    assert counting.stm(apply, isolation=isolation) == "1"
    assert counting.txns == txns
    assert other.get("/hot").value == b"11"  # type: ignore[union-attr]


def test_prefetch_reads_every_key_in_one_request(
    counting: CountingConnector, other: geventc.Connector
) -> None:
    for key in ("/p1", "/p2", "/p3"):
        other.put(key, key)

    def apply(tx: STM) -> list[str]:
        return [tx.get(key) for key in ("/p1", "/p2", "/p3", "p1")]

    got = run_stm(counting, apply, isolation="serializable", prefetch=["/p1", "/p2", b"/p3"])
    assert got == ["/p1", "/p2", "/p3", "/p1"]
    assert counting.txns == 2  # the prefetch and the commit


def test_retries_bound_the_reruns(conn: geventc.Connector, other: geventc.Connector) -> None:
    conn.put("/busy", "0")
    runs: list[int] = []

    def always_conflicting(tx: STM) -> None:
        value = tx.get("/busy")
        other.put("/busy", str(len(runs)))  # every run's read is stale at its commit
        runs.append(1)
        tx.put("/result", value)

    with pytest.raises(RetriesExhausted, match="retries=2"):
        conn.stm(always_conflicting, retries=2)
    assert len(runs) == 3  # the first run and two re-runs
    assert conn.get("/result") is None  # nothing of it was written

    runs.clear()
    with pytest.raises(RetriesExhausted):
        conn.stm(always_conflicting, retries=0)
    assert len(runs) == 1

    def conflicting_once(tx: STM) -> int:
        tx.get("/busy")
        if not runs:
            other.put("/busy", "again")
        runs.append(1)
        tx.put("/result", "done")
        return len(runs)

    runs.clear()
    assert conn.stm(conflicting_once, retries=1) == 2
    assert conn.get("/result").value == b"done"  # type: ignore[union-attr]


def test_apply_exceptions_propagate_and_write_nothing(conn: geventc.Connector) -> None:
    runs: list[int] = []

    def failing(tx: STM) -> None:
        runs.append(1)
        tx.put("/never", "x")
        raise LookupError("apply gave up")

    with pytest.raises(LookupError, match="apply gave up"):
        conn.stm(failing)
    assert runs == [1] and conn.get("/never") is None


def test_concurrent_increments_lose_nothing(
    conn: geventc.Connector, other: geventc.Connector
) -> None:
    """A counter made of STM increments from 20 greenlets on two connectors."""

    def increment(tx: STM) -> int:
        value = int(tx.get("/n") or "0") + 1
        tx.put("/n", str(value))
        return value

    results: list[int] = []

    def worker(index: int) -> None:
        for _ in range(4):
            results.append([conn, other][index % 2].stm(increment))

    gevent.joinall([gevent.spawn(worker, i) for i in range(20)], raise_error=True, timeout=60)
    assert sorted(results) == list(range(1, 81))
    assert conn.get("/n").value == b"80"  # type: ignore[union-attr]


def test_bad_input(conn: geventc.Connector) -> None:
    with pytest.raises(InvalidArgument, match="callable"):
        conn.stm("not a function")  # type: ignore[arg-type]
    for isolation in ("linearizable", "", 3, None, Isolation):
        with pytest.raises(InvalidArgument, match="isolation must be"):
            conn.stm(lambda tx: None, isolation=isolation)  # type: ignore[arg-type]
    for retries in (-1, "1", True, 1.5):
        with pytest.raises(InvalidArgument, match="retries"):
            conn.stm(lambda tx: None, retries=retries)  # type: ignore[arg-type]
    for prefetch in ("/a", b"/a", 5, [""], [3]):
        with pytest.raises(InvalidArgument):
            run_stm(conn, lambda tx: None, prefetch=prefetch)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="Connector"):
        run_stm("http://127.0.0.1:2379", lambda tx: None)  # type: ignore[arg-type]
    for bad in (
        lambda tx: tx.get(""),
        lambda tx: tx.get(7),
        lambda tx: tx.put("/k", 7),
        lambda tx: tx.put(None, "v"),
        lambda tx: tx.put("/k", "v", lease="x"),
        lambda tx: tx.delete(""),
        lambda tx: tx.rev(b""),
    ):
        with pytest.raises(InvalidArgument):
            conn.stm(bad)
    assert Isolation.of("Read Committed") is Isolation.READ_COMMITTED
    assert conn.get_prefix("/").kvs == ()  # nothing was written


# --- lost answers ----------------------------------------------------------------------


@pytest.fixture
def proxy(private_server: EtcdServer) -> Iterator[FaultProxy]:
    with FaultProxy(private_server.endpoint) as fault_proxy:
        yield fault_proxy


def test_a_lost_commit_answer_propagates_without_a_rerun(
    private_server: EtcdServer, proxy: FaultProxy
) -> None:
    """The commit reaches etcd, its answer is lost: IndeterminateWrite reaches the
    caller and apply is not run again (the write is in etcd: it did commit)."""
    runs: list[int] = []

    def apply(tx: STM) -> None:
        runs.append(1)
        tx.put("/paid", str(int(tx.get("/paid") or "0") + 1))

    with (
        geventc.connect(private_server.endpoints) as direct,
        CountingConnector([proxy.endpoint], timeout=1.0) as faulty,
    ):
        faulty.before_txn += [None, lambda: proxy.cut("to_client")]  # the read, the commit
        with pytest.raises(IndeterminateWrite):
            faulty.stm(apply)
        proxy.heal()
        assert runs == [1] and faulty.txns == 2
        assert direct.get("/paid").value == b"1"  # type: ignore[union-attr]


def test_a_dropped_read_is_sent_again(private_server: EtcdServer, proxy: FaultProxy) -> None:
    """A read whose request dies after it was sent (reset connection) is re-sent: a
    read-only txn changes nothing, so the transaction goes on."""

    def drop_the_read() -> None:
        proxy.cut("to_server")

        def drop() -> None:
            wait_until(
                lambda: any(p.held for link in proxy._links for p in link.pipes),
                5,
                "the read held by the proxy",
            )
            proxy.reset()
            proxy.heal()

        gevent.spawn(drop)

    with (
        geventc.connect(private_server.endpoints) as direct,
        CountingConnector([proxy.endpoint], timeout=5.0) as faulty,
    ):
        direct.put("/seen", "v")
        assert faulty.get("/seen") is not None  # a connection through the proxy is open
        faulty.before_txn.append(drop_the_read)
        assert faulty.stm(lambda tx: tx.get("/seen")) == "v"
        assert faulty.txns == 3  # the dropped read, its resend, the commit

"""Go ``concurrency.STM`` and geventc's STM and Counter working on the same keys at once.

Go peers (etcd's own ``client/v3/concurrency``, pinned in ``go.mod``) and geventc
greenlets start together (all wait for one start key) and run their transactions
concurrently against the same etcd, on the same key strings (no namespace):

- random transfers between accounts under each guarded isolation level keep the
  bank's total, and no balance goes negative, whoever commits;
- Go STM increments, geventc STM increments and geventc ``Counter.add`` on one key add
  up exactly: no increment is lost or applied twice across the two implementations;
- a geventc Counter's value is what Go's ``strconv.Atoi`` parses, int64 bounds too.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from typing import Any

import gevent
import pytest
from gopeer import GoPeer, GoPeers, only

import geventc
from geventc.recipes.counter import INT64_MAX, INT64_MIN
from geventc.stm import STM, Isolation
from geventc.testing.plugin import EtcdTestContext

ACCOUNTS = 6
BALANCE = 100
GO_TRANSFERS = 100
GUARDED = [Isolation.SERIALIZABLE_SNAPSHOT, Isolation.SERIALIZABLE, Isolation.REPEATABLE_READS]


def _start_together(
    conn: geventc.Connector,
    start: str,
    peers: Sequence[GoPeer],
    jobs: Sequence[Callable[[], object]],
) -> list[gevent.Greenlet[[], Any]]:
    """Once every Go peer is connected, start the geventc jobs and the peers at once
    (the peers wait for the ``start`` key)."""
    for peer in peers:
        peer.expect("ready", timeout=15)
    greenlets = [gevent.spawn(job) for job in jobs]
    conn.put(start, "go")
    return greenlets


def _transfers(conn: geventc.Connector, path: str, isolation: Isolation, seed: int) -> int:
    """Five random transfers like the Go peer's (1 to 20, never overdrawing)."""
    rng = random.Random(seed)
    made = 0
    for _ in range(5):
        source, target = (f"{path}/{i}" for i in rng.sample(range(ACCOUNTS), 2))
        amount = rng.randint(1, 20)

        def transfer(
            tx: STM, source: str = source, target: str = target, amount: int = amount
        ) -> bool:
            balance = int(tx.get(source) or "0")
            if balance < amount:
                return False
            tx.put(source, str(balance - amount))
            tx.put(target, str(int(tx.get(target) or "0") + amount))
            return True

        made += conn.stm(transfer, isolation=isolation)
    return made


@pytest.mark.parametrize("isolation", GUARDED, ids=lambda level: level.value)
def test_go_and_geventc_transfers_keep_the_total(
    conn: geventc.Connector, go_peers: GoPeers, etcd: EtcdTestContext, isolation: Isolation
) -> None:
    path, start = etcd.key("bank"), etcd.key("start")
    for i in range(ACCOUNTS):
        conn.put(f"{path}/{i}", str(BALANCE))
    go = go_peers.start(
        "stm-transfer",
        endpoints=etcd.endpoints,
        path=path,
        n=GO_TRANSFERS,
        count=ACCOUNTS,
        isolation=isolation.value,
        key=start,
    )
    jobs = [functools.partial(_transfers, conn, path, isolation, seed) for seed in range(8)]
    greenlets = _start_together(conn, start, [go], jobs)
    done = go.expect("done", timeout=30)
    gevent.joinall(greenlets, raise_error=True, timeout=30)
    assert done["transfers"] == GO_TRANSFERS and done["runs"] >= GO_TRANSFERS
    balances = [conn.counter(f"{path}/{i}").get() for i in range(ACCOUNTS)]
    assert sum(balances) == ACCOUNTS * BALANCE, f"money made or lost: {balances}"
    assert min(balances) >= 0
    made: int = done["made"] + sum(g.get() for g in greenlets)
    assert made > 0


def test_go_stm_geventc_stm_and_counter_increments_add_up(
    conn: geventc.Connector, go_peers: GoPeers, etcd: EtcdTestContext
) -> None:
    """Two Go peers (serializable snapshot, repeatable reads), geventc STM increments
    and geventc Counter adds on one key: the final value is the number of increments,
    as geventc and Go's strconv.Atoi both read it."""
    key, start = etcd.key("hits"), etcd.key("start")
    peers = [
        go_peers.start(
            "stm-increment", endpoints=etcd.endpoints, path=key, n=40, isolation=level, key=start
        )
        for level in ("serializable-snapshot", "repeatable-reads")
    ]
    counter = conn.counter(key)

    def stm_increments() -> None:
        for _ in range(8):
            conn.stm(lambda tx: tx.put(key, str(int(tx.get(key) or "0") + 1)))

    def counter_adds() -> None:
        for _ in range(8):
            counter.add()

    jobs = [stm_increments] * 5 + [counter_adds] * 5
    greenlets = _start_together(conn, start, peers, jobs)
    runs = [peer.expect("done", timeout=30)["runs"] for peer in peers]
    gevent.joinall(greenlets, raise_error=True, timeout=30)
    assert min(runs) >= 40
    total = 2 * 40 + 5 * 8 + 5 * 8
    assert counter.get() == total
    read = only(go_peers.run("counter-read", endpoints=etcd.endpoints, path=key), "counter")
    assert read == {**read, "value": total, "raw": str(total)}


@pytest.mark.parametrize("value", [0, 42, -7, INT64_MAX, INT64_MIN])
def test_go_reads_a_geventc_counter(
    conn: geventc.Connector, go_peers: GoPeers, etcd: EtcdTestContext, value: int
) -> None:
    key = etcd.key("counter")
    conn.counter(key).set(value)
    read = only(go_peers.run("counter-read", endpoints=etcd.endpoints, path=key), "counter")
    assert (read["value"], read["raw"]) == (value, str(value))

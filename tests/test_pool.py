"""Connection pools under interrupted callers."""

from __future__ import annotations

import gevent

from geventc.testing.plugin import EtcdTestContext


def test_callers_interrupted_while_waiting_for_a_connection_break_no_later_write(
    etcd: EtcdTestContext,
) -> None:
    # a caller interrupted (e.g. by a stop() bound) while it waits for a pooled connection
    # must not leave the pool over-full: later writes failed with IndeterminateWrite
    # "Pool reached maximum size and no more connections are allowed."
    client = etcd.client(pool_size=4, coalesce=False)
    failures: list[BaseException] = []

    def put(i: int) -> None:
        try:
            client.put(etcd.key(f"p{i}"), "x")
        except Exception as exc:
            failures.append(exc)

    def impatient(i: int) -> None:
        with gevent.Timeout(0.001 * (i % 7), False):  # type: ignore[arg-type]
            put(i)

    for _ in range(3):
        greenlets = [gevent.spawn(put if i % 2 else impatient, i) for i in range(200)]
        gevent.joinall(greenlets)
    assert failures == []

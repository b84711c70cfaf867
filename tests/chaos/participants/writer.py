"""Exactly-once participant: writes the sequence 1, 2, ..., N.

Value n is written by one txn that succeeds only if ``/seq/counter`` holds n - 1, and
puts ``/seq/counter`` = n and ``/seq/items/<n % 50>`` = n. So the committed history is
exactly 1..N (whatever was retried, killed or indeterminate): one revision per n, two
events in it. Records ``ack`` (n, revision) for every write known to have committed;
``done`` when N is reached. A respawned writer carries on from the stored counter.
"""

from __future__ import annotations

import time

import gevent

from geventc import Op

from . import common

COUNTER = "/seq/counter"
ITEMS = 50


def main() -> None:
    parser = common.options(__doc__ or "")
    parser.add_argument("--count", type=int, required=True, help="N")
    parser.add_argument("--rate", type=float, default=0.0, help="writes per second (0: max)")
    args = parser.parse_args()
    conn = common.connect(args)
    value, revision = common.read_counter(conn, COUNTER)
    common.emit("resume", value=value, revision=revision)
    common.emit("ready")
    started = time.monotonic()
    first = value
    while value < args.count:
        if args.rate:
            due = started + (value - first) / args.rate
            if due > time.monotonic():
                gevent.sleep(due - time.monotonic())
        n = value + 1
        puts = [Op.put(COUNTER, str(n)), Op.put(f"/seq/items/{n % ITEMS}", str(n))]
        value = common.write_next(conn, COUNTER, n, puts)
    common.emit("done", value=value)
    common.sleep_forever()


if __name__ == "__main__":
    common.run(main)

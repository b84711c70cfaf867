"""Freshness participant: the writer whose changes the readers must keep up with.

Value n (1, 2, ...) is one txn that succeeds only if ``/fresh/counter`` holds n - 1
and puts ``/fresh/counter`` = n and, for each reader's recipe, one item of its prefix
(see ``checks.FRESH_PATHS`` and ``checks.fresh_name``): ``/fresh/svc/s<n % K>`` = n
(ServiceTracker), ``/fresh/config/c<n % K>`` = n (ConfigWatcher) and the Kitex
instance ``fresh/registry/fsvc/10.9.0.<n % K>:80`` tagged ``n`` (Resolver). So the
state at value n is fixed: the K newest values. Records ``ack`` (n, revision) for every
value known to have committed, the moment it is known (a value whose answer was lost
is acknowledged, ``late``, once a read shows it). It writes
through the members' own client URLs, not their proxies, so it keeps writing while the
readers' proxies are frozen. Commands: ``stop`` stops writing and records ``done``.
"""

from __future__ import annotations

import time

from geventc import Instance, Op, TxnOp
from geventc.instances import encode

from ..checks import FRESH_COUNTER as COUNTER
from ..checks import FRESH_PATHS, FRESH_SERVICE, fresh_name
from . import common


def puts(n: int, keys: int) -> list[TxnOp]:
    """The txn's puts of value ``n`` (see the module docstring)."""
    address = fresh_name("resolver", n, keys)
    instance = Instance(FRESH_SERVICE, address, tags={"n": str(n)})
    return [
        Op.put(COUNTER, str(n)),
        *(
            Op.put(f"{FRESH_PATHS[kind]}/{fresh_name(kind, n, keys)}", str(n))
            for kind in ("tracker", "config")
        ),
        Op.put(f"{FRESH_PATHS['resolver']}/{FRESH_SERVICE}/{address}", encode(instance)),
    ]


def main() -> None:
    parser = common.options(__doc__ or "")
    parser.add_argument("--rate", type=float, default=20.0, help="values per second")
    parser.add_argument("--keys", type=int, default=10, help="K: items per recipe")
    args = parser.parse_args()
    conn = common.connect(args)
    stop = common.stop_on_command()
    value, revision = common.read_counter(conn, COUNTER)
    common.emit("resume", value=value, revision=revision)
    common.emit("ready")
    while not stop.is_set():
        started = time.monotonic()
        n = value + 1
        value = common.write_next(conn, COUNTER, n, puts(n, args.keys))
        stop.wait(max(0.0, started + 1.0 / args.rate - time.monotonic()))
    common.emit("done", value=value)
    common.sleep_forever()


if __name__ == "__main__":
    common.run(main)

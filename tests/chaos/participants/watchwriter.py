"""Watch-guarantee writer: random puts, deletes and multi-key txns under ``/w/``.

Several greenlets share one connector (so requests coalesce) and write, until the
harness sends ``stop``: a put of one key, a delete of one key, or a txn of 2 to 4 puts
and deletes (sometimes guarded by a compare on a key's modification revision, with an
``else`` branch that writes too), on ``/w/k0`` .. ``/w/k<keys-1>``, now and then on
``/w2/x`` (a sibling outside the watched prefix ``/w/``) and on ``/w/one`` (the key the
single-key watches follow), and rarely on ``/w/q/a`` (the quiet key of a progress
watch that is idle most of the time, so etcd sends it progress notifications). Every
value is unique (``<pid>-<greenlet>-<n>``), so each event in a watch is traced to
exactly one write. Records ``wack`` (the revision and the puts of every write etcd
confirmed: the checks trace them in the reference history) and ``werr`` (failed or
indeterminate writes); ``done`` with the count.
"""

from __future__ import annotations

import os
import random

import gevent

import geventc
from geventc import Compare, Op
from geventc.errors import IndeterminateWrite

from . import common

#: a key written rarely: a progress watch of ``/w/q/`` is idle (progress notifications
#: come) while the others are busy
QUIET = "/w/q/a"


def main() -> None:
    parser = common.options(__doc__ or "")
    parser.add_argument("--greenlets", type=int, default=4)
    parser.add_argument("--rate", type=float, default=80.0, help="writes per second in all")
    parser.add_argument("--keys", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", type=float, default=0.005, help="share of writes to /w/q/a")
    args = parser.parse_args()
    conn = common.connect(args)
    stop = common.stop_on_command()
    keys = [f"/w/k{i}" for i in range(args.keys)] + ["/w/one", "/w/one", "/w2/x"]
    counts = [0]
    pid = os.getpid()

    def write(g: int) -> None:
        rng = random.Random(f"{args.seed}:{pid}:{g}")
        n = 0
        pause = args.greenlets / args.rate if args.rate else 0.0
        while not stop.is_set():
            n += 1
            value = f"{pid}-{g}-{n}"
            roll = rng.random()
            puts: list[tuple[str, str]] = []
            try:
                if rng.random() < args.quiet:  # the key of the quiet progress watch
                    puts = [(QUIET, value)]
                    revision, succeeded = conn.put(QUIET, value).header.revision, True
                elif roll < 0.45:
                    key = rng.choice(keys)
                    puts = [(key, value)]
                    revision = conn.put(key, value).header.revision
                    succeeded = True
                elif roll < 0.65:
                    key = rng.choice(keys)
                    gone = conn.delete(key)
                    revision, succeeded = gone.header.revision, True
                else:
                    chosen = rng.sample(keys, rng.randint(2, 4))
                    ops: list[geventc.TxnOp] = []
                    for i, key in enumerate(chosen):
                        if rng.random() < 0.7:
                            ops.append(Op.put(key, f"{value}.{i}"))
                            puts.append((key, f"{value}.{i}"))
                        else:
                            ops.append(Op.delete(key))
                    compares: list[geventc.Comparison] = []
                    guard = chosen[0]
                    otherwise: list[geventc.TxnOp] = []
                    if rng.random() < 0.3:
                        guard = rng.choice(keys)
                        compares = [Compare.mod_revision(guard) < rng.randint(1, 10_000)]
                        otherwise = [Op.put(guard, f"{value}.else")]
                    txn = conn.txn(compares, ops, otherwise)
                    succeeded = txn.succeeded
                    revision = txn.header.revision
                    if not succeeded:
                        puts = [(guard, f"{value}.else")]
            except geventc.EtcdError as exc:
                common.emit(
                    "werr",
                    error=repr(exc),
                    indeterminate=isinstance(exc, IndeterminateWrite),
                    puts=puts,
                )
                gevent.sleep(0.05)
                continue
            counts[0] += 1
            common.emit("wack", revision=revision, puts=puts, succeeded=succeeded)
            if pause:
                stop.wait(rng.uniform(0.5, 1.5) * pause)

    common.emit("ready")
    workers = [gevent.spawn(write, g) for g in range(args.greenlets)]
    gevent.joinall(workers)
    common.emit("done", writes=counts[0])
    common.sleep_forever()


if __name__ == "__main__":
    common.run(main)

"""Leader-safety participant: one LeaderElector that, while it leads, appends to a shared
log (a key prefix) with writes fenced by its guard.

Records: ``status`` and ``lease`` (see :func:`common.instrument_election`), then per
append ``attempt`` (taken the moment the guard passed: the status it was told last,
its fencing token) and ``write`` (``accepted``, ``fenced`` when etcd refused the
guard, or ``error`` when the outcome is unknown, with the txn's revision when known).
Commands: ``stop`` resigns and exits.
"""

from __future__ import annotations

import time
from functools import partial

from geventc import ElectionEvent
from geventc.errors import NotLeader

from . import common


def main() -> None:
    parser = common.options(__doc__ or "")
    parser.add_argument("--path", required=True, help="the election")
    parser.add_argument("--identity", required=True)
    parser.add_argument("--ttl", type=int, default=3)
    parser.add_argument("--log", required=True, help="the shared log's key prefix")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between appends")
    args = parser.parse_args()

    common.instrument_election()
    conn = common.connect(args)
    elector = conn.leader_elector(args.path, args.identity, ttl=args.ttl)
    channel = elector.start()
    stop = common.stop_on_command()
    attempt = refused_locally = 0
    while not stop.is_set():
        common.drain(channel, None, ElectionEvent)  # records the problems it was told of
        now = time.monotonic()  # is_leader is evaluated right after, with no switch between
        try:
            guard = elector.guard()
        except NotLeader:
            refused_locally += 1
            stop.wait(args.interval)
            continue
        attempt += 1
        told = elector.status
        token = elector.fencing_token
        # recorded before the txn is sent, with no switch since the guard was taken
        common.emit("attempt", t=now, n=attempt, told=told.value if told else None, token=token)
        common.append_fenced(args.log, args.identity, attempt, token, partial(conn.txn, [guard]))
        stop.wait(args.interval)
    common.emit("stopping", attempts=attempt, refused_locally=refused_locally)
    common.timed("elector", elector.stop)
    conn.close()


if __name__ == "__main__":
    common.run(main)

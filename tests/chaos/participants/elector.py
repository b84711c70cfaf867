"""Leader-safety participant: one LeaderElector that, while it leads, appends to a shared
log (a key prefix) with writes fenced by its guard.

Records: ``status`` and ``lease`` (see :func:`common.instrument_election`), then per
append ``attempt`` (taken the moment the guard passed: the status it was told last,
its fencing token) and ``write`` (``accepted``, ``fenced`` when etcd refused the
guard, or ``error`` when the outcome is unknown, with the txn's revision when known).
Commands: ``stop`` resigns and exits.
"""

from __future__ import annotations

import json
import time

from geventc import ElectionEvent, Op
from geventc.errors import EtcdError, NotLeader

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
        while (event := channel.get_nowait()) is not None:
            if not isinstance(event, ElectionEvent):
                common.emit("recipe-error", error=repr(event.error), fatal=event.fatal)
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
        key = f"{args.log}/{args.identity}/{attempt:06d}"
        value = json.dumps({"identity": args.identity, "n": attempt, "token": token})
        try:
            result = conn.txn([guard], [Op.put(key, value)])
        except EtcdError as exc:
            common.emit("write", n=attempt, result="error", error=repr(exc))
        else:
            outcome = "accepted" if result.succeeded else "fenced"
            common.emit("write", n=attempt, result=outcome, revision=result.header.revision)
        stop.wait(args.interval)
    common.emit("stopping", attempts=attempt, refused_locally=refused_locally)
    common.timed("elector", elector.stop)
    conn.close()


if __name__ == "__main__":
    common.run(main)

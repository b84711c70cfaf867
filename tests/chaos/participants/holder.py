"""Lock and semaphore participant: one Lock (or, with ``--max-holders N``, one
Semaphore of N slots) that it acquires, writes through and releases, over and over.

Each round: ``acquiring``, ``acquire()`` (with a timeout; ``acquire-failed`` when it
returns False or raises), then ``--writes`` appends to a shared log (a key prefix),
each with ``holder.txn()`` (guarded by the holder's key and its fencing token), then
``releasing`` and ``release()`` (``released``: whether etcd confirmed it). Per append
it records ``attempt`` the moment it found itself ``held`` (n, token: the fencing
token, told/told_token: the last LockEvent its channel had handed over by then, lease:
the lease its key is on) and ``write`` (``accepted``, ``fenced`` when etcd refused the
guard: NotLockHolder, or ``error`` when the outcome is unknown, with the txn's revision
when known); a round in which it found itself no longer held stops writing
(``not-held``). Every status is also recorded the moment it is decided (``status`` and
``lease``: see :func:`common.instrument_contender`). Commands: ``stop`` stops and exits.
"""

from __future__ import annotations

import time

from geventc import LockEvent
from geventc.errors import NotLockHolder
from geventc.recipes.contender import Contender

from . import common


def main() -> None:
    parser = common.options(__doc__ or "")
    parser.add_argument("--path", required=True, help="the lock's or semaphore's path")
    parser.add_argument("--identity", required=True)
    parser.add_argument("--ttl", type=int, default=3)
    parser.add_argument("--max-holders", type=int, default=0, help="0: a Lock")
    parser.add_argument("--log", required=True, help="the shared log's key prefix")
    parser.add_argument("--writes", type=int, default=5, help="appends per hold")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between appends")
    args = parser.parse_args()

    common.instrument_contender()
    conn = common.connect(args)
    holder: Contender = (
        conn.semaphore(args.path, args.max_holders, ttl=args.ttl)
        if args.max_holders
        else conn.lock(args.path, ttl=args.ttl)
    )
    channel = holder.start()
    stop = common.stop_on_command()
    common.emit("ready")
    told: LockEvent | None = None
    attempt = 0
    while not stop.is_set():
        common.emit("acquiring")
        got = common.tried("acquire-failed", lambda: holder.acquire(timeout=10.0))
        if got is None:
            continue
        if not got:
            common.emit("acquire-failed", error="timed out")
            continue
        for _ in range(args.writes):
            told = common.drain(channel, told, LockEvent)
            now = time.monotonic()  # held is read right after, with no switch between
            if not holder.held:
                common.emit("not-held", t=now, told=told.status.value if told else None)
                break
            attempt += 1
            token = holder.fencing_token
            common.emit(
                "attempt",
                t=now,
                n=attempt,
                token=token,
                told=told.status.value if told else None,
                told_token=told.fencing_token if told else 0,
                lease=holder._lease_of_key,
            )
            # held a moment ago: a NotLockHolder now means etcd refused the guard
            result = common.append_fenced(
                args.log, args.identity, attempt, token, holder.txn, NotLockHolder
            )
            if result == "fenced":
                break
            stop.wait(args.interval)
        common.emit("releasing")
        try:
            common.emit("released", confirmed=bool(holder.release()))
        except NotLockHolder:
            common.emit("released", confirmed=None)  # neither held nor lost: nothing to do
        told = common.drain(channel, told, LockEvent)
        stop.wait(args.interval)
    common.emit("stopping", attempts=attempt)
    common.timed("holder.stop", holder.stop)
    conn.close()


if __name__ == "__main__":
    common.run(main)

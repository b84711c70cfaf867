"""Queue participant: consumes one Queue, at least once (``--mode claim``: claim, work,
ack) or at most once (``--mode take``), until told to stop.

Claim mode records ``claiming``, then ``claimed`` (value, key, token: the claim's
marker revision), works ``--work`` seconds, records ``acking`` and acks: ``acked``, or
``ack-lost`` (ClaimLost, with its reason), or ``ack-error`` (any other error: the ack
is tried again while the claim is held; ``indeterminate`` when it may have been
applied); every claim's status is recorded the moment it changes (``status``, see
:func:`common.instrument_claims`). Take mode records ``taking``, then ``taken``
(value, key), ``take-none`` (nothing came within the wait) or ``take-error``
(``indeterminate``: the item may have been removed). Problems the queue's channel
hands over are ``recipe-error``. Commands: ``stop`` stops consuming, stops the queue
(giving back any claim) and records ``done``.
"""

from __future__ import annotations

import argparse

import gevent
from gevent.event import Event

from geventc import ClaimedItem, Queue, RecipeError
from geventc.errors import ClaimLost, EtcdError, IndeterminateWrite

from . import common


def report(queue: Queue) -> None:
    """Record the problems the queue's channel hands over (claims are instrumented)."""
    for event in queue.start():
        if isinstance(event, RecipeError):
            common.emit("recipe-error", error=repr(event.error), fatal=event.fatal)


def ack(claim: ClaimedItem, stop: Event) -> None:
    """Ack ``claim``, trying again after errors while it is held."""
    value = claim.value_str
    common.emit("acking", value=value, token=claim.claim_revision)
    while True:
        try:
            claim.ack()
        except ClaimLost as exc:
            common.emit("ack-lost", value=value, reason=str(exc))
            return
        except EtcdError as exc:
            unknown = isinstance(exc, IndeterminateWrite)
            common.emit("ack-error", value=value, indeterminate=unknown, error=repr(exc))
            if claim.held or claim.status.value == "SUSPENDED":
                stop.wait(0.2)
                continue
            return
        common.emit("acked", value=value, key=claim.item.key_str)
        return


def claim_once(queue: Queue, args: argparse.Namespace, stop: Event) -> None:
    common.emit("claiming")
    claim = common.tried("claim-error", lambda: queue.claim(timeout=1.0))
    if claim is None:
        return
    common.emit(
        "claimed", value=claim.value_str, key=claim.item.key_str, token=claim.claim_revision
    )
    stop.wait(args.work)
    ack(claim, stop)


def take_once(queue: Queue) -> None:
    common.emit("taking")
    found = common.tried("take-error", lambda: [queue.take(timeout=1.0)])
    if found is None:
        return  # an error, recorded
    item = found[0]
    if item is None:
        common.emit("take-none")
    else:
        common.emit("taken", value=item.value_str, key=item.key_str)


def main() -> None:
    parser = common.options(__doc__ or "")
    parser.add_argument("--path", required=True, help="the queue")
    parser.add_argument("--mode", choices=("claim", "take"), required=True)
    parser.add_argument("--ttl", type=int, default=3, help="the claims' lease")
    parser.add_argument("--work", type=float, default=0.1, help="seconds per claimed item")
    args = parser.parse_args()
    if args.mode == "claim":
        common.instrument_claims()
    conn = common.connect(args)
    queue = conn.queue(args.path, ttl=args.ttl)
    gevent.spawn(report, queue)
    stop = common.stop_on_command()
    gevent.sleep(0)  # the queue starts (its channel is read) before the first claim
    common.emit("ready")
    while not stop.is_set():
        if args.mode == "claim":
            claim_once(queue, args, stop)
        else:
            take_once(queue)
    common.emit("stopping")
    common.timed("queue.stop", queue.stop)
    common.emit("done")
    common.sleep_forever()


if __name__ == "__main__":
    common.run(main)

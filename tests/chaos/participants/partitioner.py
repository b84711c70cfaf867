"""Partitioner participant: a member of one Partitioner that shares the items with the
other members, made again (under a new identity) each time one ends in FAILURE.

The k-th partitioner of process ``slot.gen`` is the member ``slot.gen-k``
(``member``, when it is made). It answers RELEASE with ``release_set()`` (retried until
etcd confirms it), unless ``--auto-release``. Every event is recorded the moment the
partitioner decides it (``status``: its state as the status, its items and members,
the lease its item keys are on as ``key_lease``, a ``token`` that numbers the events
of the process; see :func:`common.record_events`), and every change of the kept lease
(``lease``, :func:`common.instrument_leases`); problems its channel hands over are
``recipe-error``.
"""

from __future__ import annotations

import itertools

import gevent

from geventc import PartitionEvent, RecipeError
from geventc.errors import EtcdError, RecipeStateError
from geventc.recipes.partitioner import Partitioner, PartitionState

from . import common

EVENTS = itertools.count(1)


def status(part: Partitioner, event: object) -> None:
    if isinstance(event, PartitionEvent):
        common.emit(
            "status",
            status=event.state.value,
            token=next(EVENTS),
            identity=part.identity,
            items=list(event.items),
            members=list(event.members),
            suspended=event.suspended,
            stale=event.stale,
            key_lease=part._lease.id if part._lease is not None else 0,
            reason=event.reason,
        )


def release(part: Partitioner) -> None:
    """Answer RELEASE: give the items back, trying again until etcd confirms it (or
    the partitioner left the RELEASE state by itself)."""
    while part.state is PartitionState.RELEASE:
        try:
            part.release_set()
        except RecipeStateError:
            return
        except EtcdError as exc:
            common.emit("error", op="release_set", error=repr(exc))
            gevent.sleep(0.2)


def main() -> None:
    parser = common.options(__doc__ or "")
    parser.add_argument("--path", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--items", required=True, help="comma-separated")
    parser.add_argument("--ttl", type=int, default=3)
    parser.add_argument("--auto-release", action="store_true")
    args = parser.parse_args()
    common.instrument_leases()
    common.record_events(Partitioner, status)
    conn = common.connect(args)
    items = args.items.split(",")
    common.emit("ready")
    for k in itertools.count():
        identity = f"{args.identity}-{k}"
        common.emit("member", identity=identity)
        part = conn.partitioner(
            args.path, items, identity, ttl=args.ttl, auto_release=args.auto_release
        )
        try:
            channel = part.start()
        except EtcdError as exc:  # start() stopped it again
            common.emit("error", op="start", error=repr(exc))
            gevent.sleep(0.2)
            continue
        for event in channel:
            if isinstance(event, RecipeError):
                common.emit("recipe-error", error=repr(event.error), fatal=event.fatal)
            elif event.state is PartitionState.RELEASE and not args.auto_release:
                release(part)
        common.timed("partitioner.stop", part.stop)  # after FAILURE: a new member


if __name__ == "__main__":
    common.run(main)

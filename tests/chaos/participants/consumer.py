"""Exactly-once participant: consumers of the writer's sequence.

Three consumers in one connector: ``prefix`` (an Observer of every key under
``/seq``), ``key`` (an Observer of ``/seq/counter``) and ``tracker`` (a ServiceTracker
of ``/seq/items``). Records:

- ``sync`` (c, revision, value): an observer starts at ``revision + 1`` with the
  counter at ``value`` (from ``--start-revision``, or read when the process was
  respawned or its observer was told the history it needed was compacted);
- ``es`` (c, es): delivered events, in order, as [key, value, revision, type];
- ``snap`` (c, r, n, count, sum, names_ok, error): one tracker snapshot (see
  :func:`track`);
- ``recipe-error`` (c, error, fatal, compacted, compact_revision, next): a problem the
  consumer was told of on its channel (``next``: the revision the observer needed);
- ``staleness`` (c, stale, age, r): an observer said its events may not be current
  (or are again).
"""

from __future__ import annotations

import gevent

from geventc import Connector, RecipeError, ServiceSnapshot, Staleness, WatchEvent
from geventc.errors import Compacted, EtcdError

from . import common

COUNTER = "/seq/counter"
ITEMS = 50


def read_counter(conn: Connector) -> tuple[int, int]:
    """(revision, counter value) from one linearizable read, retried until it works."""
    while True:
        try:
            read = conn.get_prefix(COUNTER)  # the one key, with the read's revision
            assert read.kvs, "the harness creates the counter first"
            return read.header.revision, int(read.kvs[0].value)
        except EtcdError as exc:
            common.emit("error", op="read", error=repr(exc))
            gevent.sleep(0.1)


def report(name: str, item: RecipeError, next_revision: int = 0) -> None:
    compacted = isinstance(item.error, Compacted)
    common.emit(
        "recipe-error",
        c=name,
        error=repr(item.error),
        fatal=item.fatal,
        compacted=compacted,
        compact_revision=item.error.compact_revision if isinstance(item.error, Compacted) else 0,
        next=next_revision,
    )


class Batch:
    """Delivered events of one consumer, recorded in batches (``es``: [key, value,
    revision, type] in delivery order) so the history stays small; flushed at least
    every 50 ms and before any other record of the consumer."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.events: list[list[object]] = []
        gevent.spawn(self._flush_often)

    def add(self, event: WatchEvent) -> None:
        self.events.append([event.key, event.value_str, event.revision, event.type.name])
        if len(self.events) >= 500:
            self.flush()

    def flush(self) -> None:
        if self.events:
            events, self.events = self.events, []
            common.emit("es", c=self.name, es=events)

    def _flush_often(self) -> None:
        while True:
            gevent.sleep(0.05)
            self.flush()


def observe(conn: Connector, name: str, path: str, recursive: bool, first: int) -> None:
    batch = Batch(name)
    start: tuple[int, int] | None = (first - 1, 0) if first else None
    while True:
        revision, value = start if start is not None else read_counter(conn)
        start = None
        common.emit("sync", c=name, revision=revision, value=value)
        observer = conn.observer(path)
        channel = observer.start(start_revision=revision + 1, recursive=recursive)
        for item in channel:
            if isinstance(item, WatchEvent):
                batch.add(item)
            elif isinstance(item, Staleness):  # said, not checked here (see freshness)
                batch.flush()
                common.emit("staleness", c=name, stale=item.stale, age=item.age, r=item.revision)
            else:
                batch.flush()
                report(name, item, observer.next_revision)
                if item.fatal:
                    break
        batch.flush()
        observer.stop()  # ended (compacted): read the state again and follow from there


def track(conn: Connector, name: str, path: str) -> None:
    """Record each snapshot by a fingerprint: the highest value ``n``, how many items,
    their sum, and whether every item's name is its value's residue mod 50 (together
    they pin the state down to "the newest value of each residue up to n")."""
    tracker = conn.service_tracker(path)
    for item in tracker.start():
        if isinstance(item, ServiceSnapshot):
            values = {name: int(v) if v.isdigit() else -1 for name, v in item.services.items()}
            common.emit(
                "snap",
                c=name,
                r=item.revision,
                n=max(values.values(), default=0),
                count=len(values),
                sum=sum(values.values()),
                names_ok=all(str(v % ITEMS) == k for k, v in values.items()),
                error=repr(item.error) if item.error else None,
            )
        else:
            report(name, item)
    common.emit("recipe-error", c=name, error="the tracker's channel closed", fatal=True)


def main() -> None:
    parser = common.options(__doc__ or "")
    parser.add_argument("--start-revision", type=int, default=0)
    args = parser.parse_args()
    conn = common.connect(args)
    workers: list[gevent.Greenlet[..., None]] = [
        gevent.spawn(observe, conn, "prefix", "/seq", True, args.start_revision),
        gevent.spawn(observe, conn, "key", COUNTER, False, args.start_revision),
        gevent.spawn(track, conn, "tracker", "/seq/items"),
    ]
    common.emit("ready")
    gevent.joinall(workers, raise_error=True)


if __name__ == "__main__":
    common.run(main)

"""Freshness participant: a ServiceTracker, a ConfigWatcher and a Resolver on the
prefixes the freshness writer keeps changing, all on one connector (through the
members' proxies), recording every view each one hands its caller.

Records ``fresh`` (k: ``tracker``, ``config`` or ``resolver``; what: ``start`` for the
first view, ``snapshot``/``instances`` for a tracker's or resolver's channel item,
``change`` and ``staleness`` for a config's; n, count, sum, ok: the view's
fingerprint, see :func:`view`; stale: what the recipe says now, or None when this item
says nothing about it (a config change); rev, age, error) the moment the caller gets
it, and ``ready`` once the three have their first view. A config's view is its
mapping as the caller reads it at that moment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
from gevent.lock import Semaphore

from geventc import (
    ConfigChange,
    ConfigWatcher,
    Connector,
    RecipeError,
    Resolver,
    ServiceSnapshot,
    Staleness,
)
from geventc.errors import EtcdError

from ..checks import FRESH_PATHS, FRESH_SERVICE, fresh_fingerprint
from . import common


def record(kind: str, what: str, fingerprint: dict[str, Any], **fields: Any) -> None:
    common.emit("fresh", k=kind, what=what, **fingerprint, **fields)


def problem(kind: str, item: RecipeError) -> None:
    common.emit("recipe-error", k=kind, error=repr(item.error), fatal=item.fatal)


def retried(kind: str, call: Callable[[], Any]) -> Any:
    """Call until it works: a recipe's first load may meet a fault."""
    while True:
        try:
            return call()
        except EtcdError as exc:
            common.emit("error", k=kind, error=repr(exc))
            gevent.sleep(0.2)


def track(conn: Connector, keys: int, started: Semaphore) -> None:
    tracker = conn.service_tracker(FRESH_PATHS["tracker"])
    first = True
    for item in tracker.start():
        if not isinstance(item, ServiceSnapshot):
            problem("tracker", item)
            continue
        fingerprint = fresh_fingerprint(item.services.items(), "tracker", keys)
        error = repr(item.error) if item.error else None
        what = "start" if first else "snapshot"
        record(
            "tracker",
            what,
            fingerprint,
            stale=item.stale,
            age=item.age,
            rev=item.revision,
            error=error,
        )
        if first:
            first = False
            started.release()
    common.emit("recipe-error", k="tracker", error="the tracker's channel closed", fatal=True)


def configure(conn: Connector, keys: int, started: Semaphore) -> None:
    def start() -> tuple[ConfigWatcher, Any]:
        config = conn.config(FRESH_PATHS["config"])
        return config, config.start()

    config, channel = retried("config", start)

    def mapping() -> dict[str, Any]:
        return fresh_fingerprint(config.items(), "config", keys)

    record("config", "start", mapping(), stale=config.stale, age=config.age, rev=config.revision)
    started.release()
    for item in channel:
        if isinstance(item, Staleness):
            record(
                "config", "staleness", mapping(), stale=item.stale, age=item.age, rev=item.revision
            )
        elif isinstance(item, ConfigChange):
            record("config", "change", mapping(), stale=None, rev=config.revision)
        else:
            problem("config", item)
    common.emit("recipe-error", k="config", error="the config's channel closed", fatal=True)


def resolve(conn: Connector, keys: int, started: Semaphore) -> None:
    resolver = Resolver(conn, prefix=FRESH_PATHS["resolver"])
    channel = retried("resolver", lambda: resolver.watch(FRESH_SERVICE))
    first = True
    for found in channel:
        pairs = [(i.address, i.tags.get("n", "")) for i in found.instances]
        fingerprint = fresh_fingerprint(pairs, "resolver", keys)
        what = "start" if first else "instances"
        record("resolver", what, fingerprint, stale=found.stale, age=found.age, rev=found.revision)
        if first:
            first = False
            started.release()
    common.emit("recipe-error", k="resolver", error="the resolver's channel closed", fatal=True)


def main() -> None:
    parser = common.options(__doc__ or "")
    parser.add_argument("--keys", type=int, default=10, help="K: the writer's items per recipe")
    args = parser.parse_args()
    conn = common.connect(args)
    started = Semaphore(0)
    workers = [gevent.spawn(work, conn, args.keys, started) for work in (track, configure, resolve)]
    for _ in workers:
        started.acquire()
    common.emit("ready", stale_after=conn.client.liveness.stale_after)
    gevent.joinall(workers, raise_error=True)


if __name__ == "__main__":
    common.run(main)

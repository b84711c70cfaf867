"""Watch-guarantee participant: many kinds of watch of ``/w/`` at once, every answer
recorded.

One connector (so the hub's shared prefix watch serves the tracker, the config watcher
and the direct hub listeners together) runs:

- raw ``conn.watch`` streams (``kind=raw``): the prefix with ``prev_kv``; the prefix
  with ``progress_notify``; the quiet prefix ``/w/q/`` with ``progress_notify`` (idle
  most of the time: etcd sends it progress notifications); the single key ``/w/one``
  with ``prev_kv``; the prefix with a NOPUT filter (and ``prev_kv``); the prefix with
  a NODELETE filter; and the prefix from a start revision (``--from``: the first
  revision of the run for the first generation, the revision after the last one its
  previous generation delivered for a respawned one: resumption across a process
  restart);
- Observers (``kind=observer``) of the prefix and of the key, from an explicit start
  revision;
- a hub listener of the prefix and one of the key ``/w/one`` (``kind=hub``:
  ``conn.hub.subscribe``, the updates of the shared copy with their synthetic
  ``resynced`` diffs after compaction);
- a ServiceTracker of ``/w`` (``kind=tracker``) and a ConfigWatcher of ``/w``
  (``kind=config``): their snapshots.

Records: ``wstart`` (a stream segment begins: ``sid``, ``kind``, the watch's ``spec``
and ``start``, the first revision it must deliver), ``wresp`` (one answer: ``sid``,
header ``rev``, ``events`` as ``[type, key, value, mod, create, prev]`` with type
``P``/``D`` and ``prev`` the previous value or None, ``pn`` for a progress
notification; hub updates add ``resynced``, ``stale``, ``error`` and ``fp``, the
fingerprint of the update's state), ``wend`` (a segment ends: ``reason`` ``compacted``
with the ``compact`` revision the caller was told of, or ``error``; the next segment
starts after it), ``wsnap`` (a snapshot: ``rev`` and ``state``), ``werror`` (a
non-fatal problem a recipe reported), ``wstats`` (the connector's watch counters).
On ``stop`` every stream stops and ``done`` is recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import gevent

import geventc
from geventc.errors import Compacted
from geventc.recipes.config import ConfigChange
from geventc.recipes.observer import WatchEvent
from geventc.staleness import Staleness
from geventc.watch import PrefixUpdate
from geventc.wire import Event, EventType, KeyValue

from . import common

PREFIX = "/w/"
KEY = "/w/one"


def fingerprint(items: Mapping[str, tuple[str, int]]) -> str:
    """A short hash of a state (key -> (value, mod revision)), as the checks compute it."""
    text = json.dumps(sorted([k, v, m] for k, (v, m) in items.items()), separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def event_row(event: Event) -> list[Any]:
    """An event as ``[type, key, value, mod, create, prev]``."""
    kv = event.kv
    put = event.type is EventType.PUT
    prev = event.prev_kv.value.decode() if event.prev_kv is not None else None
    return [
        "P" if put else "D",
        kv.key.decode(),
        kv.value.decode() if put else "",
        kv.mod_revision,
        kv.create_revision if put else 0,
        prev,
    ]


def state_items(state: Mapping[bytes, KeyValue]) -> dict[str, tuple[str, int]]:
    return {k.decode(): (kv.value.decode(), kv.mod_revision) for k, kv in state.items()}


class Watchers:
    """The streams of one process, and their segment counters."""

    def __init__(self, conn: geventc.Connector, first: int) -> None:
        self.conn = conn
        self.first = first
        self.segments: dict[str, int] = {}
        self.stopping = False

    def begin(self, name: str, kind: str, spec: dict[str, Any], start: int) -> str:
        n = self.segments.get(name, 0)
        self.segments[name] = n + 1
        sid = f"{name}#{n}"
        common.emit("wstart", sid=sid, name=name, kind=kind, spec=spec, start=start)
        return sid

    # --- raw streams ------------------------------------------------------------------

    def raw(self, name: str, spec: dict[str, Any], start: int | None) -> None:
        """A raw ``conn.watch`` with ``spec``; after a compaction it was told of it
        starts again at the compacted revision, after a stream that gave up at the
        revision after the last one delivered (a new watch, as a caller resumes)."""
        nxt = start
        while not self.stopping:
            try:
                stream = self.conn.watch(
                    spec["key"],
                    prefix=spec["prefix"],
                    start_revision=nxt,
                    prev_kv=spec["prev_kv"],
                    filters=spec["filters"],
                    progress_notify=spec["progress"],
                )
            except geventc.EtcdError as exc:
                common.emit("werror", name=name, error=repr(exc))
                gevent.sleep(0.2)
                continue
            sid = self.begin(name, "raw", spec, stream.start_revision)
            try:
                for response in stream:
                    common.emit(
                        "wresp",
                        sid=sid,
                        rev=response.header.revision,
                        events=[event_row(e) for e in response.events],
                        pn=response.is_progress_notify,
                    )
                nxt = stream.start_revision
                common.emit("wend", sid=sid, reason="ended")
            except Compacted as exc:
                common.emit(
                    "wend",
                    sid=sid,
                    reason="compacted",
                    compact=exc.compact_revision,
                    error=str(exc),
                )
                nxt = exc.compact_revision
            except geventc.EtcdError as exc:
                common.emit("wend", sid=sid, reason="error", error=repr(exc))
                nxt = stream.start_revision
                gevent.sleep(0.2)
            finally:
                stream.cancel()

    # --- observers --------------------------------------------------------------------

    def observer(self, name: str, path: str, prefix: bool) -> None:
        """An Observer from an explicit start revision; started again at the compacted
        revision after a fatal compaction it was told of."""
        spec = {"key": path.rstrip("/") + "/" if prefix else path, "prefix": prefix}
        spec.update(prev_kv=True, filters=[], progress=False)
        start = self.revision() + 1
        while not self.stopping:
            obs = self.conn.observer(path.rstrip("/"), prefix=prefix, start_revision=start)
            sid = self.begin(name, "observer", spec, start)
            channel = obs.start()
            for item in channel:
                if isinstance(item, WatchEvent):
                    put = item.type is EventType.PUT
                    row = [
                        "P" if put else "D",
                        item.key,
                        item.value.decode() if put else "",
                        item.revision,
                        0,
                        item.prev_value.decode() if item.prev_value is not None else None,
                    ]
                    common.emit("wresp", sid=sid, rev=item.revision, events=[row], pn=False)
                elif isinstance(item, Staleness):
                    common.emit("wstale", sid=sid, stale=item.stale)
                elif isinstance(item, geventc.RecipeError):
                    if item.fatal and isinstance(item.error, Compacted):
                        common.emit(
                            "wend",
                            sid=sid,
                            reason="compacted",
                            compact=item.error.compact_revision,
                            error=str(item.error),
                        )
                        start = item.error.compact_revision
                        break
                    common.emit("werror", sid=sid, error=repr(item.error), fatal=item.fatal)
                    if item.fatal:
                        common.emit("wend", sid=sid, reason="error", error=repr(item.error))
                        start = obs.next_revision or start
                        break
            obs.stop()

    def revision(self) -> int:
        while True:
            try:
                return int(self.conn.get_prefix("/w-none/", count_only=True).header.revision)
            except geventc.EtcdError:
                gevent.sleep(0.1)

    # --- the hub, the tracker, the config watcher ----------------------------------------

    def hub(self, name: str, key: bytes | None) -> None:
        """A listener of the shared prefix watch (of one key's events, with ``key``)."""
        spec = {"key": key.decode() if key else PREFIX, "prefix": key is None}
        spec.update(prev_kv=True, filters=[], progress=False)
        sid = self.begin(name, "hub", spec, 0)

        def listener(update: PrefixUpdate) -> None:
            common.emit(
                "wresp",
                sid=sid,
                rev=update.revision,
                events=[event_row(e) for e in update.events],
                pn=False,
                resynced=update.resynced,
                stale=update.stale,
                error=repr(update.error) if update.error else None,
                fp=fingerprint(state_items(update.state)),
            )

        self.conn.hub.subscribe(PREFIX.encode(), listener, key)

    def tracker(self) -> None:
        channel = None
        while channel is None:
            channel = self.started(lambda: self.conn.service_tracker("/w").start())
        sid = self.begin("tracker", "tracker", {"key": PREFIX, "prefix": True}, 0)
        for snap in channel:
            if isinstance(snap, geventc.RecipeError):
                common.emit("werror", sid=sid, error=repr(snap.error), fatal=snap.fatal)
                continue
            common.emit(
                "wsnap",
                sid=sid,
                rev=snap.revision,
                state=dict(snap.services),
                stale=snap.stale,
                error=repr(snap.error) if snap.error else None,
            )

    def config(self) -> None:
        while True:  # a watcher that failed to start is stopped: a new one each time
            watcher = self.conn.config("/w")
            channel = self.started(watcher.start)
            if channel is not None:
                break
        sid = self.begin("config", "config", {"key": PREFIX, "prefix": True}, 0)
        last = -1

        def sample() -> None:
            nonlocal last
            if watcher.revision != last:
                last = watcher.revision
                common.emit("wsnap", sid=sid, rev=last, state=dict(watcher.snapshot()))

        sample()
        for change in channel:
            if isinstance(change, ConfigChange):
                common.emit("wchange", sid=sid, key=change.key, new=change.new, rev=change.revision)
            elif isinstance(change, geventc.RecipeError):
                common.emit("werror", sid=sid, error=repr(change.error), fatal=change.fatal)
            sample()

    @staticmethod
    def started(start: Callable[[], Any]) -> Any:
        """``start()``'s channel, or None when it raised an etcd error (a config watcher
        that cannot load its first state in time raises): the caller tries again."""
        try:
            return start()
        except geventc.EtcdError as exc:
            common.emit("werror", error=repr(exc), starting=True)
            gevent.sleep(0.3)
            return None

    def stats(self) -> None:
        s = self.conn.stats()
        common.emit(
            "wstats",
            **{
                k: getattr(s, k, 0)
                for k in (
                    "watch_restarts",
                    "watch_compactions",
                    "watch_streams_opened",
                    "failovers",
                )
            },
        )


def guarded(run: Callable[..., None], *args: Any) -> gevent.Greenlet[Any, Any]:
    """``run(*args)`` in a greenlet whose crash is the process's (recorded ``crash``)."""

    def body() -> None:
        try:
            run(*args)
        except gevent.GreenletExit:
            raise
        except BaseException as exc:
            common.emit("crash", error=repr(exc), traceback=traceback.format_exc()[-4000:])
            sys.stdout.flush()
            os._exit(1)

    return gevent.spawn(body)


def main() -> None:
    parser = common.options(__doc__ or "")
    parser.add_argument("--from", dest="first", type=int, required=True)
    args = parser.parse_args()
    conn = common.connect(args)
    stop = common.stop_on_command()
    w = Watchers(conn, args.first)

    def raw_spec(key: str, prefix: bool, **more: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {"key": key, "prefix": prefix, "prev_kv": False}
        spec.update(filters=[], progress=False)
        spec.update(more)
        return spec

    greenlets = [
        guarded(w.raw, "raw-prefix-prevkv", raw_spec(PREFIX, True, prev_kv=True), None),
        guarded(w.raw, "raw-prefix-progress", raw_spec(PREFIX, True, progress=True), None),
        guarded(w.raw, "raw-quiet-progress", raw_spec("/w/q/", True, progress=True), None),
        guarded(w.raw, "raw-key", raw_spec(KEY, False, prev_kv=True), None),
        gevent.spawn(
            w.raw, "raw-noput", raw_spec(PREFIX, True, prev_kv=True, filters=["NOPUT"]), None
        ),
        guarded(w.raw, "raw-nodelete", raw_spec(PREFIX, True, filters=["NODELETE"]), None),
        guarded(w.raw, "raw-from", raw_spec(PREFIX, True, prev_kv=True), args.first),
        guarded(w.observer, "obs-prefix", "/w", True),
        guarded(w.observer, "obs-key", KEY, False),
        guarded(w.tracker),
        guarded(w.config),
    ]
    w.hub("hub-prefix", None)
    w.hub("hub-key", KEY.encode())
    common.emit("ready")
    while not stop.wait(5.0):
        w.stats()
    w.stopping = True
    w.stats()
    gevent.killall(greenlets, timeout=2.0)
    common.emit("done")
    common.sleep_forever()


if __name__ == "__main__":
    common.run(main)

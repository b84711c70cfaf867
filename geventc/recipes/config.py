"""ConfigWatcher: the configuration under a path, as a live read-only mapping.

The watcher reads every key under the path once, then follows the connector's shared
watch of the path from that read's revision + 1 (no gap, no duplicate). The watcher *is*
the mapping: ``config["db/password"]`` is the current value of ``<path>/db/password``,
decoded by ``decode`` (UTF-8 text by default; it runs in the shared watch's greenlet, so
it must be quick and must not block). :meth:`ConfigWatcher.start` returns once the first
state is loaded, so the mapping is usable at once.

Every later change of a stored value is one :class:`ConfigChange` on the changes
channel (unbounded: the watch never waits for a reader), in revision order; a re-put of
identical bytes is not a change. ``on_change`` callbacks each run in a greenlet of their
own, and :meth:`ConfigWatcher.wait_for` blocks a caller until a key's value satisfies a
predicate. A value that fails to decode is reported (a :class:`RecipeError` carrying
:class:`ConfigDecodeError`, and a log warning) and the key keeps its previous good value.
After a disconnect the watch resumes where it stopped; after compaction it re-reads the
path and the watcher reports the differences as changes, so the mapping equals the
server's state again. The first state reflects every write this connector made before
``start()``.

When the mapping cannot be confirmed current (no member answers for longer than the
liveness bound, 5 s by default) the changes channel gets a
:class:`~geventc.staleness.Staleness` event with ``stale=True`` and the data's age, and
one with ``stale=False`` once it has caught up; :attr:`ConfigWatcher.stale` and
:attr:`ConfigWatcher.age` tell the same at any time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, ItemsView, Iterator, KeysView, Mapping, ValuesView
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from gevent.event import Event

from .. import validate
from ..channel import Channel
from ..errors import ConfigDecodeError, EtcdError, InvalidArgument, RecipeStateError, Timeout
from ..staleness import Staleness
from ..watch import PrefixUpdate, PrefixWatch
from ..wire import Event as WatchedEvent
from ..wire import EventType, KeyValue
from .base import Recipe, RecipeError, Release

if TYPE_CHECKING:
    from ..host import RecipeHost

log = logging.getLogger("geventc")

#: Turns a stored value (bytes) into the object the mapping holds.
Decoder = Callable[[bytes], Any]
#: Called with each :class:`ConfigChange`, in a greenlet of its own.
ChangeCallback = Callable[["ConfigChange"], object]
C = TypeVar("C", bound=ChangeCallback)

#: How much longer than the client's timeout ``start()`` waits for the first state, so
#: that the read's own error (rather than a bare timeout) can be raised.
LOAD_GRACE = 1.0


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """One key's value changed at ``revision``: ``key`` is relative to the watched
    path, ``old`` and ``new`` are decoded values; ``old`` is None for an added key and
    ``new`` None for a removed one. After a re-read (compaction) a change carries the
    key's modification revision, and a removal the revision of the re-read."""

    key: str
    old: Any
    new: Any
    revision: int


_Outcome = ConfigChange | ConfigDecodeError


def _utf8(value: bytes) -> str:
    """The default decoder: the value as UTF-8 text (invalid UTF-8 is a decode error)."""
    return value.decode("utf-8")


class ConfigWatcher(Recipe[ConfigChange | Staleness], Mapping[str, Any]):
    """The keys under ``prefix`` as a live read-only mapping; see the module docstring.

    Like every live object it compares by identity; compare ``dict(config)`` or
    :meth:`snapshot` to compare contents. Values are never shown in its repr. Decoded
    values are shared with every reader and change event: treat them as read-only."""

    _RELEASES_LOCALLY = True  # it only leaves the shared watch

    def __init__(
        self,
        conn: RecipeHost,
        prefix: str,
        *,
        decode: Decoder | None = None,
        maxsize: int | None = None,
    ) -> None:
        super().__init__(conn)
        self.maxsize = None if maxsize is None else validate.integer(maxsize, "maxsize", minimum=1)
        if decode is not None and not callable(decode):
            raise InvalidArgument("decode must be a callable taking bytes, or None (UTF-8 text)")
        path = conn.namespace.strip(conn.namespace.key(prefix, "prefix")).rstrip(b"/")
        if not path:
            raise InvalidArgument(
                f"prefix {prefix!r} must name a path such as '/app/config', not the root"
            )
        self.prefix = path.decode("utf-8", "replace")
        self._prefix = path + b"/"
        self._decode: Decoder = decode or _utf8
        self._values: dict[str, Any] = {}  # replaced, never changed: iteration is safe
        self._raw: dict[str, bytes] = {}  # the stored bytes of every value in _values
        self._revision = 0
        self._watch: PrefixWatch | None = None
        self._stale = False
        self._loaded = False
        self._first_update = Event()
        self._load_error: EtcdError | None = None
        self._callbacks: list[ChangeCallback] = []
        self._waiters: dict[str, list[Event]] = {}

    def __repr__(self) -> str:
        return f"ConfigWatcher({self.prefix!r}, keys={len(self._values)})"

    # --- the mapping ---------------------------------------------------------------------

    def _current(self) -> dict[str, Any]:
        """The values now; :class:`RecipeStateError` before :meth:`start` (an unstarted
        watcher knows nothing: it must not read as an empty configuration). After
        :meth:`stop` the mapping keeps its last state."""
        if not self._running and not self._stopped:
            raise RecipeStateError(
                f"{self!r} was not started: call start() (or use it in a with block) "
                "before reading it"
            )
        return self._values

    def __getitem__(self, key: str) -> Any:
        return self._current()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())

    def __contains__(self, key: object) -> bool:
        return key in self._current()

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)

    def keys(self) -> KeysView[str]:
        """The relative names of the keys now."""
        return self._current().keys()

    def items(self) -> ItemsView[str, Any]:
        """(name, value) pairs of one consistent state, even if it changes meanwhile."""
        return self._current().items()

    def values(self) -> ValuesView[Any]:
        """The decoded values now."""
        return self._current().values()

    def snapshot(self) -> Mapping[str, Any]:
        """A read-only mapping of the current state that later changes do not touch."""
        return MappingProxyType(self._current())

    @property
    def revision(self) -> int:
        """The etcd revision the mapping reflects (0 before the first state)."""
        return self._revision

    @property
    def stale(self) -> bool:
        """True while the mapping could not be confirmed current for longer than the
        liveness bound (see :class:`~geventc.staleness.Staleness`)."""
        return self._stale

    @property
    def age(self) -> float:
        """Seconds since the mapping was last confirmed current (0.0 before start)."""
        return self._watch.age if self._watch is not None and self._running else 0.0

    # --- life cycle ----------------------------------------------------------------------

    def start(
        self, *, maxsize: int | None = None
    ) -> Channel[ConfigChange | Staleness | RecipeError]:
        """Load the current state and follow it; returns the changes channel once the
        mapping holds the first state. Waits at most the client's timeout (and a
        moment for the read's error); if the state cannot be loaded the watcher is
        stopped and the error raised. The channel's bound is ``maxsize`` of
        ``conn.config(prefix, maxsize=)`` (its oldest change is dropped when full;
        unbounded by default, so read it or bound it); passing it here still works but
        is deprecated."""
        legacy = self._legacy_start("conn.config(prefix, ...)", maxsize=maxsize)
        if legacy and not self._running:
            self.maxsize = validate.integer(maxsize, "maxsize", minimum=1)
        return super().start()

    def _start(self) -> None:
        self._begin(maxsize=self.maxsize)  # a second start() raises here, changing nothing
        self._watch = self._conn.hub.subscribe(self._prefix, self._on_update, read_your_writes=True)
        self._await_first_state()

    def changes(self) -> Channel[ConfigChange | Staleness | RecipeError]:
        """The channel of changes (and reported problems) that :meth:`start` returned."""
        return self.channel

    def _await_first_state(self) -> None:
        limit = self._conn.request_timeout + LOAD_GRACE
        self._first_update.wait(limit)
        if self._loaded:
            return
        error = self._load_error or Timeout(
            f"{self!r} could not load its first state within {limit:.1f}s"
        )
        self.stop()
        raise error

    def stop(self) -> Release:
        """Stop following (idempotent): unsubscribe, end the changes channel, end running
        callbacks and wake :meth:`wait_for` callers; the mapping keeps its last state.
        A callback may stop its own watcher: its call then runs to its end."""
        return super().stop()

    def _release(self) -> None:
        self._conn.hub.unsubscribe(self._prefix, self._on_update)
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.set()  # wait_for() notices the stop at once

    # --- callbacks and waiting -----------------------------------------------------------

    def on_change(self, callback: C) -> C:
        """Call ``callback(change)`` for every later :class:`ConfigChange`, each call in
        a greenlet of its own (started in revision order; a slow callback delays no one).
        An exception is logged and ends only that call. Returns ``callback``, so it can
        be used as a decorator; register before :meth:`start` to miss nothing."""
        if not callable(callback):
            raise InvalidArgument("callback must be callable with one ConfigChange")
        self._callbacks.append(callback)
        return callback

    def wait_for(self, key: str, predicate: Callable[[Any], bool], timeout: float) -> Any:
        """Block until ``predicate(value)`` is true for ``key``'s current value (None
        while the key is absent; checked at once, then after each change of the key) and
        return that value. Raises :class:`~geventc.errors.Timeout` after ``timeout``
        seconds and :class:`RecipeStateError` when the watcher is not running; an
        exception from ``predicate`` reaches the caller."""
        if not isinstance(key, str) or not key:
            raise InvalidArgument("key must be a non-empty str: a name relative to the prefix")
        if not callable(predicate):
            raise InvalidArgument("predicate must be callable with the key's value")
        limit = validate.positive_number(timeout, "timeout")
        if not self._running:
            raise RecipeStateError(f"{self!r} is not running: start it before wait_for()")
        changed = Event()
        self._waiters.setdefault(key, []).append(changed)
        try:
            return self._wait(key, predicate, changed, time.monotonic() + limit, limit)
        finally:
            self._forget_waiter(key, changed)

    def _wait(
        self,
        key: str,
        predicate: Callable[[Any], bool],
        changed: Event,
        deadline: float,
        limit: float,
    ) -> Any:
        while True:
            changed.clear()
            value = self._values.get(key)
            if predicate(value):
                return value
            if not self._running:
                raise RecipeStateError(f"{self!r} was stopped while waiting for {key!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout(f"{key!r} under {self.prefix!r} did not qualify within {limit}s")
            changed.wait(remaining)

    def _forget_waiter(self, key: str, waiter: Event) -> None:
        waiters = self._waiters.get(key, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            self._waiters.pop(key, None)

    # --- following the shared watch ------------------------------------------------------

    def _on_update(self, update: PrefixUpdate) -> None:
        if not self._running:
            return
        if update.error is not None:
            self._on_error(update.error)
            self._note_freshness(update)
            return
        if not update.events and not update.resynced:  # only news of its freshness
            self._note_freshness(update)
            return
        if update.resynced:
            outcomes = self._resync(update.state, update.revision)
        else:
            outcomes = self._replay(update.events)
        self._revision = update.revision
        if not self._loaded:  # the first state is the mapping, not a change
            self._loaded = True
            outcomes = [o for o in outcomes if isinstance(o, ConfigDecodeError)]
            self._first_update.set()
        self._publish(outcomes)
        self._note_freshness(update)

    def _note_freshness(self, update: PrefixUpdate) -> None:
        if update.stale != self._stale and self._loaded:
            self._stale = update.stale
            self._emit(Staleness(update.stale, update.age, update.revision))

    def _on_error(self, error: EtcdError) -> None:
        if self._loaded:
            self._report(error)  # the watch keeps retrying; the mapping stays as it was
            return
        self._load_error = error  # start() raises it
        self._first_update.set()

    def _replay(self, events: tuple[WatchedEvent, ...]) -> list[_Outcome]:
        """Apply watch events one by one, in order."""
        if not events:
            return []
        values = dict(self._values)
        outcomes: list[_Outcome | None] = []
        for event in events:
            name = self._name(event.kv.key)
            if event.type is EventType.DELETE:
                outcomes.append(self._remove(values, name, event.kv.mod_revision))
            else:
                outcomes.append(self._put(values, name, event.kv))
        self._values = values
        return [o for o in outcomes if o is not None]

    def _resync(self, state: Mapping[bytes, KeyValue], revision: int) -> list[_Outcome]:
        """Make the mapping equal ``state`` (read at ``revision``); the differences come
        back in revision order, removals (whose exact revision is unknown) last."""
        fresh = {self._name(key): kv for key, kv in state.items()}
        values = dict(self._values)
        outcomes: list[_Outcome | None] = [
            self._remove(values, name, revision) for name in list(values) if name not in fresh
        ]
        outcomes += [self._put(values, name, kv) for name, kv in fresh.items()]
        self._values = values
        return sorted((o for o in outcomes if o is not None), key=lambda o: o.revision)

    def _put(self, values: dict[str, Any], name: str, kv: KeyValue) -> _Outcome | None:
        if name in values and self._raw.get(name) == kv.value:
            return None  # the same bytes again: nothing changed
        try:
            new = self._decode(kv.value)
        except Exception as exc:  # any decoder's failure is a report, never a crash
            return ConfigDecodeError(name, kv.mod_revision, exc)
        old = values.get(name)
        values[name] = new
        self._raw[name] = kv.value
        return ConfigChange(name, old, new, kv.mod_revision)

    def _remove(self, values: dict[str, Any], name: str, revision: int) -> _Outcome | None:
        if name not in values:
            return None  # never held (absent, or only undecodable values)
        self._raw.pop(name, None)
        return ConfigChange(name, values.pop(name), None, revision)

    def _name(self, key: bytes) -> str:
        return key[len(self._prefix) :].decode("utf-8", "replace")

    def _publish(self, outcomes: list[_Outcome]) -> None:
        for outcome in outcomes:
            if isinstance(outcome, ConfigDecodeError):
                self._report(outcome)
                continue
            self._emit(outcome)
            for callback in self._callbacks:
                self._greenlets.spawn(self._call_back, callback, outcome)
            for waiter in self._waiters.get(outcome.key, ()):
                waiter.set()

    def _call_back(self, callback: ChangeCallback, change: ConfigChange) -> None:
        try:
            callback(change)
        except Exception:
            log.exception("%r: on_change callback %r failed", self, callback)

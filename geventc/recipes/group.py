"""GroupMember: membership of a named group, with capabilities (tooz groups, kazoo
``Party``), and a watch of a group's members.

Key layout (geventc's own: no Go counterpart defines one):

- the group ``path`` (used without its trailing slashes; the root is refused) is the
  set of keys ``path + "/" + identity``; an identity is a non-empty str without ``/``
  of at most 1024 UTF-8 bytes. Keys deeper under ``path/`` (``path/a/b``) are not
  members and are ignored;
- a member's value is its capabilities as compact JSON (UTF-8, sorted keys, ASCII:
  ``json.dumps(capabilities, separators=(",", ":"), sort_keys=True)``; ``null`` when
  there are none);
- a member's key is attached to its connector's shared lease of ``ttl`` seconds, so N
  members of one TTL in a process cost one keep-alive per TTL/3, and a member whose
  process dies leaves the group when its lease expires (at most ``ttl`` seconds after
  its last renewal).

Guarantees:

- ``start()`` (alias ``join()``) creates the key only if it is absent
  (``create_revision == 0``): it raises :class:`MemberExists` when a live member has the
  identity, except when the key is this process's own, left on a lease the process held
  before (:meth:`KeptLease.was_held`), which is moved onto the live lease. It returns
  once the watch handed it the members (raising the watch's error, or ``Timeout``, if
  it could not within the request timeout + 1 s): :meth:`GroupMember.members` then
  includes this member, and the channel holds a ``JOINED`` event per member;
- the channel carries a :class:`GroupEvent` for every member change seen through the
  connector's shared watch of ``path/`` (one stream per group path, shared by every
  member and watcher of the group in the process): ``JOINED`` (every member present when
  the watch starts, then every newcomer), ``UPDATED`` (capabilities changed), ``LEFT``;
  each says whether the watch could not be confirmed current (``stale``), and a
  :class:`~geventc.Staleness` event tells when that starts and ends (a failing watch
  also reports its error, as a non-fatal :class:`RecipeError`, while it retries). After
  a compaction (or any re-read) the members' difference is reported the same way, so
  the events always add up to the current members;
- and this member's own status: ``SUSPENDED`` (a renewal of its lease is overdue: its
  key may expire), ``RESUMED`` (renewals succeed again), ``LOST`` (its lease expired or
  was revoked, or its key was deleted by someone else: it is not a member now) and
  ``REJOINED`` (its key was re-created, on a new lease after a loss). A member re-joins
  by itself after a loss; if another process took the identity meanwhile it reports
  :class:`MemberExists` on the channel and re-joins when that key goes;
- :meth:`GroupMember.update_capabilities` writes only while the key is the one this
  member created (guarded by its create revision);
- ``stop()`` (alias ``leave()``) deletes the key (guarded the same way) and releases its
  share of the lease; the :class:`Release` is true only when etcd confirmed it. If etcd
  does not answer, the deletion goes on in the background;
- made with ``identity=None`` it is a watcher: it follows the group (``members()``,
  the member events) without joining, and holds no lease.

A member's value that is not JSON (written by something else) is reported as a
:class:`RawValue` (its text), never an error.
"""

from __future__ import annotations

import enum
import functools
import json
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event as Signal

from .. import validate
from ..channel import Channel
from ..errors import (
    EtcdError,
    InvalidArgument,
    LeaseNotFound,
    MemberExists,
    RecipeStateError,
    Timeout,
)
from ..lease import KeptLease, LeaseState
from ..retry import Backoff
from ..staleness import Staleness
from ..txn import Compare, Op
from ..watch import PrefixUpdate
from ..wire import Event, EventType, KeyValue, RangeResult, TxnResult
from .base import Recipe, RecipeError, Release
from .leftover import created_at, delete_guarded, let_go

if TYPE_CHECKING:
    from ..host import RecipeHost


#: The longest identity (or partitioner item) in UTF-8 bytes.
MAX_NAME_BYTES = 1024

#: How much longer than the request timeout ``start()`` waits for the members.
FIRST_STATE_GRACE = 1.0

#: How often a join re-reads a key that changes under it before it counts as failed.
CLAIM_ROUNDS = 3

#: Member keys held by the live members of each connector: two members of one identity
#: in one process share the connector's lease, so the lease alone cannot tell them apart.
_LOCAL: weakref.WeakKeyDictionary[Any, set[bytes]] = weakref.WeakKeyDictionary()


class RawValue(str):
    """The text of a member's value that is not JSON (not written by geventc)."""

    __slots__ = ()


class GroupEventKind(enum.Enum):
    """What a :class:`GroupEvent` reports: a member change, or this member's status."""

    JOINED = "JOINED"
    LEFT = "LEFT"
    UPDATED = "UPDATED"
    SUSPENDED = "SUSPENDED"
    RESUMED = "RESUMED"
    LOST = "LOST"
    REJOINED = "REJOINED"


@dataclass(frozen=True, slots=True)
class GroupEvent:
    """A member ``identity`` joined, left or changed ``capabilities``, or (``SUSPENDED``,
    ``RESUMED``, ``LOST``, ``REJOINED``) this member's own status changed. ``stale``: the
    watch could not be confirmed current when the change was seen; ``reason`` says why a
    status changed."""

    kind: GroupEventKind
    identity: str
    capabilities: Any = None
    stale: bool = False
    reason: str = ""


# --- shared with the partitioner ---------------------------------------------------------


def group_path(conn: RecipeHost, path: Any) -> bytes:
    """``path`` as a stored key without namespace nor trailing slashes; the root is
    refused with :class:`InvalidArgument`."""
    stripped = conn.namespace.strip(conn.namespace.key(path, "path")).rstrip(b"/")
    if not stripped.strip(b"/"):
        raise InvalidArgument("path must name a group, not the root")
    return stripped


def member_name(value: Any, what: str) -> str:
    """A non-empty str without ``/`` of at most :data:`MAX_NAME_BYTES` UTF-8 bytes."""
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{what} must be a non-empty str, not {value!r}")
    if "/" in value:
        raise InvalidArgument(f"{what} {value!r} must not contain '/'")
    if len(validate.to_bytes(value, what)) > MAX_NAME_BYTES:
        raise InvalidArgument(f"{what} must be at most {MAX_NAME_BYTES} UTF-8 bytes")
    return value


def encode_capabilities(capabilities: Any) -> bytes:
    """``capabilities`` as compact JSON bytes; :class:`InvalidArgument` when they are not
    JSON-serialisable."""
    try:
        text = json.dumps(capabilities, separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidArgument(
            "capabilities must be JSON-serialisable (dict with str keys, list, str, int, "
            f"finite float, bool or None): {exc}"
        ) from None
    data = text.encode("ascii")
    validate.request_size(len(data), validate.DEFAULT_MAX_REQUEST_BYTES, "capabilities")
    return data


def decode_capabilities(value: bytes) -> Any:
    """A member's capabilities from its value; a :class:`RawValue` when not JSON."""
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return RawValue(value.decode("utf-8", "replace"))


def _take_local(conn: RecipeHost, key: bytes) -> bool:
    taken = _LOCAL.setdefault(conn, set())
    if key in taken:
        return False
    taken.add(key)
    return True


def _drop_local(conn: RecipeHost, key: bytes) -> None:
    _LOCAL.get(conn, set()).discard(key)


def found_key(result: TxnResult) -> KeyValue | None:
    """The key a failed create read back (None when it was deleted meanwhile)."""
    read = result.responses[0] if result.responses else None
    return read.kvs[0] if isinstance(read, RangeResult) and read.kvs else None


# --- the recipe ----------------------------------------------------------------------------


class GroupMember(Recipe[GroupEvent | Staleness]):
    """Member ``identity`` of the group at ``path`` (a watcher when ``identity`` is
    None); see the module docstring."""

    def __init__(
        self,
        conn: RecipeHost,
        path: str | bytes,
        identity: str | None,
        *,
        capabilities: Any = None,
        ttl: int = 10,
    ) -> None:
        super().__init__(conn)
        self.path = group_path(conn, path)
        self.identity = None if identity is None else member_name(identity, "identity")
        if self.identity is None and capabilities is not None:
            raise InvalidArgument("a group watcher (identity=None) cannot have capabilities")
        self._value = encode_capabilities(capabilities)
        self.ttl = validate.ttl(ttl)
        self._prefix = self.path + b"/"
        self._key = self._prefix + self.identity.encode() if self.identity else b""
        self._lease: KeptLease | None = None
        self._local = False  # our key is in _LOCAL
        self._watching = False
        self._joined = False
        self._suspended = False
        self._rejoining = False
        self._revision = 0  # our key's create revision
        self._claimed_at = 0  # the revision of our last write (or read) of our key
        self._known: dict[bytes, KeyValue] = {}  # the members, as the watch saw them
        self._synced = False
        self._stale = False
        self._first = Signal()  # set by the first state (or error) the watch hands us
        self._first_error: EtcdError | None = None
        self._leftover: float | None = None

    def __repr__(self) -> str:
        return f"GroupMember({self.path.decode('utf-8', 'replace')!r}, {self.identity!r})"

    # --- public ------------------------------------------------------------------------

    @property
    def capabilities(self) -> Any:
        """This member's capabilities (as stored: decoded from their JSON)."""
        return json.loads(self._value)

    @property
    def joined(self) -> bool:
        """True while etcd holds this member's key on a lease surely alive."""
        return self._joined and self._lease is not None and self._lease.valid

    @property
    def revision(self) -> int:
        """The create revision of this member's key (0 when not joined): its place in
        the group's history, usable as a fencing token."""
        return self._revision if self._joined else 0

    def _start(self) -> None:
        """Join (a member) and follow the group through its shared watch."""
        self._begin()
        try:
            if self.identity is not None:
                self._join_first()
            self._conn.hub.subscribe(self._prefix, self._on_change, read_your_writes=True)
            self._watching = True
            self._await_first_state()
        except BaseException:
            self.stop()
            raise

    def _await_first_state(self) -> None:
        """Wait (at most the request timeout and a second) until the watch handed us
        the members; raise its error (or :class:`Timeout`) if it could not."""
        limit = self._conn.request_timeout + FIRST_STATE_GRACE
        self._first.wait(limit)
        if not self._synced:
            raise self._first_error or Timeout(
                f"{self!r} could not read the members of its group within {limit:.1f}s"
            )

    def join(self) -> Channel[GroupEvent | Staleness | RecipeError]:
        """:meth:`start`: join the group and return the channel."""
        return self.start()

    def leave(self) -> Release:
        """:meth:`stop`: leave the group (delete this member's key)."""
        return self.stop()

    @property
    def identities(self) -> tuple[str, ...]:
        """The identities of the live members in the shared watch's copy, sorted (no
        request: empty before the watch first answered)."""
        found = (self._identity_of(key) for key in self._known)
        return tuple(sorted(identity for identity in found if identity is not None))

    def members(self) -> dict[str, Any]:
        """Every live member's identity with its capabilities: from the shared watch's
        copy while running, else one linearizable read."""
        if self._running and self._synced:
            kvs: Iterable[KeyValue] = list(self._known.values())
        else:
            kvs = self._conn.get_prefix(self._prefix).kvs
        found = {}
        for kv in kvs:
            identity = self._identity_of(kv.key)
            if identity is not None:
                found[identity] = decode_capabilities(kv.value)
        return found

    def update_capabilities(self, capabilities: Any) -> bool:
        """Replace this member's capabilities; True once etcd holds them on this
        member's key, False when the member is not joined now (they are written when it
        re-joins). Raises :class:`RecipeStateError` for a watcher or a stopped member."""
        data = encode_capabilities(capabilities)
        if self.identity is None:
            raise RecipeStateError("a group watcher (identity=None) has no capabilities")
        if not self._running:
            raise RecipeStateError("update_capabilities() needs a started member")
        self._value = data
        lease = self._lease
        if not self._joined or lease is None:
            return False
        used = lease.id
        try:
            result = self._conn.txn(
                [Compare.create_revision(self._key) == self._revision],
                [Op.put(self._key, data, lease=used)],
            )
        except LeaseNotFound:
            lease.invalidate(used)
            self._lose("its lease was gone when its capabilities were updated")
            return False
        if not result.succeeded:
            self._lose("its key was gone when its capabilities were updated")
            self._spawn(self._rejoin, "re-joined with the new capabilities")
            return False
        self._claimed_at = max(self._claimed_at, result.header.revision)
        return True

    # --- joining -----------------------------------------------------------------------

    def _join_first(self) -> None:
        if not _take_local(self._conn, self._key):
            raise MemberExists(self._taken_text("a member of this connector"))
        self._local = True
        self._lease = self._conn.lease_keeper.acquire(self.ttl, self._on_lease)
        used = self._lease.id
        try:
            claimed = self._claim()
        except LeaseNotFound:  # revoked behind our back: the next start gets a new one
            self._lease.invalidate(used)
            raise
        if not claimed:
            raise MemberExists(self._taken_text("a live member"))

    def _taken_text(self, who: str) -> str:
        return f"{who} of group {self.path.decode('utf-8', 'replace')!r} is {self.identity!r}"

    def _claim(self) -> bool:
        """Create our key if absent (or find it ours); True when we hold it."""
        lease = self._lease
        assert lease is not None
        for _ in range(CLAIM_ROUNDS):
            result = self._conn.txn(
                [Compare.create_revision(self._key) == 0],
                [Op.put(self._key, self._value, lease=lease.id)],
                [Op.get(self._key)],
            )
            self._claimed_at = max(self._claimed_at, result.header.revision)
            if result.succeeded:
                return self._hold(result.header.revision)
            current = found_key(result)
            if current is None:
                continue  # deleted since: create it
            if current.lease == lease.id and current.value == self._value:
                return self._hold(current.create_revision)  # ours (an answer was lost)
            if current.lease != lease.id and not lease.was_held(current.lease):
                return False
            # ours, on a lease this process held before (or with an older value)
            moved = self._conn.txn(
                [Compare.mod_revision(self._key) == current.mod_revision],
                [Op.put(self._key, self._value, lease=lease.id)],
            )
            self._claimed_at = max(self._claimed_at, moved.header.revision)
            if moved.succeeded:
                return self._hold(current.create_revision)
        raise EtcdError(f"member key {self._key.decode()!r} kept changing while joining")

    def _hold(self, revision: int) -> bool:
        self._revision = revision
        self._joined = True
        return True

    def _rejoin(self, why: str) -> None:
        """Re-create our key on the live lease, retrying (with backoff) while etcd
        fails; stops when another process holds the identity (reported)."""
        if self._rejoining or self._joined:
            return
        self._rejoining = True
        backoff = Backoff(first=0.1)
        try:
            while self._running and not self._joined:
                lease = self._lease
                if lease is None or not lease.valid:
                    return  # the lease's next ACTIVE (a new lease) starts again
                used = lease.id
                try:
                    claimed = self._claim()
                except LeaseNotFound:  # gone on the server: it is replaced, then ACTIVE
                    lease.invalidate(used)
                    continue  # a replacement granted meanwhile is used at once
                except EtcdError as exc:
                    self._report(exc)
                    gevent.sleep(backoff.next())
                    continue
                if claimed and lease.id != used:  # written on a lease lost meanwhile
                    self._joined = False
                    continue
                if claimed:
                    self._status(GroupEventKind.REJOINED, why)
                else:
                    self._report(MemberExists(self._taken_text("now a live member")))
                return
        finally:
            self._rejoining = False

    def _lose(self, why: str) -> None:
        if self._joined:
            self._joined = False
            self._status(GroupEventKind.LOST, why)

    def _status(self, kind: GroupEventKind, why: str = "") -> None:
        assert self.identity is not None
        self._emit(GroupEvent(kind, self.identity, self.capabilities, self._stale, why))

    # --- callbacks (from the lease and watch greenlets) --------------------------------

    def _on_lease(self, lease: KeptLease, state: LeaseState) -> None:
        if not self._running:
            return
        if state is LeaseState.SUSPENDED:
            if self._joined and not self._suspended:
                self._status(GroupEventKind.SUSPENDED, "a renewal of its lease is overdue")
            self._suspended = True
        elif state is LeaseState.LOST:
            self._suspended = False
            self._lose("its lease expired or was revoked")
        elif state is LeaseState.ACTIVE:
            was_suspended, self._suspended = self._suspended, False
            if self._joined and was_suspended:
                self._status(GroupEventKind.RESUMED, "its lease is renewed again")
            elif not self._joined:
                self._spawn(self._rejoin, "a new lease was granted")

    def _on_change(self, update: PrefixUpdate) -> None:
        if not self._running:
            return
        if update.stale != self._stale:
            self._stale = update.stale
            self._emit(Staleness(update.stale, update.age, update.revision))
        if update.error is not None:  # the watch retries; its error is logged already
            self._emit(RecipeError(update.error))
            self._first_error = self._first_error or update.error
            self._first.set()
            return
        if update.resynced:  # the first state, or a re-read (after compaction)
            self._resync(update.state)
        elif not self._synced:
            return  # the watch has not read the members yet
        else:
            for event in update.events:
                self._apply(event)
        self._synced = True
        self._first.set()
        self._check_own(update)

    def _identity_of(self, key: bytes) -> str | None:
        """The identity of a member key, None for any other key under the prefix."""
        if not key.startswith(self._prefix):
            return None
        rest = key[len(self._prefix) :]
        if not rest or b"/" in rest:
            return None
        return rest.decode("utf-8", "replace")

    def _change(self, kind: GroupEventKind, kv: KeyValue) -> None:
        identity = self._identity_of(kv.key)
        assert identity is not None
        caps = None if kind is GroupEventKind.LEFT else decode_capabilities(kv.value)
        self._emit(GroupEvent(kind, identity, caps, self._stale))

    def _resync(self, state: Mapping[bytes, KeyValue]) -> None:
        """Replace the known members with ``state``, reporting the difference."""
        fresh = {k: kv for k, kv in state.items() if self._identity_of(k) is not None}
        for key in sorted(self._known):
            gone, kept = self._known[key], fresh.get(key)
            if kept is None or kept.create_revision != gone.create_revision:
                self._change(GroupEventKind.LEFT, gone)
        for key in sorted(fresh):
            old, now = self._known.get(key), fresh[key]
            if old is None or old.create_revision != now.create_revision:
                self._change(GroupEventKind.JOINED, now)
            elif old.value != now.value:
                self._change(GroupEventKind.UPDATED, now)
        self._known = fresh

    def _apply(self, event: Event) -> None:
        kv = event.kv
        if self._identity_of(kv.key) is None:
            return
        old = self._known.get(kv.key)
        if event.type is EventType.DELETE:
            if old is not None:
                del self._known[kv.key]
                self._change(GroupEventKind.LEFT, old)
            return
        self._known[kv.key] = kv
        if old is not None and old.create_revision != kv.create_revision:
            self._change(GroupEventKind.LEFT, old)
        if old is None or old.create_revision != kv.create_revision:
            self._change(GroupEventKind.JOINED, kv)
        elif old.value != kv.value:
            self._change(GroupEventKind.UPDATED, kv)

    def _check_own(self, update: PrefixUpdate) -> None:
        """Notice our key deleted by someone else (then re-join), or gone and ours to
        re-create."""
        lease = self._lease
        if self.identity is None or lease is None or self._conn.closing:
            return
        if update.revision < self._claimed_at:
            return  # a view older than our last write
        current = update.state.get(self._key)
        mine = current is not None and current.lease == lease.id
        if self._joined and not mine:
            self._lose("its key was deleted by someone else")
        left_behind = current is not None and not mine and lease.was_held(current.lease)
        if not self._joined and lease.valid and (current is None or left_behind):
            self._spawn(self._rejoin, "re-created after its key was deleted")

    # --- stop --------------------------------------------------------------------------

    def _release(self) -> Release | None:
        if self._watching:
            self._watching = False
            self._conn.hub.unsubscribe(self._prefix, self._on_change)
        lease, self._lease = self._lease, None
        local, self._local = self._local, False
        if lease is None:
            if local:
                _drop_local(self._conn, self._key)
            return None
        mine = self._joined and not self._conn.closing  # closing revokes the lease
        self._joined = False
        doomed = created_at({self._key: self._revision}) if mine else {}
        try:
            delete_guarded(self._conn, doomed)
        except BaseException:  # no answer, or out of time: let go in the background
            then = functools.partial(_drop_local, self._conn, self._key) if local else None
            self._leftover = let_go(
                self._conn, lease, self._on_lease, doomed, then=then, owner=self
            )
            raise
        if local:
            _drop_local(self._conn, self._key)
        self._conn.lease_keeper.release(lease, self._on_lease, timeout=self._remaining())
        return None

    def _held_text(self) -> str:
        return f"delete the member key {self._key.decode('utf-8', 'replace')}"

    def _expires_in(self) -> float | None:
        return self._leftover


__all__ = [
    "MAX_NAME_BYTES",
    "GroupEvent",
    "GroupEventKind",
    "GroupMember",
    "RawValue",
]

"""Partitioner: split a set of items among the live members of a group (kazoo's
``SetPartitioner``).

Key layout (geventc's own: no Go counterpart defines one):

- members are a :class:`~geventc.recipes.group.GroupMember` group at
  ``path + "/members"``: keys ``path/members/<identity>`` (value ``null``);
- the owner of an item is the key ``path/items/<item>`` whose value is the owner's
  identity (UTF-8); it is attached to the same shared lease of ``ttl`` seconds as the
  owner's member key, so a member whose process dies leaves the group and frees its
  items together, when that lease expires.

Partition function (kazoo's default): the items, sorted, are dealt round-robin to the
live members sorted by identity (code-point order): item ``i`` goes to member
``i % n``, so member ``k`` owns ``sorted(items)[k::n]``. Every member must be given the
same item set.

States (a :class:`PartitionEvent` on the channel at each change, with the items this
member owns then, confirmed by etcd, and the members it allocated for):

- ``ALLOCATING``: acquiring its share. An item key is created only if absent
  (``create_revision == 0``), so no item is ever owned by two members whose leases are
  valid; an item still owned by another member is waited for through the shared watch
  of ``path/items/`` (no polling). A membership change meanwhile re-computes the share
  and gives back what is no longer in it (nothing was handed to the caller yet);
- ``ACQUIRED``: it owns exactly its share (:attr:`Partitioner.items`);
- ``RELEASE``: the members changed (or one of its item keys was deleted by someone
  else): the caller stops working on its items, then calls
  :meth:`Partitioner.release_set`, which deletes its item keys (guarded by their create
  revisions) and goes back to ``ALLOCATING``. With ``auto_release=True`` the
  partitioner releases by itself at once (the caller's work on the items is then not
  fenced: it must stop at the RELEASE event);
- ``FAILURE``: its lease expired or was revoked, its membership ended, or another
  process took its identity while it re-joined: it owns
  nothing any more; the event is the last one: the partitioner stops (a new one must
  be made to take part again), as kazoo's does.

While the lease is ``SUSPENDED`` (a renewal is overdue) the state is kept but events say
``suspended=True`` (the caller should pause: the items may be lost) until renewals
succeed again. ``stale=True`` says a watch (of members or items) could not be confirmed
current. ``stop()`` deletes its item keys and its member key and releases its share of
the lease; the :class:`Release` is true only when etcd confirmed it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event as Signal
from gevent.lock import Semaphore

from .. import validate
from ..errors import EtcdError, InvalidArgument, LeaseNotFound, MemberExists, RecipeStateError
from ..lease import KeptLease, LeaseState
from ..retry import Backoff
from ..staleness import Staleness
from ..txn import Compare, Op, TxnOp
from ..watch import PrefixUpdate
from ..wire import KeyValue, TxnResult
from .base import Recipe, RecipeError, Release
from .group import GroupEventKind, GroupMember, found_key, group_path, member_name
from .leftover import created_at, delete_guarded, let_go

if TYPE_CHECKING:
    from ..host import RecipeHost

#: The group events that may change the member list.
_MEMBERSHIP = (
    GroupEventKind.JOINED,
    GroupEventKind.LEFT,
    GroupEventKind.LOST,
    GroupEventKind.REJOINED,
)


class PartitionState(enum.Enum):
    """Where a partitioner stands (kazoo's ``PartitionState``)."""

    ALLOCATING = "ALLOCATING"
    ACQUIRED = "ACQUIRED"
    RELEASE = "RELEASE"
    FAILURE = "FAILURE"


@dataclass(frozen=True, slots=True)
class PartitionEvent:
    """The partitioner entered ``state`` (or its ``suspended``/``stale`` flags changed),
    owning ``items`` (confirmed by etcd), allocating for ``members``."""

    state: PartitionState
    items: tuple[str, ...]
    members: tuple[str, ...]
    suspended: bool = False
    stale: bool = False
    reason: str = ""


def partition(identity: str, members: Iterable[str], items: Iterable[str]) -> tuple[str, ...]:
    """The share of ``identity``: ``sorted(items)[k::n]`` where ``k`` is its index among
    the ``n`` sorted ``members`` (nothing when it is not one of them)."""
    workers = sorted(set(members))
    if identity not in workers:
        return ()
    return tuple(sorted(set(items))[workers.index(identity) :: len(workers)])


def item_set(items: Any) -> tuple[str, ...]:
    """``items`` validated (non-empty str without ``/``), deduplicated and sorted."""
    if isinstance(items, str | bytes | bytearray) or not isinstance(items, Iterable):
        raise InvalidArgument(
            f"items must be an iterable of str (a list, tuple or set), not {type(items).__name__}"
        )
    return tuple(sorted({member_name(item, "item") for item in items}))


class Partitioner(Recipe[PartitionEvent]):
    """Member ``identity`` sharing ``items`` with the other members of ``path``; see the
    module docstring."""

    def __init__(
        self,
        conn: RecipeHost,
        path: str,
        items: Iterable[str],
        identity: str,
        *,
        ttl: int = 10,
        auto_release: bool = False,
    ) -> None:
        super().__init__(conn)
        self.path = group_path(conn, path)
        self.identity = member_name(identity, "identity")
        self.set = item_set(items)
        self.ttl = validate.ttl(ttl)
        self.auto_release = validate.boolean(auto_release, "auto_release")
        self._items_prefix = self.path + b"/items/"
        self._member = GroupMember(conn, self.path + b"/members", identity, ttl=ttl)
        self._state = PartitionState.ALLOCATING
        self._lease: KeptLease | None = None
        self._held: dict[str, int] = {}  # item -> its key's create revision
        self._left: dict[str, int] = {}  # held when the lease was lost: deleted at stop
        self._share: frozenset[str] = frozenset()
        self._allocated_for: tuple[str, ...] | None = None
        self._members: tuple[str, ...] = ()
        self._view: Mapping[bytes, KeyValue] = {}
        self._view_revision = 0
        self._tried: dict[str, int] = {}  # item -> revision at which another owned it
        self._lost_items: list[str] = []
        self._suspended = False
        self._lost = False
        self._items_stale = False
        self._members_stale = False
        self._watching = False
        self._wake = Signal()
        self._io = Semaphore()
        self._last: tuple[PartitionState, bool, bool] | None = None
        self._leftover: float | None = None

    def __repr__(self) -> str:
        return f"Partitioner({self.path.decode('utf-8', 'replace')!r}, {self.identity!r})"

    # --- public ------------------------------------------------------------------------

    @property
    def state(self) -> PartitionState:
        """The state last reported."""
        return self._state

    @property
    def items(self) -> tuple[str, ...]:
        """The items this member owns now, confirmed by etcd (sorted; empty once its
        lease is surely gone)."""
        if self._lease is None or not self._lease.valid:
            return ()
        return tuple(sorted(self._held))

    @property
    def members(self) -> tuple[str, ...]:
        """The live members as this member last saw them (sorted)."""
        return self._members

    @property
    def acquired(self) -> bool:
        """True while ACQUIRED and the lease is surely alive and renewed."""
        lease = self._lease
        return (
            self._state is PartitionState.ACQUIRED
            and lease is not None
            and lease.valid
            and lease.state is LeaseState.ACTIVE
        )

    def _start(self) -> None:
        """Join the members, follow the items, and start allocating."""
        self._begin()
        try:
            self._lease = self._conn.lease_keeper.acquire(self.ttl, self._on_lease)
            self._member.start()
            self._members = self._member.identities
            self._conn.hub.subscribe(self._items_prefix, self._on_items, read_your_writes=True)
            self._watching = True
        except BaseException:
            self.stop()
            raise
        self._publish("joined the members")
        self._wake.set()
        self._spawn(self._follow_members)
        self._spawn(self._run)

    def release_set(self) -> None:
        """Give back every item (the answer to ``RELEASE``), then allocate again. Raises
        :class:`RecipeStateError` in any other state, or the request's error when etcd
        did not confirm (the state stays ``RELEASE``: call it again)."""
        if not self._running:
            raise RecipeStateError("release_set() needs a started partitioner")
        if self._state is not PartitionState.RELEASE:
            raise RecipeStateError(
                f"release_set() answers the RELEASE state; the partitioner is {self._state.value}"
            )
        with self._io:
            if self._state is PartitionState.RELEASE:
                self._delete_items(dict(self._held))
                self._enter(PartitionState.ALLOCATING, "released its items")
        self._wake.set()

    # --- the allocating greenlet -------------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff(first=0.1)
        while self._running:
            self._wake.wait()
            self._wake.clear()
            try:
                with self._io:
                    self._step()
                backoff.reset()
            except EtcdError as exc:
                self._report(exc)
                gevent.sleep(backoff.next())
                self._wake.set()

    def _step(self) -> None:
        if self._lost:
            self._fail("its lease expired or was revoked")
            return
        self._publish()  # the suspended or stale flag may have changed
        if self._state is PartitionState.RELEASE:
            if not self.auto_release:
                return
            self._delete_items(dict(self._held))
            self._enter(PartitionState.ALLOCATING, "released its items (auto_release)")
        if self._state is PartitionState.ACQUIRED:
            why = self._why_release()
            if why:
                self._enter(PartitionState.RELEASE, why)
                self._wake.set()
            return
        self._allocate()

    def _why_release(self) -> str:
        if self._members != self._allocated_for:
            return f"the members changed to {', '.join(self._members) or 'none'}"
        if self._lost_items:
            lost, self._lost_items = self._lost_items, []
            return f"item(s) {', '.join(sorted(lost))} were deleted by someone else"
        return ""

    def _allocate(self) -> None:
        members = self._members
        if members != self._allocated_for:
            self._allocated_for = members
            self._share = frozenset(partition(self.identity, members, self.set))
            self._tried.clear()
        self._lost_items = []
        extra = {item: rev for item, rev in self._held.items() if item not in self._share}
        if extra:
            self._delete_items(extra)
        lease = self._lease
        if self.identity not in members or lease is None:
            return  # wait until the watch shows this member
        if lease.state is not LeaseState.ACTIVE or not lease.valid:
            return  # not while suspended: ACTIVE wakes it
        self._adopt_own(lease.id)
        wanted = [item for item in sorted(self._share - set(self._held)) if self._free(item)]
        if wanted:
            self._acquire(wanted, lease)
        if set(self._held) == self._share and self._members == members and lease.valid:
            self._enter(PartitionState.ACQUIRED, f"owns its {len(self._share)} item(s)")

    def _key(self, item: str) -> bytes:
        return self._items_prefix + item.encode()

    def _free(self, item: str) -> bool:
        """True when the watch shows no owner of ``item`` (and is at least as recent as
        the read that last found one)."""
        if self._view.get(self._key(item)) is not None:
            return False
        return self._view_revision >= self._tried.get(item, 0)

    def _adopt_own(self, lease_id: int) -> None:
        """Count as held the keys of our share the watch shows ours (a create whose
        answer was lost)."""
        mine = self.identity.encode()
        for item in self._share - set(self._held):
            kv = self._view.get(self._key(item))
            if kv is not None and kv.value == mine and kv.lease == lease_id:
                self._held[item] = kv.create_revision

    def _acquire(self, items: Sequence[str], lease: KeptLease) -> None:
        """Create the keys of ``items`` that are absent, in one txn per
        ``--max-txn-ops`` items."""
        used = lease.id
        for start in range(0, len(items), validate.MAX_TXN_OPS):
            chunk = items[start : start + validate.MAX_TXN_OPS]
            ops = [self._create(item, used) for item in chunk]
            try:
                result = self._conn.txn([], ops)
            except LeaseNotFound:
                self._lost = True
                lease.invalidate(used)
                raise
            for item, answer in zip(chunk, result.responses, strict=False):
                if isinstance(answer, TxnResult):
                    self._note(item, answer, result.header.revision, used)

    def _create(self, item: str, lease_id: int) -> TxnOp:
        key = self._key(item)
        return Op.txn(
            [Compare.create_revision(key) == 0],
            [Op.put(key, self.identity, lease=lease_id)],
            [Op.get(key)],
        )

    def _note(self, item: str, answer: TxnResult, revision: int, lease_id: int) -> None:
        if answer.succeeded:
            self._held[item] = revision
            return
        owner = found_key(answer)
        if owner is not None and owner.value == self.identity.encode() and owner.lease == lease_id:
            self._held[item] = owner.create_revision
        else:
            self._tried[item] = revision

    def _delete_items(self, items: Mapping[str, int]) -> None:
        """Delete our keys of ``items`` (each only while it is the one we created);
        raises the request's error (then they are still held)."""
        delete_guarded(self._conn, created_at({self._key(i): rev for i, rev in items.items()}))
        for item in items:
            self._held.pop(item, None)

    def _enter(self, state: PartitionState, why: str) -> None:
        self._state = state
        self._publish(why)

    def _publish(self, why: str = "") -> None:
        """Report the state if it (or a flag) changed since the last report."""
        stale = self._items_stale or self._members_stale
        mark = (self._state, self._suspended, stale)
        if mark == self._last:
            return
        self._last = mark
        self._emit(
            PartitionEvent(self._state, self.items, self._members, self._suspended, stale, why)
        )

    def _fail(self, why: str) -> None:
        """FAILURE: own nothing, say so, and stop."""
        if self._state is PartitionState.FAILURE:
            return
        self._left.update(self._held)
        self._held.clear()
        self._enter(PartitionState.FAILURE, why)
        self._shutdown()

    # --- callbacks (from the lease, watch and member greenlets) ------------------------

    def _follow_members(self) -> None:
        for event in self._member.channel:
            if isinstance(event, RecipeError):
                self._emit(RecipeError(event.error))  # the member logged it already
                if isinstance(event.error, MemberExists):  # another process took the name
                    self._fail_later(f"its identity was taken: {event.error.message}")
                    return
                continue
            if isinstance(event, Staleness):
                self._members_stale = event.stale
            elif event.kind in _MEMBERSHIP:
                self._members = self._member.identities
            self._wake.set()
        if self._running:
            self._wake.set()
            self._fail_later("its group membership ended")

    def _fail_later(self, why: str) -> None:
        with self._io:
            self._fail(why)

    def _on_lease(self, lease: KeptLease, state: LeaseState) -> None:
        if state is LeaseState.SUSPENDED:
            self._suspended = True
        elif state is LeaseState.ACTIVE:
            self._suspended = False
        elif state is LeaseState.LOST:
            self._lost = True
        self._wake.set()

    def _on_items(self, update: PrefixUpdate) -> None:
        if not self._running:
            return
        self._items_stale = update.stale
        if update.error is not None:  # the watch retries; its error is logged already
            self._emit(RecipeError(update.error))
        else:
            self._view = update.state
            self._view_revision = update.revision
            self._notice_lost_items()
        self._wake.set()

    def _notice_lost_items(self) -> None:
        """Forget held items whose keys the watch shows gone or re-created."""
        for item, revision in list(self._held.items()):
            if self._view_revision < revision:
                continue  # the watch has not seen our create yet
            kv = self._view.get(self._key(item))
            if kv is None or kv.create_revision != revision:
                del self._held[item]
                self._lost_items.append(item)

    # --- stop --------------------------------------------------------------------------

    def _release(self) -> Release | None:
        if self._watching:
            self._watching = False
            self._conn.hub.unsubscribe(self._items_prefix, self._on_items)
        lease, self._lease = self._lease, None
        held = {self._key(item): rev for item, rev in {**self._left, **self._held}.items()}
        self._held.clear()
        self._left.clear()
        if lease is None:
            return self._stop_member()
        doomed = created_at(held) if not self._conn.closing else {}  # closing revokes the lease
        try:
            delete_guarded(self._conn, doomed)
        except BaseException:  # no answer, or out of time: let go in the background
            self._leftover = let_go(self._conn, lease, self._on_lease, doomed, owner=self)
            self._stop_member()
            raise
        member = self._stop_member()
        self._conn.lease_keeper.release(lease, self._on_lease, timeout=self._remaining())
        return member

    def _stop_member(self) -> Release | None:
        outcome = self._member._shutdown(deadline=self._release_deadline)
        return None if outcome.confirmed else outcome

    def _held_text(self) -> str:
        return f"delete the item keys under {self._items_prefix.decode('utf-8', 'replace')}"

    def _expires_in(self) -> float | None:
        return self._leftover


__all__ = ["PartitionEvent", "PartitionState", "Partitioner", "item_set", "partition"]

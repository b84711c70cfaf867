"""STM: etcd ``concurrency.STM`` (software transactional memory) on a connector.

``run_stm(conn, apply)`` (or ``conn.stm(apply)``) calls ``apply(tx)``, where ``tx`` is
an :class:`STM`: ``tx.get(key)`` reads a key and records it in the transaction's read
set, ``tx.put``/``tx.delete`` only record writes, and when ``apply`` returns, the
writes are committed in one etcd transaction guarded against the conflicts of the
isolation level. On a conflict nothing is written and ``apply`` runs again on fresh
data, until it commits (or ``retries`` re-runs were made: :class:`RetriesExhausted`);
``run_stm`` returns what the committed run of ``apply`` returned. An exception from
``apply`` propagates at once and nothing of that run is written. ``apply`` should have
no side effects besides ``tx``: it may run more than once.

The isolation levels and their guards are Go's, key for key (``concurrency/stm.go``):

- ``SERIALIZABLE_SNAPSHOT`` (the default): every read is at the revision of the
  transaction's first read (one snapshot); the commit requires each key read to be
  unchanged (``mod_revision == seen``, 0 when it was absent) and each key written to be
  unmodified since that snapshot (``mod_revision < first read's revision + 1``);
- ``SERIALIZABLE``: the same snapshot reads, and only the read-set guard;
- ``REPEATABLE_READS``: each key is read once (serializable reads at the member's
  current revision) and the read-set guard catches any change by commit time;
- ``READ_COMMITTED``: no guard: reads see any committed revision and the writes are
  applied as they are (a lost update is possible, by definition).

After a conflict the serializable levels re-read every key of the read set in the
failed transaction itself (its ``failure`` branch), as Go does, so a re-run costs no
extra round trip for those keys. Keys are under the connector's namespace.

If the commit's answer is lost (:class:`~geventc.errors.IndeterminateWrite`), the
error propagates: the transaction may or may not have been applied, and ``apply`` is
not run again. Reads are re-sent after a lost answer (a read changes nothing). A
transaction's reads and writes together must fit one etcd transaction (at most 128
guards and 128 operations by default: etcd's ``--max-txn-ops``).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from . import validate
from .errors import (
    EtcdError,
    IndeterminateWrite,
    InvalidArgument,
    ProtocolError,
    RetriesExhausted,
    Unavailable,
)
from .host import require_host
from .txn import Compare, Comparison, Op, TxnOp
from .wire import KeyValue, Lease, RangeResult, TxnResult

if TYPE_CHECKING:
    from .host import RecipeHost

log = logging.getLogger("geventc")

#: Go's ``readSet.first()`` when nothing was read: ``math.MaxInt64 - 1``.
NOTHING_READ = validate.INT64_MAX - 1


class Isolation(enum.Enum):
    """How concurrent transactions may interfere (Go's ``concurrency.Isolation``)."""

    SERIALIZABLE_SNAPSHOT = "serializable_snapshot"
    SERIALIZABLE = "serializable"
    REPEATABLE_READS = "repeatable_reads"
    READ_COMMITTED = "read_committed"

    @classmethod
    def of(cls, value: object) -> Isolation:
        """``value`` as an Isolation: a member, or its name in any case, with ``_``,
        ``-`` or a space between words (``"serializable-snapshot"``)."""
        if isinstance(value, Isolation):
            return value
        if isinstance(value, str):
            name = value.strip().lower().replace("-", "_").replace(" ", "_")
            for level in cls:
                if level.value == name:
                    return level
        allowed = ", ".join(level.value for level in cls)
        raise InvalidArgument(f"isolation must be an Isolation or one of {allowed}; got {value!r}")

    @property
    def snapshot(self) -> bool:
        """True for the levels that read at the first read's revision."""
        return self in (Isolation.SERIALIZABLE_SNAPSHOT, Isolation.SERIALIZABLE)


@dataclass(frozen=True, slots=True)
class _Write:
    """A write in the write set: what ``get`` returns for the key, and its operation."""

    value: bytes
    op: TxnOp


class STM:
    """The transaction ``apply`` is given by :func:`run_stm`; see the module docstring.

    Valid only inside the ``apply`` call it was given to (one greenlet). Reads go to
    etcd (once per key and run); writes stay local until the commit. Keys are ``str``
    or ``bytes`` under the connector's namespace; values ``str`` (UTF-8) or ``bytes``."""

    __slots__ = ("_host", "_prefetched", "_reads", "_snapshot", "_writes", "isolation")

    def __init__(self, host: RecipeHost, isolation: Isolation | str) -> None:
        self._host = require_host(host, "STM")
        #: the transaction's isolation level
        self.isolation = Isolation.of(isolation)
        self._reads: dict[bytes, RangeResult] = {}
        self._writes: dict[bytes, _Write] = {}
        self._prefetched: dict[bytes, RangeResult] = {}  # read by a failed commit
        self._snapshot = 0  # the revision the snapshot levels read at (0: no read yet)

    def __repr__(self) -> str:
        return f"STM({self.isolation.name}, {len(self._reads)} read, {len(self._writes)} written)"

    # --- what apply calls --------------------------------------------------------------

    def get(self, key: str | bytes) -> str:
        """The key's value as text ("" when absent, as in Go), or the value this
        transaction put (or "" if it deleted the key); the key joins the read set.
        Raises :class:`ProtocolError` when the value is not UTF-8 (use
        :meth:`get_bytes`)."""
        data = self.get_bytes(key)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(
                f"the value of {key!r} is not UTF-8 text; read it with tx.get_bytes()"
            ) from None

    def get_bytes(self, key: str | bytes) -> bytes:
        """:meth:`get` as raw bytes (b"" when absent)."""
        name = self._key(key)
        written = self._writes.get(name)
        if written is not None:
            return written.value
        kvs = self._entry(name).kvs
        return kvs[0].value if kvs else b""

    def put(
        self, key: str | bytes, value: str | bytes, *, lease: int | Lease | None = None
    ) -> None:
        """Write ``value`` at ``key`` when the transaction commits (attached to
        ``lease`` if given); later reads of the key in this run return it."""
        name = self._key(key)
        data = validate.value(value)
        self._writes[name] = _Write(data, Op.put(name, data, lease=lease))

    def delete(self, key: str | bytes) -> None:
        """Delete ``key`` when the transaction commits; later reads in this run return
        ""."""
        name = self._key(key)
        self._writes[name] = _Write(b"", Op.delete(name))

    def rev(self, key: str | bytes) -> int:
        """The mod revision of ``key`` as this transaction read it (0 when absent); the
        key joins the read set (writes of this run do not change it)."""
        kvs = self._entry(self._key(key)).kvs
        return kvs[0].mod_revision if kvs else 0

    # --- run_stm's part ----------------------------------------------------------------

    def _reset(self) -> None:
        """Forget the reads and writes of the last run (keep what its commit re-read)."""
        self._reads = {}
        self._writes = {}
        self._snapshot = 0

    def _key(self, key: object) -> bytes:
        """The canonical caller key (``"a"`` and ``"/a"`` are one key in a namespace)."""
        return self._host.namespace.strip(self._host.namespace.key(key))

    def _prefetch(self, keys: list[bytes]) -> None:
        """Read ``keys`` into the read set in one request (Go's ``WithPrefetch``)."""
        missing = [key for key in keys if key not in self._reads and not self._adopt(key)]
        if missing:
            self._fetch(missing)

    def _entry(self, key: bytes) -> RangeResult:
        """The key's read, from the read set, the failed commit's re-read, or etcd."""
        if key not in self._reads and not self._adopt(key):
            self._fetch([key])
        return self._reads[key]

    def _adopt(self, key: bytes) -> bool:
        """Take the key's re-read of the failed commit into the read set, if there is
        one; the first read of a run sets the snapshot revision."""
        read = self._prefetched.pop(key, None)
        if read is None:
            return False
        self._reads[key] = read
        if self.isolation.snapshot and not self._snapshot:
            self._snapshot = read.header.revision
        return True

    def _fetch(self, keys: list[bytes]) -> None:
        """Read ``keys`` from etcd at this level's revision into the read set."""
        options: dict[str, Any] = {}
        if not self.isolation.snapshot:
            options["serializable"] = True  # as Go: the member's own current state
        elif self._snapshot:
            options.update(revision=self._snapshot, serializable=True)
        result = _read(self._host, [Op.get(key, **options) for key in keys])
        reads = _ranges(result, len(keys))
        self._reads.update(zip(keys, reads, strict=True))
        if self.isolation.snapshot and not self._snapshot:
            self._snapshot = reads[0].header.revision

    def _first_revision(self) -> int:
        """The store revision of the earliest read (Go's ``readSet.first()``)."""
        return min((read.header.revision for read in self._reads.values()), default=NOTHING_READ)

    def _conflicts(self) -> list[Comparison]:
        """The commit's guards at this isolation level."""
        if self.isolation is Isolation.READ_COMMITTED:
            return []
        guards = [_unchanged(key, read) for key, read in self._reads.items()]
        if self.isolation is Isolation.SERIALIZABLE_SNAPSHOT:
            bound = self._first_revision() + 1
            guards += [Compare.mod_revision(key) < bound for key in self._writes]
        return guards

    def _commit(self) -> bool:
        """Try to apply the writes under the guards; False (nothing written) on a
        conflict, after which the snapshot levels keep the re-read keys for the next
        run."""
        keys = list(self._reads) if self.isolation.snapshot else []
        success = [write.op for write in self._writes.values()]
        result = self._host.txn(self._conflicts(), success, [Op.get(key) for key in keys])
        if result.succeeded:
            return True
        if keys:
            self._prefetched = dict(zip(keys, _ranges(result, len(keys)), strict=True))
        return False


def run_stm(
    host: RecipeHost,
    apply: Callable[[STM], Any],
    *,
    isolation: Isolation | str = Isolation.SERIALIZABLE_SNAPSHOT,
    retries: int | None = None,
    prefetch: Iterable[str | bytes] = (),
) -> Any:
    """Run ``apply(tx)`` until its writes commit without conflict, and return what the
    committed run returned (see the module docstring).

    ``retries`` None re-runs until it commits (as Go does); an int allows that many
    re-runs after conflicts, then raises :class:`RetriesExhausted` (nothing written).
    ``prefetch`` keys are read in one request at the start of every run. Raises
    :class:`InvalidArgument` for a non-callable ``apply``, an unknown ``isolation`` or a
    bad ``retries``/``prefetch``, before any request."""
    conn = require_host(host, "run_stm")
    if not callable(apply):
        raise InvalidArgument(
            f"apply must be a callable taking the STM, not {type(apply).__name__}"
        )
    level = Isolation.of(isolation)
    bound = None if retries is None else validate.integer(retries, "retries")
    tx = STM(conn, level)
    keys = _prefetch_keys(tx, prefetch)
    conflicts = 0
    while True:
        tx._reset()
        if keys:
            tx._prefetch(keys)
        result = apply(tx)
        if tx._commit():
            return result
        conflicts += 1
        if bound is not None and conflicts > bound:
            raise RetriesExhausted(
                f"the {level.value} transaction conflicted {conflicts} times "
                f"(retries={bound}); nothing of it was written"
            )
        log.debug("stm: %s transaction conflicted; running it again", level.value)


# --- helpers ---------------------------------------------------------------------------


def _prefetch_keys(tx: STM, prefetch: object) -> list[bytes]:
    """The prefetch keys, validated and canonical, in order without repeats."""
    if isinstance(prefetch, str | bytes) or not isinstance(prefetch, Iterable):
        raise InvalidArgument("prefetch must be a list of keys (str or bytes)")
    return list(dict.fromkeys(tx._key(key) for key in prefetch))


def _unchanged(key: bytes, read: RangeResult) -> Comparison:
    """Go's ``isKeyCurrent``: the key's mod revision is the one read (0: still absent)."""
    kv: KeyValue | None = read.kvs[0] if read.kvs else None
    return Compare.mod_revision(key) == (kv.mod_revision if kv else 0)


def _ranges(result: TxnResult, count: int) -> list[RangeResult]:
    """The ``count`` range reads of a txn's answer, each with its store revision."""
    reads = [r for r in result.responses if isinstance(r, RangeResult)]
    if len(reads) != count or len(result.responses) != count:
        raise ProtocolError(f"etcd answered {len(result.responses)} results to {count} reads")
    revision = result.header.revision
    return [r if r.header.revision else _with_revision(r, revision) for r in reads]


def _with_revision(read: RangeResult, revision: int) -> RangeResult:
    """A nested read without its own header: it was made at the txn's revision."""
    return replace(read, header=replace(read.header, revision=revision))


def _read(host: RecipeHost, ops: list[TxnOp]) -> TxnResult:
    """A read-only txn of ``ops``; re-sent after a lost answer (it changes nothing),
    once per endpoint within the request timeout."""
    deadline = time.monotonic() + host.request_timeout
    attempts = len(host.endpoints) + 1
    for attempt in range(1, attempts + 1):
        try:
            return host.txn((), ops)
        except IndeterminateWrite as lost:
            if attempt == attempts or time.monotonic() >= deadline:
                raise _unanswered(lost) from lost
    raise AssertionError("unreachable")  # pragma: no cover


def _unanswered(lost: IndeterminateWrite) -> EtcdError:
    """What a read whose answers were all lost raises: the cause, not a write error."""
    cause = lost.__cause__
    if isinstance(cause, EtcdError) and not isinstance(cause, IndeterminateWrite):
        return cause
    return Unavailable(f"the STM read got no answer ({lost.message})", endpoint=lost.endpoint)

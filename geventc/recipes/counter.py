"""Counter: an atomic int64 counter stored at one key.

The key ``path`` holds the value as decimal text (``b"42"``, what Go's
``strconv.Atoi`` and ``strconv.FormatInt`` read and write); a missing key counts as 0.
Every change is a transaction guarded by the key's mod revision (``create_revision ==
0`` while it is absent) and re-tried on conflict with the value the failed transaction
read (an add first pauses a few random milliseconds, so a crowd of contenders wastes
fewer txns), so concurrent :meth:`Counter.add` calls, from greenlets, processes or Go,
never lose or repeat an increment.

When etcd may or may not have applied a write (the request was sent and its answer
lost: a member died, the deadline passed), the counter resends the *same* guarded
transaction once: the guard ``mod_revision == R`` can hold for only one of the copies,
so if the resend succeeds exactly one was applied. If it fails (or the key was absent,
where a delete in between could let a late copy apply again), the call raises
:class:`~geventc.errors.IndeterminateWrite`: the change may or may not be in the
counter, and it is never re-applied blindly. Read the value to find out.
"""

from __future__ import annotations

import random
import re
import time
from typing import TYPE_CHECKING

from .. import validate
from ..errors import EtcdError, IndeterminateWrite, InvalidArgument, ProtocolError
from ..host import require_host
from ..txn import Compare, Comparison, Op, TxnOp
from ..wire import KeyValue, RangeResult, TxnResult

if TYPE_CHECKING:
    from ..host import RecipeHost

#: The bounds of a counter's value: Go's int64.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
#: What ``strconv.Atoi`` accepts: an optional sign and decimal digits, nothing else.
_DECIMAL = re.compile(rb"[+-]?[0-9]+")
#: After a conflict an add pauses a random time below FIRST * 2**conflicts, at most MAX
#: seconds: it halves the txns (and the time) of 40 greenlets adding to one key.
CONFLICT_PAUSE_FIRST = 0.001
CONFLICT_PAUSE_MAX = 0.05


class Counter:
    """An atomic int64 counter at the key ``path``; see the module docstring.

    Each call is one short, linearizable exchange with etcd (a read, a guarded txn and
    its re-tries), so the counter needs no greenlet, lease or watch: it is not a
    started-and-stopped recipe, holds nothing on the server but its key, and can be
    made and dropped freely (``conn.counter(path)``). ``path`` is used as the key
    exactly as given (under the connector's namespace)."""

    __slots__ = ("_conn", "path")

    def __init__(self, conn: RecipeHost, path: str | bytes) -> None:
        self._conn = require_host(conn, "Counter")
        stored = self._conn.namespace.key(path, "path")
        #: the counter's key, as the connector's callers name it
        self.path: bytes = self._conn.namespace.strip(stored)

    def __repr__(self) -> str:
        return f"Counter({self.path.decode('utf-8', 'replace')!r})"

    # --- public ------------------------------------------------------------------------

    def get(self) -> int:
        """The current value (0 when the key is absent), read linearizably; raises
        :class:`ProtocolError` when the key holds something that is not an int64 in
        decimal text."""
        return self._parse(self._conn.get(self.path))

    def add(self, n: int = 1) -> int:
        """Add ``n`` (an int64, negative to subtract) atomically and return the new
        value. Re-tried on conflict (after a short random pause) until it applies.
        Raises :class:`InvalidArgument` when the sum would leave the int64 range
        (nothing is written), and :class:`IndeterminateWrite` when etcd may or may not
        have applied it (see the module docstring)."""
        step = _int64(n, "n")
        kv = self._conn.get(self.path)
        conflicts = 0
        while True:
            current = self._parse(kv)
            new = current + step
            if not INT64_MIN <= new <= INT64_MAX:
                raise InvalidArgument(
                    f"adding {step} to the counter {self!r} (now {current}) would leave the "
                    f"int64 range [{INT64_MIN}, {INT64_MAX}]; nothing was written"
                )
            done, kv = self._write_if_unchanged(kv, new, f"add({step})")
            if done:
                return new
            conflicts += 1
            _pause(conflicts)

    def compare_and_set(self, expected: int, new: int) -> bool:
        """Set the value to ``new`` if it is ``expected`` now (an absent key is 0), and
        say whether it was set. False means a linearizable read saw another value;
        raises :class:`IndeterminateWrite` when etcd may or may not have applied it."""
        want = _int64(expected, "expected")
        value = _int64(new, "new")
        kv = self._conn.get(self.path)
        while True:
            if self._parse(kv) != want:
                return False
            done, kv = self._write_if_unchanged(kv, value, f"compare_and_set({want}, {value})")
            if done:
                return True

    def set(self, n: int) -> None:
        """Set the value to ``n`` (an int64), whatever it was. A lost answer raises
        :class:`IndeterminateWrite` (setting again is safe unless another writer wrote
        in between)."""
        self._conn.put(self.path, str(_int64(n, "n")))

    def reset(self) -> None:
        """Set the value to 0 (the key stays, holding ``b"0"``)."""
        self.set(0)

    # --- the guarded write -------------------------------------------------------------

    def _write_if_unchanged(
        self, seen: KeyValue | None, new: int, what: str
    ) -> tuple[bool, KeyValue | None]:
        """Put ``new`` if the key is still as ``seen``: ``(True, None)`` when it was
        applied, ``(False, the key as it is now)`` on a conflict."""
        guard = _unchanged(self.path, seen)
        success, failure = [Op.put(self.path, str(new))], [Op.get(self.path)]
        try:
            result = self._conn.txn([guard], success, failure)
        except IndeterminateWrite as lost:
            result = self._resend(seen, guard, success, failure, lost, what)
        if result.succeeded:
            return True, None
        return False, _read_back(result, self.path)

    def _resend(
        self,
        seen: KeyValue | None,
        guard: Comparison,
        success: list[TxnOp],
        failure: list[TxnOp],
        lost: IndeterminateWrite,
        what: str,
    ) -> TxnResult:
        """After a lost answer: the same guarded txn once more, which can apply only if
        the first copy did not (``mod_revision == R`` holds for one of them at most)."""
        if seen is None:  # create_revision == 0 holds again after a delete: no resend
            raise self._indeterminate(what, lost) from lost
        try:
            result = self._conn.txn([guard], success, failure)
        except EtcdError as again:
            raise self._indeterminate(what, again) from lost
        if not result.succeeded:
            raise self._indeterminate(what, lost) from lost
        return result

    def _indeterminate(self, what: str, cause: EtcdError) -> IndeterminateWrite:
        return IndeterminateWrite(
            f"{what} on {self!r} may or may not have been applied (its answer was lost: "
            f"{cause.message}); it was not re-applied: read the counter to find out",
            endpoint=cause.endpoint,
        )

    def _parse(self, kv: KeyValue | None) -> int:
        """The value of the counter's key as read (0 when absent)."""
        if kv is None:
            return 0
        if _DECIMAL.fullmatch(kv.value):
            number = int(kv.value)
            if INT64_MIN <= number <= INT64_MAX:
                return number
        # the value is not quoted: a key named by mistake may hold a secret
        raise ProtocolError(
            f"the key {self.path.decode('utf-8', 'replace')!r} holds {len(kv.value)} bytes "
            f"(mod revision {kv.mod_revision}) that are not an int64 in decimal text: "
            "it is not a counter"
        )


def _unchanged(key: bytes, seen: KeyValue | None) -> Comparison:
    """The guard that the key is still as it was read (still absent if it was)."""
    if seen is None:
        return Compare.create_revision(key) == 0
    return Compare.mod_revision(key) == seen.mod_revision


def _read_back(result: TxnResult, key: bytes) -> KeyValue | None:
    """The key as the failed txn's ``failure`` branch read it."""
    read = result.responses[0] if result.responses else None
    if not isinstance(read, RangeResult):
        raise ProtocolError(f"a failed counter txn on {key!r} returned no read of the key")
    return read.kvs[0] if read.kvs else None


def _pause(conflicts: int) -> None:
    """A short random pause after a lost race, growing with the losses of one call, so
    many contenders on one key spend fewer txns on conflicts (a winner goes on)."""
    time.sleep(random.uniform(0, min(CONFLICT_PAUSE_MAX, CONFLICT_PAUSE_FIRST * 2**conflicts)))


def _int64(value: object, name: str) -> int:
    """An ``int`` (never a bool) in the int64 range."""
    return validate.integer(value, name, minimum=INT64_MIN, maximum=INT64_MAX)

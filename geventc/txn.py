"""A small DSL for etcd transactions.

::

    client.txn(
        compare=[Compare.create_revision("/job") == 0],
        success=[Op.put("/job", "me", lease=lease.id)],
        failure=[Op.get("/job")],
    )

``Compare.<target>(key)`` gives a comparable target; comparing it with ``==``, ``!=``,
``<`` or ``>`` gives a :class:`Comparison`. ``Op.put/get/delete/txn`` give operations.
Both are validated when built, so a bad argument fails where it was written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from . import validate, wire
from .errors import InvalidArgument
from .wire import JSON

SORT_ORDERS = ("NONE", "ASCEND", "DESCEND")
SORT_TARGETS = ("KEY", "VERSION", "CREATE", "MOD", "VALUE")


@dataclass(frozen=True, slots=True, eq=False)
class Comparison:
    """One guard of a transaction, e.g. ``create_revision(key) == 0``."""

    target: str
    result: str
    key: bytes
    range_end: bytes
    operand: int | bytes

    def body(self) -> JSON:
        """The gateway JSON of this comparison."""
        out: JSON = {"key": wire.b64(self.key), "target": self.target, "result": self.result}
        if self.range_end:
            out["range_end"] = wire.b64(self.range_end)
        field = self.target.lower()
        if field == "mod":
            field = "mod_revision"
        elif field == "create":
            field = "create_revision"
        if isinstance(self.operand, bytes):
            out[field] = wire.b64(self.operand)
        else:
            out[field] = str(self.operand)
        return out


class CompareTarget:
    """A key's version, revision, value or lease, waiting to be compared."""

    __slots__ = ("_key", "_range_end", "_target")

    def __init__(self, target: str, key: Any, prefix: bool) -> None:
        self._target = target
        self._key = validate.key(key)
        self._range_end = (
            wire.prefix_range_end(self._key) if validate.boolean(prefix, "prefix") else b""
        )

    def _compare(self, result: str, operand: Any) -> Comparison:
        if self._target == "VALUE":
            value: int | bytes = validate.value(operand, "compared value")
        elif self._target == "LEASE":
            value = validate.lease_id(operand, "compared lease")
        else:
            value = validate.revision(operand, f"compared {self._target.lower()}")
        return Comparison(self._target, result, self._key, self._range_end, value)

    def __eq__(self, other: object) -> Comparison:  # type: ignore[override]
        return self._compare("EQUAL", other)

    def __ne__(self, other: object) -> Comparison:  # type: ignore[override]
        return self._compare("NOT_EQUAL", other)

    def __lt__(self, other: object) -> Comparison:
        return self._compare("LESS", other)

    def __gt__(self, other: object) -> Comparison:
        return self._compare("GREATER", other)

    __hash__ = None  # type: ignore[assignment]


class Compare:
    """Builders of transaction guards. ``prefix=True`` compares every key under
    ``key``."""

    @staticmethod
    def version(key: str | bytes, *, prefix: bool = False) -> CompareTarget:
        """The key's version (0 when absent)."""
        return CompareTarget("VERSION", key, prefix)

    @staticmethod
    def create_revision(key: str | bytes, *, prefix: bool = False) -> CompareTarget:
        """The revision that created the key (0 when absent)."""
        return CompareTarget("CREATE", key, prefix)

    @staticmethod
    def mod_revision(key: str | bytes, *, prefix: bool = False) -> CompareTarget:
        """The revision that last modified the key (0 when absent)."""
        return CompareTarget("MOD", key, prefix)

    @staticmethod
    def value(key: str | bytes, *, prefix: bool = False) -> CompareTarget:
        """The key's value (a comparison on an absent key is always false)."""
        return CompareTarget("VALUE", key, prefix)

    @staticmethod
    def lease(key: str | bytes, *, prefix: bool = False) -> CompareTarget:
        """The lease the key is attached to (0 when none or absent)."""
        return CompareTarget("LEASE", key, prefix)


@dataclass(frozen=True, slots=True, eq=False)
class TxnOp:
    """One operation inside a transaction; build it with :class:`Op`."""

    kind: str
    request: JSON
    size: int

    def body(self) -> JSON:
        """The gateway JSON of this operation."""
        return {self.kind: self.request}


def range_request(
    key: Any,
    *,
    prefix: bool = False,
    limit: int = 0,
    revision: int | None = None,
    serializable: bool = False,
    keys_only: bool = False,
    count_only: bool = False,
    sort_order: str = "NONE",
    sort_target: str = "KEY",
    min_create_revision: int = 0,
    max_create_revision: int = 0,
    min_mod_revision: int = 0,
    max_mod_revision: int = 0,
) -> wire.RangeRequest:
    """A validated range request for one key, or every key under a prefix."""
    is_prefix = validate.boolean(prefix, "prefix")
    raw = validate.prefix(key, "prefix") if is_prefix else validate.key(key)
    return wire.RangeRequest(
        key=raw or b"\0",
        range_end=wire.prefix_range_end(raw) if is_prefix else b"",
        limit=validate.integer(limit, "limit"),
        revision=validate.optional_revision(revision),
        serializable=validate.boolean(serializable, "serializable"),
        keys_only=validate.boolean(keys_only, "keys_only"),
        count_only=validate.boolean(count_only, "count_only"),
        sort_order=validate.choice(sort_order, "sort_order", SORT_ORDERS),
        sort_target=validate.choice(sort_target, "sort_target", SORT_TARGETS),
        min_create_revision=validate.revision(min_create_revision, "min_create_revision"),
        max_create_revision=validate.revision(max_create_revision, "max_create_revision"),
        min_mod_revision=validate.revision(min_mod_revision, "min_mod_revision"),
        max_mod_revision=validate.revision(max_mod_revision, "max_mod_revision"),
    )


class Op:
    """Builders of transaction operations."""

    @staticmethod
    def put(
        key: str | bytes,
        value: str | bytes,
        *,
        lease: int | wire.Lease | None = None,
        prev_kv: bool = False,
    ) -> TxnOp:
        """Put ``value`` at ``key``, optionally attached to ``lease``."""
        k, v = validate.key(key), validate.value(value)
        body = wire.put_body(k, v, validate.lease_ref(lease), validate.boolean(prev_kv, "prev_kv"))
        return TxnOp("request_put", body, len(k) + len(v))

    @staticmethod
    def get(key: str | bytes, **options: Any) -> TxnOp:
        """Read ``key`` (or the prefix, with ``prefix=True``); takes the options of
        :meth:`Client.get_prefix`."""
        request = range_request(key, **options)
        return TxnOp("request_range", request.body(), len(request.key))

    @staticmethod
    def delete(key: str | bytes, *, prefix: bool = False, prev_kv: bool = False) -> TxnOp:
        """Delete ``key`` (or every key under it, with ``prefix=True``)."""
        is_prefix = validate.boolean(prefix, "prefix")
        k = validate.prefix(key, allow_empty=False) if is_prefix else validate.key(key)
        end = wire.prefix_range_end(k) if is_prefix else b""
        return TxnOp(
            "request_delete_range",
            wire.delete_body(k, end, validate.boolean(prev_kv, "prev_kv")),
            len(k),
        )

    @staticmethod
    def txn(
        compare: Iterable[Comparison] = (),
        success: Iterable[TxnOp] = (),
        failure: Iterable[TxnOp] = (),
    ) -> TxnOp:
        """A nested transaction."""
        body, size = txn_body(compare, success, failure)
        return TxnOp("request_txn", body, size)


def _checked_list(items: Iterable[Any], name: str, kind: type) -> Sequence[Any]:
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise InvalidArgument(f"{name} must be a list of {kind.__name__}")
    listed = list(items)
    for item in listed:
        if not isinstance(item, kind):
            raise InvalidArgument(
                f"{name} must hold only {kind.__name__} values "
                f"(built with {'Compare' if kind is Comparison else 'Op'}), "
                f"got {type(item).__name__}"
            )
    if len(listed) > validate.MAX_TXN_OPS:
        raise InvalidArgument(
            f"{name} has {len(listed)} entries; etcd allows at most "
            f"{validate.MAX_TXN_OPS} per transaction (--max-txn-ops)"
        )
    return listed


def txn_body(
    compare: Iterable[Comparison], success: Iterable[TxnOp], failure: Iterable[TxnOp]
) -> tuple[JSON, int]:
    """The gateway JSON of a transaction and its payload size in bytes."""
    compares = _checked_list(compare, "compare", Comparison)
    then = _checked_list(success, "success", TxnOp)
    otherwise = _checked_list(failure, "failure", TxnOp)
    body: JSON = {}
    if compares:
        body["compare"] = [c.body() for c in compares]
    if then:
        body["success"] = [op.body() for op in then]
    if otherwise:
        body["failure"] = [op.body() for op in otherwise]
    size = sum(len(c.key) for c in compares) + sum(op.size for op in (*then, *otherwise))
    return body, size

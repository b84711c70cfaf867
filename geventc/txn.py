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
        operand = self.operand
        field = _OPERAND_FIELDS[self.target]
        out[field] = wire.b64(operand) if isinstance(operand, bytes) else str(operand)
        return out


#: the field of a comparison's operand, by target
_OPERAND_FIELDS = {
    "VERSION": "version",
    "CREATE": "create_revision",
    "MOD": "mod_revision",
    "VALUE": "value",
    "LEASE": "lease",
}


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
    #: the key range the operation touches (``(key, range_end)``), when known: the
    #: coalescer then need not decode it from ``request``
    span: tuple[bytes, bytes] | None = None

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
        return TxnOp("request_put", body, len(k) + len(v), (k, b""))

    @staticmethod
    def get(key: str | bytes, **options: Any) -> TxnOp:
        """Read ``key`` (or the prefix, with ``prefix=True``); takes the options of
        :meth:`Client.get_prefix`."""
        if not options:  # the usual read of one key, built directly
            k = validate.key(key)
            return TxnOp("request_range", {"key": wire.b64(k)}, len(k), (k, b""))
        request = range_request(key, **options)
        return TxnOp(
            "request_range", request.body(), len(request.key), (request.key, request.range_end)
        )

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
            (k, end),
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
    if type(items) is list or type(items) is tuple:  # the usual case: no copy
        listed: Sequence[Any] = items
    elif isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise InvalidArgument(f"{name} must be a list of {kind.__name__}")
    else:
        listed = list(items)
    for item in listed:
        if type(item) is not kind and not isinstance(item, kind):
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
    body, size, _, _ = txn_parts(compare, success, failure)
    return body, size


def txn_parts(
    compare: Iterable[Comparison], success: Iterable[TxnOp], failure: Iterable[TxnOp]
) -> tuple[JSON, int, list[tuple[bytes, bytes]] | None, int]:
    """:func:`txn_body` with what coalescing needs besides: every key range the txn
    compares, reads or writes (None when one of its operations is a nested txn, or a
    range is not known) and its longest list (compare, success or failure)."""
    compares = _checked_list(compare, "compare", Comparison)
    then = _checked_list(success, "success", TxnOp)
    otherwise = _checked_list(failure, "failure", TxnOp)
    body: JSON = {}
    size = 0
    spans: list[tuple[bytes, bytes]] | None = []
    if compares:
        body["compare"] = [c.body() for c in compares]
        for c in compares:
            size += len(c.key)
            spans.append((c.key, c.range_end))  # type: ignore[union-attr]
    for part, ops in (("success", then), ("failure", otherwise)):
        if not ops:
            continue
        body[part] = [{op.kind: op.request} for op in ops]
        for op in ops:
            size += op.size
            if spans is not None:
                if op.span is None or op.kind == "request_txn":
                    spans = None
                else:
                    spans.append(op.span)
    return body, size, spans, max(len(compares), len(then), len(otherwise))

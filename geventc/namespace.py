"""Key namespaces: every key a connector touches lives under ``/<namespace>/``.

Under a namespace keys are absolute: ``"a/b"`` and ``"/a/b"`` name the same key, which
etcd stores as ``/<namespace>/a/b`` and which comes back as ``/a/b``. Without a
namespace keys pass through unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from . import validate, wire
from .errors import InvalidArgument
from .txn import Comparison, TxnOp
from .wire import DeleteResult, KeyValue, PutResult, RangeResult, TxnResult, WatchResponse

R = TypeVar("R", RangeResult, PutResult, DeleteResult, TxnResult)


class Namespace:
    """Maps caller keys to stored keys and back."""

    def __init__(self, name: str | None) -> None:
        if name is None:
            self.root = b""
            return
        if not isinstance(name, str):
            raise InvalidArgument(f"namespace must be a str or None, not {type(name).__name__}")
        parts = [p for p in name.strip("/").split("/")]
        if not name.strip("/") or any(not p for p in parts):
            raise InvalidArgument(
                f"namespace {name!r} must be non-empty segments separated by single '/'"
            )
        try:
            self.root = ("/" + "/".join(parts)).encode()
        except UnicodeEncodeError:  # a lone surrogate has no UTF-8 form
            raise InvalidArgument(f"namespace {name!r} has a lone surrogate") from None

    def __repr__(self) -> str:
        return f"Namespace({self.root.decode()!r})"

    @property
    def name(self) -> str | None:
        """The namespace as ``/name`` (None without one)."""
        return self.root.decode() or None

    def key(self, key: Any, name: str = "key") -> bytes:
        """The stored key of a caller key."""
        raw = validate.key(key, name)
        return self._inside(raw)

    def prefix(self, prefix: Any, *, allow_empty: bool = True) -> bytes:
        """The stored prefix of a caller prefix (the empty prefix: the whole namespace)."""
        raw = validate.prefix(prefix, allow_empty=allow_empty)
        if not self.root:
            return raw
        return self._inside(raw) if raw else self.root + b"/"

    def strip(self, key: bytes) -> bytes:
        """The caller key of a stored key."""
        if self.root and key.startswith(self.root + b"/"):
            return key[len(self.root) :]
        return key

    def _inside(self, raw: bytes) -> bytes:
        if not self.root:
            return raw
        return self.root + (raw if raw.startswith(b"/") else b"/" + raw)

    # --- results -------------------------------------------------------------------------

    def kv(self, kv: KeyValue | None) -> Any:
        """A key-value with its key stripped."""
        if kv is None or not self.root:
            return kv
        return dataclasses.replace(kv, key=self.strip(kv.key))

    def result(self, result: R) -> R:
        """A KV or txn result with every key stripped."""
        if not self.root:
            return result
        # a result without keys in it is returned as it is (most writes' results)
        if isinstance(result, RangeResult):
            if not result.kvs:
                return result
            return dataclasses.replace(result, kvs=tuple(self.kv(kv) for kv in result.kvs))
        if isinstance(result, PutResult):
            if result.prev_kv is None:
                return result
            return dataclasses.replace(result, prev_kv=self.kv(result.prev_kv))
        if isinstance(result, DeleteResult):
            if not result.prev_kvs:
                return result
            return dataclasses.replace(
                result, prev_kvs=tuple(self.kv(kv) for kv in result.prev_kvs)
            )
        nested: tuple[Any, ...] = tuple(self.result(r) for r in result.responses)  # type: ignore[type-var]
        if all(new is old for new, old in zip(nested, result.responses, strict=True)):
            return result
        return dataclasses.replace(result, responses=nested)

    def watch_response(self, response: WatchResponse) -> WatchResponse:
        """A watch batch with every key stripped."""
        if not self.root or not response.events:
            return response
        events = tuple(
            dataclasses.replace(e, kv=self.kv(e.kv), prev_kv=self.kv(e.prev_kv))
            for e in response.events
        )
        return dataclasses.replace(response, events=events)

    # --- transactions -------------------------------------------------------------------

    def comparison(self, comparison: Comparison) -> Comparison:
        """A comparison on the stored keys."""
        if not self.root:
            return comparison
        key, end = self._range(comparison.key, comparison.range_end)
        return dataclasses.replace(comparison, key=key, range_end=end)

    def op(self, op: TxnOp) -> TxnOp:
        """A transaction operation on the stored keys."""
        if not self.root:
            return op
        request = dict(op.request)
        if op.kind == "request_txn":
            for branch in ("success", "failure"):
                request[branch] = [self._op_body(item) for item in request.get(branch, [])]
            request["compare"] = [self._compare_body(c) for c in request.get("compare", [])]
            return dataclasses.replace(op, request=request)
        key, end = self._range(wire.unb64(request["key"]), wire.unb64(request.get("range_end")))
        request["key"] = wire.b64(key)
        if end:
            request["range_end"] = wire.b64(end)
        return dataclasses.replace(op, request=request)

    def _op_body(self, body: dict[str, Any]) -> dict[str, Any]:
        ((kind, request),) = body.items()
        return self.op(TxnOp(kind, request, 0)).body()

    def _compare_body(self, body: dict[str, Any]) -> dict[str, Any]:
        out = dict(body)
        key, end = self._range(wire.unb64(body["key"]), wire.unb64(body.get("range_end")))
        out["key"] = wire.b64(key)
        if end:
            out["range_end"] = wire.b64(end)
        return out

    def _range(self, key: bytes, end: bytes) -> tuple[bytes, bytes]:
        if key == b"\0" and end == b"\0":  # every key: the whole namespace
            inside = self.root + b"/"
            return inside, wire.prefix_range_end(inside)
        if end == b"\0":
            return self._inside(key), wire.prefix_range_end(self.root + b"/")
        if end and end == wire.prefix_range_end(key):  # a prefix range
            inside = self._inside(key)
            return inside, wire.prefix_range_end(inside)
        return self._inside(key), self._inside(end) if end else b""

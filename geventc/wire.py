"""The etcd v3 JSON-gateway codec.

The gateway speaks protobuf-as-JSON: bytes are padded base64, every int64 is a
string, enums are names and zero values are omitted. This module turns geventc's
Python values into request bodies and gateway answers into frozen dataclasses; it does
no I/O.
"""

from __future__ import annotations

import base64
import binascii
import enum
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import ProtocolError

T = TypeVar("T")
JSON = dict[str, Any]


def b64(data: bytes) -> str:
    """Padded base64 text of ``data``, as the gateway expects bytes fields."""
    return binascii.b2a_base64(data, newline=False).decode("ascii")


if sys.version_info >= (3, 11):

    def _b64decode(text: str) -> bytes:
        """Strict base64 decoding (what ``b64decode(validate=True)`` checks, and no data
        after the padding), without ``b64decode``'s regular-expression pass."""
        return binascii.a2b_base64(text, strict_mode=True)

else:  # pragma: no cover - Python 3.10

    def _b64decode(text: str) -> bytes:
        """Strict base64 decoding."""
        return base64.b64decode(text, validate=True)


def unb64(text: Any) -> bytes:
    """Bytes of a base64 field; an absent field (None) is empty."""
    if text.__class__ is str:
        return _b64decode(text)
    if text is None:
        return b""
    raise ProtocolError(f"expected a base64 string, got {type(text).__name__}")


def as_int(value: Any) -> int:
    """An int64 field: the gateway sends strings, absent means 0."""
    if value.__class__ is str:
        return int(value)
    if value is None:
        return 0
    if isinstance(value, bool):
        raise ProtocolError("expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int(value)
    raise ProtocolError(f"expected an integer, got {type(value).__name__}")


def as_bool(value: Any) -> bool:
    """A bool field: absent means False."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    raise ProtocolError(f"expected a boolean, got {type(value).__name__}")


def as_str(value: Any) -> str:
    """A string field: absent means empty."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    raise ProtocolError(f"expected a string, got {type(value).__name__}")


def as_list(value: Any) -> list[Any]:
    """A repeated field: absent means empty."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    raise ProtocolError(f"expected a list, got {type(value).__name__}")


def as_object(value: Any) -> JSON:
    """A message field: absent means an empty message."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise ProtocolError(f"expected an object, got {type(value).__name__}")


def prefix_range_end(prefix: bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix``.

    The last byte below 0xff is incremented and what follows it dropped; a prefix
    that is empty or all 0xff selects every key from ``prefix`` on (``b"\\0"``).
    """
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def decode(what: str, decoder: Callable[[JSON], T], body: Any) -> T:
    """Run ``decoder`` on ``body``, turning any shape mismatch into ProtocolError."""
    try:
        return decoder(as_object(body))
    except ProtocolError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
        raise ProtocolError(f"malformed {what} response from etcd: {exc!r}") from None


# --- results -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    """The response header: which cluster/member answered, at which revision."""

    cluster_id: int = 0
    member_id: int = 0
    revision: int = 0
    raft_term: int = 0


class KeyValueText:
    """``key_str`` and ``value_str`` of a stored key and its value (a mixin of the
    dataclasses that carry ``key`` and ``value`` bytes)."""

    __slots__ = ()
    key: bytes
    value: bytes

    @property
    def key_str(self) -> str:
        """The key decoded as UTF-8."""
        return self.key.decode("utf-8", "replace")

    @property
    def value_str(self) -> str:
        """The value decoded as UTF-8."""
        return self.value.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class KeyValue(KeyValueText):
    """One key with its value and MVCC metadata."""

    key: bytes
    value: bytes = b""
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0


@dataclass(frozen=True, slots=True)
class RangeResult:
    """The keys a range read returned; ``count`` counts all matches, ``more`` says
    the limit cut the list."""

    header: Header
    kvs: tuple[KeyValue, ...] = ()
    count: int = 0
    more: bool = False


@dataclass(frozen=True, slots=True)
class PutResult:
    """A put's outcome: the header carries the new revision."""

    header: Header
    prev_kv: KeyValue | None = None


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """A delete's outcome: how many keys were deleted (and which, with prev_kv)."""

    header: Header
    deleted: int = 0
    prev_kvs: tuple[KeyValue, ...] = ()


@dataclass(frozen=True, slots=True)
class TxnResult:
    """A transaction's outcome: which branch ran and each of its operations' results."""

    header: Header
    succeeded: bool = False
    responses: tuple[RangeResult | PutResult | DeleteResult | TxnResult, ...] = ()


@dataclass(frozen=True, slots=True)
class Lease:
    """A granted lease: its ID and the TTL the server really granted."""

    id: int
    ttl: int


@dataclass(frozen=True, slots=True)
class LeaseTimeToLive:
    """A lease's remaining and granted TTL, with its keys if they were asked for."""

    id: int
    ttl: int
    granted_ttl: int
    keys: tuple[bytes, ...] = ()


class EventType(enum.Enum):
    """The kind of a watch event."""

    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True, slots=True)
class Event:
    """One change seen by a watch."""

    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None = None

    @property
    def revision(self) -> int:
        """The revision this change was committed at."""
        return self.kv.mod_revision


@dataclass(frozen=True, slots=True)
class WatchResponse:
    """A batch of events of one or more whole revisions, or a watch notification."""

    header: Header
    events: tuple[Event, ...] = ()
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""
    fragment: bool = False

    @property
    def is_progress_notify(self) -> bool:
        """A progress notification: no events, the watch is current up to the header
        revision."""
        return (
            not self.events
            and not self.created
            and not self.canceled
            and self.compact_revision == 0
            and self.header.revision > 0
        )


@dataclass(frozen=True, slots=True)
class Member:
    """A cluster member."""

    id: int
    name: str
    peer_urls: tuple[str, ...] = ()
    client_urls: tuple[str, ...] = ()
    is_learner: bool = False


@dataclass(frozen=True, slots=True)
class Status:
    """One member's status: version, database size and raft position."""

    header: Header
    version: str
    db_size: int
    leader: int
    raft_index: int
    raft_term: int
    raft_applied_index: int = 0
    db_size_in_use: int = 0
    is_learner: bool = False
    errors: tuple[str, ...] = ()

    @property
    def member_id(self) -> int:
        """The ID of the member that answered."""
        return self.header.member_id

    @property
    def is_leader(self) -> bool:
        """True when the answering member is the raft leader."""
        return self.leader != 0 and self.leader == self.header.member_id


@dataclass(frozen=True, slots=True)
class Health:
    """The answer of a member's ``/health`` endpoint."""

    endpoint: str
    healthy: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Version:
    """The server's and the cluster's version."""

    server: str
    cluster: str


# --- fast construction -----------------------------------------------------------------


def _constructor(cls: type[T]) -> Callable[..., T]:
    """A positional constructor of the frozen, slotted dataclass ``cls`` that sets its
    slots through their member descriptors: the generated ``__init__`` of a frozen
    dataclass goes through ``object.__setattr__`` once per field, which costs about as
    much as decoding the field (the answers of one coalesced batch build thousands of
    these). Every field is passed, in declaration order; the object equals
    ``cls(*values)``. Generated the way :mod:`dataclasses` generates ``__init__``."""
    names = list(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    params = ", ".join(f"v{i}" for i in range(len(names)))
    lines = [f"def make({params}):", "    obj = new(cls)"]
    lines += [f"    s{i}(obj, v{i})" for i in range(len(names))]
    lines.append("    return obj")
    scope: dict[str, Any] = {"new": object.__new__, "cls": cls}
    scope.update((f"s{i}", getattr(cls, name).__set__) for i, name in enumerate(names))
    exec("\n".join(lines), scope)  # built from the class's own field names only
    make: Callable[..., T] = scope["make"]
    make.__qualname__ = make.__name__ = f"new_{cls.__name__}"
    make.__doc__ = f"A {cls.__name__} of every field, positionally."
    return make


_new_header = _constructor(Header)
_new_key_value = _constructor(KeyValue)
_new_range_result = _constructor(RangeResult)
_new_put_result = _constructor(PutResult)
_new_delete_result = _constructor(DeleteResult)
_new_txn_result = _constructor(TxnResult)
_new_event = _constructor(Event)
_new_watch_response = _constructor(WatchResponse)


# --- decoders --------------------------------------------------------------------------


def header(body: JSON) -> Header:
    """Decode a ``ResponseHeader`` (one decoded already, as a coalesced batch hands its
    one header to every caller, is taken as it is)."""
    raw = body.get("header")
    if raw.__class__ is Header:
        return raw
    get = as_object(raw).get
    return _new_header(
        as_int(get("cluster_id")),
        as_int(get("member_id")),
        as_int(get("revision")),
        as_int(get("raft_term")),
    )


def key_value(body: JSON) -> KeyValue:
    """Decode a ``mvccpb.KeyValue``."""
    get = body.get
    key, value = get("key"), get("value")
    created, modified = get("create_revision"), get("mod_revision")
    version, lease = get("version"), get("lease")
    # the usual shapes inline (this runs once per key of every answer), the rest checked
    create_revision = int(created) if created.__class__ is str else as_int(created)
    return _new_key_value(
        _b64decode(key) if key.__class__ is str else unb64(key),
        _b64decode(value) if value.__class__ is str else unb64(value),
        create_revision,
        # one int object when equal: watch copies of many keys stay small
        create_revision if modified == created else as_int(modified),
        int(version) if version.__class__ is str else as_int(version),
        0 if lease is None else as_int(lease),
    )


def optional_key_value(body: Any) -> KeyValue | None:
    """Decode an optional ``KeyValue`` field."""
    return None if body is None else key_value(as_object(body))


def range_result(body: JSON) -> RangeResult:
    """Decode a ``RangeResponse``."""
    kvs = body.get("kvs")
    return _new_range_result(
        header(body),
        ()
        if kvs is None
        else tuple(
            [key_value(kv if kv.__class__ is dict else as_object(kv)) for kv in as_list(kvs)]
        ),
        as_int(body.get("count")),
        as_bool(body.get("more")),
    )


def put_result(body: JSON) -> PutResult:
    """Decode a ``PutResponse``."""
    prev = body.get("prev_kv")
    return _new_put_result(header(body), None if prev is None else key_value(as_object(prev)))


def delete_result(body: JSON) -> DeleteResult:
    """Decode a ``DeleteRangeResponse``."""
    prev = body.get("prev_kvs")
    return _new_delete_result(
        header(body),
        as_int(body.get("deleted")),
        () if prev is None else tuple([key_value(as_object(kv)) for kv in as_list(prev)]),
    )


def txn_result(body: JSON) -> TxnResult:
    """Decode a ``TxnResponse`` with its nested operation results."""
    responses: list[RangeResult | PutResult | DeleteResult | TxnResult] = []
    for item in as_list(body.get("responses")):
        # a ResponseOp holds one of the four results (a oneof): its first known field
        for name, value in as_object(item).items():
            decoder = _TXN_RESPONSES.get(name)
            if decoder is not None:
                responses.append(decoder(as_object(value)))
                break
        else:
            raise ProtocolError(f"unknown txn response {sorted(as_object(item))}")
    return _new_txn_result(header(body), as_bool(body.get("succeeded")), tuple(responses))


_TXN_RESPONSES: Mapping[str, Callable[[JSON], Any]] = {
    "response_range": range_result,
    "response_put": put_result,
    "response_delete_range": delete_result,
    "response_txn": txn_result,
}


def lease(body: JSON) -> Lease:
    """Decode a ``LeaseGrantResponse``."""
    return Lease(id=as_int(body.get("ID")), ttl=as_int(body.get("TTL")))


def lease_time_to_live(body: JSON) -> LeaseTimeToLive:
    """Decode a ``LeaseTimeToLiveResponse``."""
    return LeaseTimeToLive(
        id=as_int(body.get("ID")),
        ttl=as_int(body.get("TTL")),
        granted_ttl=as_int(body.get("grantedTTL")),
        keys=tuple(unb64(k) for k in as_list(body.get("keys"))),
    )


def lease_ids(body: JSON) -> list[int]:
    """Decode a ``LeaseLeasesResponse`` into lease IDs."""
    return [as_int(as_object(item).get("ID")) for item in as_list(body.get("leases"))]


def event(body: JSON) -> Event:
    """Decode a ``mvccpb.Event`` (absent ``type`` is PUT)."""
    kind = body.get("type")
    prev = body.get("prev_kv")
    return _new_event(
        EventType.PUT if kind is None else EventType(as_str(kind) or "PUT"),
        key_value(as_object(body.get("kv"))),
        None if prev is None else key_value(as_object(prev)),
    )


def watch_response(body: JSON) -> WatchResponse:
    """Decode a ``WatchResponse`` (the ``result`` of one stream message)."""
    events = body.get("events")
    return _new_watch_response(
        header(body),
        () if events is None else tuple([event(as_object(e)) for e in as_list(events)]),
        as_bool(body.get("created")),
        as_bool(body.get("canceled")),
        as_int(body.get("compact_revision")),
        as_str(body.get("cancel_reason")),
        as_bool(body.get("fragment")),
    )


def member(body: JSON) -> Member:
    """Decode a cluster ``Member``."""
    return Member(
        id=as_int(body.get("ID")),
        name=as_str(body.get("name")),
        peer_urls=tuple(as_str(u) for u in as_list(body.get("peerURLs"))),
        client_urls=tuple(as_str(u) for u in as_list(body.get("clientURLs"))),
        is_learner=as_bool(body.get("isLearner")),
    )


def members(body: JSON) -> list[Member]:
    """Decode a ``MemberListResponse``."""
    return [member(as_object(m)) for m in as_list(body.get("members"))]


def status(body: JSON) -> Status:
    """Decode a ``StatusResponse``."""
    return Status(
        header=header(body),
        version=as_str(body.get("version")),
        db_size=as_int(body.get("dbSize")),
        leader=as_int(body.get("leader")),
        raft_index=as_int(body.get("raftIndex")),
        raft_term=as_int(body.get("raftTerm")),
        raft_applied_index=as_int(body.get("raftAppliedIndex")),
        db_size_in_use=as_int(body.get("dbSizeInUse")),
        is_learner=as_bool(body.get("isLearner")),
        errors=tuple(as_str(e) for e in as_list(body.get("errors"))),
    )


def version(body: JSON) -> Version:
    """Decode the ``/version`` document."""
    return Version(server=as_str(body.get("etcdserver")), cluster=as_str(body.get("etcdcluster")))


@dataclass(frozen=True, slots=True)
class RangeRequest:
    """The fields of a range read, encoded once by :meth:`body`."""

    key: bytes
    range_end: bytes = b""
    limit: int = 0
    revision: int = 0
    sort_order: str = "NONE"
    sort_target: str = "KEY"
    serializable: bool = False
    keys_only: bool = False
    count_only: bool = False
    min_mod_revision: int = 0
    max_mod_revision: int = 0
    min_create_revision: int = 0
    max_create_revision: int = 0

    def body(self) -> JSON:
        """The gateway JSON of this request, zero fields omitted."""
        out: JSON = {"key": b64(self.key)}
        if self.range_end:
            out["range_end"] = b64(self.range_end)
        numbers = (
            ("limit", self.limit),
            ("revision", self.revision),
            ("min_mod_revision", self.min_mod_revision),
            ("max_mod_revision", self.max_mod_revision),
            ("min_create_revision", self.min_create_revision),
            ("max_create_revision", self.max_create_revision),
        )
        out.update((name, str(n)) for name, n in numbers if n)
        if self.sort_order != "NONE":
            out["sort_order"] = self.sort_order
        if self.sort_target != "KEY":
            out["sort_target"] = self.sort_target
        flags = (
            ("serializable", self.serializable),
            ("keys_only", self.keys_only),
            ("count_only", self.count_only),
        )
        out.update((name, True) for name, flag in flags if flag)
        return out


def put_body(key: bytes, value: bytes, lease: int = 0, prev_kv: bool = False) -> JSON:
    """The gateway JSON of a ``PutRequest``."""
    out: JSON = {"key": b64(key), "value": b64(value)}
    if lease:
        out["lease"] = str(lease)
    if prev_kv:
        out["prev_kv"] = True
    return out


def delete_body(key: bytes, range_end: bytes = b"", prev_kv: bool = False) -> JSON:
    """The gateway JSON of a ``DeleteRangeRequest``."""
    out: JSON = {"key": b64(key)}
    if range_end:
        out["range_end"] = b64(range_end)
    if prev_kv:
        out["prev_kv"] = True
    return out

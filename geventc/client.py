"""``Client``: the etcd v3 API over the JSON gateway.

Plain keys (no namespace), no background greenlets: every call is one request (or a
bounded series of retries) made in the calling greenlet. Keys and values accept ``str``
(UTF-8) or ``bytes``; every argument is checked before any request is sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import gevent
from gevent.pool import Group

from . import validate, wire
from .coalesce import TXN_MAX_OPS, Coalescer, Flight, checked_flight
from .endpoints import parse_endpoint
from .errors import EtcdError, InvalidArgument, LeaseNotFound
from .liveness import Liveness
from .stats import Stats, client_stats
from .transport import TLSConfig, Transport, ensure_patched
from .txn import Comparison, TxnOp, range_request, txn_parts
from .watchstream import WatchStream
from .wire import (
    JSON,
    DeleteResult,
    Health,
    KeyValue,
    Lease,
    LeaseTimeToLive,
    Member,
    PutResult,
    RangeResult,
    Status,
    TxnResult,
    Version,
)

WATCH_FILTERS = ("NOPUT", "NODELETE")
W = TypeVar("W", PutResult, DeleteResult, TxnResult, wire.Header)


class Client:
    """A client of one etcd cluster.

    ``endpoints`` is a list of URLs (or one comma-separated string); ``timeout`` bounds
    every call including its retries, ``connect_timeout`` each connection attempt;
    ``username``/``password`` enable token auth; ``tls`` configures https endpoints;
    ``pool_size`` is the number of kept-alive connections per endpoint;
    ``max_request_bytes`` mirrors the server's ``--max-request-bytes`` so oversize
    writes fail before they are sent.

    ``keepalive_time`` and ``keepalive_timeout`` (as Go clientv3's
    ``DialKeepAliveTime``/``DialKeepAliveTimeout``) bound how long a watch stays on a
    member that stopped answering: each endpoint carrying watches is probed every
    ``keepalive_time`` seconds and left when it does not answer within
    ``keepalive_timeout`` (see :mod:`geventc.liveness`).

    ``coalesce`` (on by default) sends the ``get``/``get_prefix``/``put``/``delete``/
    ``txn`` calls that many greenlets make at the same moment as one txn of at most
    ``max_txn_ops`` operations (the server's ``--max-txn-ops``; a caller's txn rides in it
    as a nested txn with its own compares) and hands each caller its own result: fewer,
    fuller requests under load, one event-loop turn of delay otherwise. Each call keeps
    its meaning (every read is linearizable, every write and txn its own atomic result or
    error; see :mod:`geventc.coalesce` for the rules); serializable reads, prefix deletes
    and txns holding nested txns are never coalesced. ``coalesce=False`` sends every call
    as its own request.
    """

    def __init__(
        self,
        endpoints: Any,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: TLSConfig | None = None,
        timeout: float = 5.0,
        connect_timeout: float = 2.0,
        pool_size: int = 64,
        max_request_bytes: int = validate.DEFAULT_MAX_REQUEST_BYTES,
        coalesce: bool = True,
        max_txn_ops: int = TXN_MAX_OPS,
        keepalive_time: float = 2.0,
        keepalive_timeout: float = 2.0,
    ) -> None:
        ensure_patched()
        probe_every = validate.positive_number(keepalive_time, "keepalive_time")
        probe_timeout = validate.positive_number(keepalive_timeout, "keepalive_timeout")
        self.max_request_bytes = validate.integer(max_request_bytes, "max_request_bytes", minimum=1)
        coalescing = validate.boolean(coalesce, "coalesce")
        txn_ops = validate.integer(max_txn_ops, "max_txn_ops", minimum=1, maximum=100_000)
        self.transport = Transport(
            endpoints,
            username=username,
            password=password,
            tls=tls,
            timeout=validate.positive_number(timeout, "timeout"),
            connect_timeout=validate.positive_number(connect_timeout, "connect_timeout"),
            pool_size=validate.integer(pool_size, "pool_size", minimum=1, maximum=10_000),
            keepalive_time=probe_every,
        )
        #: every background greenlet of this client and of the connector built on it
        self.group = Group()
        self.liveness = Liveness(
            self.transport, self.group, keepalive_time=probe_every, keepalive_timeout=probe_timeout
        )
        #: the highest revision this client's own writes produced (read-your-writes)
        self.written_revision = 0
        self.coalescer = (
            Coalescer(
                self.transport,
                max_ops=txn_ops,
                max_bytes=self.max_request_bytes // 2,
                group=self.group,
            )
            if coalescing and txn_ops > 1
            else None
        )

    def __repr__(self) -> str:
        return f"Client({self.transport!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def endpoints(self) -> list[str]:
        """The normalised endpoint list."""
        return list(self.transport.endpoints)

    def stats(self) -> Stats:
        """A snapshot of this client's counters and gauges (requests, errors by kind,
        failovers, watch streams, leases, coalesced batches; see
        :class:`~geventc.stats.Stats`),
        taken without any request; also after :meth:`close`."""
        return client_stats(self)

    def close(self) -> None:
        """Stop the client's greenlets and close the connection pools; later calls
        raise :class:`ClientClosed`."""
        self.group.kill(block=False)
        self.transport.close()

    # --- KV ----------------------------------------------------------------------------

    def get(
        self, key: str | bytes, *, revision: int | None = None, serializable: bool = False
    ) -> KeyValue | None:
        """The key's current value (or at ``revision``), or None when it is absent.

        ``serializable=True`` lets the answering member reply from its local state
        without a quorum round (faster, possibly stale)."""
        if revision is None and serializable is False:  # the usual read, built directly
            raw = validate.key(key)
            body = {"key": wire.b64(raw)}
            where = (raw, b"")
            answer = self._single("/v3/kv/range", "request_range", body, where, len(raw), False)
            result = wire.decode("range", wire.range_result, answer)
        else:
            result = self._range(range_request(key, revision=revision, serializable=serializable))
        return result.kvs[0] if result.kvs else None

    def get_prefix(
        self,
        prefix: str | bytes,
        *,
        limit: int = 0,
        sort_target: str = "KEY",
        sort_order: str = "NONE",
        keys_only: bool = False,
        count_only: bool = False,
        revision: int | None = None,
        serializable: bool = False,
        min_create_revision: int = 0,
        max_create_revision: int = 0,
        min_mod_revision: int = 0,
        max_mod_revision: int = 0,
    ) -> RangeResult:
        """Every key starting with ``prefix`` (the empty prefix: every key).

        ``limit`` caps the keys returned (``more`` says more matched); ``sort_target``
        is KEY, VERSION, CREATE, MOD or VALUE and ``sort_order`` NONE, ASCEND or
        DESCEND; the revision bounds filter by create/mod revision."""
        request = range_request(
            prefix,
            prefix=True,
            limit=limit,
            sort_target=sort_target,
            sort_order=sort_order,
            keys_only=keys_only,
            count_only=count_only,
            revision=revision,
            serializable=serializable,
            min_create_revision=min_create_revision,
            max_create_revision=max_create_revision,
            min_mod_revision=min_mod_revision,
            max_mod_revision=max_mod_revision,
        )
        return self._range(request)

    def put(
        self,
        key: str | bytes,
        value: str | bytes,
        *,
        lease: int | Lease | None = None,
        prev_kv: bool = False,
        flight: Flight | None = None,
    ) -> PutResult:
        """Set ``key`` to ``value``, attached to ``lease`` if given; the result's header
        carries the new revision, and ``prev_kv`` the previous key when asked for.

        ``flight`` (a :class:`~geventc.coalesce.Flight`) lets others wait for the end of
        this write even when its caller is interrupted (the write then goes on: its
        answer, not the interruption, ends the flight)."""
        k, v = validate.key(key), validate.value(value)
        validate.request_size(len(k) + len(v), self.max_request_bytes, "the put")
        body = wire.put_body(k, v, validate.lease_ref(lease), validate.boolean(prev_kv, "prev_kv"))
        answer = self._single(
            "/v3/kv/put",
            "request_put",
            body,
            (k, b""),
            len(k) + len(v),
            True,
            checked_flight(flight),
        )
        return self._wrote(wire.decode("put", wire.put_result, answer))

    def delete(self, key: str | bytes, *, prev_kv: bool = False) -> DeleteResult:
        """Delete ``key``; ``deleted`` is 1 if it existed, else 0."""
        k = validate.key(key)
        body = wire.delete_body(k, b"", validate.boolean(prev_kv, "prev_kv"))
        answer = self._single(
            "/v3/kv/deleterange", "request_delete_range", body, (k, b""), len(k), True
        )
        return self._wrote(wire.decode("delete", wire.delete_result, answer))

    def delete_prefix(self, prefix: str | bytes, *, prev_kv: bool = False) -> DeleteResult:
        """Delete every key starting with the (non-empty) ``prefix``."""
        raw = validate.prefix(prefix, allow_empty=False)
        body = wire.delete_body(
            raw, wire.prefix_range_end(raw), validate.boolean(prev_kv, "prev_kv")
        )
        answer = self.transport.call("/v3/kv/deleterange", body, write=True)
        return self._wrote(wire.decode("delete", wire.delete_result, answer))

    def compact(self, revision: int, *, physical: bool = False) -> None:
        """Discard history before ``revision``; ``physical`` waits until it is purged."""
        body: dict[str, Any] = {"revision": str(validate.integer(revision, "revision", minimum=1))}
        if validate.boolean(physical, "physical"):
            body["physical"] = True
        self.transport.call("/v3/kv/compaction", body, write=True)

    def txn(
        self,
        compare: Iterable[Comparison] = (),
        success: Iterable[TxnOp] = (),
        failure: Iterable[TxnOp] = (),
        *,
        flight: Flight | None = None,
    ) -> TxnResult:
        """Run ``success`` if every comparison holds, else ``failure``, atomically.

        Build comparisons with :class:`Compare` and operations with :class:`Op`;
        ``flight`` as in :meth:`put`."""
        flight = checked_flight(flight)
        body, size, spans, depth = txn_parts(compare, success, failure)
        validate.request_size(size, self.max_request_bytes, "the transaction")
        coalescer = self.coalescer
        batched = (
            None if coalescer is None else coalescer.call_txn(body, size, spans, depth, flight)
        )
        if batched is not None:
            answer = batched
            if flight is not None:
                flight.end()
        elif flight is not None:
            answer = self._in_flight(flight, "/v3/kv/txn", body, True)
        elif coalescer is None:
            answer = self.transport.call("/v3/kv/txn", body, write=True)
        else:
            with coalescer.alone(True):
                answer = self.transport.call("/v3/kv/txn", body, write=True)
        return self._wrote(wire.decode("txn", wire.txn_result, answer))

    def _wrote(self, result: W) -> W:
        """Note the revision of one of this client's writes (what a recipe started
        afterwards must reflect)."""
        header = result if isinstance(result, wire.Header) else result.header
        self.written_revision = max(self.written_revision, header.revision)
        return result

    def _range(self, request: wire.RangeRequest) -> RangeResult:
        body = request.body()
        if request.serializable:
            answer = self.transport.call("/v3/kv/range", body)
        else:
            where = (request.key, request.range_end)
            answer = self._single(
                "/v3/kv/range", "request_range", body, where, len(request.key), False
            )
        return wire.decode("range", wire.range_result, answer)

    def _single(
        self,
        path: str,
        field: str,
        body: JSON,
        key: tuple[bytes, bytes],
        size: int,
        write: bool,
        flight: Flight | None = None,
    ) -> JSON:
        """Send one KV operation, coalesced with concurrent ones when enabled."""
        coalescer = self.coalescer
        if coalescer is not None:
            answer = coalescer.call(field, body, key, size, write=write, flight=flight)
            if answer is not None:
                if flight is not None:
                    flight.end()
                return answer
        if flight is not None:
            return self._in_flight(flight, path, body, write)
        if coalescer is None:
            return self.transport.call(path, body, write=write)
        with coalescer.alone(write):
            return self.transport.call(path, body, write=write)

    def _in_flight(self, flight: Flight, path: str, body: JSON, write: bool) -> JSON:
        """Send one request of its own in a greenlet of the client whose end ends
        ``flight``: a caller interrupted meanwhile leaves it to finish (a request cut
        off mid-way could still reach etcd, after whatever is sent next)."""
        coalescer = self.coalescer

        def sent(_: object) -> None:
            if coalescer is not None:
                coalescer.end_alone(write)
            flight.end()

        if coalescer is not None:  # from now: the callers coming meanwhile gather
            coalescer.begin_alone(write)
        sending: gevent.Greenlet[..., Any] = gevent.Greenlet(
            _outcome, self.transport.call, path, body, write
        )
        sending.rawlink(sent)  # also when killed before it ran
        self.group.start(sending)
        outcome = sending.get()  # interrupted here: the request goes on
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome  # type: ignore[no-any-return]

    # --- leases ------------------------------------------------------------------------

    def grant(self, ttl: int, lease_id: int = 0) -> Lease:
        """Grant a lease of ``ttl`` seconds (the server may raise a tiny TTL to its
        minimum; the result has the real one). ``lease_id`` 0 lets the server choose."""
        body = {"TTL": str(validate.ttl(ttl)), "ID": str(validate.lease_id(lease_id, "lease_id"))}
        answer = self.transport.call("/v3/lease/grant", body)
        return wire.decode("lease grant", wire.lease, answer)

    def revoke(self, lease: int | Lease) -> None:
        """Revoke a lease, deleting every key attached to it; raises
        :class:`LeaseNotFound` if it does not exist."""
        answer = self.transport.call(
            "/v3/lease/revoke", {"ID": str(validate.lease_ref(lease, required=True))}
        )
        self._wrote(wire.decode("lease revoke", wire.header, answer))

    def keepalive_once(self, lease: int | Lease) -> int:
        """Renew a lease once and return its TTL; raises :class:`LeaseNotFound` when
        the lease has expired or never existed."""
        lease_id = validate.lease_ref(lease, required=True)
        answer = self.transport.call("/v3/lease/keepalive", {"ID": str(lease_id)})
        granted = wire.decode("lease keepalive", wire.lease, answer)
        if granted.ttl <= 0:
            raise LeaseNotFound(f"lease {lease_id:x} has expired or does not exist")
        return granted.ttl

    def time_to_live(self, lease: int | Lease, *, keys: bool = False) -> LeaseTimeToLive:
        """A lease's remaining and granted TTL (and attached keys with ``keys=True``);
        raises :class:`LeaseNotFound` when it has expired or never existed."""
        lease_id = validate.lease_ref(lease, required=True)
        body: dict[str, Any] = {"ID": str(lease_id)}
        if validate.boolean(keys, "keys"):
            body["keys"] = True
        answer = self.transport.call("/v3/lease/timetolive", body)
        result = wire.decode("lease timetolive", wire.lease_time_to_live, answer)
        if result.ttl < 0:
            raise LeaseNotFound(f"lease {lease_id:x} has expired or does not exist")
        return result

    def leases(self) -> list[int]:
        """The IDs of every live lease."""
        answer = self.transport.call("/v3/lease/leases", {})
        return wire.decode("lease list", wire.lease_ids, answer)

    # --- watch -------------------------------------------------------------------------

    def watch(
        self,
        key: str | bytes,
        *,
        prefix: bool = False,
        start_revision: int | None = None,
        prev_kv: bool = False,
        filters: Iterable[str] = (),
        progress_notify: bool = False,
    ) -> WatchStream:
        """Watch ``key`` (or every key under it, with ``prefix=True``).

        The watch is established when this returns. Without ``start_revision`` it
        reports changes after the current revision; with it, every change from that
        revision on (use the revision of a read + 1 to continue from the read without
        a gap). ``filters`` may hold NOPUT and NODELETE. Iterating the stream yields
        :class:`WatchResponse` batches and raises :class:`Compacted` when the history
        it needs was compacted."""
        is_prefix = validate.boolean(prefix, "prefix")
        raw = validate.prefix(key) if is_prefix else validate.key(key)
        body: dict[str, Any] = {"key": wire.b64(raw or b"\0")}
        if is_prefix:
            body["range_end"] = wire.b64(wire.prefix_range_end(raw))
        if validate.boolean(prev_kv, "prev_kv"):
            body["prev_kv"] = True
        if validate.boolean(progress_notify, "progress_notify"):
            body["progress_notify"] = True
        if isinstance(filters, str | bytes) or not isinstance(filters, Iterable):
            raise InvalidArgument("filters must be a list such as ['NODELETE']")
        chosen = [validate.choice(f, "filter", WATCH_FILTERS) for f in filters]
        if chosen:
            body["filters"] = chosen
        start = validate.optional_revision(start_revision, "start_revision")
        return WatchStream(self.transport, body, start, self.liveness)

    # --- cluster and maintenance -------------------------------------------------------

    def members(self) -> list[Member]:
        """The cluster's members."""
        answer = self.transport.call("/v3/cluster/member/list", {})
        return wire.decode("member list", wire.members, answer)

    def status(self, endpoint: str | None = None) -> Status:
        """The status of ``endpoint`` (default: the endpoint in use)."""
        target = parse_endpoint(endpoint) if endpoint is not None else None
        answer = self.transport.call("/v3/maintenance/status", {}, endpoint=target)
        return wire.decode("status", wire.status, answer)

    def health(self, endpoint: str | None = None) -> Health:
        """The ``/health`` answer of ``endpoint`` (default: the endpoint in use)."""
        target = parse_endpoint(endpoint) if endpoint is not None else None
        where = target or self.transport.current_endpoint
        answer = self.transport.get("/health", endpoint=target)
        if not isinstance(answer, dict):
            return Health(endpoint=where, healthy=False, reason="malformed /health answer")
        healthy = answer.get("health") in ("true", True)
        return Health(endpoint=where, healthy=healthy, reason=str(answer.get("reason") or ""))

    def version(self, endpoint: str | None = None) -> Version:
        """The server's and the cluster's version."""
        target = parse_endpoint(endpoint) if endpoint is not None else None
        return wire.decode("version", wire.version, self.transport.get("/version", target))


def _outcome(call: Any, path: str, body: JSON, write: bool) -> Any:
    """``call(path, body, write=write)``'s answer or its :class:`EtcdError` (returned,
    not raised: only the caller waiting for it needs to hear of it)."""
    try:
        return call(path, body, write=write)
    except EtcdError as exc:
        return exc

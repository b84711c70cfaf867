"""One etcd watch over one HTTP stream, resumed across endpoint failures.

The gateway streams newline-delimited JSON messages ``{"result": WatchResponse}``. A
:class:`WatchStream` is established when it is returned (the server has confirmed the
watch), yields :class:`WatchResponse` batches in revision order, and when the
connection breaks it re-creates the watch on the next endpoint from the revision after
the last one it delivered, dropping anything older, so nothing is lost or repeated.
Compaction past that revision raises :class:`Compacted`; ``cancel()`` ends the
iteration from any greenlet.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import gevent

from . import errors, status, wire
from .http import HTTPStream, StreamBroken
from .stats import REQUEST_LOG
from .wire import JSON, WatchResponse

if TYPE_CHECKING:
    from .liveness import Liveness
    from .transport import Transport

log = logging.getLogger("geventc")

_RETRY_PAUSE = 0.05
#: One stream message's JSON, read as ``json.loads`` reads it (the same documents
#: accepted and refused) without its wrappers: its encoding sniffing, its whitespace
#: regular expression (a message is UTF-8, as JSON on the wire must be).
_DECODE = json.JSONDecoder().raw_decode
_JSON_SPACE = " \t\n\r"
_AUTH_REASONS = status.TOKEN_EXPIRED_MESSAGES


class WatchStream:
    """An iterator of :class:`WatchResponse` batches for one key or prefix.

    ``start_revision`` is where the watch (re)starts next; ``created_revision`` the
    store revision when the server first confirmed the watch; ``confirmed_at`` the
    monotonic time it was last known current (its member confirmed it, sent it a
    message, or answered a liveness probe). With a :class:`~geventc.liveness.Liveness`
    a member that stops answering is left within its bound and the watch resumed on
    the next one. A stream that cannot be re-established on any endpoint raises: at
    once when every endpoint refused it (down, or without a raft leader) twice in a
    row, else after the client's timeout.
    """

    def __init__(
        self,
        transport: Transport,
        request: JSON,
        start_revision: int,
        liveness: Liveness | None = None,
    ) -> None:
        self._transport = transport
        self._liveness = liveness
        self.confirmed_at = 0.0
        self._request = request
        self._stream: HTTPStream | None = None
        self._endpoint = ""
        self._token: str | None = None
        self._cancelled = False
        self._reading = False
        self._counted = False  # counted in the open streams gauge (confirmed, connected)
        self._seen_revision = 0
        self.start_revision = start_revision
        self.created_revision = 0
        #: applied to every batch before it is yielded (a connector strips its namespace)
        self.transform: Callable[[WatchResponse], WatchResponse] | None = None
        try:
            self._establish(time.monotonic() + transport.timeout)
        except BaseException:
            self._fail()  # never leave the stream's connection open
            raise

    def __repr__(self) -> str:
        key = wire.unb64(self._request.get("key"))
        return f"WatchStream(key={key!r}, next_revision={self.start_revision})"

    def __iter__(self) -> Iterator[WatchResponse]:
        return self

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    @property
    def endpoint(self) -> str:
        """The endpoint the watch is established on now, or ``""`` while it is not."""
        return self._endpoint if self._stream is not None else ""

    def confirm(self, at: float) -> None:
        """Its member answered a liveness probe sent at ``at``: current as of then."""
        self.confirmed_at = max(self.confirmed_at, at)

    def stall(self, reason: str) -> None:
        """Its member stopped answering (``reason``): cut the connection, so the
        iteration resumes on another endpoint from the next revision."""
        if self._stream is None or self._cancelled:
            return
        log.info("watch on %s stalled (%s)", self._endpoint, reason)
        if self._reading:
            self._interrupt()  # the reading greenlet fails over
        else:
            self._drop_connection()  # the next read reconnects

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called or the stream ended with an error."""
        return self._cancelled

    def cancel(self) -> None:
        """Stop the watch; an iteration in progress in another greenlet ends."""
        if self._cancelled:
            return
        self._cancelled = True
        if REQUEST_LOG.isEnabledFor(logging.DEBUG):
            REQUEST_LOG.debug("%r closed", self)
        if self._reading:
            self._interrupt()  # the reading greenlet wakes up and closes the stream
        else:
            self._drop_connection()

    def __next__(self) -> WatchResponse:
        self._reading = True
        try:
            return self._next_response()
        finally:
            self._reading = False
            if self._cancelled:
                self._drop_connection()

    def _next_response(self) -> WatchResponse:
        outage_deadline: float | None = None
        refusals = 0  # consecutive re-establishments refused outright
        while not self._cancelled:
            try:
                if self._stream is None:
                    self._connect(outage_deadline or time.monotonic() + self._transport.timeout)
                    refusals = 0
                response = self._accept(self._next_message())
            except _TRANSIENT as exc:
                if self.cancelled:  # cancel() from another greenlet broke the read
                    break
                now = time.monotonic()
                if outage_deadline is not None:
                    refusals = refusals + 1 if _refused(exc) else 0
                gone = refusals > _REFUSED_ROUNDS * len(self._transport.endpoints)
                if gone or (outage_deadline is not None and now >= outage_deadline):
                    self._fail(exc)
                    if isinstance(exc, _Behind):
                        self._transport.counters.watch_compactions += 1
                    raise _as_error(exc, self._endpoint) from None
                if outage_deadline is not None:
                    time.sleep(_RETRY_PAUSE)
                outage_deadline = outage_deadline or now + self._transport.timeout
                self._broken(exc)
                continue
            except errors.EtcdError as exc:
                self._fail(exc)
                raise
            if response is not None:
                return response
        raise StopIteration

    # --- internals -------------------------------------------------------------------

    def _establish(self, deadline: float) -> None:
        """The first connection: a stream that breaks or garbles before the watch is
        confirmed is tried once on each other endpoint, within ``deadline``."""
        for tried in range(1, len(self._transport.endpoints) + 1):
            try:
                self._connect(deadline)
                return
            except (_StreamEnded, StreamBroken, errors.ProtocolError, errors.Timeout) as exc:
                self._broken(exc)
                if tried >= len(self._transport.endpoints) or time.monotonic() >= deadline:
                    raise _as_error(exc, self._endpoint) from None

    def _connect(self, deadline: float) -> None:
        body = dict(self._request)
        if self.start_revision:
            body["start_revision"] = str(self.start_revision)
        stream = self._transport.open_stream(
            "/v3/watch", {"create_request": body}, timeout=max(0.001, deadline - time.monotonic())
        )
        self._stream, self._endpoint = stream, stream.endpoint
        self._token = self._transport.token
        late = errors.Timeout("etcd did not confirm the watch in time", endpoint=stream.endpoint)
        with gevent.Timeout(max(0.001, deadline - time.monotonic()), late):
            while True:
                created = self._decode(self._next_message())
                self._check_cancel(created)
                if created.created:
                    break
        if created.header.revision < self._seen_revision:
            # a member behind what was delivered: cut off from its peers, catching up
            # after a restart, or its data lost; another member may have the history
            raise _Behind(
                errors.Compacted(
                    f"etcd's revision went back from {self._seen_revision} to "
                    f"{created.header.revision} on every member tried (behind what this "
                    "watch delivered: the data was lost or replaced): the history this "
                    "watch needs is gone",
                    compact_revision=created.header.revision,
                    endpoint=stream.endpoint,
                )
            )
        self._seen_revision = max(self._seen_revision, created.header.revision)
        self.confirmed_at = time.monotonic()
        if self._liveness is not None:
            self._liveness.attach(self)
        counters = self._transport.counters
        counters.watch_streams_opened += 1
        counters.watch_streams_open += 1
        self._counted = True
        if self.created_revision:
            counters.watch_restarts += 1
        if REQUEST_LOG.isEnabledFor(logging.DEBUG):
            REQUEST_LOG.debug(
                "%r %s on %s at revision %d",
                self,
                "restarted" if self.created_revision else "open",
                stream.endpoint,
                created.header.revision,
            )
        if not self.created_revision:
            self.created_revision = created.header.revision
        if not self.start_revision:
            self.start_revision = created.header.revision + 1

    def _broken(self, cause: BaseException) -> None:
        log.info(
            "watch on %s broke (%s); resuming at revision %d",
            self._endpoint or "etcd",
            cause,
            self.start_revision,
        )
        self._drop_connection()
        failed = getattr(cause, "endpoint", None) or self._endpoint  # the stream's, or its POST's
        if failed:
            self._transport.mark_failed(failed)

    def _accept(self, message: Any) -> WatchResponse | None:
        response = self._decode(message)
        self._check_cancel(response)
        self.confirmed_at = time.monotonic()
        self._seen_revision = max(self._seen_revision, response.header.revision)
        if response.created:
            return None
        events = response.events
        if not events or events[0].kv.mod_revision >= self.start_revision:
            fresh = events  # (a response's events come in revision order)
        else:
            fresh = tuple(e for e in events if e.kv.mod_revision >= self.start_revision)
        if fresh:
            self.start_revision = fresh[-1].kv.mod_revision + 1
        elif response.is_progress_notify:
            self.start_revision = max(self.start_revision, response.header.revision + 1)
        elif response.events:
            return None  # every event was a replay of something already delivered
        if fresh is not events:
            response = WatchResponse(header=response.header, events=fresh)
        return self.transform(response) if self.transform else response

    def _decode(self, message: Any) -> WatchResponse:
        usual = type(message) is dict and "result" in message
        if usual and "error" not in message and "code" not in message:  # (no error in it)
            return wire.decode("watch", wire.watch_response, message["result"])
        error = status.error_from_object(message, self._endpoint)
        if error is not None:
            raise error
        if not isinstance(message, dict) or "result" not in message:
            raise errors.ProtocolError(
                "watch stream message has no result", endpoint=self._endpoint
            )
        return wire.decode("watch", wire.watch_response, message["result"])

    def _check_cancel(self, response: WatchResponse) -> None:
        if not response.canceled:
            return
        if response.compact_revision:
            self._transport.counters.watch_compactions += 1
            raise errors.Compacted(
                f"watch start revision {self.start_revision} was compacted "
                f"(compacted up to {response.compact_revision})",
                compact_revision=response.compact_revision,
                endpoint=self._endpoint,
            )
        reason = response.cancel_reason
        if any(m in reason for m in _AUTH_REASONS):
            self._transport.token_expired(self._token, time.monotonic() + self._transport.timeout)
            raise _StreamEnded(reason)
        raise status.error_from_fields(None, reason or "watch canceled by etcd", self._endpoint)

    def _next_message(self) -> Any:
        stream = self._stream
        if stream is None:
            raise _StreamEnded("stream closed")
        line = stream.read_line(self._transport.max_response_bytes)
        if not line:
            raise _StreamEnded("etcd closed the watch stream")
        try:
            text = line.decode("utf-8")
            if text[0] in _JSON_SPACE:  # (the gateway's lines start with their document)
                text = text.lstrip(_JSON_SPACE)
            message, end = _DECODE(text)
            if end != len(text) and text[end:].strip(_JSON_SPACE):
                raise ValueError("extra data after the JSON document")
        except (ValueError, RecursionError):
            raise errors.ProtocolError("malformed watch message", endpoint=self._endpoint) from None
        return message

    def _interrupt(self) -> None:
        if self._stream is not None:
            self._stream.interrupt()

    def _drop_connection(self) -> None:
        if self._liveness is not None:
            self._liveness.detach(self)
        if self._counted:
            self._counted = False
            self._transport.counters.watch_streams_open -= 1
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def _fail(self, cause: BaseException | None = None) -> None:
        if cause is not None and REQUEST_LOG.isEnabledFor(logging.DEBUG):
            REQUEST_LOG.debug("%r ended: %s: %s", self, type(cause).__name__, cause)
        self._cancelled = True
        self._drop_connection()


class _StreamEnded(Exception):
    """The HTTP stream ended or must be re-established."""


class _Behind(_StreamEnded):
    """The member confirmed the watch at a revision behind what the stream delivered:
    try the others; :class:`Compacted` (``error``) when none has the history."""

    def __init__(self, error: errors.Compacted) -> None:
        super().__init__(error.message)
        self.error = error
        self.endpoint = error.endpoint


_TRANSIENT = (
    StreamBroken,
    errors.Unavailable,
    errors.ConnectionFailed,
    errors.Timeout,
    errors.ProtocolError,  # a garbled message: resume on the next endpoint
    _StreamEnded,
)


#: Rounds of outright refusals on every endpoint after which a stream gives up at once.
_REFUSED_ROUNDS = 2


def _refused(exc: BaseException) -> bool:
    """True when an endpoint answered that it cannot serve the watch at all: nothing
    listens there, it has no raft leader, or its data is behind what was delivered."""
    if isinstance(exc, errors.NoLeader | _Behind):
        return True
    return isinstance(exc, errors.ConnectionFailed) and "refused" in exc.message


def _as_error(exc: BaseException, endpoint: str) -> errors.EtcdError:
    if isinstance(exc, errors.EtcdError):
        return exc
    if isinstance(exc, _Behind):
        return exc.error
    return errors.ConnectionFailed(
        f"watch stream lost and not re-established: {exc}", endpoint=endpoint
    )

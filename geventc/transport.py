"""Requests to etcd's JSON gateway: endpoint failover, deadlines and retries.

Requests go to the current endpoint; on a connection failure, a timeout or an
``Unavailable`` answer the transport moves to the next endpoint. Reads, watches and
lease calls are retried there (with a small jittered backoff once every endpoint was
tried) until the call's deadline; writes are retried only when the request certainly
never reached a server, and a write that failed after it was sent raises
:class:`IndeterminateWrite`. HTTP itself (pools, TLS, bounded answers, streams) is
:mod:`geventc.http`'s job, the auth token :mod:`geventc.auth`'s.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from . import errors, status
from .auth import TokenAuth, auth_required
from .endpoints import parse_endpoints
from .http import (
    BASE_HEADERS,
    Answer,
    ExchangeFailed,
    HTTPPools,
    HTTPStream,
    TLSConfig,
    ensure_patched,
)
from .stats import REQUEST_LOG, Counters, log_request
from .wire import JSON

__all__ = [
    "MAX_RESPONSE_BYTES",
    "PRIORITY_PATHS",
    "REFUSED_ROUNDS",
    "TLSConfig",
    "Transport",
    "ensure_patched",
]

log = logging.getLogger("geventc")

HEADERS = {**BASE_HEADERS, "Content-Type": "application/json", "Grpc-Metadata-Hasleader": "true"}
BACKOFF_FIRST = 0.025
BACKOFF_MAX = 0.5
#: Requests that never wait for a free pooled connection: a lease renewal stuck behind
#: thousands of queued writes would let the lease (and every key on it) expire.
PRIORITY_PATHS = frozenset(
    {"/v3/lease/keepalive", "/v3/lease/grant", "/v3/lease/revoke", "/v3/auth/authenticate"}
)
#: Answers (and watch messages) larger than this are refused with ProtocolError; set
#: ``Transport.max_response_bytes`` higher to read huge prefixes in one call.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
#: Rounds of refused connections on every endpoint after which a call fails at once.
REFUSED_ROUNDS = 2

R = TypeVar("R")
#: One exchange with an endpoint: (endpoint, headers, timeout) -> its result, or the
#: whole answer when its status is not 200.
Exchange = Callable[[str, dict[str, str], float], "R | Answer"]


class _Retryable(Exception):
    """An attempt failed in a way another endpoint (or a later try) may fix."""

    def __init__(self, error: errors.EtcdError, *, refused: bool = False) -> None:
        super().__init__(str(error))
        self.error = error
        #: the endpoint refused the connection: the request certainly never arrived
        self.refused = refused


class Transport:
    """Sends gateway requests with failover, deadlines, TLS and token auth.

    ``timeout`` bounds each call, retries included; ``connect_timeout`` bounds each
    connection attempt. The password is kept only to renew the token and never shown.
    """

    max_response_bytes = MAX_RESPONSE_BYTES

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
        keepalive_time: float = 2.0,
    ) -> None:
        self.endpoints = parse_endpoints(endpoints)
        secure = self.endpoints[0].startswith("https://")
        if tls is not None and not isinstance(tls, TLSConfig):
            raise errors.InvalidArgument("tls must be a geventc.TLSConfig or None")
        if tls is not None and not secure:
            raise errors.InvalidArgument(
                "tls was given but the endpoints are http://; use https://"
            )
        self._auth = TokenAuth(username, password, self._authenticate)
        self.username = username
        self.timeout = timeout
        self._current = 0
        self._closed = False
        self._pid = os.getpid()
        #: HTTP requests sent so far (every attempt and every stream opened)
        self.requests = 0
        #: what :meth:`geventc.Client.stats` reports (see :mod:`geventc.stats`)
        self.counters = Counters()
        self._headers: tuple[str, dict[str, str]] | None = None
        self._http = HTTPPools(
            tls=(tls or TLSConfig()) if secure else None,
            pool_size=pool_size,
            connect_timeout=connect_timeout,
            keepalive_time=keepalive_time,
        )

    def __repr__(self) -> str:
        user = f", username={self.username!r}" if self.username else ""
        return f"Transport({self.endpoints!r}{user})"

    # --- public --------------------------------------------------------------------

    @property
    def current_endpoint(self) -> str:
        """The endpoint requests go to now."""
        return self.endpoints[self._current]

    @property
    def connect_timeout(self) -> float:
        """How long each connection attempt may take (seconds)."""
        return self._http.connect_timeout

    def close(self) -> None:
        """Close every pooled connection; later calls raise :class:`ClientClosed`."""
        self._closed = True
        self._http.close()

    def call(
        self,
        path: str,
        body: JSON,
        *,
        write: bool = False,
        endpoint: str | None = None,
        timeout: float | None = None,
        batch: int = 0,
    ) -> JSON:
        """POST ``body`` to ``path`` and return the decoded answer.

        ``write`` marks a request that must not be repeated once sent; ``endpoint``
        pins the request to one endpoint (no failover); ``batch`` (for the request
        log) is how many callers' operations a coalesced txn carries.
        """
        payload = _encode(body)
        exchange = self._poster(path, payload, write)
        started = time.monotonic()
        deadline = started + (timeout or self.timeout)
        auth = self._auth
        logged = REQUEST_LOG.isEnabledFor(logging.DEBUG)
        try:
            for tried in range(1, len(self.endpoints) + 1):
                try:
                    if auth.username is None:  # what auth.send does without credentials
                        try:
                            data, target = self._attempts(
                                path, deadline, None, exchange, write=write, pinned=endpoint
                            )
                        except errors.TokenExpired as exc:
                            raise auth_required(exc) from None
                    else:
                        data, target = auth.send(
                            lambda token: self._attempts(
                                path, deadline, token, exchange, write=write, pinned=endpoint
                            ),
                            deadline,
                        )
                    answer = _decode_answer(data, target)
                    if logged:
                        log_request(
                            "POST",
                            path,
                            target,
                            started,
                            sent=len(payload),
                            received=len(data),
                            batch=batch,
                        )
                    return answer
                except errors.ProtocolError as exc:
                    self._not_understood(exc, path, write, endpoint, deadline, tried)
        except errors.EtcdError as exc:
            self.counters.error(exc)
            if logged:
                log_request("POST", path, exc.endpoint, started, exc, batch=batch)
            raise
        raise AssertionError("unreachable")

    def get(
        self,
        path: str,
        endpoint: str | None = None,
        timeout: float | None = None,
        *,
        priority: bool = False,
    ) -> Any:
        """GET ``path`` (``/health``, ``/version``) and return its JSON, whatever the
        status; ``priority`` never waits behind busy pooled connections."""
        target = endpoint or self.current_endpoint
        self._check_open()
        self.requests += 1
        by_path = self.counters.requests_by_path
        by_path[path] = by_path.get(path, 0) + 1
        started = time.monotonic()
        logged = REQUEST_LOG.isEnabledFor(logging.DEBUG)
        try:
            try:
                answer = self._http.request(
                    target,
                    "GET",
                    path,
                    headers=HEADERS,
                    timeout=timeout or self.timeout,
                    limit=self.max_response_bytes,
                    priority=priority,
                )
            except ExchangeFailed as failed:
                raise failed.error from None
            try:
                decoded = json.loads(answer.body)
            except (ValueError, RecursionError):
                raise errors.ProtocolError(f"{path} did not answer JSON", endpoint=target) from None
        except errors.EtcdError as exc:
            self.counters.error(exc)
            if logged:
                log_request("GET", path, target, started, exc)
            raise
        if logged:
            log_request("GET", path, target, started, received=len(answer.body))
        return decoded

    def open_stream(self, path: str, body: JSON, *, timeout: float | None = None) -> HTTPStream:
        """POST ``body`` to a streaming ``path`` and return the unread stream (its
        ``endpoint`` is the one that answered); establishing it fails over like a read."""
        payload = _encode(body)

        def exchange(target: str, headers: dict[str, str], remaining: float) -> HTTPStream | Answer:
            return self._http.open_stream(
                target,
                path,
                body=payload,
                headers=headers,
                timeout=remaining,
                limit=self.max_response_bytes,
            )

        started = time.monotonic()
        deadline = started + (timeout or self.timeout)
        logged = REQUEST_LOG.isEnabledFor(logging.DEBUG)
        try:
            stream, target = self._auth.send(
                lambda token: self._attempts(path, deadline, token, exchange, stream=True),
                deadline,
            )
        except errors.EtcdError as exc:
            self.counters.error(exc)
            if logged:
                log_request("POST", path, exc.endpoint, started, exc)
            raise
        if logged:
            log_request("POST", path, target, started, sent=len(payload))
        return stream

    def token_expired(self, token_used: str | None, deadline: float) -> None:
        """Tell the transport a stream saw its token expire: fetch a new one."""
        self._auth.expired(token_used, deadline)

    @property
    def token(self) -> str | None:
        """The auth token in use (None without auth); for stream owners only."""
        return self._auth.token

    def mark_failed(self, endpoint: str) -> None:
        """Move away from ``endpoint`` if it is still the current one."""
        if self.endpoints[self._current] == endpoint:
            self._current = (self._current + 1) % len(self.endpoints)
            self.counters.failovers += 1
            log.info("etcd endpoint %s failed; now using %s", endpoint, self.current_endpoint)

    # --- attempts --------------------------------------------------------------------

    def _not_understood(
        self,
        error: errors.ProtocolError,
        path: str,
        write: bool,
        pinned: str | None,
        deadline: float,
        tried: int,
    ) -> None:
        """After an answer that is not etcd's (garbled, truncated, an HTML page, too
        large): move away from its endpoint. A write was sent, so it raises
        IndeterminateWrite; a read returns to be tried once on each other endpoint."""
        if pinned is None and error.endpoint:
            self.mark_failed(error.endpoint)
        if write:
            raise errors.IndeterminateWrite(
                f"the write to {path} was sent but its answer was not understood "
                f"({error.message}); it may or may not have been applied",
                endpoint=error.endpoint,
            ) from error
        if pinned is not None or tried >= len(self.endpoints) or time.monotonic() >= deadline:
            raise error

    def _poster(self, path: str, payload: bytes, write: bool) -> Exchange[bytes]:
        """The exchange that POSTs ``payload`` to ``path`` and reads the whole answer."""

        def exchange(target: str, headers: dict[str, str], remaining: float) -> bytes | Answer:
            answer = self._http.request(
                target,
                "POST",
                path,
                body=payload,
                headers=headers,
                timeout=remaining,
                limit=self.max_response_bytes,
                write=write,
                priority=path in PRIORITY_PATHS,
            )
            return answer.body if answer.status == 200 else answer

        return exchange

    def _authenticate(self, body: JSON, deadline: float) -> JSON:
        """Send etcd's authenticate request (without a token) and decode its answer."""
        path = "/v3/auth/authenticate"
        started = time.monotonic()
        logged = REQUEST_LOG.isEnabledFor(logging.DEBUG)
        try:
            data, target = self._attempts(
                path, deadline, None, self._poster(path, _encode(body), False)
            )
            answer = _decode_answer(data, target)
        except errors.EtcdError as exc:
            self.counters.error(exc)
            if logged:
                log_request("POST", path, exc.endpoint, started, exc)
            raise
        if logged:  # (not the sizes: they would tell a password's length)
            log_request("POST", path, target, started)
        return answer

    def _attempts(
        self,
        path: str,
        deadline: float,
        token: str | None,
        exchange: Exchange[R],
        *,
        write: bool = False,
        pinned: str | None = None,
        stream: bool = False,
    ) -> tuple[R, str]:
        """Try ``exchange`` on one endpoint after another until it succeeds, fails for
        good, or the deadline passes; return its result and its endpoint."""
        if self._closed or os.getpid() != self._pid:
            self._check_open()
        headers = HEADERS if token is None else self._token_headers(token)
        tried = 0
        refusals = 0  # consecutive attempts whose connection was refused
        backoff = BACKOFF_FIRST
        while True:
            target = pinned or self.endpoints[self._current]
            try:
                return self._attempt(
                    target, path, headers, exchange, write, deadline, stream
                ), target
            except _Retryable as failure:
                error = failure.error
                refusals = refusals + 1 if failure.refused else 0
                if REQUEST_LOG.isEnabledFor(logging.DEBUG):
                    REQUEST_LOG.debug(
                        "POST %s endpoint=%s attempt failed (%s: %s)",
                        path,
                        target,
                        type(error).__name__,
                        error.message,
                    )
            except errors.IndeterminateWrite:
                if pinned is None:
                    self.mark_failed(target)  # the next call tries another endpoint
                raise
            tried += 1
            if pinned is None:
                self.mark_failed(target)
            remaining = deadline - time.monotonic()
            if pinned is not None or remaining <= 0:
                raise error
            if refusals >= REFUSED_ROUNDS * len(self.endpoints):
                # nothing listens anywhere (etcd is down): fail now, as gRPC's fail-fast
                # calls do, instead of knocking on closed ports until the deadline
                raise errors.ConnectionFailed(
                    f"every etcd endpoint refused the request ({error.message})",
                    endpoint=target,
                )
            if tried % len(self.endpoints) == 0:
                pause = backoff * (0.5 + random.random())
                if pause >= remaining:
                    raise error
                log.debug("every etcd endpoint failed (%s); retrying in %.3fs", error, pause)
                time.sleep(pause)
                backoff = min(backoff * 2, BACKOFF_MAX)
            self._check_open()
            self.counters.retries += 1

    def _attempt(
        self,
        target: str,
        path: str,
        headers: dict[str, str],
        exchange: Exchange[R],
        write: bool,
        deadline: float,
        stream: bool,
    ) -> R:
        remaining = max(0.001, deadline - time.monotonic())
        self.requests += 1
        by_path = self.counters.requests_by_path
        by_path[path] = by_path.get(path, 0) + 1
        if not write and len(self.endpoints) > 1:
            # one silent member (paused, blackholed) must not eat a read's or a stream's
            # whole deadline: leave it for the next endpoint after half of it
            remaining = min(remaining, max(self.timeout / 2, self.connect_timeout))
        try:
            result = exchange(target, headers, remaining)
        except ExchangeFailed as failed:
            if not failed.retryable:
                raise failed.error from None
            raise _Retryable(failed.error, refused=failed.refused) from None
        if not isinstance(result, Answer):
            return result
        error = status.error_from_response(result.status, result.body, target)
        if isinstance(error, errors.NoLeader | errors.TooManyRequests):
            # refused before the proposal: safe even for writes; a member without a
            # leader refuses a watch outright (a request may wait out an election)
            raise _Retryable(error, refused=stream and isinstance(error, errors.NoLeader))
        if isinstance(error, errors.Unavailable | errors.Timeout):
            if write:
                raise errors.IndeterminateWrite(
                    f"write to {path} failed after it was sent ({error.message}); "
                    "it may or may not have been applied",
                    code=error.code,
                    endpoint=target,
                ) from error
            raise _Retryable(error)
        raise error

    def _token_headers(self, token: str) -> dict[str, str]:
        """The request headers carrying ``token``: one object per token, so the HTTP
        layer can reuse the request head it made from it."""
        known = self._headers
        if known is None or known[0] != token:
            known = self._headers = (token, {**HEADERS, "Authorization": token})
        return known[1]

    def _check_open(self) -> None:
        if self._closed:
            raise errors.ClientClosed("the etcd client is closed")
        if os.getpid() != self._pid:
            raise errors.ForkedProcess(
                f"this etcd client was created in process {self._pid} before a fork; "
                "sockets must not be shared across processes: create a new client or "
                "connector in this process (in gunicorn, in the post_fork hook)"
            )


_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)


def _make_encode() -> Callable[[JSON], str]:
    """The compact JSON encoder of request bodies.

    ``JSONEncoder.encode`` builds the C encoder anew on every call; this builds it once
    (``json.encoder.c_make_encoder``, what ``encode`` itself uses, with the same
    settings) when this Python has it and it writes what ``encode`` writes, else it is
    ``encode`` itself. Bodies are trees geventc builds, never circular, so the
    circular-reference check (a markers table shared by every call) is left out."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython always has it
        return _ENCODER.encode
    try:
        chunks = make(
            None,
            _ENCODER.default,
            json.encoder.encode_basestring_ascii,
            None,
            ":",
            ",",
            False,
            False,
            True,
        )
        sample = {"key": "a\u00e9\n", "n": [1, 2.5, True, None], "o": {}}
        if "".join(chunks(sample, 0)) != _ENCODER.encode(sample):  # pragma: no cover
            return _ENCODER.encode
    except (TypeError, ValueError):  # pragma: no cover - another signature
        return _ENCODER.encode
    return lambda body: "".join(chunks(body, 0))


_ENCODE = _make_encode()


def _encode(body: JSON) -> bytes:
    return _ENCODE(body).encode()


_DECODE = json.JSONDecoder().raw_decode
#: What ``json.loads`` accepts after a document (its own whitespace set).
_JSON_SPACE = " \t\n\r"


def _decode_answer(data: bytes, endpoint: str) -> JSON:
    """Decode a 200 answer; a streamed answer (keep-alive) is its first ``result``.

    The JSON is read as ``json.loads`` reads it (the same documents accepted, the same
    refused), through its decoder's ``raw_decode`` without the wrappers around it."""
    try:
        text = data.decode("utf-8")
        if not text.startswith('{"header"'):  # the usual answer needs no other look
            stripped = text.lstrip()
            text = stripped.split("\n", 1)[0] if stripped.startswith('{"result"') else stripped
        if text:
            decoded, end = _DECODE(text)
            if end != len(text) and text[end:].strip(_JSON_SPACE):
                raise ValueError("extra data after the JSON document")
        else:
            decoded = {}
    except (ValueError, RecursionError):
        raise errors.ProtocolError("etcd answered malformed JSON", endpoint=endpoint) from None
    if not isinstance(decoded, dict):
        raise errors.ProtocolError("etcd answered JSON that is not an object", endpoint=endpoint)
    error = status.error_from_object(decoded, endpoint) if "error" in decoded else None
    if error is not None:
        raise error
    result = decoded.get("result", decoded)
    if not isinstance(result, dict):
        raise errors.ProtocolError("etcd's stream result is not an object", endpoint=endpoint)
    if not isinstance(result.get("header", {}), dict):
        raise errors.ProtocolError("etcd's answer has a malformed header", endpoint=endpoint)
    return result

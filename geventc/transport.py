"""HTTP transport to etcd's JSON gateway: pools, failover, deadlines, TLS and auth.

One urllib3 pool per endpoint, keep-alive connections. Requests go to the current
endpoint; on a connection failure, a timeout or an ``Unavailable`` answer the transport
moves to the next endpoint. Reads, watches and lease calls are retried there (with a
small jittered backoff once every endpoint was tried) until the call's deadline; writes
are retried only when the request certainly never reached a server, and a write that
failed after it was sent raises :class:`IndeterminateWrite`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

import gevent.lock
import gevent.monkey
import urllib3
import urllib3.util.ssl_ as urllib3_ssl
from urllib3.connection import HTTPConnection
from urllib3.exceptions import (
    ConnectTimeoutError,
    EmptyPoolError,
    FullPoolError,
    HTTPError,
    NewConnectionError,
    ReadTimeoutError,
    SSLError,
)

from . import errors, status
from .endpoints import parse_endpoints
from .wire import JSON

log = logging.getLogger("geventc")

HEADERS = {"Content-Type": "application/json", "Grpc-Metadata-Hasleader": "true"}
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
#: How long after an attempt's deadline an answer still trickling in is cut off.
DEADLINE_GRACE = 0.05
#: Rounds of refused connections on every endpoint after which a call fails at once.
REFUSED_ROUNDS = 2


def ensure_patched() -> None:
    """Raise :class:`NotPatched` unless sockets (and urllib3's TLS) are gevent-patched."""
    if not gevent.monkey.is_module_patched("socket"):
        raise errors.NotPatched(
            "geventc needs gevent-patched sockets: call gevent.monkey.patch_all() at the very "
            "start of the program (gunicorn's gevent worker and pytest-gevent do it for you)"
        )
    if getattr(urllib3_ssl, "SSLContext", ssl.SSLContext) is not ssl.SSLContext:
        if _urllib3_loaded_before_geventc():
            raise errors.NotPatched(
                "urllib3 was imported (by this program or a library such as requests) before "
                "gevent.monkey.patch_all(), so its TLS would not be cooperative: patch first "
                "thing, before importing urllib3"
            )
        raise errors.NotPatched(
            "a geventc name (e.g. `from geventc import Client`) was imported before "
            "gevent.monkey.patch_all(), and that loaded urllib3 unpatched, so its TLS would "
            "not be cooperative: call gevent.monkey.patch_all() first thing, before importing "
            "names from geventc (a bare `import geventc` may come earlier)"
        )


def _urllib3_loaded_before_geventc() -> bool:
    """True when urllib3 was already loaded as ``import geventc`` ran (so the program or
    another library imported it, not geventc)."""
    import geventc

    return bool(getattr(geventc, "URLLIB3_LOADED_BEFORE", False))


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """TLS settings for ``https://`` endpoints.

    ``ca_file`` verifies the server (None: the system's CAs); ``cert_file`` and
    ``key_file`` present a client certificate (mutual TLS); ``server_hostname``
    overrides the name checked in the server's certificate.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_hostname: str | None = None

    def __post_init__(self) -> None:
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is None:
                continue
            if not isinstance(path, str | os.PathLike):
                raise errors.InvalidArgument(f"TLSConfig.{name} must be a file path or None")
            if not os.path.isfile(path):
                raise errors.InvalidArgument(f"TLSConfig.{name} {path!r} is not a readable file")
        if (self.cert_file is None) != (self.key_file is None):
            raise errors.InvalidArgument(
                "TLSConfig needs both cert_file and key_file for a client certificate, or neither"
            )
        if self.server_hostname is not None and not isinstance(self.server_hostname, str):
            raise errors.InvalidArgument("TLSConfig.server_hostname must be a str or None")

    def pool_options(self) -> dict[str, Any]:
        """urllib3 pool keyword arguments for these settings."""
        options: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED"}
        if self.ca_file:
            options["ca_certs"] = os.fspath(self.ca_file)
        if self.cert_file:
            options["cert_file"] = os.fspath(self.cert_file)
            options["key_file"] = os.fspath(self.key_file or "")
        if self.server_hostname:
            options["server_hostname"] = self.server_hostname
        return options


class _PoolMixin:
    """urllib3's pool, robust against callers interrupted while they wait for a
    connection (a ``gevent.Timeout`` of a ``stop()`` bound, a killed greenlet): urllib3
    then gives back a slot it never took, and the next connection returned to the
    now over-full pool raised ``FullPoolError`` in a request that had succeeded."""

    def _put_conn(self, conn: Any) -> None:
        # urllib3 closed the surplus connection; the pool keeps its maxsize slots
        with contextlib.suppress(FullPoolError):
            super()._put_conn(conn)  # type: ignore[misc]


class _HTTPPool(_PoolMixin, urllib3.HTTPConnectionPool):
    """A plain-http pool (see :class:`_PoolMixin`)."""


class _HTTPSPool(_PoolMixin, urllib3.HTTPSConnectionPool):
    """An https pool (see :class:`_PoolMixin`)."""


def stream_socket_options(idle: float) -> list[tuple[int, int, int]]:
    """urllib3's socket options plus TCP keep-alive probes after ``idle`` seconds of
    silence, so the kernel notices a peer host that vanished (half-open TCP) under a
    long-lived watch stream without any request."""
    options = [*HTTPConnection.default_socket_options, (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    seconds = max(1, round(idle))
    for name, value in (("TCP_KEEPIDLE", seconds), ("TCP_KEEPINTVL", seconds), ("TCP_KEEPCNT", 2)):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return options


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
        if (username is None) != (password is None):
            raise errors.InvalidArgument("username and password must be given together")
        if username is not None and (not isinstance(username, str) or not username):
            raise errors.InvalidArgument("username must be a non-empty str")
        if password is not None and not isinstance(password, str):
            raise errors.InvalidArgument("password must be a str")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.username = username
        self._password = password
        self._token: str | None = None
        self._auth_lock = gevent.lock.BoundedSemaphore()
        self._current = 0
        self._closed = False
        self._pid = os.getpid()
        #: HTTP requests sent so far (every attempt and every stream opened)
        self.requests = 0
        options = (tls or TLSConfig()).pool_options() if secure else {}
        # Requests share at most ``pool_size`` kept-alive connections per endpoint (a
        # caller waits for a free one, within its deadline); watch streams hold their
        # connection for their whole life, so they come from a separate pool that
        # never blocks.
        self._pool_options = {"maxsize": pool_size, **options}
        self._stream_socket_options = stream_socket_options(keepalive_time)
        self._pools: dict[str, urllib3.HTTPConnectionPool] = {}
        self._stream_pools: dict[str, urllib3.HTTPConnectionPool] = {}

    def __repr__(self) -> str:
        user = f", username={self.username!r}" if self.username else ""
        return f"Transport({self.endpoints!r}{user})"

    # --- public --------------------------------------------------------------------

    @property
    def current_endpoint(self) -> str:
        """The endpoint requests go to now."""
        return self.endpoints[self._current]

    def close(self) -> None:
        """Close every pooled connection; later calls raise :class:`ClientClosed`."""
        self._closed = True
        pools = [*self._pools.values(), *self._stream_pools.values()]
        self._pools, self._stream_pools = {}, {}
        for pool in pools:
            pool.close()

    def call(
        self,
        path: str,
        body: JSON,
        *,
        write: bool = False,
        endpoint: str | None = None,
        timeout: float | None = None,
    ) -> JSON:
        """POST ``body`` to ``path`` and return the decoded answer.

        ``write`` marks a request that must not be repeated once sent; ``endpoint``
        pins the request to one endpoint (no failover).
        """
        payload = json.dumps(body, separators=(",", ":")).encode()
        deadline = time.monotonic() + (timeout or self.timeout)
        for tried in range(1, len(self.endpoints) + 1):
            try:
                response, target = self._authorised(path, payload, write, endpoint, deadline)
                return _decode_answer(bytes(response.data), target)
            except errors.ProtocolError as exc:
                self._not_understood(exc, path, write, endpoint, deadline, tried)
        raise AssertionError("unreachable")

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
        limit = timeout or self.timeout
        timer = gevent.Timeout.start_new(limit + DEADLINE_GRACE)  # a trickled answer too
        try:
            response = self._pool(target, stream=priority).urlopen(
                "GET",
                path,
                headers=HEADERS,
                timeout=self._timeouts(limit),
                retries=False,
                preload_content=False,
                pool_timeout=limit,  # type: ignore[arg-type]  # a float works (queue.get)
            )
            data = _read_body(response, self.max_response_bytes, target)
        except (HTTPError, OSError, gevent.Timeout) as exc:
            if isinstance(exc, gevent.Timeout) and exc is not timer:
                raise
            raise _transport_error(exc, target, write=False) from None
        finally:
            timer.close()
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            raise errors.ProtocolError(f"{path} did not answer JSON", endpoint=target) from None

    def open_stream(
        self, path: str, body: JSON, *, timeout: float | None = None
    ) -> tuple[urllib3.BaseHTTPResponse, str]:
        """POST ``body`` to a streaming ``path`` and return the unread response and
        the endpoint that answered; establishing it fails over like a read."""
        payload = json.dumps(body, separators=(",", ":")).encode()
        deadline = time.monotonic() + (timeout or self.timeout)
        return self._authorised(path, payload, False, None, deadline, stream=True)

    def token_expired(self, token_used: str | None, deadline: float) -> None:
        """Tell the transport a stream saw its token expire: fetch a new one."""
        if self.username is None:
            raise errors.AuthenticationFailed(
                "etcd requires authentication for this watch; pass username= and password="
            )
        self._renew_token(token_used, deadline)

    @property
    def token(self) -> str | None:
        """The auth token in use (None without auth); for stream owners only."""
        return self._token

    def mark_failed(self, endpoint: str) -> None:
        """Move away from ``endpoint`` if it is still the current one."""
        if self.endpoints[self._current] == endpoint:
            self._current = (self._current + 1) % len(self.endpoints)
            log.info("etcd endpoint %s failed; now using %s", endpoint, self.current_endpoint)

    # --- auth ------------------------------------------------------------------------

    def _authorised(
        self,
        path: str,
        payload: bytes,
        write: bool,
        endpoint: str | None,
        deadline: float,
        *,
        stream: bool = False,
    ) -> tuple[urllib3.BaseHTTPResponse, str]:
        """Send with the current token; when etcd says it expired, renew it and try
        once more."""
        for attempt in range(2):
            token = self._token_for(deadline)
            try:
                return self._attempts(
                    path, payload, write, endpoint, deadline, token, stream=stream
                )
            except status.TokenExpired as exc:
                if self.username is None:
                    raise _auth_required(exc) from None
                if attempt:
                    raise
                self._renew_token(token, deadline)
        raise AssertionError("unreachable")

    def _token_for(self, deadline: float) -> str | None:
        if self.username is None or self._token is not None:
            return self._token
        self._renew_token(None, deadline)
        return self._token

    def _renew_token(self, stale: str | None, deadline: float) -> None:
        with self._auth_lock:
            if self._token != stale:  # another greenlet renewed it meanwhile
                return
            body = {"name": self.username, "password": self._password}
            payload = json.dumps(body).encode()
            try:
                response, target = self._attempts(
                    "/v3/auth/authenticate", payload, False, None, deadline, None
                )
            except (status.TokenExpired, errors.AuthenticationFailed) as exc:
                raise errors.AuthenticationFailed(
                    f"etcd rejected the credentials of user {self.username!r}: {exc.message}",
                    code=exc.code,
                    endpoint=exc.endpoint,
                ) from None
            answer = _decode_answer(bytes(response.data), target)
            token = answer.get("token")
            if not isinstance(token, str) or not token:
                raise errors.ProtocolError("etcd's authenticate answer carries no token")
            self._token = token
            log.debug("authenticated to etcd as %r", self.username)

    # --- attempts --------------------------------------------------------------------

    def _attempts(
        self,
        path: str,
        payload: bytes,
        write: bool,
        endpoint: str | None,
        deadline: float,
        token: str | None,
        *,
        stream: bool = False,
    ) -> tuple[urllib3.BaseHTTPResponse, str]:
        """Try ``path`` on one endpoint after another until it succeeds, fails for
        good, or the deadline passes; return the response and its endpoint."""
        self._check_open()
        headers = HEADERS if token is None else {**HEADERS, "Authorization": token}
        tried = 0
        refusals = 0  # consecutive attempts whose connection was refused
        backoff = BACKOFF_FIRST
        while True:
            target = endpoint or self.current_endpoint
            try:
                response = self._attempt(target, path, payload, headers, write, deadline, stream)
                return response, target
            except _Retryable as failure:
                error = failure.error
                refusals = refusals + 1 if failure.refused else 0
            except errors.IndeterminateWrite:
                if endpoint is None:
                    self.mark_failed(target)  # the next call tries another endpoint
                raise
            tried += 1
            if endpoint is None:
                self.mark_failed(target)
            remaining = deadline - time.monotonic()
            if endpoint is not None or remaining <= 0:
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

    def _attempt(
        self,
        target: str,
        path: str,
        payload: bytes,
        headers: dict[str, str],
        write: bool,
        deadline: float,
        stream: bool,
    ) -> urllib3.BaseHTTPResponse:
        remaining = max(0.001, deadline - time.monotonic())
        self.requests += 1
        if not write and len(self.endpoints) > 1:
            # one silent member (paused, blackholed) must not eat a read's or a stream's
            # whole deadline: leave it for the next endpoint after half of it
            remaining = min(remaining, max(self.timeout / 2, self.connect_timeout))
        # urllib3's timeouts bound each socket operation; this bounds a trickled answer
        timer = gevent.Timeout.start_new(remaining + DEADLINE_GRACE)
        try:
            response = self._pool(target, stream=stream or path in PRIORITY_PATHS).urlopen(
                "POST",
                path,
                body=payload,
                headers=headers,
                timeout=self._timeouts(remaining, stream=stream),
                retries=False,
                redirect=False,
                preload_content=False,
                pool_timeout=remaining,  # type: ignore[arg-type]  # a float works (queue.get)
            )
            if not stream or response.status != 200:
                _read_body(response, self.max_response_bytes, target)
        except EmptyPoolError:
            raise errors.Timeout(
                f"no free connection within the deadline (all {self._pool_options['maxsize']} "
                "of pool_size are busy)",
                endpoint=target,
            ) from None
        except (HTTPError, OSError, gevent.Timeout) as exc:
            if isinstance(exc, gevent.Timeout) and exc is not timer:
                raise
            error = _transport_error(exc, target, write)
            if isinstance(exc, SSLError) or isinstance(error, errors.IndeterminateWrite):
                raise error from None  # a TLS set-up error is not cured by another try
            refused = isinstance(exc, NewConnectionError) and "refused" in str(exc)
            raise _Retryable(error, refused=refused) from None
        finally:
            timer.close()
        if response.status == 200:
            return response
        data = response.data
        response.release_conn()
        error = status.error_from_response(response.status, data, target)
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

    def _pool(self, endpoint: str, *, stream: bool = False) -> urllib3.HTTPConnectionPool:
        """The keep-alive connection pool of ``endpoint`` for requests (blocking when
        every connection is busy) or for watch streams and the requests that must not
        queue behind bulk traffic (never blocking)."""
        pools = self._stream_pools if stream else self._pools
        pool = pools.get(endpoint)
        if pool is None:
            url = urllib3.util.parse_url(endpoint)
            secure = url.scheme == "https"
            options = dict(self._pool_options)
            if stream:
                options["socket_options"] = self._stream_socket_options
            pool_class = _HTTPSPool if secure else _HTTPPool
            port = url.port or (443 if secure else 80)
            pool = pool_class(url.host or "", port, block=not stream, **options)
            pools[endpoint] = pool
        return pool

    def _timeouts(self, remaining: float, *, stream: bool = False) -> urllib3.Timeout:
        connect = max(0.001, min(self.connect_timeout, remaining))
        return urllib3.Timeout(connect=connect, read=None if stream else max(0.001, remaining))

    def _check_open(self) -> None:
        if self._closed:
            raise errors.ClientClosed("the etcd client is closed")
        if os.getpid() != self._pid:
            raise errors.ForkedProcess(
                f"this etcd client was created in process {self._pid} before a fork; "
                "sockets must not be shared across processes: create a new client or "
                "connector in this process (in gunicorn, in the post_fork hook)"
            )


def _auth_required(exc: errors.EtcdError) -> errors.AuthenticationFailed:
    return errors.AuthenticationFailed(
        f"etcd requires authentication ({exc.message}); pass username= and password=",
        code=exc.code,
        endpoint=exc.endpoint,
    )


def _transport_error(exc: BaseException, target: str, write: bool) -> errors.EtcdError:
    """The geventc error for a urllib3/socket failure of one attempt."""
    if isinstance(exc, SSLError):
        return errors.ConnectionFailed(
            f"TLS verification or handshake failed: {exc}", endpoint=target
        )
    if isinstance(exc, NewConnectionError):
        return errors.ConnectionFailed(f"cannot connect: {_reason(exc)}", endpoint=target)
    if isinstance(exc, ConnectTimeoutError):
        return errors.ConnectionFailed("connection attempt timed out", endpoint=target)
    if write:
        return errors.IndeterminateWrite(
            f"the write was sent but no answer came ({_reason(exc)}); "
            "it may or may not have been applied",
            endpoint=target,
        )
    if isinstance(exc, ReadTimeoutError | TimeoutError | gevent.Timeout):
        return errors.Timeout("no answer within the deadline", endpoint=target)
    # a TLS-only member answers plain http with a 400 and closes, which may arrive as a
    # reset or an empty answer instead: say what probably went wrong
    dropped = "without response" in str(exc) or "reset by peer" in str(exc)
    if dropped and target.startswith("http://"):
        return errors.ConnectionFailed(
            "the server closed the connection without an answer; if the cluster serves "
            "TLS, use https:// endpoints and a TLSConfig",
            endpoint=target,
        )
    return errors.ConnectionFailed(f"connection lost: {_reason(exc)}", endpoint=target)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, gevent.Timeout):
        return f"the answer was not complete after {exc.seconds:.2f}s"
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    return text.split(": ", 1)[-1] if ": " in text else text or type(exc).__name__


def _decode_answer(data: bytes, endpoint: str) -> JSON:
    """Decode a 200 answer; a streamed answer (keep-alive) is its first ``result``."""
    try:
        text = data.decode("utf-8")
        first = text.lstrip().split("\n", 1)[0] if text.lstrip().startswith('{"result"') else text
        decoded = json.loads(first) if first.strip() else {}
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


def _read_body(response: urllib3.BaseHTTPResponse, limit: int, endpoint: str) -> bytes:
    """Read a whole answer (then also ``response.data``), refusing one over ``limit``."""
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) <= limit:
        data = response.read(cache_content=True)  # the usual case: one read
        response.release_conn()
        return data
    chunks: list[bytes] = []  # chunked or announced too large: read and count
    size = 0
    while chunk := response.read(65536):
        size += len(chunk)
        if size > limit:
            response.close()  # the rest is never read: the connection cannot be reused
            response.release_conn()
            raise errors.ProtocolError(
                f"etcd's answer is larger than {limit} bytes (Transport.max_response_bytes)",
                endpoint=endpoint,
            )
        chunks.append(chunk)
    data = b"".join(chunks)
    response._body = data  # type: ignore[attr-defined]  # what response.data returns
    response.release_conn()
    return data

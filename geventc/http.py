"""HTTP to etcd's gateway: keep-alive pools per endpoint, TLS, bounded answers, streams.

The only module that touches urllib3. :meth:`HTTPPools.request` returns an
:class:`Answer` (status and the whole body as bytes, never more than the caller's
limit); :meth:`HTTPPools.open_stream` returns an :class:`HTTPStream` whose lines are
read as they come. Every urllib3 or socket failure of an exchange becomes a geventc
error here, carried by :class:`ExchangeFailed` with what a caller needs to decide
whether trying again (elsewhere) can help.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import gevent
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

from . import errors

#: How long after an exchange's timeout an answer still trickling in is cut off.
DEADLINE_GRACE = 0.05
_READ_SIZE = 65536


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


class Answer(NamedTuple):
    """A whole HTTP answer: its status and body."""

    status: int
    body: bytes


class ExchangeFailed(Exception):
    """One HTTP exchange failed before its whole answer arrived.

    ``error`` is the geventc error to report; ``refused`` says the connection was
    refused (the request certainly never arrived); ``retryable`` is False when another
    try cannot help or must not be made: a TLS set-up failure, no free pooled
    connection within the timeout, or a write that was sent (an IndeterminateWrite).
    """

    def __init__(
        self, error: errors.EtcdError, *, refused: bool = False, retryable: bool = True
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.refused = refused
        self.retryable = retryable


class StreamBroken(Exception):
    """Reading a stream failed (reset, cut, a socket error); its text is the cause's."""


class HTTPStream:
    """A streaming answer (status 200) read as it arrives, on a connection of its own.

    Reads block until data comes (no read timeout: a stream may be idle for long);
    :meth:`interrupt` from another greenlet ends a read in progress, :meth:`close`
    gives the connection up for good. Neither ever raises.
    """

    def __init__(self, response: urllib3.BaseHTTPResponse, endpoint: str) -> None:
        self._response: urllib3.BaseHTTPResponse | None = response
        self._buffer = bytearray()
        #: the endpoint that answered
        self.endpoint = endpoint

    def __repr__(self) -> str:
        state = "open" if self._response is not None else "closed"
        return f"HTTPStream({self.endpoint!r}, {state})"

    def read_chunk(self) -> bytes:
        """The next bytes the server sent, as soon as there are any; ``b""`` once the
        stream ended (or was closed). Raises :class:`StreamBroken`."""
        response = self._response
        if response is None:
            return b""
        try:
            return response.read1(_READ_SIZE)
        except (HTTPError, OSError) as exc:
            raise StreamBroken(str(exc)) from None

    def read_line(self, limit: int) -> bytes:
        """The next line that is not blank, without its newline; ``b""`` once the stream
        ended. A line longer than ``limit`` bytes raises :class:`ProtocolError`;
        a broken connection :class:`StreamBroken`."""
        while True:
            end = self._buffer.find(b"\n")
            while end < 0:
                chunk = self.read_chunk()
                if not chunk:
                    return b""
                self._buffer += chunk
                if len(self._buffer) > limit:
                    raise errors.ProtocolError(
                        f"a streamed message is larger than {limit} bytes "
                        "(Transport.max_response_bytes)",
                        endpoint=self.endpoint,
                    )
                end = self._buffer.find(b"\n")
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if line.strip():
                return line

    def interrupt(self) -> None:
        """End a read in progress (in another greenlet): it sees the end of the stream."""
        if self._response is not None:
            with contextlib.suppress(ValueError, RuntimeError, OSError):
                self._response.shutdown()

    def close(self) -> None:
        """Give up the stream and its connection (idempotent)."""
        self.interrupt()
        response, self._response = self._response, None
        if response is None:
            return
        with contextlib.suppress(OSError, HTTPError):
            response.close()
            response.release_conn()


class HTTPPools:
    """Keep-alive connection pools, one pair per endpoint.

    Requests share at most ``pool_size`` connections per endpoint: a caller waits for a
    free one, within its timeout. Streams hold their connection for their whole life
    and priority requests must not queue behind bulk traffic, so both come from a
    second pool that never blocks; its sockets send TCP keep-alive probes after
    ``keepalive_time`` idle seconds.
    """

    def __init__(
        self,
        *,
        tls: TLSConfig | None,
        pool_size: int,
        connect_timeout: float,
        keepalive_time: float,
    ) -> None:
        options = tls.pool_options() if tls is not None else {}
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self._options = {"maxsize": pool_size, **options}
        self._stream_socket_options = stream_socket_options(keepalive_time)
        self._pools: dict[str, urllib3.HTTPConnectionPool] = {}
        self._stream_pools: dict[str, urllib3.HTTPConnectionPool] = {}

    def close(self) -> None:
        """Close every pooled connection (pools are made again on the next use)."""
        pools = [*self._pools.values(), *self._stream_pools.values()]
        self._pools, self._stream_pools = {}, {}
        for pool in pools:
            pool.close()

    def request(
        self,
        endpoint: str,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str],
        timeout: float,
        limit: int,
        write: bool = False,
        priority: bool = False,
    ) -> Answer:
        """Send one request and read its whole answer, all within ``timeout`` seconds
        (plus a small grace for an answer trickling in).

        An answer over ``limit`` bytes raises :class:`ProtocolError` unread; a failed
        exchange raises :class:`ExchangeFailed` (for a ``write``, one that may have
        reached the server carries an :class:`IndeterminateWrite`). ``priority`` takes
        a connection from the pool that never blocks.
        """
        with self._bounded(endpoint, timeout, write):
            response = self._open(
                endpoint, method, path, body, headers, timeout, stream=False, priority=priority
            )
            return Answer(response.status, _read_body(response, limit, endpoint))

    def open_stream(
        self,
        endpoint: str,
        path: str,
        *,
        body: bytes,
        headers: dict[str, str],
        timeout: float,
        limit: int,
    ) -> HTTPStream | Answer:
        """POST ``body`` to a streaming ``path``: the unread :class:`HTTPStream` when the
        server answered 200, else its whole answer. ``timeout`` bounds getting that far;
        failures raise as for :meth:`request`."""
        with self._bounded(endpoint, timeout, write=False):
            response = self._open(endpoint, "POST", path, body, headers, timeout, stream=True)
            if response.status == 200:
                return HTTPStream(response, endpoint)
            return Answer(response.status, _read_body(response, limit, endpoint))

    # --- internals -------------------------------------------------------------------

    @contextlib.contextmanager
    def _bounded(self, endpoint: str, timeout: float, write: bool) -> Iterator[None]:
        """Bound the exchange inside to ``timeout`` (urllib3's timeouts bound each socket
        operation; this bounds a trickled answer) and map its failures."""
        timer = gevent.Timeout.start_new(timeout + DEADLINE_GRACE)
        try:
            yield
        except EmptyPoolError:
            busy = errors.Timeout(
                f"no free connection within the deadline (all {self.pool_size} "
                "of pool_size are busy)",
                endpoint=endpoint,
            )
            raise ExchangeFailed(busy, retryable=False) from None
        except (HTTPError, OSError, gevent.Timeout) as exc:
            if isinstance(exc, gevent.Timeout) and exc is not timer:
                raise
            error = _exchange_error(exc, endpoint, write)
            # a TLS set-up error is not cured by another try; a sent write must not be repeated
            final = isinstance(exc, SSLError) or isinstance(error, errors.IndeterminateWrite)
            refused = isinstance(exc, NewConnectionError) and "refused" in str(exc)
            raise ExchangeFailed(error, refused=refused, retryable=not final) from None
        finally:
            timer.close()

    def _open(
        self,
        endpoint: str,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        timeout: float,
        *,
        stream: bool,
        priority: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        """Send the request and read the answer's head (the body is left unread)."""
        connect = max(0.001, min(self.connect_timeout, timeout))
        read = None if stream else max(0.001, timeout)
        return self._pool(endpoint, stream=stream or priority).urlopen(
            method,
            path,
            body=body,
            headers=headers,
            timeout=urllib3.Timeout(connect=connect, read=read),
            retries=False,
            redirect=False,
            preload_content=False,
            pool_timeout=timeout,  # type: ignore[arg-type]  # a float works (queue.get)
        )

    def _pool(self, endpoint: str, *, stream: bool) -> urllib3.HTTPConnectionPool:
        """The request pool of ``endpoint`` (blocking when every connection is busy) or
        its stream pool (never blocking)."""
        pools = self._stream_pools if stream else self._pools
        pool = pools.get(endpoint)
        if pool is None:
            url = urllib3.util.parse_url(endpoint)
            secure = url.scheme == "https"
            options = dict(self._options)
            if stream:
                options["socket_options"] = self._stream_socket_options
            pool_class = _HTTPSPool if secure else _HTTPPool
            port = url.port or (443 if secure else 80)
            pool = pool_class(url.host or "", port, block=not stream, **options)
            pools[endpoint] = pool
        return pool


def _read_body(response: urllib3.BaseHTTPResponse, limit: int, endpoint: str) -> bytes:
    """Read a whole answer and give its connection back, refusing one over ``limit``."""
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) <= limit:
        data = response.read()  # the usual case: one read
        response.release_conn()
        return data
    chunks: list[bytes] = []  # chunked or announced too large: read and count
    size = 0
    while chunk := response.read(_READ_SIZE):
        size += len(chunk)
        if size > limit:
            response.close()  # the rest is never read: the connection cannot be reused
            response.release_conn()
            raise errors.ProtocolError(
                f"etcd's answer is larger than {limit} bytes (Transport.max_response_bytes)",
                endpoint=endpoint,
            )
        chunks.append(chunk)
    response.release_conn()
    return b"".join(chunks)


def _exchange_error(exc: BaseException, target: str, write: bool) -> errors.EtcdError:
    """The geventc error for a urllib3/socket failure of one exchange."""
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

"""HTTP to etcd's gateway: keep-alive pools per endpoint, TLS, bounded answers, streams.

The only module that touches urllib3. :meth:`HTTPPools.request` returns an
:class:`Answer` (status and the whole body as bytes, never more than the caller's
limit); :meth:`HTTPPools.open_stream` returns an :class:`HTTPStream` whose lines are
read as they come. Every urllib3 or socket failure of an exchange becomes a geventc
error here, carried by :class:`ExchangeFailed` with what a caller needs to decide
whether trying again (elsewhere) can help.

Connections are urllib3's ``HTTPConnection``/``HTTPSConnection`` (socket options,
connect timeouts, TLS and certificate checks), kept by this module's own small pools
(:class:`_Pool`) instead of ``HTTPConnectionPool.urlopen()``, whose per-request Retry
and Timeout objects, queue and ``select.poll`` cost more CPU than a small etcd
exchange itself. A unary request (:meth:`HTTPPools.request`) takes one of two engines:

* with `httptools <https://github.com/MagicStack/httptools>`_ installed (MagicStack's
  binding of llhttp, Node.js's HTTP parser, maintained and used by uvicorn), the
  request (its head made once per endpoint, path and headers, then Content-Length and
  body) goes out in one write, the greenlet waits in the hub until the socket is
  readable (a plain socket; gevent's ``recv`` would first try and fail once), and
  httptools parses the answer. For a small answer this costs a fraction of urllib3's
  ``getresponse()``, which runs http.client's email-based header parser and builds an
  ``HTTPHeaderDict`` and an ``HTTPResponse``;
* without it, urllib3's own ``HTTPConnection.request()`` and ``getresponse()``, the
  head and body also sent in one write (so etcd wakes once per request, not twice).

A watch stream (:meth:`HTTPPools.open_stream`) takes the same engine: with httptools its
head and then its chunked body, as data comes, are parsed from the socket's bytes;
without, urllib3's response reads it. Both engines give the same errors for the same
failures.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import select
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.client import HTTPException, IncompleteRead, RemoteDisconnected
from typing import Any, NamedTuple

import gevent
import gevent.lock
import gevent.monkey
import urllib3
import urllib3.util.ssl_ as urllib3_ssl
from gevent import get_hub, getcurrent
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.util import SKIP_HEADER, parse_url

from . import errors

log = logging.getLogger("geventc")

#: How long after an exchange's timeout an answer still trickling in is cut off.
DEADLINE_GRACE = 0.05
_READ_SIZE = 65536
#: Bytes a stream read with httptools receives at most per read (as http.client's
#: buffered reader of a urllib3 stream; one per stream, which lives long).
_STREAM_READ_SIZE = 8192
#: Headers every request carries: no User-Agent (etcd ignores it), identity encoding
#: (the body is read as is, never decoded).
BASE_HEADERS: Mapping[str, str] = {"User-Agent": SKIP_HEADER, "Accept-Encoding": "identity"}
#: Bytes of an answer's head (status line and headers) read at most.
HEAD_LIMIT = 65536

try:  # a maintained C parser (llhttp) for whole answers, when it is installed
    ANSWER_PARSER: Any = importlib.import_module("httptools")
except ImportError:  # pragma: no cover - depends on the installation
    ANSWER_PARSER = None


class DeadlinePassed(BaseException):
    """Thrown into a greenlet whose exchange outlived its deadline (a BaseException,
    like ``gevent.Timeout``, so no ``except Exception`` in between swallows it)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the answer was not complete after {seconds:.2f}s")
        self.seconds = seconds


#: Failures of one exchange that become geventc errors (ssl.SSLError is an OSError).
_EXCHANGE_FAILURES: tuple[type[BaseException], ...] = (
    HTTPError,
    HTTPException,
    OSError,
    DeadlinePassed,
    *((ANSWER_PARSER.HttpParserError,) if ANSWER_PARSER is not None else ()),
)
try:  # the unpatched poll: a drop check never blocks, so it needs no trip to the hub
    _poll: Any = gevent.monkey.get_original("select", "poll")
except AttributeError:  # pragma: no cover - a platform without poll
    _poll = None


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


class _Connection(HTTPConnection):
    """urllib3's connection, sending a request's head and its body in one write.

    urllib3 writes the head, then the body: two small segments, and the server wakes
    (and parses) twice. The head is held back here until the body follows.
    """

    _holding = False
    _held: bytes | None = None
    _answer_buffer: bytearray | None = None  # (http.client has its own ``_buffer``)
    #: whether :meth:`wait_readable` may wait on the socket's descriptor (not for TLS:
    #: the TLS layer may hold decrypted bytes the descriptor does not show)
    _waits_on_descriptor = True
    #: the socket :meth:`wait_readable` watches, its hub and its read watcher
    _watched: tuple[Any, Any, Any] | None = None
    #: the socket :func:`_dropped` checks and the poll object registered for it
    _polled: tuple[Any, Any] | None = None

    def poller(self, sock: Any) -> Any:
        """An unpatched ``select.poll`` object with ``sock`` registered for reading
        (made once per socket: the drop check before each request only polls);
        ``ValueError`` when ``sock`` is closed."""
        if sock.fileno() < 0:  # closed under us: as register() would, refuse it
            raise ValueError("the socket is closed")
        polled = self._polled
        if polled is None or polled[0] is not sock:
            poller = _poll()
            poller.register(sock, select.POLLIN)
            polled = self._polled = (sock, poller)
        return polled[1]

    def receive_buffer(self) -> bytearray:
        """This connection's buffer for answers read with httptools (made once: a new
        64 KiB block per read had the allocator hand memory back to the kernel and
        take it again, in system calls)."""
        if self._answer_buffer is None:
            self._answer_buffer = bytearray(_READ_SIZE)
        return self._answer_buffer

    def wait_readable(self, sock: Any) -> None:
        """Wait (in the hub) until ``sock``, this connection's connected socket, has
        something to read; return at once for a TLS connection.

        A request's answer is never there the instant it was sent, so waiting first
        spares gevent's ``recv`` its failed non-blocking try (a system call and an
        exception) before it waits the same way. The watcher is made once per socket;
        the exchange's timer (or a kill) interrupts the wait and stops it."""
        if not self._waits_on_descriptor:
            return
        watched = self._watched
        if watched is None or watched[0] is not sock:
            hub = get_hub()
            watched = self._watched = (sock, hub, hub.loop.io(sock.fileno(), 1))
        watched[1].wait(watched[2])

    def close(self) -> None:
        """Close the connection (and forget the watcher of its socket)."""
        self._watched = self._polled = None
        super().close()

    def request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        chunked: bool = False,
        preload_content: bool = True,
        decode_content: bool = True,
        enforce_content_length: bool = True,
    ) -> None:
        """As urllib3's, with the head and a ``bytes`` body sent together."""
        self._holding = bool(body) and isinstance(body, bytes) and not chunked
        try:
            super().request(
                method,
                url,
                body,
                headers,
                chunked=chunked,
                preload_content=preload_content,
                decode_content=decode_content,
                enforce_content_length=enforce_content_length,
            )
        finally:
            self._holding = False
            held, self._held = self._held, None
        if held is not None:  # no body came after the head: send the head alone
            super().send(held)

    def send(self, data: Any) -> None:
        """Send ``data``; the head of a request with a body waits for the body."""
        if self._holding:
            if self._held is None:
                self._held = bytes(data)
                return
            data, self._held, self._holding = self._held + bytes(data), None, False
        super().send(data)


class _TLSConnection(_Connection, HTTPSConnection):
    """urllib3's https connection with the one-write requests of :class:`_Connection`."""

    _waits_on_descriptor = False


def _dropped(conn: HTTPConnection) -> bool:
    """True when an idle kept-alive connection is closed or has unexpected data (the
    server closed it, or spoke out of turn): it must not carry a request."""
    sock = conn.sock
    if sock is None:
        return True
    if _poll is None:  # pragma: no cover - every platform geventc runs on has poll
        return not conn.is_connected
    try:
        if isinstance(conn, _Connection):
            return bool(conn.poller(sock).poll(0))
        poller = _poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def _expire(greenlet: Any, seconds: float) -> None:
    greenlet.throw(DeadlinePassed(seconds))


def _deadline(seconds: float) -> Any:
    """A started timer that throws :class:`DeadlinePassed` into this greenlet after
    ``seconds``; ``close()`` it when done. (A bare loop timer: ``gevent.Timeout`` does
    the same with more work per request.)"""
    timer = get_hub().loop.timer(seconds)
    timer.start(_expire, getcurrent(), seconds)
    return timer


class _Pool:
    """The kept-alive connections to one endpoint.

    A blocking pool lends at most ``size`` connections at a time (a caller waits for a
    free one within its timeout); a non-blocking one lends as many as asked for. Each
    keeps at most ``size`` idle connections, the most recently used first. Every
    connection lent is given back exactly once (:meth:`give_back`), reusable or not,
    also when its caller was interrupted: an interrupted wait takes no slot.
    """

    def __init__(self, make: Callable[[], _Connection], size: int, *, blocking: bool) -> None:
        self._make = make
        self._size = size
        self._idle: list[_Connection] = []
        self._slots = gevent.lock.BoundedSemaphore(size) if blocking else None
        self._closed = False

    def take(self, timeout: float) -> _Connection | None:
        """A connection (idle, or new and not yet connected); None when no slot came
        free within ``timeout`` seconds."""
        if self._slots is not None and not self._slots.acquire(timeout=timeout):
            return None
        try:
            while self._idle:
                conn = self._idle.pop()
                if not _dropped(conn):
                    return conn
                conn.close()
            conn = self._make()
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise
        return conn

    def give_back(self, conn: _Connection, reusable: bool) -> None:
        """Return a lent connection; one that is not ``reusable`` is closed."""
        if reusable and not self._closed and len(self._idle) < self._size:
            self._idle.append(conn)
        else:
            conn.close()
        if self._slots is not None:
            self._slots.release()

    def close(self) -> None:
        """Close the idle connections; connections given back later are closed too."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


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

    The body is read by one of two engines, as unary answers are: with httptools the
    stream's own socket is read and its bytes fed to the parser that read the head
    (:class:`_StreamReader`), which hands the de-chunked body straight to the line
    buffer; without it (``response`` given), urllib3's response (http.client's chunked
    reading). Both give the same lines, ends and errors: ``b""`` once the server ended
    the body (or the stream was interrupted or closed), :class:`StreamBroken` when the
    connection broke or the body is not valid HTTP.
    """

    def __init__(
        self,
        response: urllib3.BaseHTTPResponse | None,
        endpoint: str,
        connection: HTTPConnection | None = None,
        sock: Any = None,
        *,
        parsed: _StreamReader | None = None,
    ) -> None:
        self._response: urllib3.BaseHTTPResponse | None = response
        #: the connection the stream owns (closed with it) and its socket, taken before
        #: the answer came (http.client forgets it when the answer says "close")
        self._connection = connection
        self._sock = sock
        #: httptools' state of this stream's answer (None with urllib3's response)
        self._parsed = parsed
        self._buffer = parsed.buffer if parsed is not None else bytearray()
        self._open = response is not None or parsed is not None
        self._interrupted = False
        #: the greenlet reading now (a close() from another one leaves the connection to
        #: it: its read must end before the response and the socket close)
        self._reader: Any = None
        #: the endpoint that answered
        self.endpoint = endpoint

    def __repr__(self) -> str:
        state = "open" if self._open else "closed"
        return f"HTTPStream({self.endpoint!r}, {state})"

    def read_chunk(self) -> bytes:
        """The next bytes the server sent, as soon as there are any; ``b""`` once the
        stream ended (or was closed). Raises :class:`StreamBroken`."""
        if self._parsed is None:
            response = self._response
            if response is None or not self._open:
                return b""
            self._reader = getcurrent()
            try:
                return response.read1(_READ_SIZE)
            except (HTTPError, OSError) as exc:
                raise StreamBroken(str(exc)) from None
            finally:
                self._reader = None
                if self._closed():  # closed from another greenlet while this one read
                    self._release()
        if not self._buffer and not self._fill():
            return b""
        chunk = bytes(self._buffer)
        self._buffer.clear()
        return chunk

    def read_line(self, limit: int) -> bytes:
        """The next line that is not blank, without its newline; ``b""`` once the stream
        ended. A line longer than ``limit`` bytes raises :class:`ProtocolError`;
        a broken connection :class:`StreamBroken`."""
        buffer = self._buffer
        parsed = self._parsed is not None
        while True:
            end = buffer.find(b"\n")
            while end < 0:
                searched = len(buffer)
                if parsed:
                    if not self._fill():
                        return b""
                else:
                    chunk = self.read_chunk()
                    if not chunk:
                        return b""
                    buffer += chunk
                if len(buffer) > limit:
                    raise errors.ProtocolError(
                        f"a streamed message is larger than {limit} bytes "
                        "(Transport.max_response_bytes)",
                        endpoint=self.endpoint,
                    )
                end = buffer.find(b"\n", searched)
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if line.strip():
                return line

    def _fill(self) -> bool:
        """Read from the socket until the parser added body bytes to the buffer: True,
        or False at the end of the stream (its body complete, or the stream
        interrupted or closed). Raises :class:`StreamBroken`."""
        parsed, sock = self._parsed, self._sock
        if parsed is None:
            return False
        receive = parsed.receive
        buffer = self._buffer
        before = len(buffer)
        connection = self._connection if isinstance(self._connection, _Connection) else None
        waits = connection
        self._reader = getcurrent()
        try:
            while len(buffer) == before:
                if parsed.complete or self._stopped():
                    return False
                if parsed.broken is not None:
                    raise StreamBroken(parsed.broken)
                try:
                    if waits:
                        # the last read emptied the socket: wait until it has more (the
                        # interrupt's shutdown wakes this too), sparing gevent's recv its
                        # failed try first (a system call and an exception per message)
                        waits.wait_readable(sock)
                    count = sock.recv_into(receive)
                except (OSError, ValueError) as exc:  # ValueError: TLS shut down
                    if self._stopped():
                        return False
                    raise StreamBroken(str(exc) or type(exc).__name__) from None
                if not count:
                    if self._stopped():
                        return False
                    raise StreamBroken("etcd closed the connection in the middle of the stream")
                waits = connection if count < len(receive) else None
                try:
                    parsed.parser.feed_data(memoryview(receive)[:count])
                except parsed.failure as exc:
                    if not parsed.complete:  # (the body bytes before the error are kept)
                        parsed.broken = f"the stream is not valid HTTP: {exc}"
            return True
        finally:
            self._reader = None
            if not self._open:  # closed from another greenlet while this one read
                self._release()

    def _closed(self) -> bool:
        """The stream was closed."""
        return not self._open

    def _stopped(self) -> bool:
        """The stream was interrupted or closed (its reads end)."""
        return self._interrupted or not self._open

    def interrupt(self) -> None:
        """End a read in progress (in another greenlet): it sees the end of the stream."""
        if not self._open:
            return
        self._interrupted = True
        with contextlib.suppress(ValueError, RuntimeError, OSError):
            if self._sock is not None:
                self._sock.shutdown(socket.SHUT_RD)
            elif self._response is not None:  # a response from urllib3's pool knows its socket
                self._response.shutdown()

    def close(self) -> None:
        """Give up the stream and its connection (idempotent)."""
        if not self._open:
            return
        self.interrupt()
        self._open = False
        if self._reader is None or self._reader is getcurrent():
            self._release()
        # else the reading greenlet, woken by the interrupt, releases the connection (a
        # response or socket closed under a read would fail it, or leave it waiting)

    def _release(self) -> None:
        """Close the response and the connection, and let go of the parser."""
        response, self._response = self._response, None
        if response is not None:
            with contextlib.suppress(OSError, HTTPError):
                response.close()
                response.release_conn()
        if self._parsed is not None:
            self._parsed.parser = None  # (the parser refers to its reader)
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(OSError):
                connection.close()


class _StreamReader:
    """What httptools found of a stream's answer (its callbacks): the head, then the
    body, de-chunked, appended to ``buffer`` (the stream's line buffer, or the whole
    body of an answer that is not 200)."""

    __slots__ = ("broken", "buffer", "complete", "failure", "headed", "parser", "receive")

    def __init__(self, failure: type[Exception]) -> None:
        self.buffer = bytearray()
        #: the stream's receive buffer (one per stream)
        self.receive = bytearray(_STREAM_READ_SIZE)
        self.headed = False
        self.complete = False
        #: why the body cannot be read on (it was not valid HTTP), once it cannot
        self.broken: str | None = None
        #: the parser's error (httptools' ``HttpParserError``)
        self.failure = failure
        self.parser: Any = None  # set once made (it is made with this reader)

    def finished(self) -> bool:
        """The whole answer was read."""
        return self.complete

    def has_head(self) -> bool:
        """The head of the answer (not an informational one) was read."""
        return self.headed

    def on_headers_complete(self) -> None:
        self.headed = True

    def on_body(self, data: bytes) -> None:
        self.buffer += data

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200:  # informational (1xx): the answer follows
            self.headed = False
            return
        self.complete = True


def _open_parsed(
    parser: Any, conn: _Connection, head: bytes, body: bytes, limit: int, endpoint: str
) -> _StreamReader | Answer:
    """Send a stream's request on the connected ``conn`` and read its answer's head with
    httptools: the reader of the stream when it is 200 (the body is left to the
    stream), else the whole answer. The caller's timer bounds this."""
    sock = conn.sock
    assert sock is not None  # connected by the caller
    sock.settimeout(None)  # a stream has no read timeout; the caller's timer bounds the head
    sock.sendall(_request_bytes(head, body))
    reader = _StreamReader(parser.HttpParserError)
    answer = reader.parser = parser.HttpResponseParser(reader)
    buffer = reader.receive
    view = memoryview(buffer)
    received = 0
    try:
        while not reader.headed:
            count = sock.recv_into(buffer)
            if not count:
                if received == 0:
                    raise RemoteDisconnected("Remote end closed connection without response")
                raise IncompleteRead(bytes(reader.buffer))
            received += count
            try:
                answer.feed_data(view[:count])
            except parser.HttpParserError as exc:
                if not reader.has_head() or answer.get_status_code() != 200:
                    raise
                # the body went wrong after a 200 head: the stream's reads say so
                reader.broken = f"the stream is not valid HTTP: {exc}"
            if not reader.has_head() and received > HEAD_LIMIT:
                raise errors.ProtocolError(
                    f"etcd's answer has a head larger than {HEAD_LIMIT} bytes", endpoint=endpoint
                )
        status = int(answer.get_status_code())
        if status == 200:
            return reader
        while not reader.complete:  # the whole answer, within ``limit``
            if len(reader.buffer) > limit or received > limit + HEAD_LIMIT:
                raise errors.ProtocolError(
                    f"etcd's answer is larger than {limit} bytes (Transport.max_response_bytes)",
                    endpoint=endpoint,
                )
            count = sock.recv_into(buffer)
            if not count:
                raise IncompleteRead(bytes(reader.buffer))
            received += count
            answer.feed_data(view[:count])
        reader.parser = None
        return Answer(status, bytes(reader.buffer))
    except BaseException:
        reader.parser = None
        raise


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
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        #: the parser of unary answers (httptools, when installed), else urllib3's own
        self.parser: Any = ANSWER_PARSER
        self._tls_options = tls.pool_options() if tls is not None else None
        self._stream_socket_options = stream_socket_options(keepalive_time)
        self._pools: dict[str, _Pool] = {}
        self._stream_pools: dict[str, _Pool] = {}
        self._heads: dict[tuple[str, str, str], tuple[Mapping[str, str], bytes]] = {}

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
        headers: Mapping[str, str],
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
        pool = (self._stream_pools if priority else self._pools).get(endpoint)
        if pool is None:
            pool = self._pool(endpoint, stream=priority)
        limit_seconds = timeout + DEADLINE_GRACE
        timer = get_hub().loop.timer(limit_seconds)  # as _deadline(), one call less
        timer.start(_expire, getcurrent(), limit_seconds)
        conn: _Connection | None = None
        reusable = sent = False
        try:
            conn = self._take(pool, endpoint, timeout)
            if conn.sock is None:
                self._connect(conn, endpoint, timeout)
            if self.parser is not None:
                known = self._heads.get((endpoint, method, path))
                if known is not None and known[0] is headers:
                    head = known[1]
                else:
                    head = self._head(endpoint, method, path, headers)
                sent = True
                answer, reusable = _exchange(self.parser, conn, head, body, limit, endpoint)
                return answer
            sent = True
            response = self._send(conn, method, path, body, headers, timeout)
            data = _read_body(response, limit, endpoint)
            reusable = conn.sock is not None and response.closed
            return Answer(response.status, data)
        except _EXCHANGE_FAILURES as exc:
            raise _failed(exc, endpoint, write and sent) from None
        finally:
            timer.close()
            if conn is not None:
                pool.give_back(conn, reusable)

    def open_stream(
        self,
        endpoint: str,
        path: str,
        *,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float,
        limit: int,
    ) -> HTTPStream | Answer:
        """POST ``body`` to a streaming ``path``: the unread :class:`HTTPStream` when the
        server answered 200, else its whole answer. ``timeout`` bounds getting that far;
        failures raise as for :meth:`request`."""
        pool = self._pool(endpoint, stream=True)
        timer = _deadline(timeout + DEADLINE_GRACE)
        conn: _Connection | None = None
        try:
            conn = self._take(pool, endpoint, timeout)
            self._connect(conn, endpoint, timeout)
            sock = conn.sock
            if self.parser is not None:
                head = self._head(endpoint, "POST", path, headers)
                opened = _open_parsed(self.parser, conn, head, body, limit, endpoint)
                if isinstance(opened, Answer):
                    return opened
                stream = HTTPStream(None, endpoint, conn, sock, parsed=opened)
                conn = None  # the stream owns it now
                return stream
            response = self._send(conn, "POST", path, body, headers, timeout, stream=True)
            if response.status == 200:
                stream = HTTPStream(response, endpoint, conn, sock)
                conn = None  # the stream owns it now
                return stream
            return Answer(response.status, _read_body(response, limit, endpoint))
        except _EXCHANGE_FAILURES as exc:
            raise _failed(exc, endpoint, False) from None
        finally:
            timer.close()
            if conn is not None:
                pool.give_back(conn, False)

    # --- internals -------------------------------------------------------------------

    def _head(self, endpoint: str, method: str, path: str, headers: Mapping[str, str]) -> bytes:
        """The head of a request, made once for each endpoint, path and headers object
        (callers reuse one headers object per token)."""
        key = (endpoint, method, path)
        known = self._heads.get(key)
        if known is not None and known[0] is headers:
            return known[1]
        head = _head(method, path, endpoint, headers)
        self._heads[key] = (headers, head)
        return head

    def _take(self, pool: _Pool, endpoint: str, timeout: float) -> _Connection:
        conn = pool.take(timeout)
        if conn is None:
            busy = errors.Timeout(
                f"no free connection within the deadline (all {self.pool_size} "
                "of pool_size are busy)",
                endpoint=endpoint,
            )
            raise ExchangeFailed(busy, retryable=False)
        return conn

    def _connect(self, conn: HTTPConnection, endpoint: str, timeout: float) -> None:
        """Connect ``conn`` unless it already is, within the connect timeout: a failure
        here means the request was never sent."""
        if conn.sock is None:
            log.debug("opening a connection to etcd at %s", endpoint)
            conn.timeout = max(0.001, min(self.connect_timeout, timeout))
            conn.connect()

    @staticmethod
    def _send(
        conn: HTTPConnection,
        method: str,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str],
        timeout: float,
        *,
        stream: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        """Send the request and read the answer's head (the body is left unread). Each
        socket operation may take ``timeout`` seconds; a stream's reads are unbounded
        (it may be idle for long; its head is bounded by the exchange's timer)."""
        conn.timeout = max(0.001, timeout)
        conn.request(
            method, path, body=body, headers=headers, preload_content=False, decode_content=False
        )
        if stream:
            conn.timeout = None
        return conn.getresponse()

    def _pool(self, endpoint: str, *, stream: bool) -> _Pool:
        """The request pool of ``endpoint`` (blocking when every connection is busy) or
        its stream pool (never blocking)."""
        pools = self._stream_pools if stream else self._pools
        pool = pools.get(endpoint)
        if pool is None:
            url = parse_url(endpoint)
            secure = url.scheme == "https"
            host = (url.host or "").strip("[]")
            port = url.port or (443 if secure else 80)
            options: dict[str, Any] = {}
            if stream:
                options["socket_options"] = self._stream_socket_options
            if secure:
                options.update(self._tls_options or {})

            def make() -> _Connection:
                kind = _TLSConnection if secure else _Connection
                return kind(host, port, **options)

            pool = _Pool(make, self.pool_size, blocking=not stream)
            pools[endpoint] = pool
        return pool


def _failed(exc: BaseException, endpoint: str, sent_write: bool) -> ExchangeFailed:
    """The :class:`ExchangeFailed` for a failure of one exchange (a caller's own
    ``gevent.Timeout`` is never caught: it goes on to the caller)."""
    error = _exchange_error(exc, endpoint, sent_write)
    # a TLS set-up error is not cured by another try; a sent write must not be repeated
    tls = isinstance(exc, SSLError | ssl.SSLError)
    final = tls or isinstance(error, errors.IndeterminateWrite)
    refused = isinstance(exc, NewConnectionError) and "refused" in str(exc)
    return ExchangeFailed(error, refused=refused, retryable=not final)


def _head(method: str, path: str, endpoint: str, headers: Mapping[str, str]) -> bytes:
    """The head of a request up to its Content-Length (as urllib3 would write it, less
    the headers it is told to skip)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {endpoint.partition('://')[2]}"]
    lines += [f"{name}: {value}" for name, value in headers.items() if value is not SKIP_HEADER]
    text = "\r\n".join(lines)
    breaks = len(lines) - 1
    if text.count("\n") != breaks or text.count("\r") != breaks or not text.isascii():
        raise errors.InvalidArgument(f"a header of the request to {path} is not valid HTTP")
    return (text + "\r\n").encode("ascii")


def _request_bytes(head: bytes, body: bytes | None) -> bytes:
    """The whole request: ``head``, its Content-Length and ``body``."""
    if body is None:
        return head + b"\r\n"
    return b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)


class _Reader:
    """What the parser found of one answer (its callbacks)."""

    __slots__ = ("body", "complete", "headed", "keep_alive", "messages", "parser", "size")

    def __init__(self) -> None:
        self.body: list[bytes] = []
        self.size = 0
        self.messages = 0
        self.headed = False
        self.complete = False
        self.keep_alive = False
        self.parser: Any = None  # set once made (it is made with this reader)

    def finished(self) -> bool:
        """The whole answer was read."""
        return self.complete

    def on_message_begin(self) -> None:
        self.messages += 1

    def on_headers_complete(self) -> None:
        self.headed = True

    def on_body(self, data: bytes) -> None:
        self.body.append(data)
        self.size += len(data)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200:  # informational (1xx): the answer follows
            self.messages -= 1
            self.headed = False
            return
        self.complete = True
        # asked now: once the message is over the parser no longer knows
        self.keep_alive = bool(self.parser.should_keep_alive())


def _exchange(
    parser: Any, conn: _Connection, head: bytes, body: bytes | None, limit: int, endpoint: str
) -> tuple[Answer, bool]:
    """Send one request (``head`` from :func:`_head`) on the connected ``conn`` and read
    its whole answer with httptools; also whether the connection can carry another
    request. The caller's timer bounds the exchange; an answer over ``limit`` bytes
    raises :class:`ProtocolError` after at most ``limit`` bytes were read."""
    sock = conn.sock
    assert sock is not None  # connected by the caller
    if sock.gettimeout() is not None:
        # the exchange's own timer bounds it: a timeout on each socket operation would
        # cost a gevent.Timeout per read and write
        sock.settimeout(None)
    data = _request_bytes(head, body)
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])
    reader = _Reader()
    answer = reader.parser = parser.HttpResponseParser(reader)
    try:
        conn.wait_readable(sock)
        _read_answer(parser, reader, sock, conn.receive_buffer(), limit, endpoint)
    finally:
        reader.parser = None
    reusable = reader.messages == 1 and reader.keep_alive
    return Answer(int(answer.get_status_code()), b"".join(reader.body)), reusable


def _read_answer(
    parser: Any, reader: _Reader, sock: Any, buffer: bytearray, limit: int, endpoint: str
) -> None:
    """Feed what ``sock`` receives to ``reader.parser`` until the answer is complete."""
    answer = reader.parser
    view = memoryview(buffer)
    received = 0
    while not reader.finished():
        count = sock.recv_into(buffer)
        if not count:
            if received == 0:
                raise RemoteDisconnected("Remote end closed connection without response")
            raise IncompleteRead(b"".join(reader.body))
        received += count
        try:
            answer.feed_data(view[:count])
        except parser.HttpParserError:
            if not reader.finished():
                raise
            reader.messages += 1  # bytes after the answer: the connection is spoilt
        if reader.size > limit or received > limit + HEAD_LIMIT:
            raise errors.ProtocolError(
                f"etcd's answer is larger than {limit} bytes (Transport.max_response_bytes)",
                endpoint=endpoint,
            )
        if not reader.headed and received > HEAD_LIMIT:
            raise errors.ProtocolError(
                f"etcd's answer has a head larger than {HEAD_LIMIT} bytes", endpoint=endpoint
            )


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
    """The geventc error for a urllib3/socket failure of one exchange (``write``: a
    write that was sent)."""
    if isinstance(exc, SSLError | ssl.SSLError):
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
    if isinstance(exc, ReadTimeoutError | TimeoutError | DeadlinePassed):
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
    if isinstance(exc, DeadlinePassed):
        return str(exc)
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    return text.split(": ", 1)[-1] if ": " in text else text or type(exc).__name__

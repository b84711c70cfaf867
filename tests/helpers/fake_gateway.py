"""A scripted HTTP server standing in for etcd's JSON gateway, to feed clients malformed,
truncated, huge or trickled answers.

Each request is answered by the :class:`Reply` its path is routed to (a reply, a list of
replies used in turn, the last one repeated, or a function of the :class:`Request`). A
reply is raw bytes (status line, headers and body, see :func:`http` and :func:`chunk`),
optionally trickled a few bytes at a time, and then the connection is kept alive, closed
or left hanging. Every connection greenlet and socket is ended by :meth:`FakeGateway.close`.
"""

from __future__ import annotations

import contextlib
import gc
import json
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import gevent
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer

After = Literal["keep", "close", "hang"]


@dataclass(frozen=True)
class Request:
    """A request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The request body decoded as JSON."""
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    """What to send back: ``data`` (raw HTTP), in pieces of ``piece`` bytes every
    ``trickle`` seconds (0: all at once), then ``after``: keep the connection for the next
    request, close it, or hang (send nothing more until the fake is closed)."""

    data: bytes
    trickle: float = 0.0
    piece: int = 1
    after: After = "keep"


Route = Reply | Sequence[Reply] | Callable[[Request], Reply]


def http(
    status: int = 200,
    body: bytes = b"",
    *,
    reason: str = "OK",
    content_type: str = "application/json",
    length: int | None = None,
    chunked: bool = False,
    headers: dict[str, str] | None = None,
) -> bytes:
    """A raw HTTP/1.1 response. ``length`` overrides the Content-Length (a lie, to cut
    the body short); ``chunked`` sends no length: ``body`` must then be chunk-encoded
    (see :func:`chunk`)."""
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}"]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    else:
        lines.append(f"Content-Length: {len(body) if length is None else length}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body (``b""`` gives the terminating chunk)."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def json_reply(document: Any, status: int = 200, **options: Any) -> Reply:
    """A reply carrying ``document`` as JSON."""
    return Reply(http(status, json.dumps(document).encode()), **options)


NOT_FOUND = Reply(http(404, b"404 page not found\n", reason="Not Found", content_type="text/plain"))


@dataclass
class FakeGateway:
    """The scripted server; ``routes`` maps request paths to replies (others get 404)."""

    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._pool = Pool()
        self._sockets: set[socket.socket] = set()
        self._used: dict[str, int] = {}
        self._closed = Event()
        self._server = StreamServer(("127.0.0.1", 0), self._serve, spawn=self._pool)
        self._server.start()

    def __enter__(self) -> FakeGateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def endpoint(self) -> str:
        """The fake's endpoint URL."""
        return f"http://127.0.0.1:{self._server.server_port}"

    def paths(self) -> list[str]:
        """The paths of the requests received so far."""
        return [r.path for r in self.requests]

    def close(self) -> None:
        """Stop listening, drop every connection and end every connection greenlet."""
        self._closed.set()
        self._server.close()
        for sock in list(self._sockets):
            _drop(sock)
        self._pool.kill(block=True, timeout=2.0)

    # --- serving ---------------------------------------------------------------------

    def _reply_for(self, request: Request) -> Reply:
        route = self.routes.get(request.path)
        if route is None:
            return NOT_FOUND
        if isinstance(route, Reply):
            return route
        if callable(route):
            return route(request)
        used = self._used.get(request.path, 0)
        self._used[request.path] = used + 1
        return route[min(used, len(route) - 1)]

    def _serve(self, sock: socket.socket, _address: object) -> None:
        self._sockets.add(sock)
        reader = sock.makefile("rb")
        try:
            while not self._closed.is_set():
                request = _read_request(reader)
                if request is None:
                    return
                self.requests.append(request)
                reply = self._reply_for(request)
                _send(sock, reply)
                if reply.after == "close":
                    return
                if reply.after == "hang":
                    self._closed.wait()
                    return
        except OSError:
            return
        finally:
            reader.close()
            _drop(sock)
            self._sockets.discard(sock)


def live_greenlets() -> int:
    """How many spawned greenlets have not finished (gevent's resolver threads, started
    on demand, are not counted)."""
    return sum(1 for o in gc.get_objects() if isinstance(o, gevent.Greenlet) and not o.dead)


@contextlib.contextmanager
def greenlets_end(grace: float = 3.0) -> Iterator[None]:
    """Fail unless every greenlet started in the block has ended ``grace`` seconds
    after it."""
    before = live_greenlets()
    yield
    deadline = time.monotonic() + grace
    while live_greenlets() > before and time.monotonic() < deadline:
        gevent.sleep(0.02)
    left = live_greenlets() - before
    assert left <= 0, f"{left} greenlets left running"


def _read_request(reader: Any) -> Request | None:
    line = reader.readline(65536)
    if not line.strip():
        return None
    method, path, _version = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while (header := reader.readline(65536)) not in (b"\r\n", b"\n", b""):
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = reader.read(int(headers.get("content-length", "0")))
    return Request(method, path, headers, body)


def _send(sock: socket.socket, reply: Reply) -> None:
    if not reply.trickle:
        sock.sendall(reply.data)
        return
    for start in range(0, len(reply.data), reply.piece):
        sock.sendall(reply.data[start : start + reply.piece])
        gevent.sleep(reply.trickle)


def _drop(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()

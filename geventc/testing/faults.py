"""Client-side network faults: a loopback TCP proxy in front of one etcd member.

:class:`FaultProxy` forwards bytes untouched (TLS passes through) and can freeze its
connections (a network blackhole: held open, silent), cut one direction, add latency or
abort every connection with a TCP RST. It runs in greenlets of the calling process, so
that process must be gevent-patched (``pytest-gevent`` does it).
"""

from __future__ import annotations

import contextlib
import math
import socket
import struct
import time
import urllib.parse
from collections import deque
from typing import Any, Literal

import gevent
import gevent.monkey
import gevent.socket
from gevent.event import Event
from gevent.greenlet import Greenlet
from gevent.server import StreamServer

Direction = Literal["to_server", "to_client"]
#: The directions :meth:`FaultProxy.cut` accepts.
DIRECTIONS: tuple[Direction, ...] = ("to_server", "to_client")
#: Bytes read from a socket at a time.
CHUNK = 65536
#: Chunks held per direction of a connection before the proxy stops reading from it.
HELD_CHUNKS = 16


class FaultHarnessUnavailable(RuntimeError):
    """The fault harness cannot run here; the message says exactly what is missing."""


class FaultProxy:
    """A TCP proxy on ``127.0.0.1`` (a free port) in front of ``target_url``.

    It listens from construction until :meth:`close`. Faults apply to the connections
    already open and to new ones alike:

    - :meth:`freeze`: a blackhole. Connections stay open and no byte moves either way;
      new connections are accepted but not forwarded (not even dialled upstream).
    - :meth:`cut`: the same, for one direction only; the other flows.
    - :meth:`delay`: every forwarded chunk arrives ``seconds`` late (each direction).
    - :meth:`reset`: abort every open connection with a TCP RST, keep accepting.
    - :meth:`heal`: back to normal; held connections *resume* and deliver, in order,
      everything they held (nothing is lost or reset).

    :meth:`freeze` and :meth:`cut` replace each other; :meth:`delay` combines with them.
    """

    def __init__(self, target_url: str, *, connect_timeout: float = 5.0) -> None:
        if not gevent.monkey.is_module_patched("socket"):
            raise FaultHarnessUnavailable(
                "FaultProxy runs in greenlets of this process: call "
                "gevent.monkey.patch_all() first (pytest-gevent does it for you)"
            )
        self.target_url = target_url
        self.scheme, self._target = _parse_target(target_url)
        self.connect_timeout = _seconds(connect_timeout, "connect_timeout", allow_zero=False)
        self._gates: dict[Direction, Event] = {d: Event() for d in DIRECTIONS}
        for gate in self._gates.values():
            gate.set()
        self._latency = 0.0
        self._closed = False
        self._links: set[_Link] = set()
        self._server = StreamServer(("127.0.0.1", 0), self._serve, backlog=1024)
        self._server.start()
        self.port = int(self._server.socket.getsockname()[1])

    def __repr__(self) -> str:
        return f"FaultProxy({self.endpoint} -> {self.target_url}, mode={self.mode})"

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what it is ---------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The URL to give clients: ``http(s)://127.0.0.1:PORT`` (the target's scheme)."""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def mode(self) -> str:
        """``normal``, ``delayed``, ``frozen``, ``cut_to_server``, ``cut_to_client`` or
        ``closed`` (a freeze or cut wins over a delay; see :attr:`latency`)."""
        if self._closed:
            return "closed"
        blocked = [d for d in DIRECTIONS if not self._gates[d].is_set()]
        if len(blocked) == 2:
            return "frozen"
        if blocked:
            return f"cut_{blocked[0]}"
        return "delayed" if self._latency else "normal"

    @property
    def latency(self) -> float:
        """The delay added to every forwarded chunk, in seconds (0 when none)."""
        return self._latency

    @property
    def connections(self) -> int:
        """How many client connections are open through the proxy now."""
        return len(self._links)

    # --- faults -------------------------------------------------------------------------

    def freeze(self) -> None:
        """Blackhole: hold every connection open and silent, in both directions."""
        self._block(DIRECTIONS)

    def cut(self, direction: str) -> None:
        """Hold the bytes going ``direction`` (``to_server`` or ``to_client``); the other
        direction keeps flowing. They are delivered at :meth:`heal`."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be 'to_server' or 'to_client', not {direction!r}")
        self._block([d for d in DIRECTIONS if d == direction])

    def delay(self, seconds: float) -> None:
        """Deliver every forwarded chunk ``seconds`` (>= 0, 0 = none) after it was read."""
        self._latency = _seconds(seconds, "seconds", allow_zero=True)

    def reset(self) -> None:
        """Abort every open connection with a TCP RST (both sides); new ones are accepted
        and treated according to the current mode."""
        for link in list(self._links):
            link.abort()

    def heal(self) -> None:
        """Back to normal: no delay, nothing blocked; held bytes are delivered in order."""
        self._latency = 0.0
        self._block(())

    def close(self) -> None:
        """Stop listening and abort every connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._server.close()
        self.reset()

    # --- inside -------------------------------------------------------------------------

    def _block(self, directions: tuple[Direction, ...] | list[Direction]) -> None:
        self._check_open()
        for direction, gate in self._gates.items():
            if direction in directions:
                gate.clear()
            else:
                gate.set()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")

    def _passes(self, direction: Direction) -> bool:
        return self._gates[direction].is_set() and not self._latency

    def _serve(self, downstream: socket.socket, _address: object) -> None:
        link = _Link(self, downstream)
        self._links.add(link)
        try:
            link.run()
        finally:
            self._links.discard(link)


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, proxy: FaultProxy, downstream: socket.socket) -> None:
        self.proxy = proxy
        self.downstream = downstream
        self.upstream: socket.socket | None = None
        self.greenlets: list[Greenlet[..., Any]] = []
        self.pipes: list[_Pipe] = []
        self.aborted = False

    def run(self) -> None:
        """Dial upstream once bytes may flow, then pump both ways until both ends close."""
        current = gevent.getcurrent()
        if isinstance(current, Greenlet):
            self.greenlets.append(current)
        self.proxy._gates["to_server"].wait()
        try:
            self.upstream = gevent.socket.create_connection(
                self.proxy._target, timeout=self.proxy.connect_timeout
            )
        except OSError:
            self.abort()
            return
        self.upstream.settimeout(None)
        for sock in (self.downstream, self.upstream):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pipes = pipes = [
            _Pipe(self, "to_client", self.upstream, self.downstream),
            _Pipe(self, "to_server", self.downstream, self.upstream),
        ]
        self.greenlets.append(gevent.spawn(pipes[0].run))
        pipes[1].run()
        for pipe in pipes:
            if not self.aborted:
                pipe.finished.wait()
        if not self.aborted:
            for sock in (self.downstream, self.upstream):
                sock.close()

    def abort(self) -> None:
        """Close both sockets with a TCP RST and stop every greenlet of the link."""
        if self.aborted:
            return
        self.aborted = True
        for sock in (self.downstream, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        current = gevent.getcurrent()
        running = self.greenlets + [p.writer for p in self.pipes if p.writer is not None]
        gevent.killall([g for g in running if g is not current], block=False)
        for sock in (self.downstream, self.upstream):
            if sock is not None:
                sock.close()


class _Pipe:
    """One direction of a link: reads chunks, forwards them when the gate allows.

    The fast path (gate open, no delay, nothing held) sends from the reading greenlet;
    otherwise chunks are held in order and a writer greenlet delivers them."""

    def __init__(
        self, link: _Link, direction: Direction, source: socket.socket, target: socket.socket
    ) -> None:
        self.link = link
        self.direction = direction
        self.source = source
        self.target = target
        self.held: deque[tuple[float, bytes]] = deque()
        self.writer: Greenlet[[], None] | None = None
        self.room = Event()
        self.room.set()
        self.finished = Event()

    def run(self) -> None:
        """Read until end of stream or error (an error aborts the whole link)."""
        proxy = self.link.proxy
        try:
            while True:
                data = self.source.recv(CHUNK)
                if not self.held and self.writer is None and proxy._passes(self.direction):
                    self._forward(data)
                else:
                    self.held.append((time.monotonic(), data))
                    if self.writer is None:
                        self.writer = gevent.spawn(self._drain)
                    if len(self.held) >= HELD_CHUNKS:
                        self.room.clear()
                        self.room.wait()
                if not data:
                    return
        except OSError:
            self.link.abort()

    def _drain(self) -> None:
        proxy = self.link.proxy
        gate = proxy._gates[self.direction]
        try:
            while self.held:
                stamp, data = self.held[0]
                gate.wait()
                wait = stamp + proxy.latency - time.monotonic()
                if wait > 0:
                    gevent.sleep(wait)
                    continue  # the mode may have changed meanwhile
                self.held.popleft()
                self.room.set()
                self._forward(data)
        except OSError:
            self.link.abort()
        finally:
            self.writer = None

    def _forward(self, data: bytes) -> None:
        if data:
            self.target.sendall(data)
            return
        with contextlib.suppress(OSError):
            self.target.shutdown(socket.SHUT_WR)
        self.finished.set()


def _parse_target(url: str) -> tuple[str, tuple[str, int]]:
    if not isinstance(url, str):
        raise ValueError(f"target_url must be an http(s)://host:port string, not {url!r}")
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        raise ValueError(f"target_url must look like http(s)://host:port, not {url!r}")
    return parts.scheme, (parts.hostname, port)


def _seconds(value: float, name: str, *, allow_zero: bool) -> float:
    bad = isinstance(value, bool) or not isinstance(value, int | float)
    if bad or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        allowed = "a number >= 0" if allow_zero else "a number > 0"
        raise ValueError(f"{name} must be {allowed} (seconds), not {value!r}")
    return float(value)


__all__ = ["DIRECTIONS", "FaultHarnessUnavailable", "FaultProxy"]

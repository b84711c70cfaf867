"""A TCP proxy in front of an etcd endpoint that can cut its clients off, so writes and
compaction can happen while a watcher is disconnected (and nothing else is affected)."""

from __future__ import annotations

import contextlib
import socket
import urllib.parse

import gevent
from gevent.server import StreamServer

from geventc.testing import free_port


class Gate:
    """A TCP proxy to an etcd endpoint that can cut its clients off: ``close()`` refuses
    new connections and drops open ones, ``open()`` lets them through again."""

    def __init__(self, target: str) -> None:
        url = urllib.parse.urlsplit(target)
        self._target = (url.hostname or "127.0.0.1", url.port or 2379)
        self.port = free_port()
        self._server: StreamServer | None = None
        self._sockets: set[socket.socket] = set()
        self.open()

    @property
    def endpoint(self) -> str:
        """The proxy's endpoint, to give to the client that may be cut off."""
        return f"http://127.0.0.1:{self.port}"

    def open(self) -> None:
        """Accept connections (again)."""
        self._server = StreamServer(("127.0.0.1", self.port), self._serve)
        self._server.start()

    def close(self) -> None:
        """Refuse new connections and drop the open ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for sock in list(self._sockets):
            _drop(sock)
        self._sockets.clear()

    def _serve(self, downstream: socket.socket, _address: object) -> None:
        try:
            upstream = socket.create_connection(self._target, timeout=2.0)
        except OSError:
            _drop(downstream)
            return
        upstream.settimeout(None)
        pair = (downstream, upstream)
        self._sockets.update(pair)
        pumps = [
            gevent.spawn(_pump, downstream, upstream),
            gevent.spawn(_pump, upstream, downstream),
        ]
        gevent.joinall(pumps, count=1)
        for sock in pair:
            _drop(sock)
            self._sockets.discard(sock)
        gevent.killall(pumps)


def _pump(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)


def _drop(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()

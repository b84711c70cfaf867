"""etcd's own failpoints, on the members of a failpoint build.

etcd's server sources carry ``// gofail: var NAME struct{}`` comments where its
robustness tests crash or slow it: before and after persisting raft entries
(``raftBeforeSave``, ``raftAfterSave``), before applying one (``beforeApplyOneEntryNormal``),
around the backend's commit (``beforeCommit``, ``afterCommit``), and more. A *failpoint
build* (``python tests/etcd/build.py 3.6-failpoints`` in geventc's source tree: etcd
3.6.16 rewritten by the pinned ``gofail enable``) turns them into failpoints of gofail's
runtime, and a process started with ``GOFAIL_HTTP=HOST:PORT`` serves them over HTTP:
``PUT /NAME`` with terms (``panic``, ``1*panic``, ``sleep(100)``, ``off``), ``GET /``
lists them, ``DELETE /NAME`` turns one off. Failpoints live in the process only: a
member restarted after a crash has none on.

:class:`Gofail` is both the ``member_env`` hook of
:class:`~geventc.testing.EtcdCluster` that gives each member its own ``GOFAIL_HTTP``
address and the client of those addresses::

    gofail = Gofail()
    binary = find_release("3.6-failpoints").binary
    with EtcdCluster(3, binary=binary, member_env=gofail) as cluster:
        gofail.enable(cluster.members[1], "raftBeforeSave", "panic")
        assert gofail.wait_exit(cluster.members[1], timeout=10)  # it crashed there
        cluster.restart(cluster.members[1])                       # with its data

A plain etcd build ignores ``GOFAIL_HTTP``: :meth:`Gofail.list` then raises
:class:`FailpointError` (nothing listens).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import urllib3

if TYPE_CHECKING:
    from .server import EtcdMember

__all__ = ["FailpointError", "Gofail"]


class FailpointError(RuntimeError):
    """A member's gofail endpoint refused a request or did not answer."""


class Gofail:
    """Per-member gofail HTTP addresses (as a ``member_env`` hook) and their client.

    Each member gets ``GOFAIL_HTTP=<its client host>:<a free port>``; the port is kept
    for the member's name and ports, so a restarted member serves at the same address,
    and a member moved to new ports (lost to a neighbour at startup) gets a new one.
    """

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self._ports: dict[tuple[str, str, int, int], int] = {}
        self._pool = urllib3.PoolManager(retries=False)

    def __call__(self, member: EtcdMember) -> dict[str, str]:
        """The environment that serves ``member``'s failpoints: ``GOFAIL_HTTP``."""
        return {"GOFAIL_HTTP": self.address(member)}

    def address(self, member: EtcdMember) -> str:
        """``HOST:PORT`` where ``member``'s process serves its failpoints."""
        from .server import free_port

        key = (member.cluster.token, member.name, member.client_port, member.peer_port)
        port = self._ports.get(key)
        if port is None:
            port = self._ports[key] = free_port()
        return f"{member.client_host}:{port}"

    def _request(self, member: EtcdMember, method: str, path: str, body: bytes = b"") -> str:
        url = f"http://{self.address(member)}/{path}"
        try:
            response = self._pool.request(method, url, body=body or None, timeout=self.timeout)
        except urllib3.exceptions.HTTPError as exc:
            raise FailpointError(
                f"{member.name}: no gofail endpoint answers at {url} ({exc}); is "
                f"{member.cluster.binary} a failpoint build, and is the member running?"
            ) from exc
        text = response.data.decode("utf-8", "replace")
        if response.status >= 300:
            raise FailpointError(f"{member.name}: {method} {url}: {response.status} {text.strip()}")
        return text

    def list(self, member: EtcdMember) -> dict[str, str]:
        """Every failpoint the member's binary has, with its terms (``""``: off)."""
        text = self._request(member, "GET", "")
        names = (line.partition("=") for line in text.splitlines() if line)
        return {name: terms for name, _, terms in names}

    def enable(self, member: EtcdMember, name: str, terms: str = "panic") -> None:
        """Turn failpoint ``name`` on with gofail ``terms`` (``panic``: the process
        panics the next time it passes there). Raises :class:`FailpointError` for a
        name the binary lacks or malformed terms."""
        self._request(member, "PUT", name, terms.encode())

    def disable(self, member: EtcdMember, name: str) -> None:
        """Turn failpoint ``name`` off."""
        self._request(member, "DELETE", name)

    def count(self, member: EtcdMember, name: str) -> int:
        """How many times failpoint ``name`` fired since it was enabled."""
        return int(self._request(member, "GET", f"{name}/count").strip() or 0)

    @staticmethod
    def wait_exit(member: EtcdMember, timeout: float) -> bool:
        """Wait until ``member``'s process has exited (reaped): True if it did within
        ``timeout`` seconds. A panic failpoint fires only when etcd passes there, so a
        member with no work may not exit: give it some."""
        deadline = time.monotonic() + timeout
        while member.running:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def close(self) -> None:
        """Close the HTTP connections."""
        self._pool.clear()

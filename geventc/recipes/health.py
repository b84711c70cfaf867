"""HealthMonitor: the health of every member of the cluster.

Every ``interval`` seconds it lists the members (``/v3/cluster/member/list``, so members
not in the configured endpoints count too) and asks each one, concurrently, for its
``/health`` and status. When the list cannot be had (say the one configured endpoint is
down) it checks the members of the last list it got; a member that was added but has
not started yet (no client URL) counts as unhealthy. The cluster is ``HEALTHY`` when
every member is, ``DEGRADED`` while a quorum is, ``UNHEALTHY`` otherwise or when
nothing answers. The first result is emitted, then only changes; with ``once=True`` one
result and the channel closes. The per-member checks run in greenlets of the monitor
(and of its connector), so ``stop()`` and ``Connector.close()`` end them too.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

import gevent

from .. import validate
from ..channel import Channel
from ..errors import EtcdError, Timeout
from .base import Recipe, RecipeError

if TYPE_CHECKING:
    from ..host import RecipeHost


class ClusterStatus(enum.Enum):
    """The cluster's overall health."""

    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"
    UNHEALTHY = "UNHEALTHY"


@dataclass(frozen=True, slots=True)
class MemberHealth:
    """One member's health as seen by the monitor."""

    name: str
    endpoint: str
    healthy: bool
    leader: bool = False
    error: str = ""


@dataclass(frozen=True, slots=True)
class ClusterHealth:
    """The cluster's status and every member's health."""

    status: ClusterStatus
    members: tuple[MemberHealth, ...]

    def _signature(self) -> tuple[object, ...]:
        return (self.status, tuple((m.name, m.endpoint, m.healthy, m.leader) for m in self.members))


class HealthMonitor(Recipe[ClusterHealth]):
    """Checks every member's health; see the module docstring."""

    def __init__(self, conn: RecipeHost, *, once: bool = False, interval: float = 10.0) -> None:
        super().__init__(conn)
        self.once = validate.boolean(once, "once")
        self.interval = validate.positive_number(interval, "interval")
        self._last: ClusterHealth | None = None
        self._members: list[tuple[str, str]] = []  # (name, endpoint) from the last list

    def __repr__(self) -> str:
        return f"HealthMonitor({self._conn.endpoints})"

    def start(
        self, once: bool | None = None, interval: float | None = None
    ) -> Channel[ClusterHealth | RecipeError]:
        """Start checking every ``interval`` seconds (or ``once``), as set when the
        monitor was made (``conn.health_monitor(once=, interval=)``); passing them here
        still works but is deprecated."""
        legacy = self._legacy_start("conn.health_monitor(...)", once=once, interval=interval)
        if legacy and not self._running:
            self.once = validate.boolean(legacy.get("once", self.once), "once")
            self.interval = validate.positive_number(
                legacy.get("interval", self.interval), "interval"
            )
        return super().start()

    def _start(self) -> None:
        self._begin()
        self._spawn(self._monitor, self.once, self.interval)

    def check(self) -> ClusterHealth:
        """Check the cluster now (in the calling greenlet)."""
        timeout = min(self._conn.request_timeout, 3.0)
        try:
            members = self._list_members(timeout)
        except EtcdError as exc:
            down = tuple(MemberHealth(e, e, False, error=str(exc)) for e in self._conn.endpoints)
            return ClusterHealth(ClusterStatus.UNHEALTHY, down)
        checks = [self._greenlets.spawn(self._member, name, url, timeout) for name, url in members]
        gevent.joinall(checks)
        results = tuple(c.value for c in checks if c.value is not None)
        healthy = sum(m.healthy for m in results)
        if results and healthy == len(results):
            status = ClusterStatus.HEALTHY
        elif healthy > len(results) // 2:
            status = ClusterStatus.DEGRADED
        else:
            status = ClusterStatus.UNHEALTHY
        return ClusterHealth(status, results)

    def _list_members(self, timeout: float) -> list[tuple[str, str]]:
        """``(name, endpoint)`` of every member (endpoint "" when it has not started);
        the last list when etcd cannot give one within ``timeout`` seconds."""
        try:
            with gevent.Timeout(timeout, Timeout(f"no member list within {timeout}s")):
                listed = self._conn.members()
        except EtcdError:
            if not self._members:
                raise
            return self._members
        self._members = [
            (m.name or f"{m.id:x}", m.client_urls[0] if m.client_urls else "") for m in listed
        ]
        return self._members

    def _member(self, name: str, endpoint: str, timeout: float) -> MemberHealth:
        if not endpoint:
            return MemberHealth(name, endpoint, False, error="the member has not started yet")
        client = self._conn
        try:
            with gevent.Timeout(
                timeout, Timeout(f"no answer within {timeout}s", endpoint=endpoint)
            ):
                health = client.health(endpoint)
                status = client.status(endpoint)
        except EtcdError as exc:
            return MemberHealth(name, endpoint, False, error=str(exc))
        return MemberHealth(name, endpoint, health.healthy, status.is_leader, health.reason)

    def _monitor(self, once: bool, interval: float) -> None:
        while self._running:
            health = self.check()
            if self._last is None or health._signature() != self._last._signature():
                self._last = health
                self._emit(health)
            if once:
                self._finish()
                return
            gevent.sleep(interval)

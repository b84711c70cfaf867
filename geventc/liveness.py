"""Liveness: notice a member that stopped answering, for every watch of a client, at the
cost of one probe per endpoint in use.

A watch stream is a long-lived HTTP response that is silent while nothing changes, so a
member that is paused, blackholed or cut off from its peers looks exactly like a quiet
one. One greenlet per client probes, every ``keepalive_time`` seconds, each endpoint
that carries at least one open stream (``GET /health?serializable=true``, bounded by
``keepalive_timeout``; it does no raft round and needs no credentials):

- an answer confirms every stream on that endpoint as current as of the probe's send;
- no answer in time, or "no leader", stalls every stream on it: its connection is cut,
  the endpoint is left, and the stream resumes on the next member from the revision
  after the last one it delivered (nothing lost, nothing repeated).

So a stall is left within ``keepalive_time + keepalive_timeout`` (4 s by default) and at
rest the probes cost ``1 / keepalive_time`` requests per second per endpoint in use,
however many streams, prefixes and recipes share it. The same greenlet asks every
registered :class:`FreshnessSubject` (prefix watches, observers) once a second whether
its data is still confirmed; one that is not for longer than :attr:`Liveness.stale_after`
tells its listeners. Sockets of streams also carry TCP keep-alive, so a vanished peer
host (half-open TCP) is noticed by the kernel without any request.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import gevent
from gevent.pool import Group

from .errors import EtcdError
from .transport import Transport

log = logging.getLogger("geventc")

#: How often freshness subjects are asked to check their age (seconds).
CHECK_INTERVAL = 1.0
#: Margin above the time a failover takes before a recipe says its data is stale.
STALE_MARGIN = 1.0


class Probed(Protocol):
    """A stream liveness looks after (a :class:`~geventc.watchstream.WatchStream`)."""

    @property
    def endpoint(self) -> str:
        """The endpoint it is connected to now, or ``""`` while it is not."""
        ...

    def confirm(self, at: float) -> None:
        """Its endpoint answered a probe sent at ``at`` (monotonic)."""

    def stall(self, reason: str) -> None:
        """Its endpoint stopped answering: leave it now and resume elsewhere."""


class FreshnessSubject(Protocol):
    """Something whose data may go stale (a prefix watch, an observer)."""

    def check_freshness(self, now: float) -> None:
        """Compare the data's age with the bound and tell listeners of a change."""


class Liveness:
    """One probing greenlet per client; see the module docstring.

    ``probes`` counts the probe requests sent, ``stalls`` the endpoints left because
    of one."""

    def __init__(
        self,
        transport: Transport,
        group: Group,
        *,
        keepalive_time: float = 2.0,
        keepalive_timeout: float = 2.0,
    ) -> None:
        self.keepalive_time = keepalive_time
        self.keepalive_timeout = keepalive_timeout
        self.probes = 0
        self.stalls = 0
        self._transport = transport
        self._group = group
        # dicts (insertion-ordered, O(1) removal) used as sets
        self._streams: dict[Probed, None] = {}
        self._subjects: dict[FreshnessSubject, None] = {}
        self._greenlet: gevent.Greenlet[[], None] | None = None

    def __repr__(self) -> str:
        return (
            f"Liveness(streams={len(self._streams)}, subjects={len(self._subjects)}, "
            f"probes={self.probes}, stalls={self.stalls})"
        )

    @property
    def stale_after(self) -> float:
        """Seconds without confirmation after which a recipe reports stale data: the
        longest a failover to a live member takes, plus a margin."""
        return self.keepalive_time + self.keepalive_timeout + STALE_MARGIN

    def attach(self, stream: Probed) -> None:
        """Look after ``stream`` until :meth:`detach`."""
        self._streams[stream] = None
        self._ensure_running()

    def detach(self, stream: Probed) -> None:
        """Stop looking after ``stream``."""
        self._streams.pop(stream, None)

    def follow(self, subject: FreshnessSubject) -> None:
        """Ask ``subject`` to check its freshness every second until :meth:`unfollow`."""
        self._subjects[subject] = None
        self._ensure_running()

    def unfollow(self, subject: FreshnessSubject) -> None:
        """Stop asking ``subject``."""
        self._subjects.pop(subject, None)

    # --- the probing greenlet ----------------------------------------------------------

    def _ensure_running(self) -> None:
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = self._group.spawn(self._run)

    def _run(self) -> None:
        next_probe = time.monotonic() + self.keepalive_time
        while self._streams or self._subjects:
            gevent.sleep(min(CHECK_INTERVAL, self.keepalive_time))
            now = time.monotonic()
            if now >= next_probe:
                next_probe = now + self.keepalive_time
                try:
                    self.probe_all()
                except Exception:  # a bug here must not end liveness for every stream
                    log.exception("liveness probe round failed")
            now = time.monotonic()
            for subject in list(self._subjects):
                try:
                    subject.check_freshness(now)
                except Exception:
                    log.exception("freshness check of %r failed", subject)
        self._greenlet = None

    def probe_all(self) -> None:
        """Probe every endpoint that carries a stream now, in parallel, and confirm or
        stall its streams (the greenlet does this every ``keepalive_time``)."""
        endpoints = {stream.endpoint for stream in self._streams} - {""}
        probes = [self._group.spawn(self._probe, endpoint) for endpoint in endpoints]
        gevent.joinall(probes)

    def _probe(self, endpoint: str) -> None:
        sent = time.monotonic()
        self.probes += 1
        problem = self._ask(endpoint)
        on_it = [s for s in self._streams if s.endpoint == endpoint]
        if problem is None:
            for stream in on_it:
                stream.confirm(sent)
            return
        self.stalls += 1
        log.warning(
            "etcd endpoint %s %s; moving %d watch stream(s) to another member",
            endpoint,
            problem,
            len(on_it),
        )
        self._transport.mark_failed(endpoint)
        for stream in on_it:
            stream.stall(f"{endpoint} {problem}")

    def _ask(self, endpoint: str) -> str | None:
        """None when ``endpoint`` answers and has a leader, else what is wrong."""
        try:
            answer = self._transport.get(
                "/health?serializable=true",
                endpoint=endpoint,
                timeout=self.keepalive_timeout,
                priority=True,
            )
        except EtcdError as exc:
            return f"did not answer a probe within {self.keepalive_timeout:g}s ({exc.message})"
        reason = str(answer.get("reason", "")) if isinstance(answer, dict) else ""
        if "NO LEADER" in reason.upper():
            return "has no raft leader (cut off from its peers?)"
        return None

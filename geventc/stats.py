"""What a client and its connector did and hold now: counters and gauges for
production monitoring (``conn.stats()``, ``client.stats()``), and the request log.

Counters only ever grow, from the client's creation on; gauges say what is true at the
moment of the snapshot. They are plain ``int`` increments on the code paths that do the
work (no lock: gevent runs one greenlet of a process at a time), so keeping them costs
nothing measurable; a snapshot copies them (and counts the live recipes) without any
request. :mod:`geventc.contrib.prometheus` exports them.

Request log: every HTTP request to etcd (method, path, endpoint, outcome, duration,
the batch size of a coalesced txn) and every watch stream's open, restart and close are
logged at DEBUG on the ``geventc.request`` logger (a child of ``geventc``, so the CLI's
``-vv`` shows them). The lines carry no secret and no application data: never a header
(so never the auth token), never a request or answer body (so never a password, a key
or a value), only sizes in bytes; watch lines name the watched key or prefix, as
geventc's INFO lines about watches already do. With DEBUG off a request pays one
``isEnabledFor`` check.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .client import Client
    from .errors import EtcdError

__all__ = ["BATCH_BUCKETS", "REQUEST_LOG", "Counters", "Stats", "client_stats", "log_request"]

#: The request log (DEBUG): see the module docstring.
REQUEST_LOG = logging.getLogger("geventc.request")

#: Upper bounds of the coalesced batch-size buckets; one more bucket takes the rest.
BATCH_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)


def batch_bucket(size: int) -> int:
    """The index in :data:`BATCH_BUCKETS` (or one past it) of a batch of ``size``."""
    return min(max(0, size - 1).bit_length(), len(BATCH_BUCKETS))


class Counters:
    """The live counters of one client, kept by its transport (``transport.counters``)
    and incremented by the transport, the watch streams and the kept leases."""

    __slots__ = (
        "errors",
        "failovers",
        "lease_grants",
        "lease_losses",
        "lease_renewals",
        "lease_suspensions",
        "leases_kept",
        "requests_by_path",
        "retries",
        "watch_compactions",
        "watch_restarts",
        "watch_streams_open",
        "watch_streams_opened",
    )

    def __init__(self) -> None:
        self.requests_by_path: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.retries = 0
        self.failovers = 0
        self.watch_streams_open = 0
        self.watch_streams_opened = 0
        self.watch_restarts = 0
        self.watch_compactions = 0
        self.lease_grants = 0
        self.lease_renewals = 0
        self.lease_suspensions = 0
        self.lease_losses = 0
        self.leases_kept = 0

    def error(self, error: EtcdError) -> None:
        """Count a failed call by the name of its error's class."""
        kind = type(error).__name__
        self.errors[kind] = self.errors.get(kind, 0) + 1


@dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot of a client's (and its connector's) counters and gauges.

    Counters (they only grow, from the client's creation):

    - ``requests``: HTTP requests sent to etcd (every attempt, every watch stream
      opened, every liveness probe); ``requests_by_path`` the same by gateway path
      (``/v3/kv/put``, ``/health?serializable=true``, ...);
    - ``errors``: requests that failed, by error class name (``Timeout``,
      ``LeaseNotFound``, ``ConnectionFailed``, ...): refused by etcd or failed in
      transit, after the retries of their call, liveness probes included; a coalesced
      txn that failed counts once (its callers then each get the error or send their
      own request); a failure geventc finds in an answer etcd accepted (a keep-alive
      without TTL) is not a failed request;
    - ``retries``: attempts repeated on another endpoint or after a backoff;
    - ``failovers``: times the client left its current endpoint for the next one;
    - ``probes`` / ``stalls``: liveness probes sent, and endpoints left because a probe
      found them silent or without a leader (a stalled member, see
      :mod:`geventc.liveness`);
    - ``watch_streams_opened``: watches the server confirmed (re-establishments
      included); ``watch_restarts``: re-establishments after a break or a stall (the
      watch resumed from the revision after the last one delivered);
      ``watch_compactions``: watches ended because the history they needed was
      compacted;
    - ``lease_grants`` / ``lease_renewals`` / ``lease_suspensions`` /
      ``lease_losses``: kept leases granted, renewed, turned SUSPENDED and turned LOST
      (see :mod:`geventc.lease`);
    - ``batches`` / ``batched_ops``: coalesced txns sent and the operations they
      carried; ``batch_sizes``: ``(upper bound, count)`` per size bucket (not
      cumulative; the last bound is ``inf``).

    Gauges (now): ``endpoint`` in use, ``watch_streams_open`` (confirmed watch streams
    connected), ``leases_kept`` (leases renewed by this client's connector),
    ``prefix_watches`` and ``stale_watches`` (shared prefix watches, and those whose
    copy is not confirmed current: see :mod:`geventc.staleness`), ``recipes`` (started,
    not yet stopped recipes by class name). A bare :class:`~geventc.Client` has no
    connector: its prefix watches, stale watches and recipes are 0 and empty."""

    requests: int
    requests_by_path: Mapping[str, int]
    errors: Mapping[str, int]
    retries: int
    failovers: int
    endpoint: str
    probes: int
    stalls: int
    watch_streams_open: int
    watch_streams_opened: int
    watch_restarts: int
    watch_compactions: int
    lease_grants: int
    lease_renewals: int
    lease_suspensions: int
    lease_losses: int
    leases_kept: int
    batches: int
    batched_ops: int
    batch_sizes: tuple[tuple[float, int], ...]
    prefix_watches: int = 0
    stale_watches: int = 0
    recipes: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def error_count(self) -> int:
        """Every failed call, whatever its kind."""
        return sum(self.errors.values())


def client_stats(
    client: Client,
    *,
    prefix_watches: int = 0,
    stale_watches: int = 0,
    recipes: Mapping[str, int] | None = None,
) -> Stats:
    """The :class:`Stats` of ``client`` now, with what its connector adds."""
    transport = client.transport
    counters = transport.counters
    coalescer = client.coalescer
    sizes = coalescer.batch_sizes if coalescer is not None else [0] * (len(BATCH_BUCKETS) + 1)
    bounds = (*map(float, BATCH_BUCKETS), math.inf)
    return Stats(
        requests=transport.requests,
        requests_by_path=MappingProxyType(dict(counters.requests_by_path)),
        errors=MappingProxyType(dict(counters.errors)),
        retries=counters.retries,
        failovers=counters.failovers,
        endpoint=transport.current_endpoint,
        probes=client.liveness.probes,
        stalls=client.liveness.stalls,
        watch_streams_open=counters.watch_streams_open,
        watch_streams_opened=counters.watch_streams_opened,
        watch_restarts=counters.watch_restarts,
        watch_compactions=counters.watch_compactions,
        lease_grants=counters.lease_grants,
        lease_renewals=counters.lease_renewals,
        lease_suspensions=counters.lease_suspensions,
        lease_losses=counters.lease_losses,
        leases_kept=counters.leases_kept,
        batches=coalescer.batches if coalescer is not None else 0,
        batched_ops=coalescer.coalesced if coalescer is not None else 0,
        batch_sizes=tuple(zip(bounds, sizes, strict=True)),
        prefix_watches=prefix_watches,
        stale_watches=stale_watches,
        recipes=MappingProxyType(dict(recipes or {})),
    )


def log_request(
    method: str,
    path: str,
    endpoint: str | None,
    started: float,
    error: EtcdError | None = None,
    *,
    sent: int = 0,
    received: int = 0,
    batch: int = 0,
) -> None:
    """Log one request at DEBUG on :data:`REQUEST_LOG` (callers check that it is
    enabled first): sizes only, never a header or a body."""
    elapsed = (time.monotonic() - started) * 1000
    if error is None:
        outcome = "ok"
    else:
        code = f" code={error.code}" if error.code is not None else ""
        outcome = f"error={type(error).__name__}{code} ({error.message})"
    extra = f" batch={batch}" if batch else ""
    if sent:
        extra += f" sent={sent}B"
    if received:
        extra += f" received={received}B"
    REQUEST_LOG.debug(
        "%s %s endpoint=%s %s in %.2fms%s",
        method,
        path,
        endpoint or "-",
        outcome,
        elapsed,
        extra,
    )

"""``Connector``: a client with a namespace, and the factory of every recipe.

Every key the connector reads, writes or watches is placed under its namespace and comes
back without it, so applications sharing one etcd cannot see each other. The connector
owns the greenlets of its recipes (a ``gevent.pool.Group``), one shared lease per TTL
and one watch stream per watched prefix; ``close()`` stops all of it.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import gevent
from gevent.pool import Group

from . import validate
from .client import Client
from .coalesce import Flight
from .endpoints import parse_endpoint
from .errors import ClientClosed, InvalidArgument
from .instances import DEFAULT_PREFIX, DEFAULT_WEIGHT
from .lease import LeaseKeeper
from .liveness import Liveness
from .namespace import Namespace
from .stats import Stats, client_stats
from .txn import Comparison, TxnOp, txn_body
from .watch import WatchHub
from .watchstream import WatchStream
from .wire import (
    DeleteResult,
    Health,
    KeyValue,
    Lease,
    LeaseTimeToLive,
    Member,
    PutResult,
    RangeResult,
    Status,
    TxnResult,
    Version,
)

if TYPE_CHECKING:
    from .channel import Channel
    from .recipes.barrier import Barrier, DoubleBarrier
    from .recipes.base import Recipe, RecipeError, Release
    from .recipes.config import ConfigWatcher
    from .recipes.counter import Counter
    from .recipes.election import LeaderElector
    from .recipes.ephemeral import EphemeralKey
    from .recipes.group import GroupMember
    from .recipes.health import HealthMonitor
    from .recipes.lock import Lock
    from .recipes.observer import Observer
    from .recipes.partitioner import Partitioner
    from .recipes.queue import PriorityQueue, Queue
    from .recipes.rwlock import RWLock
    from .recipes.semaphore import Semaphore
    from .recipes.tracker import ServiceSnapshot, ServiceTracker
    from .registry import Registry
    from .resolver import Resolver
    from .retry import RetryPolicy
    from .stm import STM, Isolation

log = logging.getLogger("geventc")

#: How long a recipe's ``stop()`` and the connector's ``close()`` may take by default.
DEFAULT_STOP_TIMEOUT = 1.0


def prepare_endpoint_list(hosts: Iterable[str], port: int, scheme: str = "http") -> list[str]:
    """``scheme://host:port`` for every host (the original's PrepareEndpointList,
    without its empty leading entries)."""
    if isinstance(hosts, str) or not isinstance(hosts, Iterable):
        raise InvalidArgument("hosts must be a list of host names or addresses")
    validate.integer(port, "port", minimum=1, maximum=65535)
    scheme = validate.choice(scheme, "scheme", ("HTTP", "HTTPS"))
    endpoints = []
    for host in hosts:
        if not isinstance(host, str) or not host.strip() or "/" in host:
            raise InvalidArgument(f"host {host!r} must be a non-empty host name or address")
        name = host.strip()
        if ":" in name and not name.startswith("["):
            if not _is_ipv6(name):
                raise InvalidArgument(f"host {host!r} must not carry a port; pass port=")
            name = f"[{name}]"
        endpoints.append(parse_endpoint(f"{scheme.lower()}://{name}:{port}"))
    if not endpoints:
        raise InvalidArgument("hosts must name at least one host")
    return endpoints


def _is_ipv6(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address)
    except ValueError:
        return False


def connect(
    endpoints: Any,
    namespace: str | None = None,
    *,
    stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    **client_options: Any,
) -> Connector:
    """A :class:`Connector` to ``endpoints`` with keys under ``namespace``;
    ``stop_timeout`` bounds every recipe's ``stop()`` and ``close()``; the other options
    are those of :class:`Client` (username, password, tls, timeout, ...)."""
    Namespace(namespace)  # refuse a bad namespace before opening anything
    validate.positive_number(stop_timeout, "stop_timeout")
    return Connector(Client(endpoints, **client_options), namespace, stop_timeout=stop_timeout)


class Connector:
    """A :class:`Client` whose keys live under a namespace, and the recipe factory."""

    def __init__(
        self,
        client: Client,
        namespace: str | None = None,
        *,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> None:
        if not isinstance(client, Client):
            raise InvalidArgument("Connector needs a geventc.Client")
        #: how long a recipe's ``stop()`` (and :meth:`close`) may take, etcd down or not
        self.stop_timeout = validate.positive_number(stop_timeout, "stop_timeout")
        self.client = client
        self.namespace = Namespace(namespace)
        self.group: Group = client.group  # the client's greenlets and every recipe's
        self.lease_keeper = LeaseKeeper(client, self.group)
        self.hub = WatchHub(self, self.group, client.liveness)
        # id -> recipe (insertion-ordered, O(1) removal; a recipe may be unhashable)
        self._recipes: dict[int, Recipe[Any]] = {}
        self._closed = False
        self.closing = False

    def __repr__(self) -> str:
        return f"Connector({self.client.endpoints}, namespace={self.namespace.name!r})"

    def __enter__(self) -> Connector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def request_timeout(self) -> float:
        """How long one call (with its retries) may take: the client's ``timeout``."""
        return self.client.transport.timeout

    @property
    def liveness(self) -> Liveness:
        """The client's stall detector (see :mod:`geventc.liveness`)."""
        return self.client.liveness

    @property
    def endpoints(self) -> list[str]:
        """The client's endpoints."""
        return self.client.endpoints

    @property
    def written_revision(self) -> int:
        """The highest revision this connector's own writes produced."""
        return self.client.written_revision

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def stats(self) -> Stats:
        """A snapshot of the counters and gauges of this connector and its client
        (see :class:`~geventc.stats.Stats`): :meth:`Client.stats` plus the shared prefix
        watches (and how many are stale) and the live recipes by class name. Sends no
        request; costs O(recipes)."""
        recipes: dict[str, int] = {}
        for recipe in self._recipes.values():
            kind = type(recipe).__name__
            recipes[kind] = recipes.get(kind, 0) + 1
        return client_stats(
            self.client,
            prefix_watches=self.hub.streams,
            stale_watches=self.hub.stale,
            recipes=recipes,
        )

    def close(self) -> Release:
        """Stop every recipe, watch and lease of this connector, then close the pools.

        Returns within ``stop_timeout`` even when etcd refuses or does not answer. The
        watches stop first (nothing is delivered to recipes about to stop), then the
        shared leases are revoked all at once (the keys on them go with them: one
        request per lease, not per key; recipes see ``closing`` and leave those keys to
        the revocation, see :func:`~geventc.recipes.leftover.gone_with`), then every
        recipe stops (an elector resigns): those that wait for nothing one after the
        other, without a greenlet each, and those that wait (for etcd) overlapping. The
        :class:`~geventc.recipes.base.Release` is true only when etcd confirmed every
        release; else it says what is left and about when it expires, and one warning
        says it for all of the recipes."""
        from .recipes.base import RELEASED

        if self._closed:
            return RELEASED
        self._closed = True
        self.closing = True  # recipes leave keys on shared leases to the revocation
        started = time.monotonic()
        end = started + self.stop_timeout
        expires_in = max((lease.expires_in for lease in self.lease_keeper.leases()), default=0.0)
        self.hub.close()
        revoked = self.lease_keeper.close(timeout=self.stop_timeout / 2)
        outcomes = self._stop_recipes(end)
        self.group.kill(block=True, timeout=max(0.0, end - time.monotonic()))
        self._abandon_unstopped()
        self.client.close()
        failed = [o for o in outcomes if o is None or not o.confirmed]
        if not failed and revoked:
            return RELEASED
        release = _unreleased(failed, revoked, expires_in, self.lease_keeper.unrevoked())
        log.warning("%r closed, but %s", self, release.detail)
        return release

    def _stop_recipes(self, end: float) -> list[Release | None]:
        """Stop every recipe by ``end``; each one's outcome (None: it did not finish in
        time). Those that stop at once stop in this greenlet. The others are stopped
        one after the other by a few greenlets: a greenlet goes on with the next recipe
        as long as each stop finishes without waiting, and while stops wait (for etcd)
        more greenlets start (twice as many each round), so waiting stops overlap and
        10,000 recipes that wait for nothing cost no greenlet each."""
        outcomes: list[Release | None] = []
        pending: collections.deque[Recipe[Any]] = collections.deque()
        recipes = list(self._recipes.values())
        for recipe in recipes:
            if not recipe.stops_at_once():
                pending.append(recipe)
                continue
            outcomes.append(_stop_one(recipe, end))
        stoppers: list[gevent.Greenlet[Any, Any]] = []

        def stop_pending() -> None:
            while pending and time.monotonic() < end:
                outcomes.append(_stop_one(pending.popleft(), end))

        while pending and time.monotonic() < end:
            stoppers += [self.group.spawn(stop_pending) for _ in range(max(1, len(stoppers)))]
            gevent.sleep(0)  # each stopper runs until its stop waits, or nothing is left
        gevent.joinall(stoppers, timeout=max(0.0, end - time.monotonic()) + 0.05)
        return outcomes + [None] * (len(recipes) - len(outcomes))  # unfinished: None

    def _abandon_unstopped(self) -> None:
        """End the recipes whose stop did not finish by the deadline (killed midway, or
        never begun): their channels close, so ``for event in channel`` ends (what they
        hold goes with the revoked leases, or expires with them)."""
        for recipe in list(self._recipes.values()):
            try:
                recipe._finish()
            except Exception:
                log.exception("ending %r failed", recipe)

    def construct_path(self, *parts: str) -> str:
        """Join path parts with ``/`` into an absolute path (``construct_path("services/
        api", "inst1")`` is ``/services/api/inst1``); empty parts or segments are refused."""
        if not parts:
            raise InvalidArgument("construct_path needs at least one part")
        segments: list[str] = []
        for part in parts:
            if not isinstance(part, str):
                raise InvalidArgument(f"path parts must be str, not {type(part).__name__}")
            pieces = part.strip("/").split("/")
            if not part.strip("/") or any(not p for p in pieces):
                raise InvalidArgument(f"path part {part!r} is empty or has an empty segment")
            segments.extend(pieces)
        return "/" + "/".join(segments)

    # --- recipes -----------------------------------------------------------------------

    def register(self, recipe: Recipe[Any]) -> None:
        """Track a started recipe so :meth:`close` stops it (recipes call this)."""
        if self._closed:
            raise ClientClosed("the connector is closed")
        self._recipes[id(recipe)] = recipe

    def unregister(self, recipe: Recipe[Any]) -> None:
        """Forget a stopped recipe."""
        if self._recipes.get(id(recipe)) is recipe:
            del self._recipes[id(recipe)]

    def ephemeral_key(self, path: str) -> EphemeralKey:
        """A key that lives while this process keeps its lease alive."""
        from .recipes.ephemeral import EphemeralKey

        return EphemeralKey(self, path)

    def leader_elector(self, path: str, identity: str, ttl: int = 10) -> LeaderElector:
        """A candidate in the election at ``path``."""
        from .recipes.election import LeaderElector

        return LeaderElector(self, path, identity, ttl=ttl)

    def service_tracker(
        self, path: str, *, channel: Channel[ServiceSnapshot | RecipeError] | None = None
    ) -> ServiceTracker:
        """Snapshots of the instances registered under ``path``; with ``channel`` (a
        ``Channel(latest_per_source=True)`` shared by many trackers, read by one
        greenlet) they go there instead of a channel of the tracker's own."""
        from .recipes.tracker import ServiceTracker

        return ServiceTracker(self, path, channel=channel)

    def observer(
        self,
        path: str,
        *,
        prefix: bool = False,
        start_revision: int = 0,
        maxsize: int | None = None,
    ) -> Observer:
        """Every change of the key ``path`` (or, with ``prefix``, of every key under
        ``path + "/"``), exactly once, in order, from ``start_revision`` (0: from
        now); ``maxsize`` bounds its channel."""
        from .recipes.observer import Observer

        return Observer(self, path, prefix=prefix, start_revision=start_revision, maxsize=maxsize)

    def health_monitor(self, *, once: bool = False, interval: float = 10.0) -> HealthMonitor:
        """The health of every member of the cluster, every ``interval`` seconds (or
        ``once``)."""
        from .recipes.health import HealthMonitor

        return HealthMonitor(self, once=once, interval=interval)

    def config(
        self,
        prefix: str,
        *,
        decode: Callable[[bytes], Any] | None = None,
        maxsize: int | None = None,
    ) -> ConfigWatcher:
        """The configuration under ``prefix`` as a live read-only mapping of relative
        names to values (``decode``d, UTF-8 text by default), with its changes
        (``maxsize`` bounds their channel)."""
        from .recipes.config import ConfigWatcher

        return ConfigWatcher(self, prefix, decode=decode, maxsize=maxsize)

    def registry(
        self,
        *,
        prefix: str = DEFAULT_PREFIX,
        ttl: int | None = None,
        retry: RetryPolicy | None = None,
        format: str = "kitex",
    ) -> Registry:
        """A Kitex-compatible service registry (see :class:`~geventc.Registry`)."""
        from .registry import Registry

        return Registry(self, prefix=prefix, ttl=ttl, retry=retry, format=format)

    def resolver(
        self,
        *,
        prefix: str = DEFAULT_PREFIX,
        default_weight: int = DEFAULT_WEIGHT,
        format: str = "kitex",
        strategy: str = "round_robin",
    ) -> Resolver:
        """A Kitex-compatible resolver with a watch-driven cache (see
        :class:`~geventc.Resolver`)."""
        from .resolver import Resolver

        return Resolver(
            self, prefix=prefix, default_weight=default_weight, format=format, strategy=strategy
        )

    # --- the coordination toolkit ----------------------------------------------------

    def lock(self, path: str, *, ttl: int = 10) -> Lock:
        """A mutual-exclusion lock at ``path``, Go ``concurrency.Mutex``'s layout (keys
        ``path/<lease hex>``), held on a lease of ``ttl`` seconds."""
        from .recipes.lock import Lock

        return Lock(self, path, ttl=ttl)

    def rw_lock(self, path: str, *, ttl: int = 10) -> RWLock:
        """A readers-writer lock at ``path`` (Go recipes ``RWMutex``'s layout); use its
        ``read`` and ``write`` locks."""
        from .recipes.rwlock import RWLock

        return RWLock(self, path, ttl=ttl)

    def semaphore(self, path: str, max_holders: int, *, ttl: int = 10) -> Semaphore:
        """At most ``max_holders`` holders of ``path`` at once, first come first
        served."""
        from .recipes.semaphore import Semaphore

        return Semaphore(self, path, max_holders, ttl=ttl)

    def barrier(self, path: str) -> Barrier:
        """A barrier at ``path`` (Go recipes ``Barrier``): hold, release, wait."""
        from .recipes.barrier import Barrier

        return Barrier(self, path)

    def double_barrier(self, path: str, count: int, *, ttl: int = 10) -> DoubleBarrier:
        """A double barrier of ``count`` participants at ``path`` (Go recipes
        ``DoubleBarrier``): enter, leave."""
        from .recipes.barrier import DoubleBarrier

        return DoubleBarrier(self, path, count, ttl=ttl)

    def counter(self, path: str) -> Counter:
        """An atomic integer counter stored at the key ``path``."""
        from .recipes.counter import Counter

        return Counter(self, path)

    def queue(self, path: str, *, ttl: int = 10) -> Queue:
        """A FIFO queue at ``path`` (Go recipes ``Queue``); claims are held on a lease of
        ``ttl`` seconds."""
        from .recipes.queue import Queue

        return Queue(self, path, ttl=ttl)

    def priority_queue(self, path: str, *, ttl: int = 10) -> PriorityQueue:
        """A priority queue at ``path`` (Go recipes ``PriorityQueue``)."""
        from .recipes.queue import PriorityQueue

        return PriorityQueue(self, path, ttl=ttl)

    def partitioner(
        self,
        path: str,
        items: Iterable[str],
        identity: str,
        *,
        ttl: int = 10,
        auto_release: bool = False,
    ) -> Partitioner:
        """Split ``items`` among the live members of ``path`` (kazoo's
        ``SetPartitioner``); with ``auto_release`` a membership change releases and
        re-allocates without waiting for ``release_set()``."""
        from .recipes.partitioner import Partitioner

        return Partitioner(self, path, items, identity, ttl=ttl, auto_release=auto_release)

    # ``conn.group`` is the connector's greenlet group (RecipeHost.group): the factory
    # of group membership is ``group_member``.
    def group_member(
        self,
        path: str,
        identity: str | None,
        *,
        capabilities: Any = None,
        ttl: int = 10,
    ) -> GroupMember:
        """Membership of ``identity`` in the group at ``path``, with ``capabilities``
        (tooz groups, kazoo ``Party``); ``identity=None`` watches the group without
        joining."""
        from .recipes.group import GroupMember

        return GroupMember(self, path, identity, capabilities=capabilities, ttl=ttl)

    def stm(
        self,
        apply: Callable[[STM], Any],
        *,
        isolation: Isolation | str = "serializable_snapshot",
        retries: int | None = None,
        prefetch: Iterable[str | bytes] = (),
    ) -> Any:
        """Run ``apply(tx)`` as a software transaction (etcd ``concurrency.STM``):
        re-run on conflict until it commits (at most ``retries`` more times, if
        given); returns what ``apply`` returned. ``prefetch`` keys are read in one
        request first."""
        from .stm import run_stm

        return run_stm(self, apply, isolation=isolation, retries=retries, prefetch=prefetch)

    def txn_guard(self, elector: LeaderElector) -> Comparison:
        """The comparison that lets a txn succeed only while ``elector`` leads."""
        from .recipes.election import LeaderElector

        if not isinstance(elector, LeaderElector):
            raise InvalidArgument("txn_guard() takes a LeaderElector")
        return elector.guard()

    # --- namespaced KV -----------------------------------------------------------------

    def get(
        self, key: str | bytes, *, revision: int | None = None, serializable: bool = False
    ) -> KeyValue | None:
        """:meth:`Client.get` under the namespace."""
        kv = self.client.get(self.namespace.key(key), revision=revision, serializable=serializable)
        return self.namespace.kv(kv)  # type: ignore[no-any-return]

    def get_prefix(self, prefix: str | bytes, **options: Any) -> RangeResult:
        """:meth:`Client.get_prefix` under the namespace."""
        stored = self.namespace.prefix(prefix)
        return self.namespace.result(self.client.get_prefix(stored, **options))

    def put(
        self,
        key: str | bytes,
        value: str | bytes,
        *,
        lease: int | Lease | None = None,
        prev_kv: bool = False,
        flight: Flight | None = None,
    ) -> PutResult:
        """:meth:`Client.put` under the namespace."""
        result = self.client.put(
            self.namespace.key(key), value, lease=lease, prev_kv=prev_kv, flight=flight
        )
        return self.namespace.result(result)

    def delete(self, key: str | bytes, *, prev_kv: bool = False) -> DeleteResult:
        """:meth:`Client.delete` under the namespace."""
        return self.namespace.result(self.client.delete(self.namespace.key(key), prev_kv=prev_kv))

    def delete_prefix(self, prefix: str | bytes, *, prev_kv: bool = False) -> DeleteResult:
        """:meth:`Client.delete_prefix` under the namespace (the empty prefix is refused)."""
        stored = self.namespace.prefix(prefix, allow_empty=False)
        return self.namespace.result(self.client.delete_prefix(stored, prev_kv=prev_kv))

    def txn(
        self,
        compare: Iterable[Comparison] = (),
        success: Iterable[TxnOp] = (),
        failure: Iterable[TxnOp] = (),
        *,
        flight: Flight | None = None,
    ) -> TxnResult:
        """:meth:`Client.txn` with every key of every comparison and op under the
        namespace."""
        compares, then, otherwise = _listed(compare), _listed(success), _listed(failure)
        ns = self.namespace
        if not ns.root:  # nothing to rewrite: the client validates
            return self.client.txn(compares, then, otherwise, flight=flight)
        txn_body(compares, then, otherwise)  # validate before rewriting
        result = self.client.txn(
            [ns.comparison(c) for c in compares],
            [ns.op(op) for op in then],
            [ns.op(op) for op in otherwise],
            flight=flight,
        )
        return ns.result(result)

    def watch(
        self,
        key: str | bytes,
        *,
        prefix: bool = False,
        start_revision: int | None = None,
        prev_kv: bool = False,
        filters: Iterable[str] = (),
        progress_notify: bool = False,
    ) -> WatchStream:
        """:meth:`Client.watch` under the namespace; event keys come back stripped."""
        is_prefix = validate.boolean(prefix, "prefix")
        stored = self.namespace.prefix(key) if is_prefix else self.namespace.key(key)
        stream = self.client.watch(
            stored,
            prefix=is_prefix,
            start_revision=start_revision,
            prev_kv=prev_kv,
            filters=filters,
            progress_notify=progress_notify,
        )
        stream.transform = self.namespace.watch_response
        return stream

    # --- pass-through calls ------------------------------------------------------------

    def grant(self, ttl: int, lease_id: int = 0) -> Lease:
        """:meth:`Client.grant`."""
        return self.client.grant(ttl, lease_id)

    def revoke(self, lease: int | Lease) -> None:
        """:meth:`Client.revoke`."""
        self.client.revoke(lease)

    def keepalive_once(self, lease: int | Lease) -> int:
        """:meth:`Client.keepalive_once`."""
        return self.client.keepalive_once(lease)

    def time_to_live(self, lease: int | Lease, *, keys: bool = False) -> LeaseTimeToLive:
        """:meth:`Client.time_to_live`, attached keys stripped of the namespace."""
        result = self.client.time_to_live(lease, keys=keys)
        stripped = tuple(self.namespace.strip(k) for k in result.keys)
        return LeaseTimeToLive(result.id, result.ttl, result.granted_ttl, stripped)

    def leases(self) -> list[int]:
        """:meth:`Client.leases` (every live lease ID)."""
        return self.client.leases()

    def compact(self, revision: int, *, physical: bool = False) -> None:
        """:meth:`Client.compact`."""
        self.client.compact(revision, physical=physical)

    def members(self) -> list[Member]:
        """:meth:`Client.members`."""
        return self.client.members()

    def status(self, endpoint: str | None = None) -> Status:
        """:meth:`Client.status`."""
        return self.client.status(endpoint)

    def health(self, endpoint: str | None = None) -> Health:
        """:meth:`Client.health`."""
        return self.client.health(endpoint)

    def version(self, endpoint: str | None = None) -> Version:
        """:meth:`Client.version`."""
        return self.client.version(endpoint)


def _stop_one(recipe: Recipe[Any], end: float) -> Release | None:
    """``recipe._shutdown(deadline=end)``; None if it failed (logged)."""
    try:
        return recipe._shutdown(deadline=end)
    except Exception:  # one recipe's bug must not keep the others running
        log.exception("stopping %r failed", recipe)
        return None


def _unreleased(
    failed: list[Release | None], revoked: bool, expires_in: float, unrevoked: float | None
) -> Release:
    """What a close could not release, said once: how many recipes were not confirmed
    released (with the first one's detail), and the leases not confirmed revoked."""
    from .recipes.base import Release

    details: list[str] = []
    unconfirmed = [o for o in failed if o is not None]
    unfinished = len(failed) - len(unconfirmed)
    if unconfirmed:
        first = unconfirmed[0].detail
        more = f" (and {len(unconfirmed) - 1} more)" if len(unconfirmed) > 1 else ""
        details.append(f"{first}{more}")
        expires_in = max([expires_in, *(o.expires_in or 0.0 for o in unconfirmed)])
    if not revoked:
        expires_in = max(expires_in, unrevoked or 0.0)
        details.append(f"could not revoke every lease; they expire in about {expires_in:.0f}s")
    if unfinished:
        details.append(f"{unfinished} recipe(s) did not finish stopping in time")
    return Release(False, "; ".join(details), expires_in)


def _listed(items: Any) -> Any:
    """A list of a txn argument's items (iterators are read once); strings and other
    non-iterables pass through for :func:`txn_body` to refuse."""
    if type(items) is list or type(items) is tuple:
        return items  # read as it is (nothing keeps it)
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        return items
    return list(items)

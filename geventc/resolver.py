"""Resolver: the instances of a service, from a watch-driven cache.

The first ``resolve(service)`` reads the service's keys and starts watching them (one
shared watch per service per connector); later calls cost no request, and every
register, deregister or expiry is in the cache as soon as the watch delivers it. An
instance with ``weight <= 0`` gets ``default_weight``; a malformed value is skipped with
a warning. ``pick`` chooses by smooth weighted round-robin (or weighted random).

The first answer reflects every registration this connector made before it. When a
service's cache cannot be confirmed current (no member answers for longer than the
liveness bound, 5 s by default) its :meth:`Resolver.watch` channels get a
:class:`ServiceInstances` with ``stale=True`` and the data's age (and one with
``stale=False`` once current again); :meth:`Resolver.age` and :meth:`Resolver.stale`
tell the same at any time. ``resolve`` and ``pick`` keep answering from the cache.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gevent.event import Event

from . import validate
from .channel import Channel
from .errors import InvalidArgument, NoInstances, ProtocolError, RecipeStateError, Timeout
from .instances import DEFAULT_PREFIX, DEFAULT_WEIGHT, Instance, check_format, check_prefix, decode
from .recipes.base import Recipe, Release
from .watch import PrefixUpdate, PrefixWatch

if TYPE_CHECKING:
    from .host import RecipeHost

log = logging.getLogger("geventc")
STRATEGIES = ("round_robin", "random")
#: problems the resolver's own channel keeps for a reader (the oldest are dropped)
PROBLEMS_KEPT = 100


@dataclass(frozen=True, slots=True)
class ServiceInstances:
    """A service's instances as of ``revision`` (empty when none is left); ``stale``
    says they could not be confirmed current for longer than the liveness bound, ``age``
    how many seconds ago they last were."""

    service: str
    instances: tuple[Instance, ...]
    revision: int
    stale: bool = False
    age: float = 0.0


class _ServiceCache:
    """The cached instances of one service, fed by the shared prefix watch."""

    def __init__(self, resolver: Resolver, service: str) -> None:
        self.resolver = resolver
        self.service = service
        self.instances: tuple[Instance, ...] = ()
        self.revision = 0
        self.stale = False
        self.watch: PrefixWatch | None = None
        self.loaded = Event()
        self.channels: list[Channel[ServiceInstances]] = []
        self.current_weight: dict[str, int] = {}

    def on_update(self, update: PrefixUpdate) -> None:
        if update.error is not None or (not update.events and not update.resynced):
            if update.stale != self.stale and self.loaded.is_set():
                self.stale = update.stale
                self._tell(update.age)
            return
        self.stale = update.stale
        found = []
        for kv in update.state.values():
            try:
                found.append(self.resolver.decode(self.service, kv.value))
            except ProtocolError as exc:
                log.warning("skipping %s: %s", kv.key_str, exc)
        self.instances = tuple(sorted(found, key=lambda i: i.address))
        self.revision = update.revision
        self.loaded.set()
        self._tell(update.age)

    def snapshot(self, age: float = 0.0) -> ServiceInstances:
        """The cached instances as an event."""
        return ServiceInstances(self.service, self.instances, self.revision, self.stale, age)

    def _tell(self, age: float) -> None:
        snapshot = self.snapshot(age)
        for channel in self.channels:
            channel.put(snapshot)

    def pick_round_robin(self) -> Instance:
        """Smooth weighted round-robin (nginx's): fair and evenly interleaved."""
        total, best, best_weight = 0, None, 0
        for instance in self.instances:
            weight = max(instance.weight, 1)
            current = self.current_weight.get(instance.address, 0) + weight
            self.current_weight[instance.address] = current
            total += weight
            if best is None or current > best_weight:
                best, best_weight = instance, current
        assert best is not None
        self.current_weight[best.address] -= total
        return best


class Resolver(Recipe[ServiceInstances]):
    """Finds service instances; see the module docstring. A recipe like the others
    (``conn.resolver(...)``): :meth:`resolve`, :meth:`pick` and :meth:`watch` start it
    if needed; ``stop()`` (or :meth:`close`) ends every watch and channel. Its own
    channel carries only problems (at most the newest 100)."""

    def __init__(
        self,
        conn: RecipeHost,
        *,
        prefix: str = DEFAULT_PREFIX,
        default_weight: int = DEFAULT_WEIGHT,
        format: str = "kitex",
        strategy: str = "round_robin",
    ) -> None:
        super().__init__(conn)
        self.prefix = check_prefix(prefix)
        self.default_weight = validate.integer(default_weight, "default_weight", minimum=1)
        self.format = check_format(format)
        if strategy not in STRATEGIES:
            raise InvalidArgument(f"strategy must be one of {', '.join(STRATEGIES)}")
        self.strategy = strategy
        self._caches: dict[str, _ServiceCache] = {}

    _RELEASES_LOCALLY = True  # it only leaves the shared watches

    def __repr__(self) -> str:
        return f"Resolver({self.prefix!r}, services={sorted(self._caches)})"

    def _start(self) -> None:
        self._begin(maxsize=PROBLEMS_KEPT)

    def decode(self, service: str, value: bytes) -> Instance:
        """The instance a stored value describes (weights <= 0 get the default)."""
        return decode(service, value, self.format, self.default_weight)

    def resolve(self, service: str) -> list[Instance]:
        """The service's instances (cached and kept current by a watch); raises
        :class:`NoInstances` when none is registered."""
        instances = self._cache(service).instances
        if not instances:
            raise NoInstances(f"no instance of service {service!r} is registered")
        return list(instances)

    def watch(self, service: str) -> Channel[ServiceInstances]:
        """A channel of the service's instance lists: the current one, then one per
        change (only the newest is kept for a slow reader; empty when none is left)."""
        cache = self._cache(service)
        channel: Channel[ServiceInstances] = Channel(latest_only=True)
        cache.channels.append(channel)
        channel.put(cache.snapshot(self.age(service) if cache.stale else 0.0))
        return channel

    def age(self, service: str) -> float:
        """Seconds since the service's cached instances were last confirmed current."""
        watch = self._cache(service).watch
        return watch.age if watch is not None else 0.0

    def stale(self, service: str) -> bool:
        """True while the service's cache could not be confirmed current for longer
        than the liveness bound."""
        return self._cache(service).stale

    def pick(self, service: str) -> Instance:
        """One instance chosen by weight: smooth weighted round-robin by default, or
        weighted random (``strategy="random"``)."""
        cache = self._cache(service)
        if not cache.instances:
            raise NoInstances(f"no instance of service {service!r} is registered")
        if self.strategy == "random":
            weights = [max(i.weight, 1) for i in cache.instances]
            return random.choices(cache.instances, weights=weights)[0]
        return cache.pick_round_robin()

    def close(self) -> Release:
        """:meth:`stop`: end every watch of this resolver and close its channels."""
        if not self._running and not self._stopped:
            self.start()  # closing a resolver never used still ends it
        return self.stop()

    def _release(self) -> None:
        for service, cache in list(self._caches.items()):
            self._conn.hub.unsubscribe(self._service_prefix(service), cache.on_update)
            for channel in cache.channels:
                channel.close()
        self._caches.clear()

    def _service_prefix(self, service: str) -> bytes:
        return f"{self.prefix}/{service}/".encode()

    def _cache(self, service: str) -> _ServiceCache:
        if not isinstance(service, str) or not service or "/" in service:
            raise InvalidArgument(f"service {service!r} must be a non-empty str without '/'")
        if not self._running:
            if self._stopped:
                raise RecipeStateError(f"{self!r} was closed; make a new one")
            self.start()
        cache = self._caches.get(service)
        if cache is None:
            cache = _ServiceCache(self, service)
            self._caches[service] = cache
            cache.watch = self._conn.hub.subscribe(
                self._service_prefix(service), cache.on_update, read_your_writes=True
            )
        if not cache.loaded.is_set():
            started = time.monotonic()
            timeout = self._conn.request_timeout
            if not cache.loaded.wait(timeout):
                raise Timeout(
                    f"could not load the instances of {service!r} within "
                    f"{time.monotonic() - started:.1f}s"
                )
        return cache

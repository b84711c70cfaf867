"""``Connector``: a client with a namespace, and the factory of every recipe.

Every key the connector reads, writes or watches is placed under its namespace and comes
back without it, so applications sharing one etcd cannot see each other. The connector
owns the greenlets of its recipes (a ``gevent.pool.Group``), one shared lease per TTL
and one watch stream per watched prefix; ``close()`` stops all of it.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from gevent.pool import Group

from . import validate
from .client import Client
from .endpoints import parse_endpoint
from .errors import ClientClosed, InvalidArgument
from .lease import LeaseKeeper
from .namespace import Namespace
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
    from .recipes.base import Recipe
    from .recipes.config import ConfigWatcher
    from .recipes.election import LeaderElector
    from .recipes.ephemeral import EphemeralKey
    from .recipes.health import HealthMonitor
    from .recipes.observer import Observer
    from .recipes.tracker import ServiceTracker

log = logging.getLogger("geventc")


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


def connect(endpoints: Any, namespace: str | None = None, **client_options: Any) -> Connector:
    """A :class:`Connector` to ``endpoints`` with keys under ``namespace``; the options
    are those of :class:`Client` (username, password, tls, timeout, ...)."""
    Namespace(namespace)  # refuse a bad namespace before opening anything
    return Connector(Client(endpoints, **client_options), namespace)


class Connector:
    """A :class:`Client` whose keys live under a namespace, and the recipe factory."""

    def __init__(self, client: Client, namespace: str | None = None) -> None:
        if not isinstance(client, Client):
            raise InvalidArgument("Connector needs a geventc.Client")
        self.client = client
        self.namespace = Namespace(namespace)
        self.group: Group = client.group  # the client's greenlets and every recipe's
        self.lease_keeper = LeaseKeeper(client, self.group)
        self.hub = WatchHub(self, self.group, client.liveness)
        self._recipes: list[Recipe[Any]] = []
        self._closed = False
        self.closing = False

    def __repr__(self) -> str:
        return f"Connector({self.client.endpoints}, namespace={self.namespace.name!r})"

    def __enter__(self) -> Connector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def written_revision(self) -> int:
        """The highest revision this connector's own writes produced."""
        return self.client.written_revision

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Stop every recipe, watch and lease of this connector, then close the pools."""
        if self._closed:
            return
        self._closed = True
        self.closing = True  # keys on shared leases go with the leases' revocation
        for recipe in list(self._recipes):
            recipe.stop()
        self.hub.close()
        self.lease_keeper.close()
        self.group.kill(block=True, timeout=2.0)
        self.client.close()

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
        self._recipes.append(recipe)

    def unregister(self, recipe: Recipe[Any]) -> None:
        """Forget a stopped recipe."""
        if recipe in self._recipes:
            self._recipes.remove(recipe)

    def ephemeral_key(self, path: str) -> EphemeralKey:
        """A key that lives while this process keeps its lease alive."""
        from .recipes.ephemeral import EphemeralKey

        return EphemeralKey(self, path)

    def leader_elector(self, path: str, identity: str, ttl: int = 10) -> LeaderElector:
        """A candidate in the election at ``path``."""
        from .recipes.election import LeaderElector

        return LeaderElector(self, path, identity, ttl=ttl)

    def service_tracker(self, path: str) -> ServiceTracker:
        """Snapshots of the instances registered under ``path``."""
        from .recipes.tracker import ServiceTracker

        return ServiceTracker(self, path)

    def observer(self, path: str) -> Observer:
        """Every change of a key (or prefix), exactly once, in order."""
        from .recipes.observer import Observer

        return Observer(self, path)

    def health_monitor(self) -> HealthMonitor:
        """The health of every member of the cluster."""
        from .recipes.health import HealthMonitor

        return HealthMonitor(self)

    def config(self, prefix: str, *, decode: Callable[[bytes], Any] | None = None) -> ConfigWatcher:
        """The configuration under ``prefix`` as a live read-only mapping of relative
        names to values (``decode``d, UTF-8 text by default), with its changes."""
        from .recipes.config import ConfigWatcher

        return ConfigWatcher(self, prefix, decode=decode)

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
    ) -> PutResult:
        """:meth:`Client.put` under the namespace."""
        result = self.client.put(self.namespace.key(key), value, lease=lease, prev_kv=prev_kv)
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
    ) -> TxnResult:
        """:meth:`Client.txn` with every key of every comparison and op under the
        namespace."""
        compares, then, otherwise = _listed(compare), _listed(success), _listed(failure)
        txn_body(compares, then, otherwise)  # validate before rewriting
        ns = self.namespace
        result = self.client.txn(
            [ns.comparison(c) for c in compares],
            [ns.op(op) for op in then],
            [ns.op(op) for op in otherwise],
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


def _listed(items: Any) -> Any:
    """A list of a txn argument's items (iterators are read once); strings and other
    non-iterables pass through for :func:`txn_body` to refuse."""
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        return items
    return list(items)

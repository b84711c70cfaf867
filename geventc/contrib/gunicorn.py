"""gunicorn integration for ``worker_class = "gevent"``.

One registration per server, kept by every worker, and per-worker etcd objects for
request handlers. A complete ``gunicorn.conf.py``::

    import os

    from geventc.contrib.gunicorn import GeventcHooks

    bind = "0.0.0.0:8000"
    workers = 4
    worker_class = "gevent"

    etcd_hooks = GeventcHooks(
        os.environ.get("ETCD_ENDPOINTS", "http://127.0.0.1:2379"),
        service="api",  # registered as kitex/registry-etcd/api/<host>:8000
        ttl=10,
        config_prefix="/config/api",  # optional: config() in every worker
    )
    when_ready = etcd_hooks.when_ready  # master: lets workers tell a shutdown apart
    on_reload = etcd_hooks.on_reload  # master: the same after a HUP reload
    post_worker_init = etcd_hooks.post_worker_init  # worker: connector, resolver, ...
    worker_exit = etcd_hooks.worker_exit  # worker: stops them, deregisters on shutdown

Request handlers, in any greenlet of a worker::

    from geventc.contrib import gunicorn as etcd

    backend = etcd.resolver().pick("backend")  # cached, kept current by a watch
    color = etcd.config().get("color", "blue")  # the live configuration mapping
    etcd.connector().put("/jobs/1", "queued")  # the worker's own connector

Outside a configured worker (the master, a script, a process forked by a handler) the
helpers raise :class:`NotConfigured`.

Why ``post_worker_init`` and not ``post_fork``: gunicorn calls ``post_fork`` before the
gevent worker has patched the process, and geventc needs patched sockets
(:class:`~geventc.errors.NotPatched`). ``post_worker_init`` runs in the worker, after
the fork and the patching, before the first request. A client made before a fork
refuses to be used in the child (:class:`~geventc.errors.ForkedProcess`), so each
worker always talks to etcd over its own sockets.

How the single registration works: the server's address (its first TCP listener, or
``address=``) is one key ``{prefix}/{service}/{host:port}`` in Kitex format (or
``etcd-endpoints``), attached to **one lease shared by all the server's workers**. The
first worker creates the key (create-if-absent), the others find it and join its lease;
every worker renews that lease every ``ttl/3`` and watches the key. What that gives:

- a worker that dies (SIGKILL, OOM, timeout) or is restarted (``max_requests``, HUP,
  TTOU) changes nothing: the key and its lease stay as long as one worker renews;
- if the key is deleted or its lease lost (etcd restarted without its data, every
  worker stalled for ``ttl`` seconds), any live worker re-creates it as soon as its
  watch or its next renewal (within ``ttl/3``) tells it; the others join the new lease;
- when the master begins a graceful shutdown (SIGTERM, SIGINT, SIGQUIT; the
  ``when_ready`` hook marks it in memory shared with the workers) the workers revoke
  the lease within about 0.2 s, before they finish their in-flight requests, and do
  not re-create it; if etcd is unreachable then, it expires ``ttl`` seconds later;
- if the master is killed, gunicorn's gevent workers notice within about a second and
  deregister as they exit;
- if the whole server is killed (or the machine fails) the key expires ``ttl``
  seconds after the last renewal.

Not guaranteed: during a USR2 binary upgrade both masters' workers share the key; when
the old master is stopped its workers remove it and the new workers re-create it at
once, a gap of a few milliseconds that watchers see. The key says that some worker of
the server renews its lease, not that the application is healthy. A gunicorn race: a
worker told to stop before it installed its own signal handlers (during its first
moments) misses the signal and runs until ``graceful_timeout``; the registration is
removed on time anyway, since it follows the shared flag, not the signal.
"""

from __future__ import annotations

import logging
import mmap
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import gevent
import gevent.monkey
from gevent.event import Event
from gevent.lock import BoundedSemaphore
from gevent.pool import Group

# Only modules that load neither urllib3 nor ssl at import time: this module is imported
# by gunicorn.conf.py in the master, before the gevent worker patches the process, and a
# urllib3 imported before the patch would not be cooperative (NotPatched in the worker).
# The network modules are imported inside the functions that run in the workers.
from .. import validate
from ..endpoints import parse_endpoints
from ..errors import EtcdError, InvalidArgument, LeaseNotFound, NotPatched, RecipeStateError
from ..instances import DEFAULT_WEIGHT, FORMATS, Instance, encode, join_address
from ..namespace import Namespace
from ..retry import Backoff
from ..txn import Compare, Op
from ..wire import RangeResult

if TYPE_CHECKING:
    from ..connector import Connector
    from ..recipes.config import ConfigWatcher
    from ..resolver import Resolver
    from ..watch import PrefixUpdate

__all__ = [
    "GeventcHooks",
    "NotConfigured",
    "SharedRegistration",
    "config",
    "connector",
    "registration",
    "resolver",
]

log = logging.getLogger("geventc")

#: How often a worker checks whether its master began to stop (seconds).
MASTER_POLL = 0.2
#: The same as :data:`geventc.registry.DEFAULT_PREFIX` (not imported: see above).
DEFAULT_PREFIX = "kitex/registry-etcd"
#: The same as :data:`geventc.resolver.STRATEGIES`.
STRATEGIES = ("round_robin", "random")

# One page shared by the master and every worker it forks: an anonymous MAP_SHARED
# mapping made when this module is imported, i.e. when gunicorn reads the config file
# in the master. Byte _ARMED is set once when_ready/on_reload ran in the master, byte
# _STOPPING when the master begins to stop its workers for good.
_ARMED, _STOPPING = 0, 1
_shared = mmap.mmap(-1, 2)


def _master_stopping() -> bool:
    return _shared[_STOPPING] == 1


class NotConfigured(RecipeStateError):
    """A helper was called outside a gunicorn worker configured by :class:`GeventcHooks`
    (or asked for something the hooks were not configured to provide)."""


def _check_prefix(prefix: object) -> str:
    """A registry prefix, as :func:`geventc.registry.check_prefix` checks it."""
    if not isinstance(prefix, str) or not prefix.strip("/"):
        raise InvalidArgument("prefix must be a non-empty str such as 'kitex/registry-etcd'")
    return prefix.rstrip("/")


def _check_format(fmt: object) -> str:
    """A registry value format, as :func:`geventc.registry.check_format` checks it."""
    if fmt not in FORMATS:
        raise InvalidArgument(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return str(fmt)


# --- the shared registration ---------------------------------------------------------------


class SharedRegistration:
    """One registration shared by several processes (the workers of one server).

    The key ``{prefix}/{service}/{address}`` is created if absent, on a lease of ``ttl``
    seconds; a process that finds it already on a lease joins that lease instead. Every
    participant renews the lease every ``ttl/3`` and watches the key, re-creating it
    (on the shared lease if still alive, else on a new one) whenever it disappears.
    :meth:`close` leaves the registration to the others, or with ``deregister=True``
    removes it for everyone. While ``hold()`` returns False (say, the server is being
    stopped) the key is not re-created. Problems are logged (logger ``geventc``) and
    retried.
    """

    def __init__(
        self,
        conn: Connector,
        instance: Instance,
        *,
        prefix: str = DEFAULT_PREFIX,
        ttl: int = 10,
        format: str = "kitex",
        hold: Callable[[], bool] | None = None,
    ) -> None:
        from ..connector import Connector
        from ..recipes.ephemeral import parent_prefix

        if not isinstance(conn, Connector):
            raise InvalidArgument("SharedRegistration needs a geventc.Connector")
        if not isinstance(instance, Instance):
            raise InvalidArgument("SharedRegistration needs a geventc.Instance")
        if hold is not None and not callable(hold):
            raise InvalidArgument("hold must be a callable returning a bool, or None")
        self._hold = hold or (lambda: True)
        self.instance = instance.for_registration()
        self.ttl = validate.ttl(ttl)
        self.key = f"{_check_prefix(prefix)}/{self.instance.service}/{self.instance.address}"
        self.value = encode(self.instance, _check_format(format))
        #: The lease the key is on (0 until it is known).
        self.lease_id = 0
        self._conn = conn
        self._key = conn.namespace.strip(conn.namespace.key(self.key))
        self._watched = parent_prefix(self._key)
        self._lock = BoundedSemaphore()
        self._wake = Event()
        self._done = Event()  # set when close() finished
        self._group = Group()
        self._lost = True  # the key is not known to exist on lease_id
        self._known_at = 0  # the revision of the last state we read ourselves
        self._running = False
        self._closed = False

    def __repr__(self) -> str:
        return f"SharedRegistration({self.key!r}, lease={self.lease_id:x})"

    @property
    def registered(self) -> bool:
        """True while the key is known to exist on the lease this process renews."""
        return self._running and bool(self.lease_id) and not self._lost

    def start(self) -> None:
        """Join (or create) the registration in the background and keep it."""
        if self._running or self._closed:
            raise RecipeStateError("a SharedRegistration starts once")
        self._running = True
        self._conn.hub.subscribe(self._watched, self._on_change, key=self._key)
        self._group.spawn(self._keep)

    def wait(self, timeout: float) -> bool:
        """Wait until :attr:`registered` (True) or ``timeout`` seconds passed (False)."""
        deadline = time.monotonic() + validate.positive_number(timeout, "timeout")
        while not self.registered:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._running:
                return self.registered
            gevent.sleep(min(0.02, remaining))
        return True

    def close(self, *, deregister: bool = False) -> None:
        """Stop renewing and watching (idempotent). With ``deregister`` also revoke the
        lease the key is on, removing it for every participant; without, the others
        keep it (or it expires ``ttl`` seconds after the last renewal). A second call
        while another greenlet closes it waits for that close to finish."""
        limit = self._conn.client.transport.timeout
        if self._closed:
            self._done.wait(2 * limit + 2.0)
            return
        self._closed = True
        self._running = False
        try:
            self._conn.hub.unsubscribe(self._watched, self._on_change, key=self._key)
            self._wake.set()
            got_lock = self._lock.acquire(timeout=limit)  # let a create in flight finish
            try:
                self._group.kill(block=True, timeout=1.0)
                if deregister and not self._conn.closed:
                    with gevent.Timeout(limit, False):  # type: ignore[arg-type]
                        self._deregister()
            finally:
                if got_lock:
                    self._lock.release()
        finally:
            self._done.set()

    # --- internals -------------------------------------------------------------------

    def _keep(self) -> None:
        backoff = Backoff(first=0.1, cap=max(0.5, self.ttl / 3))
        while self._running and not self._conn.closed:
            self._wake.clear()
            try:
                if not self._lost and self.lease_id:
                    self._renew()
                elif self._hold():
                    self._join()
                backoff.reset()
                pause = 0.0 if self._lost and self._hold() else self.ttl / 3
            except EtcdError as exc:
                log.warning("%r: %s; retrying", self, exc)
                pause = backoff.next()
            self._wake.wait(pause)

    def _join(self) -> None:
        """Put the key on the lease we share (or on a new one) unless it already is on
        a lease, and share whichever lease it is on then."""
        with self._lock:
            if not self._running or not self._hold():
                return
            if self.lease_id:
                try:
                    self._adopt(self._claim(self.lease_id))
                    return
                except LeaseNotFound:
                    log.info("%r: the shared lease expired; granting a new one", self)
            fresh = self._conn.grant(self.ttl).id
            try:
                held = self._claim(fresh)
            except EtcdError:
                self._revoke_quietly(fresh)
                raise
            if held[0] != fresh:  # another process created it meanwhile: share its lease
                self._revoke_quietly(fresh)
            self._adopt(held)

    def _claim(self, lease: int) -> tuple[int, bytes]:
        """Create the key on ``lease`` if it is absent (or on no lease); the lease and
        value the key has afterwards."""
        result = self._conn.txn(
            [Compare.lease(self._key) == 0],
            [Op.put(self._key, self.value, lease=lease)],
            [Op.get(self._key)],
        )
        self._known_at = result.header.revision
        if result.succeeded:
            return lease, self.value
        read = result.responses[0]
        assert isinstance(read, RangeResult) and read.kvs  # it is on some lease
        return read.kvs[0].lease, read.kvs[0].value

    def _adopt(self, held: tuple[int, bytes]) -> None:
        lease, value = held
        if value != self.value:  # e.g. new tags after a reload: the newest worker wins
            self._conn.txn(
                [Compare.lease(self._key) == lease],
                [Op.put(self._key, self.value, lease=lease)],
            )
        if lease != self.lease_id or self._lost:
            log.info("%r: registered %s at %s", self, self.instance.service, self.key)
        self.lease_id = lease
        self._lost = False

    def _renew(self) -> None:
        try:
            self._conn.keepalive_once(self.lease_id)
        except LeaseNotFound:
            log.warning("%r: the shared lease expired (and the key with it)", self)
            self._lost = True

    def _on_change(self, update: PrefixUpdate) -> None:
        if not self._running or update.error is not None or update.revision < self._known_at:
            return  # stopped, a problem the watch retries, or older than what we know
        current = update.state.get(self._key)
        if current is None or not current.lease:  # deleted, or overwritten without a lease
            if not self._lost and self._hold():
                log.warning("%r: the key was deleted or overwritten; re-creating it", self)
            self._lost = True
            self._wake.set()
        elif current.lease != self.lease_id:
            self.lease_id = current.lease  # re-created by another process: share its lease
            self._lost = False

    def _deregister(self) -> None:
        leases = {self.lease_id}
        try:
            kv = self._conn.get(self._key)
            if kv is not None:
                leases.add(kv.lease)
        except EtcdError as exc:
            log.warning("%r: could not read the key to deregister it: %s", self, exc)
        for lease in sorted(leases - {0}):
            self._revoke_quietly(lease)
        log.info("%r: deregistered %s", self, self.key)

    def _revoke_quietly(self, lease: int) -> None:
        try:
            self._conn.revoke(lease)
        except LeaseNotFound:
            pass  # already gone: revoked by another process, or expired
        except EtcdError as exc:
            log.warning("could not revoke lease %x (%s); it expires by its TTL", lease, exc)


# --- the hooks ---------------------------------------------------------------------------


class GeventcHooks:
    """gunicorn server hooks: reference :meth:`when_ready`, :meth:`on_reload`,
    :meth:`post_worker_init` and :meth:`worker_exit` from ``gunicorn.conf.py`` (see the
    module docstring). Arguments are checked when the config file is read.

    ``endpoints``, ``namespace`` and ``client_options`` (username, password, tls,
    timeout, ...) make each worker's connector. With ``service`` the server registers
    itself once (``address`` defaults to its first TCP listener; an unspecified host
    becomes the machine's address as Kitex does), with ``weight`` and ``tags``, under
    ``prefix`` in ``format``, on a lease of ``ttl`` seconds. ``prefix``, ``format`` and
    ``strategy`` also configure each worker's :class:`~geventc.Resolver`. With
    ``config_prefix`` each worker follows that configuration (``config_decode``d).
    """

    def __init__(
        self,
        endpoints: Any,
        service: str | None = None,
        *,
        namespace: str | None = None,
        ttl: int = 10,
        address: str | None = None,
        weight: int = DEFAULT_WEIGHT,
        tags: Mapping[str, str] | None = None,
        prefix: str = DEFAULT_PREFIX,
        format: str = "kitex",
        strategy: str = "round_robin",
        config_prefix: str | None = None,
        config_decode: Callable[[bytes], Any] | None = None,
        **client_options: Any,
    ) -> None:
        parse_endpoints(endpoints)
        Namespace(namespace)
        if service is not None:  # checks service, address, weight and tags
            Instance(service, address or "127.0.0.1:1", weight=weight, tags=tags or {})
        elif address is not None:
            raise InvalidArgument("address= is the address to register: it needs service=")
        if strategy not in STRATEGIES:
            raise InvalidArgument(f"strategy must be one of {', '.join(STRATEGIES)}")
        if config_prefix is not None and (not isinstance(config_prefix, str) or not config_prefix):
            raise InvalidArgument("config_prefix must be a non-empty str such as '/config/api'")
        if config_decode is not None and not callable(config_decode):
            raise InvalidArgument("config_decode must be a callable taking bytes, or None")
        self.endpoints = endpoints
        self.service = service
        self.namespace = namespace
        self.ttl = validate.ttl(ttl)
        self.address = address
        self.weight = weight
        self.tags = dict(tags or {})
        self.prefix = _check_prefix(prefix)
        self.format = _check_format(format)
        self.strategy = strategy
        self.config_prefix = config_prefix
        self.config_decode = config_decode
        self.client_options = client_options

    def __repr__(self) -> str:
        return f"GeventcHooks(service={self.service!r}, namespace={self.namespace!r})"

    # --- master hooks ----------------------------------------------------------------

    def when_ready(self, server: Any) -> None:
        """Master, once the server listens: wrap the arbiter's ``stop`` so that the
        workers learn (through shared memory) that the master stops for good."""
        _arm(server)

    def on_reload(self, server: Any) -> None:
        """Master, after a HUP reload: the same as :meth:`when_ready` (idempotent)."""
        _arm(server)

    # --- worker hooks ----------------------------------------------------------------

    def post_worker_init(self, worker: Any) -> None:
        """Worker, after the fork and gevent's patching: make this worker's connector,
        resolver and configuration, and join the server's registration (in the
        background: a worker boots even while etcd is unreachable)."""
        global _current
        if not gevent.monkey.is_module_patched("socket"):
            raise NotPatched(
                "geventc.contrib.gunicorn needs worker_class = 'gevent' (or another worker "
                "that applies gevent.monkey.patch_all() before post_worker_init)"
            )
        if _current is not None and _current.pid == os.getpid():
            _current.close(deregister=False)
        if not _shared[_ARMED]:
            log.warning(
                "geventc: the when_ready hook is not set in the gunicorn config; the "
                "registration will not be removed on shutdown but expire %ds later",
                self.ttl,
            )
        state = _WorkerState(self, worker)
        _current = state
        state.start()

    def worker_exit(self, server: Any, worker: Any) -> None:
        """Worker, as it exits: stop its etcd objects. If the master is stopping (or
        gone) remove the registration; otherwise the other workers keep it."""
        global _current
        state = _current
        if state is None or state.pid != os.getpid():
            return  # gunicorn also calls this in the master for a vanished worker
        _current = None
        state.close(deregister=not state.server_running())


def _arm(server: Any) -> None:
    """Mark the master as armed and make its ``stop`` set the shared stopping flag."""
    _shared[_ARMED] = 1
    if getattr(server, "_geventc_stop_wrapped", False):
        return
    original = server.stop

    def stop(*args: Any, **kwargs: Any) -> Any:
        _shared[_STOPPING] = 1  # before the workers are sent their signal
        return original(*args, **kwargs)

    server.stop = stop
    server._geventc_stop_wrapped = True


class _WorkerState:
    """What one worker holds: its connector, resolver, configuration, registration."""

    def __init__(self, hooks: GeventcHooks, worker: Any) -> None:
        from ..connector import connect
        from ..resolver import Resolver

        self.hooks = hooks
        self.pid = os.getpid()
        self.ppid: int = getattr(worker, "ppid", os.getppid())
        self.sockets: list[Any] = list(getattr(worker, "sockets", []))
        self.connector = connect(hooks.endpoints, hooks.namespace, **hooks.client_options)
        self.resolver = Resolver(
            self.connector, prefix=hooks.prefix, format=hooks.format, strategy=hooks.strategy
        )
        self.config: ConfigWatcher | None = None
        self.registration: SharedRegistration | None = None
        self._group = Group()

    def start(self) -> None:
        hooks = self.hooks
        if hooks.service is not None:
            instance = Instance(
                hooks.service,
                hooks.address or listener_address(self.sockets),
                weight=hooks.weight,
                tags=hooks.tags,
            )
            self.registration = SharedRegistration(
                self.connector,
                instance,
                prefix=hooks.prefix,
                ttl=hooks.ttl,
                format=hooks.format,
                hold=self.server_running,
            )
            self.registration.start()
            self._group.spawn(self._follow_master)
        if hooks.config_prefix is not None and not self._load_config():
            self._group.spawn(self._retry_config)

    def _load_config(self) -> bool:
        assert self.hooks.config_prefix is not None
        watcher = self.connector.config(self.hooks.config_prefix, decode=self.hooks.config_decode)
        try:
            watcher.start()
        except EtcdError as exc:
            log.warning("geventc: could not load %r (%s); retrying", self.hooks.config_prefix, exc)
            return False
        self.config = watcher
        return True

    def _retry_config(self) -> None:
        backoff = Backoff(first=0.5, cap=10.0)
        while not self._load_config():
            gevent.sleep(backoff.next())

    def server_running(self) -> bool:
        """False once the master began to stop, or died."""
        return not _master_stopping() and os.getppid() == self.ppid

    def _follow_master(self) -> None:
        while self.server_running():
            gevent.sleep(MASTER_POLL)
        if self.registration is not None:  # the server goes away: so does its key
            self.registration.close(deregister=True)

    def close(self, *, deregister: bool) -> None:
        try:
            if self.registration is not None:  # first: _follow_master may be closing it
                self.registration.close(deregister=deregister)
            self._group.kill(block=True, timeout=1.0)
            if self.config is not None:
                self.config.stop()
            self.resolver.close()
        finally:
            self.connector.close()


_current: _WorkerState | None = None


def listener_address(sockets: Iterable[Any]) -> str:
    """``host:port`` of the first TCP listener among gunicorn's listening sockets."""
    for listener in sockets:
        sock = getattr(listener, "sock", listener)  # gunicorn's wrapper, or a plain socket
        if getattr(sock, "family", None) in (socket.AF_INET, socket.AF_INET6):
            host, port = sock.getsockname()[:2]
            return join_address(host, port)
    raise InvalidArgument(
        "the server has no TCP listener to register; pass address='host:port' to GeventcHooks"
    )


# --- helpers for request handlers ------------------------------------------------------


def _state() -> _WorkerState:
    state = _current
    if state is None or state.pid != os.getpid():
        raise NotConfigured(
            "not in a gunicorn worker configured by geventc.contrib.gunicorn.GeventcHooks "
            "(set post_worker_init = hooks.post_worker_init in gunicorn.conf.py)"
        )
    return state


def connector() -> Connector:
    """This worker's :class:`~geventc.Connector` (made after the fork)."""
    return _state().connector


def resolver() -> Resolver:
    """This worker's :class:`~geventc.Resolver` (one cache and watch per service)."""
    return _state().resolver


def config() -> ConfigWatcher:
    """This worker's live configuration mapping (``config_prefix``); raises
    :class:`NotConfigured` without one, or while it could not be loaded yet."""
    state = _state()
    if state.hooks.config_prefix is None:
        raise NotConfigured("GeventcHooks was made without config_prefix=")
    if state.config is None:
        raise NotConfigured(
            f"the configuration under {state.hooks.config_prefix!r} is not loaded yet "
            "(etcd unreachable?); it is retried in the background"
        )
    return state.config


def registration() -> SharedRegistration | None:
    """This worker's share of the server's registration (None without ``service``)."""
    return _state().registration

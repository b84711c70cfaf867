"""The worker side: what one gunicorn worker holds (its connector, resolver,
configuration and share of the server's registration) and the helpers request
handlers call to reach them."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import gevent
from gevent.pool import Group

# Only modules that load neither urllib3 nor ssl at import time (see the package).
from ... import validate
from ...endpoints import parse_endpoints
from ...errors import EtcdError, InvalidArgument, NotConfigured
from ...instances import (
    DEFAULT_PREFIX,
    DEFAULT_WEIGHT,
    Instance,
    check_format,
    check_prefix,
    join_address,
)
from ...namespace import Namespace
from ...retry import Backoff
from . import shutdown
from .shared_registration import SharedRegistration

if TYPE_CHECKING:
    from ...connector import Connector
    from ...recipes.config import ConfigWatcher
    from ...resolver import Resolver

log = logging.getLogger("geventc")

#: How often a worker checks whether its master began to stop (seconds).
MASTER_POLL = 0.2
#: The same as :data:`geventc.resolver.STRATEGIES`.
STRATEGIES = ("round_robin", "random")


class WorkerSettings:
    """What each worker is made from, checked when the config file is read (the
    arguments of :class:`~geventc.contrib.gunicorn.GeventcHooks`)."""

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
        self.prefix = check_prefix(prefix)
        self.format = check_format(format)
        self.strategy = strategy
        self.config_prefix = config_prefix
        self.config_decode = config_decode
        self.client_options = client_options


class WorkerState:
    """What one worker holds: its connector, resolver, configuration, registration."""

    def __init__(self, settings: WorkerSettings, worker: Any) -> None:
        from ...connector import connect
        from ...resolver import Resolver

        self.settings = settings
        self.pid = os.getpid()
        self.ppid: int = getattr(worker, "ppid", os.getppid())
        self.sockets: list[Any] = list(getattr(worker, "sockets", []))
        self.connector = connect(settings.endpoints, settings.namespace, **settings.client_options)
        self.resolver = Resolver(
            self.connector,
            prefix=settings.prefix,
            format=settings.format,
            strategy=settings.strategy,
        )
        self.config: ConfigWatcher | None = None
        self.registration: SharedRegistration | None = None
        self._group = Group()

    def start(self) -> None:
        settings = self.settings
        if settings.service is not None:
            instance = Instance(
                settings.service,
                settings.address or listener_address(self.sockets),
                weight=settings.weight,
                tags=settings.tags,
            )
            self.registration = SharedRegistration(
                self.connector,
                instance,
                prefix=settings.prefix,
                ttl=settings.ttl,
                format=settings.format,
                hold=self.server_running,
            )
            self.registration.start()
            self._group.spawn(self._follow_master)
        if settings.config_prefix is not None and not self._load_config():
            self._group.spawn(self._retry_config)

    def _load_config(self) -> bool:
        prefix = self.settings.config_prefix
        assert prefix is not None
        watcher = self.connector.config(prefix, decode=self.settings.config_decode)
        try:
            watcher.start()
        except EtcdError as exc:
            log.warning("geventc: could not load %r (%s); retrying", prefix, exc)
            return False
        self.config = watcher
        return True

    def _retry_config(self) -> None:
        backoff = Backoff(first=0.5, cap=10.0)
        while not self._load_config():
            gevent.sleep(backoff.next())

    def server_running(self) -> bool:
        """False once the master began to stop, or died."""
        return not shutdown.FLAG.stopping and os.getppid() == self.ppid

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


_current: WorkerState | None = None


def start_worker(settings: WorkerSettings, worker: Any) -> None:
    """Make this worker's state (replacing one made earlier in this process) and start
    it: the registration is joined in the background."""
    global _current
    if _current is not None and _current.pid == os.getpid():
        _current.close(deregister=False)
    state = WorkerState(settings, worker)
    _current = state
    state.start()


def stop_worker() -> None:
    """Stop this worker's state. If the master is stopping (or gone) remove the
    registration; otherwise the other workers keep it."""
    global _current
    state = _current
    if state is None or state.pid != os.getpid():
        return  # gunicorn also calls worker_exit in the master for a vanished worker
    _current = None
    state.close(deregister=not state.server_running())


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


def _state() -> WorkerState:
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
    prefix = state.settings.config_prefix
    if prefix is None:
        raise NotConfigured("GeventcHooks was made without config_prefix=")
    if state.config is None:
        raise NotConfigured(
            f"the configuration under {prefix!r} is not loaded yet "
            "(etcd unreachable?); it is retried in the background"
        )
    return state.config


def registration() -> SharedRegistration | None:
    """This worker's share of the server's registration (None without ``service``)."""
    return _state().registration

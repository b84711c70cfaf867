"""The gunicorn server hooks: :class:`GeventcHooks`."""

from __future__ import annotations

import logging
from typing import Any

import gevent.monkey

from ...errors import NotPatched
from . import shutdown
from .worker import WorkerSettings, start_worker, stop_worker

log = logging.getLogger("geventc")


class GeventcHooks(WorkerSettings):
    """gunicorn server hooks: reference :meth:`when_ready`, :meth:`on_reload`,
    :meth:`post_worker_init` and :meth:`worker_exit` from ``gunicorn.conf.py`` (see
    :mod:`geventc.contrib.gunicorn`). Arguments are checked when the config file is read.

    ``endpoints``, ``namespace`` and ``client_options`` (username, password, tls,
    timeout, ...) make each worker's connector. With ``service`` the server registers
    itself once (``address`` defaults to its first TCP listener; an unspecified host
    becomes the machine's address as Kitex does), with ``weight`` and ``tags``, under
    ``prefix`` in ``format``, on a lease of ``ttl`` seconds. ``prefix``, ``format`` and
    ``strategy`` also configure each worker's :class:`~geventc.Resolver`. With
    ``config_prefix`` each worker follows that configuration (decoded by ``config_decode``).
    """

    def __repr__(self) -> str:
        return f"GeventcHooks(service={self.service!r}, namespace={self.namespace!r})"

    # --- master hooks ----------------------------------------------------------------

    def when_ready(self, server: Any) -> None:
        """Master, once the server listens: from now on a stop signal (SIGTERM,
        SIGINT, SIGQUIT) raises the shutdown flag the workers read, before gunicorn
        signals them (:mod:`~geventc.contrib.gunicorn.shutdown`)."""
        shutdown.FLAG.arm()

    def on_reload(self, server: Any) -> None:
        """Master, after a HUP reload: the same as :meth:`when_ready` (idempotent)."""
        shutdown.FLAG.arm()

    # --- worker hooks ----------------------------------------------------------------

    def post_worker_init(self, worker: Any) -> None:
        """Worker, after the fork and gevent's patching: make this worker's connector,
        resolver and configuration, and join the server's registration (in the
        background: a worker boots even while etcd is unreachable)."""
        if not gevent.monkey.is_module_patched("socket"):
            raise NotPatched(
                "geventc.contrib.gunicorn needs worker_class = 'gevent' (or another worker "
                "that applies gevent.monkey.patch_all() before post_worker_init)"
            )
        if not shutdown.FLAG.armed:
            log.warning(
                "geventc: the when_ready hook is not set in the gunicorn config; the "
                "registration will not be removed on shutdown but expire %ds later",
                self.ttl,
            )
        start_worker(self, worker)

    def worker_exit(self, server: Any, worker: Any) -> None:
        """Worker, as it exits: stop its etcd objects. If the master is stopping (or
        gone) remove the registration; otherwise the other workers keep it."""
        stop_worker()

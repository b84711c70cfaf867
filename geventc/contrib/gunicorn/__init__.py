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

The parts: :mod:`.hooks` (:class:`GeventcHooks`, the functions gunicorn calls),
:mod:`.shutdown` (the master's shutdown flag, in memory shared with the workers),
:mod:`.worker` (what each worker holds, and the helpers above) and
:mod:`.shared_registration` (:class:`SharedRegistration`, whose lease each worker keeps
alive through its connector's lease keeper).
"""

# Only modules that load neither urllib3 nor ssl at import time: this package is imported
# by gunicorn.conf.py in the master, before the gevent worker patches the process, and a
# urllib3 imported before the patch would not be cooperative (NotPatched in the worker).
# The network modules are imported inside the functions that run in the workers.
from ...errors import NotConfigured
from ...instances import DEFAULT_PREFIX as DEFAULT_PREFIX
from .hooks import GeventcHooks
from .shared_registration import SharedRegistration
from .worker import MASTER_POLL as MASTER_POLL
from .worker import STRATEGIES as STRATEGIES
from .worker import config, connector, registration, resolver
from .worker import listener_address as listener_address

__all__ = [
    "GeventcHooks",
    "NotConfigured",
    "SharedRegistration",
    "config",
    "connector",
    "registration",
    "resolver",
]

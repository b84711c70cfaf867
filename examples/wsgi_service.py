"""A gunicorn service (plain WSGI, gevent workers) that registers itself once per server,
resolves a peer service and follows its configuration.

    python examples/wsgi_service.py --bind 127.0.0.1:8000 --peer backend --run-for 30
    curl http://127.0.0.1:8000/      # -> hello from api: backend at 10.0.0.9:80, color blue

The server registers ``api`` (Kitex format: ``kitex/registry-etcd/api/<host:port>``) on
one lease shared by its workers; each worker has its own connector, a resolver of the
peer service and the live configuration under ``/config/api``. On shutdown (SIGTERM, or
after ``--run-for`` seconds) the registration is removed before the workers exit.
The same file works as ``gunicorn -c`` config too: see ``application`` and ``HOOKS``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from gunicorn.app.base import BaseApplication

from geventc.contrib import gunicorn as etcd
from geventc.contrib.gunicorn import GeventcHooks

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import endpoints

PEER = os.environ.get("PEER_SERVICE", "backend")


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The WSGI application: answers with the peer it would call and its configuration."""
    try:
        peer = etcd.resolver().pick(PEER).address  # cached, kept current by a watch
    except geventc_errors().NoInstances:
        peer = "nowhere"
    color = etcd.config().get("color", "none")  # the live mapping under /config/api
    body = f"hello from api: {PEER} at {peer}, color {color}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def geventc_errors() -> Any:
    """``geventc.errors``, imported in the worker (after gevent patched it)."""
    from geventc import errors

    return errors


class Service(BaseApplication):  # type: ignore[misc]
    """gunicorn run from this file, with geventc's hooks."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Callable[..., Any]:
        return application


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="127.0.0.1:8000")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--service", default="api")
    parser.add_argument("--peer", default=PEER)
    parser.add_argument("--namespace", default="examples")
    parser.add_argument("--run-for", type=float, default=0, help="stop after S seconds")
    args = parser.parse_args()
    os.environ["PEER_SERVICE"] = args.peer  # read by the workers
    hooks = GeventcHooks(
        endpoints(),
        namespace=args.namespace,
        service=args.service,
        ttl=10,
        config_prefix=f"/config/{args.service}",
    )

    def when_ready(server: Any) -> None:
        hooks.when_ready(server)
        print(f"serving {args.service} on {args.bind}", flush=True)
        if args.run_for:  # bounded run: a graceful shutdown, as an operator's SIGTERM
            timer = threading.Timer(args.run_for, os.kill, (os.getpid(), signal.SIGTERM))
            timer.daemon = True
            timer.start()

    Service(
        {
            "bind": args.bind,
            "workers": args.workers,
            "worker_class": "gevent",  # required: geventc needs gevent-patched sockets
            "when_ready": when_ready,
            "on_reload": hooks.on_reload,
            "post_worker_init": hooks.post_worker_init,
            "worker_exit": hooks.worker_exit,
            "graceful_timeout": 5,
            "accesslog": None,
        }
    ).run()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

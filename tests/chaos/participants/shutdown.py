"""Clean-shutdown participant: a connector holding keys in every way a recipe can, then
stopping them on command while etcd members are down.

It runs a LeaderElector (its key on a private lease), three EphemeralKeys and a
Registry of three instances (all on the connector's shared lease), a ``keeper``
EphemeralKey on that same lease that is never stopped on its own, an Observer and a
ServiceTracker. Commands:

- ``stop``: stop each recipe (elector, keys, registry, observer, tracker, in the
  ``--order`` given) one after the other, recording how long each call took
  (``stopped``); only the keeper's key may stay, since the connector and its shared
  lease live on;
- ``close``: ``Connector.close()``, timed, then exit: no key may stay.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import gevent

from geventc import Connector, EphemeralKey, Instance, Registry, RetryPolicy
from geventc.errors import EtcdError

from . import common


def retried(what: str, call: Callable[[], object]) -> None:
    """Call until it works: set-up may meet a fault too."""
    while True:
        try:
            call()
            return
        except EtcdError as exc:
            common.emit("error", op=what, error=repr(exc))
            gevent.sleep(0.2)


def ephemeral(conn: Connector, path: str, ttl: int) -> EphemeralKey:
    """A created key (a failed create() stops its key: a fresh one is made to retry)."""
    while True:
        key = conn.ephemeral_key(path)
        try:
            key.create("v", ttl=ttl)
            return key
        except EtcdError as exc:
            common.emit("error", op="create", key=path, error=repr(exc))
            gevent.sleep(0.2)


def main() -> None:
    parser = common.options(__doc__ or "")
    parser.add_argument("--ttl", type=int, default=3)
    parser.add_argument("--identity", required=True)
    parser.add_argument(
        "--order", default="elector,keys,registry,observer,tracker", help="how `stop` goes"
    )
    args = parser.parse_args()
    conn = common.connect(args)
    elector = conn.leader_elector("/election", args.identity, ttl=args.ttl)
    elector.start()
    keys = [ephemeral(conn, f"/eph/k{i}", args.ttl) for i in range(3)]
    ephemeral(conn, "/keeper", args.ttl)
    registry = Registry(
        conn, prefix="reg", ttl=args.ttl, retry=RetryPolicy(max_attempts=0, retry_delay=1.0)
    )
    for port in range(3):
        instance = Instance("svc", f"127.0.0.1:{9000 + port}")
        retried("register", partial(registry.register, instance))
    observer = conn.observer("/eph")
    observer.start(recursive=True)
    tracker = conn.service_tracker("/eph")
    tracker.start()
    common.emit("ready")

    for line in common.commands():
        if line == "stop":
            steps: dict[str, list[tuple[str, Callable[[], object]]]] = {
                "elector": [("elector.stop", elector.stop)],
                "keys": [("ephemeral.delete", key.delete) for key in keys],
                "registry": [("registry.close", registry.close)],
                "observer": [("observer.stop", observer.stop)],
                "tracker": [("tracker.stop", tracker.stop)],
            }
            for step in args.order.split(","):
                for what, call in steps[step]:
                    common.timed(what, call)
            common.emit("stopped-recipes")
        elif line == "close":
            common.timed("connector.close", conn.close)
            return


if __name__ == "__main__":
    common.run(main)

"""Registration participant: one Registry keeping several instances of a service
registered (Kitex format, shared lease of ``--ttl`` seconds, retrying forever).

Records ``ready`` (the addresses) once every instance is registered, then the
registry's events (``registry`` LOST/RESTORED, ``recipe-error``). Commands: ``close``
deregisters everything and exits.
"""

from __future__ import annotations

import gevent

from geventc import EphemeralEvent, Instance, Registry, RetryPolicy
from geventc.errors import EtcdError

from . import common


def main() -> None:
    parser = common.options(__doc__ or "")
    parser.add_argument("--service", required=True)
    parser.add_argument("--addresses", required=True, help="comma-separated host:port")
    parser.add_argument("--ttl", type=int, default=3)
    parser.add_argument("--prefix", default="kitex/registry-etcd")
    args = parser.parse_args()
    conn = common.connect(args)
    registry = Registry(
        conn,
        prefix=args.prefix,
        ttl=args.ttl,
        retry=RetryPolicy(max_attempts=0, retry_delay=1.0),
    )
    addresses = args.addresses.split(",")
    for address in addresses:
        while True:  # the first registration may meet a fault too
            try:
                registry.register(Instance(args.service, address))
                break
            except EtcdError as exc:
                common.emit("error", op="register", address=address, error=repr(exc))
                gevent.sleep(0.2)
    common.emit("ready", addresses=addresses)

    def follow_events() -> None:
        for event in registry.events():
            if isinstance(event, EphemeralEvent):
                common.emit("registry", status=event.status.value, key=event.key)
            else:
                common.emit("recipe-error", error=repr(event.error), fatal=event.fatal)

    gevent.spawn(follow_events)
    for line in common.commands():
        if line == "close":
            common.timed("registry.close", registry.close)
            common.timed("connector.close", conn.close)
            return
    common.sleep_forever()


if __name__ == "__main__":
    common.run(main)

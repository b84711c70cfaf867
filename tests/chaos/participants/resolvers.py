"""Registration participant: ``--count`` Resolvers of one service, each with its own
connector (so each has its own watch), recording every instance list it sees.

Records ``view`` (r: the resolver's number, rev, addrs: sorted addresses) for every
list a resolver's watch channel hands over.
"""

from __future__ import annotations

import argparse

import gevent
from gevent.lock import Semaphore

from geventc import Resolver
from geventc.errors import EtcdError

from . import common


def follow(args: argparse.Namespace, number: int, watching: Semaphore) -> None:
    service, prefix = args.service, args.prefix
    conn = common.connect(args)
    resolver = Resolver(conn, prefix=prefix)
    while True:
        try:
            channel = resolver.watch(service)
            break
        except EtcdError as exc:  # could not load the first list: try again
            common.emit("error", r=number, error=repr(exc))
            gevent.sleep(0.2)
    common.emit("watching", r=number)
    watching.release()
    for found in channel:
        common.emit(
            "view",
            r=number,
            rev=found.revision,
            addrs=sorted(instance.address for instance in found.instances),
        )


def main() -> None:
    parser = common.options(__doc__ or "")
    parser.add_argument("--service", required=True)
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--prefix", default="kitex/registry-etcd")
    args = parser.parse_args()
    watching = Semaphore(0)
    workers = [gevent.spawn(follow, args, number, watching) for number in range(args.count)]
    for _ in workers:
        watching.acquire()
    common.emit("ready")
    gevent.joinall(workers, raise_error=True)


if __name__ == "__main__":
    common.run(main)

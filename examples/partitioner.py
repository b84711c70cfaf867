"""A work partitioner: the live workers split a fixed set of shards among them.

    python examples/partitioner.py --identity worker-a --run-for 10 &
    python examples/partitioner.py --identity worker-b --run-for 10

Each worker prints the shards it owns whenever the split changes: alone, one worker owns
all of them; when another joins or leaves, each stops working on its shards, gives them
back and takes its new share (member k of n owns sorted(shards)[k::n]). No shard is
ever owned by two workers whose leases are valid.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402

import gevent  # noqa: E402
from _common import endpoints  # noqa: E402

import geventc  # noqa: E402
from geventc.recipes.partitioner import PartitionEvent, PartitionState  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identity", required=True)
    parser.add_argument("--shards", default="shard-0,shard-1,shard-2,shard-3")
    parser.add_argument("--path", default="/partitions/jobs")
    parser.add_argument("--namespace", default="examples")
    parser.add_argument("--run-for", type=float, default=10.0, help="seconds, then leave")
    args = parser.parse_args()
    shards = args.shards.split(",")
    with geventc.connect(endpoints(), namespace=args.namespace) as conn:
        part = conn.partitioner(args.path, shards, args.identity, ttl=5)
        gevent.spawn_later(args.run_for, part.stop)  # bounded run: leave after run_for
        for event in part.start():  # ends when the partitioner stops
            if not isinstance(event, PartitionEvent):
                continue  # a RecipeError or Staleness: logged by geventc
            if event.state is PartitionState.ACQUIRED:
                print(f"{args.identity} owns {' '.join(event.items)}", flush=True)
            elif event.state is PartitionState.RELEASE:
                # stop working on part.items here, then give them back
                part.release_set()
            elif event.state is PartitionState.FAILURE:
                print(f"{args.identity} lost its lease", flush=True)
                return 1
        print(f"{args.identity} left", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

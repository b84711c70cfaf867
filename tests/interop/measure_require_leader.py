"""How fast Go's ``clientv3.WithRequireLeader`` watch notices that its member lost its leader.

A measurement, not a test (pytest does not collect it): on a 3-member cluster
(``geventc.testing.EtcdCluster(3, fsync=False)``) the Go peer's
``watch-require-leader`` subcommand watches a prefix through ONE member; once the watch
is established the two other members are SIGKILLed, and the time from the second kill to
the moment Go's watch ended is printed. Each run then restarts the killed members.

The watched member is a follower (the leader and the other follower are killed) or the
raft leader itself (both followers are killed; it steps down when it loses quorum)::

    python tests/interop/measure_require_leader.py            # 3 runs, watched follower
    python tests/interop/measure_require_leader.py --runs 5 --watch leader follower
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from gopeer import GoMissing, GoPeers, build_peer  # noqa: E402

from geventc.testing import EtcdCluster  # noqa: E402

ROLES = ("follower", "leader")


def measure_once(cluster: EtcdCluster, peers: GoPeers, role: str) -> tuple[float, str]:
    """One run: seconds from losing quorum to the end of Go's watch, and its error."""
    cluster.heal()
    leader = cluster.leader()
    followers = [member for member in cluster.members if member is not leader]
    watched = followers[0] if role == "follower" else leader
    others = [member for member in cluster.members if member is not watched]
    peer = peers.start(
        "watch-require-leader", endpoints=[watched.client_url], key="/measure-require-leader/"
    )
    try:
        peer.expect("created", timeout=15)
        for member in others:
            cluster.kill(member)
        killed = time.time()
        ended = peer.expect("ended", timeout=60)
        return float(ended["time"]) - killed, str(ended["error"])
    finally:
        peers.close()


def main(argv: list[str] | None = None) -> int:
    """Run the measurement and print one line per run and a summary per role."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per role (default 3)")
    parser.add_argument(
        "--watch",
        nargs="+",
        choices=ROLES,
        default=["follower"],
        help="the role of the watched member (default: follower)",
    )
    args = parser.parse_args(argv)
    try:
        binary = build_peer()
    except GoMissing as exc:
        print(f"cannot measure: {exc}", file=sys.stderr)
        return 2
    peers = GoPeers(binary)
    with EtcdCluster(3, fsync=False) as cluster:
        etcd_version = cluster.admin("/v3/maintenance/status", {}).get("version", "?")
        print(f"etcd {etcd_version}, 3 members; Go peer {binary}")
        for role in args.watch:
            times = []
            for run in range(1, args.runs + 1):
                seconds, error = measure_once(cluster, peers, role)
                times.append(seconds)
                print(
                    f"watched {role}: run {run}: Go watch ended {seconds:.2f} s after "
                    f"quorum loss ({error})",
                    flush=True,
                )
            print(
                f"watched {role}: min {min(times):.2f} s, median {statistics.median(times):.2f} s,"
                f" max {max(times):.2f} s over {len(times)} runs",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

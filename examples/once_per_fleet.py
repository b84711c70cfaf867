"""A job that runs once per fleet: every machine starts it, one runs it.

    python examples/once_per_fleet.py --job nightly-report --run-id 2026-12-01

Every instance takes the lock ``/jobs/<job>/lock``; the holder checks the marker
``/jobs/<job>/done/<run-id>`` and, if the run is not done yet, does the work and writes
the marker through the lock's fenced txn (it succeeds only while the lock is held). The
others wait their turn, find the marker and skip. A holder that dies mid-run loses the
lock with its lease; the next one runs the job.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402

from _common import endpoints  # noqa: E402

import geventc  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default="nightly-report")
    parser.add_argument("--run-id", required=True, help="one run of the job, e.g. a date")
    parser.add_argument("--namespace", default="examples")
    parser.add_argument("--wait", type=float, default=30.0, help="give up after S seconds")
    args = parser.parse_args()
    marker = f"/jobs/{args.job}/done/{args.run_id}"
    me = f"pid {os.getpid()}"
    with (
        geventc.connect(endpoints(), namespace=args.namespace) as conn,
        conn.lock(f"/jobs/{args.job}/lock", ttl=10).hold(timeout=args.wait) as lock,
    ):
        done = conn.get(marker)
        if done is not None:
            print(f"skipped: {args.run_id} already done by {done.value_str}", flush=True)
            return 0
        # ... the job's work goes here ...
        lock.txn([geventc.Op.put(marker, me)])  # fenced: only while the lock is held
        print(f"ran {args.job} {args.run_id} (fencing token {lock.fencing_token})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A queue worker: claims jobs at least once, does them, acks them.

    python examples/queue_worker.py --queue /jobs --put resize,encode   # enqueue
    python examples/queue_worker.py --queue /jobs --max-items 2          # work

Each item is claimed (it stays queued, marked as this worker's on its lease), done,
then acked (the item and its claim go in one txn). A worker that dies mid-job lets its
item be claimed again once its lease ends; a job that fails is released at once.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402

from _common import endpoints  # noqa: E402

import geventc  # noqa: E402


def work(value: str) -> str:
    """The job itself: here, upper-case its name."""
    return value.upper()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", default="/jobs")
    parser.add_argument("--namespace", default="examples")
    parser.add_argument("--put", help="comma-separated items to enqueue, then exit")
    parser.add_argument("--max-items", type=int, default=0, help="stop after N (0: never)")
    parser.add_argument("--wait", type=float, default=5.0, help="stop when idle this long")
    args = parser.parse_args()
    with geventc.connect(endpoints(), namespace=args.namespace) as conn:
        jobs = conn.queue(args.queue, ttl=10)
        if args.put:
            for item in args.put.split(","):
                jobs.put(item)
                print(f"queued {item}", flush=True)
            return 0
        done = 0
        while not args.max_items or done < args.max_items:
            item = jobs.claim(timeout=args.wait)
            if item is None:
                print("idle, stopping", flush=True)
                break
            try:
                result = work(item.value_str)
            except Exception:
                item.release()  # back in its place for another worker
                raise
            item.ack()
            done += 1
            print(f"done {item.value_str} -> {result}", flush=True)
        jobs.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

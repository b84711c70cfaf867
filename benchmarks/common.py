"""Helpers shared by the benchmark workers and the runner: statistics, CPU and RSS
readings, etcd's own metrics, and a tiny urllib3 gateway client for set-up work.

Not run on its own: ``python benchmarks/run.py`` (see its docstring) uses it. It imports
nothing that must come after ``gevent.monkey.patch_all()`` at module level, so a worker
can import it either side of the patch.
"""

from __future__ import annotations

import base64
import gc
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

JSON_HEADERS = {"Content-Type": "application/json"}
VALUE = base64.b64encode(bytes(range(192))).decode()  # 256 printable bytes


def instance_value(index: int) -> str:
    """A service instance's value as Kitex registers it (about 60 bytes)."""
    address = f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}:8080"
    return json.dumps({"network": "tcp", "address": address, "weight": 10}, separators=(",", ":"))


# --- statistics -----------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values``, interpolated linearly (nan if empty)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p99 and max of latencies given in seconds, in milliseconds."""
    return {
        "p50_ms": round(percentile(seconds, 0.50) * 1000, 3),
        "p99_ms": round(percentile(seconds, 0.99) * 1000, 3),
        "max_ms": round(max(seconds) * 1000, 3) if seconds else math.nan,
        "samples": len(seconds),
    }


def median(values: Iterable[float | None]) -> float:
    """The median of the numbers present (nan when there is none)."""
    present = [v for v in values if isinstance(v, int | float) and not math.isnan(v)]
    return statistics.median(present) if present else math.nan


# --- the process's own costs -----------------------------------------------------------


def rss_kib() -> int:
    """This process's resident set size (VmRSS) in KiB, after a full garbage collection."""
    for _ in range(3):
        gc.collect()
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class CpuWindow:
    """CPU time this process (every thread) used over a wall-clock window."""

    def __init__(self) -> None:
        self.cpu = time.process_time()
        self.wall = time.perf_counter()

    def percent(self) -> float:
        """CPU used since the window opened, in % of one core."""
        wall = time.perf_counter() - self.wall
        return 100.0 * (time.process_time() - self.cpu) / wall if wall > 0 else math.nan

    def cpu_seconds(self) -> float:
        """CPU seconds used since the window opened."""
        return time.process_time() - self.cpu


# --- a small gateway client for set-up, checks and clean-up -----------------------------


def b64(text: str | bytes) -> str:
    """Base64 of a key or value as the gateway wants it."""
    data = text.encode() if isinstance(text, str) else text
    return base64.b64encode(data).decode("ascii")


def range_end(prefix: str) -> str:
    """The base64 range end covering every key under ``prefix``."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode("ascii")


class Gateway:
    """Plain urllib3 requests to etcd's gateway, used outside the measured code."""

    def __init__(self, endpoint: str) -> None:
        import urllib3  # after the worker's monkey-patching, when there is one

        self.endpoint = endpoint.rstrip("/")
        self.pool = urllib3.PoolManager(maxsize=4, block=False, retries=False)

    def post(self, path: str, body: dict[str, Any], timeout: float = 30.0) -> Any:
        """POST ``body`` and return the decoded JSON answer; raise on an error status."""
        response = self.pool.request(
            "POST",
            self.endpoint + path,
            body=json.dumps(body).encode(),
            headers=JSON_HEADERS,
            timeout=timeout,
        )
        answer = json.loads(response.data or b"{}")
        if response.status != 200:
            raise RuntimeError(f"{path} answered {response.status}: {answer}")
        return answer

    def put_many(self, items: dict[str, str]) -> int:
        """Write every key (128 per txn); return the last revision."""
        pairs = list(items.items())
        revision = 0
        for start in range(0, len(pairs), 128):
            ops = [
                {"request_put": {"key": b64(k), "value": b64(v)}}
                for k, v in pairs[start : start + 128]
            ]
            answer = self.post("/v3/kv/txn", {"success": ops})
            revision = int(answer["header"]["revision"])
        return revision

    def count(self, prefix: str) -> int:
        """How many keys exist under ``prefix``."""
        body = {"key": b64(prefix), "range_end": range_end(prefix), "count_only": True}
        return int(self.post("/v3/kv/range", body).get("count", 0))

    def delete_prefix(self, prefix: str) -> None:
        """Delete every key under ``prefix``."""
        self.post("/v3/kv/deleterange", {"key": b64(prefix), "range_end": range_end(prefix)})

    def metric(self, name: str) -> float:
        """A gauge or counter from etcd's Prometheus ``/metrics`` (nan if absent)."""
        text = self.pool.request("GET", self.endpoint + "/metrics", timeout=10.0).data.decode()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return math.nan

    def watch_counts(self) -> tuple[float, float]:
        """etcd's open watch streams and watchers (gRPC streams behind the gateway)."""
        return (
            self.metric("etcd_debugging_mvcc_watch_stream_total"),
            self.metric("etcd_debugging_mvcc_watcher_total"),
        )

    def wait_watches_at_most(self, streams: float, timeout: float = 10.0) -> float:
        """Wait until etcd has at most ``streams`` watch streams; return the count."""
        deadline = time.monotonic() + timeout
        current = self.watch_counts()[0]
        while current > streams and time.monotonic() < deadline:
            time.sleep(0.1)
            current = self.watch_counts()[0]
        return current

    def close(self) -> None:
        """Close the pooled connections."""
        self.pool.clear()


# --- concurrent callers ------------------------------------------------------------------


def parallel(callers: int, work: Callable[[], None]) -> None:
    """Run ``work`` in ``callers`` threads and wait for them all. In a monkey-patched
    process these threads are greenlets; elsewhere (python-etcd3) OS threads."""
    import threading

    threads = [threading.Thread(target=work, daemon=True) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def for_each(
    items: Sequence[T], callers: int, op: Callable[[T], object]
) -> tuple[float, list[float], list[str]]:
    """Apply ``op`` to every item from ``callers`` concurrent callers pulling from one
    queue; return the wall time, each call's latency and the errors met."""
    latencies = [0.0] * len(items)
    errors: list[str] = []
    counter = itertools.count()  # next() on it is atomic: no item is taken twice

    def work() -> None:
        while (index := next(counter)) < len(items):
            start = time.perf_counter()
            try:
                op(items[index])
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
            latencies[index] = time.perf_counter() - start

    start = time.perf_counter()
    parallel(max(1, min(callers, len(items))), work)
    return time.perf_counter() - start, latencies, errors


def background(target: Callable[[], None]) -> None:
    """Run ``target`` in a greenlet in a monkey-patched process, else in an OS thread."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        import gevent

        gevent.spawn(target)
        return
    import threading

    threading.Thread(target=target, daemon=True).start()

"""Key-value throughput and latency of geventc against a raw urllib3 baseline.

Run it from the repository root:

    python benchmarks/bench_kv.py                     # starts its own etcd (fsync on)
    python benchmarks/bench_kv.py --ops 200 --repeat 1
    python benchmarks/bench_kv.py --no-fsync --json
    python benchmarks/bench_kv.py --endpoints http://127.0.0.1:2379

Four scenarios are measured for each implementation: sequential puts and gets from one
greenlet, then puts and gets from ``--concurrency`` greenlets sharing one client. The
two implementations are:

* ``geventc``: ``geventc.Client(endpoints)`` with ``put(key, value)`` and ``get(key)``;
* ``raw``: a ``urllib3.PoolManager(maxsize=64, block=False)`` POSTing the JSON body to
  ``/v3/kv/put`` and ``/v3/kv/range`` and decoding the answer with ``json.loads``, the
  least any gateway client has to do.

Within every repetition each scenario runs once per implementation, back to back, and
the order of the two implementations alternates between repetitions. The figures shown
are medians over the repetitions. Keys live under a fresh ``/bench/<uuid>/`` prefix
(values are 256 bytes) that is deleted at the end. The script only measures: it checks
no timing and exits 0 whatever the figures are.
"""

from gevent import monkey

monkey.patch_all()

# ruff: noqa: E402 - everything below must be imported after monkey-patching.
import argparse
import base64
import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any, Protocol

import gevent
import urllib3

import geventc
from geventc.testing import EtcdServer

VALUE_SIZE = 256
POOL_SIZE = 64  # geventc.Client's default pool_size; the baseline uses the same
WARMUP_OPS = 50
SCENARIOS = ("seq-put", "seq-get", "conc-put", "conc-get")
IMPLEMENTATIONS = ("geventc", "raw")
JSON_HEADERS = {"Content-Type": "application/json"}

Op = Callable[[bytes], bool]  # one operation on a key; False means it failed


class KV(Protocol):
    """What the benchmark needs from an implementation."""

    name: str

    def put(self, key: bytes, value: bytes) -> bool:
        """Write ``key``; True on success."""
        ...

    def get(self, key: bytes) -> bool:
        """Read ``key``; True if it was found."""
        ...

    def close(self) -> None:
        """Release the connections."""
        ...


# --- implementations ------------------------------------------------------------------


class GeventcKV:
    """The client under test."""

    name = "geventc"

    def __init__(self, endpoints: Sequence[str]) -> None:
        self.client = geventc.Client(list(endpoints))

    def put(self, key: bytes, value: bytes) -> bool:
        self.client.put(key, value)
        return True

    def get(self, key: bytes) -> bool:
        return self.client.get(key) is not None

    def close(self) -> None:
        self.client.close()


class RawKV:
    """The baseline: JSON over urllib3 with nothing else."""

    name = "raw"

    def __init__(self, endpoints: Sequence[str]) -> None:
        self.pool = urllib3.PoolManager(maxsize=POOL_SIZE, block=False)
        base = endpoints[0].rstrip("/")
        self.put_url = f"{base}/v3/kv/put"
        self.range_url = f"{base}/v3/kv/range"

    def _post(self, url: str, body: dict[str, str]) -> Any:
        response = self.pool.request(
            "POST", url, body=json.dumps(body).encode(), headers=JSON_HEADERS, retries=False
        )
        answer = json.loads(response.data)
        return answer if response.status == 200 else None

    def put(self, key: bytes, value: bytes) -> bool:
        return self._post(self.put_url, {"key": _b64(key), "value": _b64(value)}) is not None

    def get(self, key: bytes) -> bool:
        answer = self._post(self.range_url, {"key": _b64(key)})
        return bool(answer and answer.get("kvs"))

    def close(self) -> None:
        self.pool.clear()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def make_kv(name: str, endpoints: Sequence[str]) -> KV:
    """The implementation called ``name``."""
    return GeventcKV(endpoints) if name == "geventc" else RawKV(endpoints)


# --- measurement ----------------------------------------------------------------------


@dataclass
class Run:
    """One scenario run by one implementation."""

    ops_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


@dataclass
class Summary:
    """The medians of one scenario and implementation over the repetitions."""

    ops_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    runs_ops_per_s: list[float] = field(default_factory=list)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of sorted values, interpolated linearly."""
    if not sorted_values:
        return float("nan")
    position = fraction * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def timed(op: Op, key: bytes, latencies: list[float]) -> int:
    """Run ``op`` on ``key``, record its latency; return 1 on failure, else 0."""
    start = time.perf_counter()
    try:
        ok = op(key)
    except Exception:
        ok = False
    latencies.append(time.perf_counter() - start)
    return 0 if ok else 1


def run_sequential(op: Op, keys: Sequence[bytes]) -> tuple[float, list[float], int]:
    """Run ``op`` on every key in turn; return wall time, latencies and failures."""
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    for key in keys:
        errors += timed(op, key, latencies)
    return time.perf_counter() - start, latencies, errors


def run_concurrent(
    op: Op, keys: Sequence[bytes], concurrency: int
) -> tuple[float, list[float], int]:
    """Run ``op`` on every key from ``concurrency`` greenlets pulling from one queue."""
    latencies: list[float] = []
    errors = [0]
    pending: Iterator[bytes] = iter(keys)

    def worker() -> None:
        for key in pending:  # greenlets switch only inside op(): no key is taken twice
            errors[0] += timed(op, key, latencies)

    start = time.perf_counter()
    gevent.joinall([gevent.spawn(worker) for _ in range(concurrency)], raise_error=True)
    return time.perf_counter() - start, latencies, errors[0]


def measure(kv: KV, scenario: str, keys: Sequence[bytes], value: bytes, concurrency: int) -> Run:
    """Run one scenario with one implementation."""
    op: Op = (lambda key: kv.put(key, value)) if scenario.endswith("put") else kv.get
    if scenario.startswith("seq"):
        wall, latencies, errors = run_sequential(op, keys)
    else:
        wall, latencies, errors = run_concurrent(op, keys, concurrency)
    latencies.sort()
    return Run(
        ops_per_s=len(keys) / wall,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        errors=errors,
    )


def warm_up(kv: KV, prefix: str, value: bytes, concurrency: int) -> None:
    """Open the connections of both pools and exercise both code paths once."""
    keys = [f"{prefix}warmup/{kv.name}/{i}".encode() for i in range(max(WARMUP_OPS, concurrency))]
    run_concurrent(lambda key: kv.put(key, value), keys, concurrency)
    run_concurrent(kv.get, keys, concurrency)


def scenario_keys(prefix: str, rep: int, name: str, scenario: str, ops: int) -> list[bytes]:
    """The keys a scenario touches; a get scenario reads what its put scenario wrote."""
    writer = scenario.replace("get", "put")
    return [f"{prefix}{rep}/{name}/{writer}/{i:07d}".encode() for i in range(ops)]


def benchmark(
    kvs: dict[str, KV], prefix: str, ops: int, repeat: int, concurrency: int, progress: bool
) -> dict[str, dict[str, list[Run]]]:
    """Every scenario for every implementation, ``repeat`` times, alternating order."""
    value = os.urandom(VALUE_SIZE)
    for kv in kvs.values():
        warm_up(kv, prefix, value, concurrency)
    runs: dict[str, dict[str, list[Run]]] = {s: {n: [] for n in kvs} for s in SCENARIOS}
    for rep in range(repeat):
        order = list(kvs) if rep % 2 == 0 else list(reversed(kvs))
        for scenario in SCENARIOS:
            for name in order:
                keys = scenario_keys(prefix, rep, name, scenario, ops)
                run = measure(kvs[name], scenario, keys, value, concurrency)
                runs[scenario][name].append(run)
                if progress:
                    show_progress(f"{rep + 1}/{repeat}", scenario, name, run)
    return runs


def show_progress(rep: str, scenario: str, name: str, run: Run) -> None:
    """One line on stderr per finished run."""
    line = f"rep {rep} {scenario:8} {name:7} {run.ops_per_s:9.0f} ops/s  p50 {run.p50_ms:.2f} ms"
    print(line, file=sys.stderr, flush=True)


def summarise(runs: list[Run]) -> Summary:
    """The medians of several runs (errors are summed)."""
    return Summary(
        ops_per_s=round(statistics.median(r.ops_per_s for r in runs), 1),
        p50_ms=round(statistics.median(r.p50_ms for r in runs), 3),
        p99_ms=round(statistics.median(r.p99_ms for r in runs), 3),
        errors=sum(r.errors for r in runs),
        runs_ops_per_s=[round(r.ops_per_s, 1) for r in runs],
    )


# --- environment and output -----------------------------------------------------------


def environment(endpoints: Sequence[str], fsync: bool | None, etcd_version: str) -> dict[str, Any]:
    """The facts needed to read the figures."""
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "gevent": metadata.version("gevent"),
        "urllib3": metadata.version("urllib3"),
        "geventc": geventc.__version__,
        "etcd": etcd_version,
        "fsync": "unknown (external etcd)" if fsync is None else ("on" if fsync else "off"),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(affinity(0)) if affinity else None,
        "platform": platform.platform(),
        "endpoints": list(endpoints),
    }


def report(
    summaries: dict[str, dict[str, Summary]], env: dict[str, Any], options: argparse.Namespace
) -> dict[str, Any]:
    """All figures as one JSON-ready object."""
    results = {}
    for scenario, by_name in summaries.items():
        entry: dict[str, Any] = {name: asdict(s) for name, s in by_name.items()}
        entry["ratio_geventc_raw"] = round(ratio(by_name), 3)
        results[scenario] = entry
    settings = {
        "ops": options.ops,
        "repeat": options.repeat,
        "concurrency": options.concurrency,
        "value_bytes": VALUE_SIZE,
        "pool_size": POOL_SIZE,
    }
    return {"environment": env, "settings": settings, "results": results}


def ratio(by_name: dict[str, Summary]) -> float:
    """geventc's median throughput over the baseline's."""
    raw = by_name["raw"].ops_per_s
    return by_name["geventc"].ops_per_s / raw if raw else float("nan")


def print_table(data: dict[str, Any]) -> None:
    """Print the environment and the result table."""
    for name, value in data["environment"].items():
        print(f"{name + ':':16}{value}")
    settings = ", ".join(f"{k}={v}" for k, v in data["settings"].items())
    print(f"{'settings:':16}{settings}")
    print(f"{'figures:':16}median over the repetitions; ratio = geventc ops/s / raw ops/s")
    print()
    header = (
        f"{'scenario':10} {'geventc ops/s':>13} {'raw ops/s':>10} {'ratio':>6}  "
        f"{'geventc p50/p99 ms':>19} {'raw p50/p99 ms':>16}  {'errors g/r':>10}"
    )
    print(header)
    print("-" * len(header))
    for scenario, entry in data["results"].items():
        g, r = entry["geventc"], entry["raw"]
        print(
            f"{scenario:10} {g['ops_per_s']:13.0f} {r['ops_per_s']:10.0f} "
            f"{entry['ratio_geventc_raw']:6.3f}  "
            f"{_latency(g):>19} {_latency(r):>16}  {_errors(g, r):>10}"
        )


def _errors(geventc_figures: dict[str, Any], raw_figures: dict[str, Any]) -> str:
    return f"{geventc_figures['errors']}/{raw_figures['errors']}"


def _latency(figures: dict[str, Any]) -> str:
    return f"{figures['p50_ms']:.2f}/{figures['p99_ms']:.2f}"


# --- main -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--ops", type=_positive, default=2000, help="operations per scenario")
    parser.add_argument("--repeat", type=_positive, default=3, help="repetitions (medians shown)")
    parser.add_argument("--concurrency", type=_positive, default=64, help="concurrent greenlets")
    parser.add_argument("--endpoints", help="URL[,URL] of an existing etcd (default: start one)")
    parser.add_argument("--no-fsync", action="store_true", help="start etcd --unsafe-no-fsync")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    return parser.parse_args(argv)


def _positive(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return number


@contextmanager
def etcd_endpoints(options: argparse.Namespace) -> Iterator[tuple[list[str], bool | None]]:
    """The endpoints to use and the fsync setting (None when etcd is not ours)."""
    if options.endpoints:
        yield [e.strip() for e in options.endpoints.split(",") if e.strip()], None
        return
    fsync = not options.no_fsync
    with EtcdServer(fsync=fsync) as server:
        yield server.endpoints, fsync


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the figures."""
    options = parse_args(argv)
    with etcd_endpoints(options) as (endpoints, fsync):
        kvs = {name: make_kv(name, endpoints) for name in IMPLEMENTATIONS}
        admin = geventc.Client(endpoints)
        prefix = f"/bench/{uuid.uuid4()}/"
        try:
            env = environment(endpoints, fsync, admin.version().server)
            runs = benchmark(
                kvs, prefix, options.ops, options.repeat, options.concurrency, not options.json
            )
        finally:
            admin.delete_prefix(prefix)
            for kv in kvs.values():
                kv.close()
            admin.close()
    summaries = {s: {n: summarise(r) for n, r in by_name.items()} for s, by_name in runs.items()}
    data = report(summaries, env, options)
    if options.json:
        print(json.dumps(data, indent=2))
    else:
        print_table(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())

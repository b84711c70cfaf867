"""S1/S2 sequential and S3 concurrent put/get: ops/s, p50/p99 latency, client CPU.

``kv-seq`` runs ``ops`` puts, then ``ops`` gets of the keys just written, from one
caller. ``kv-conc`` does the same from 64 and 256 concurrent callers (``callers``)
sharing one client and pulling keys from one queue: greenlets in the monkey-patched
processes, OS threads for python-etcd3. Values are 256 bytes; every key is distinct.
Each run also records this process's CPU time per operation (etcd runs on the same 2
cores, so a client's CPU per request bounds its throughput).

Run through the suite: ``python benchmarks/run.py`` (or by hand,
``python benchmarks/worker.py geventc kv-seq '{"endpoint": "http://127.0.0.1:2379",
"prefix": "/bench/x/", "ops": 200}'``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from common import VALUE, CpuWindow, for_each, latency_ms
from peers import KV, GeventcKV, make_kv

WARMUP_OPS = 50


def measure(keys: list[str], callers: int, op: Callable[[str], object]) -> dict[str, Any]:
    """Run ``op`` on every key from ``callers`` callers; throughput and latencies."""
    cpu = CpuWindow()
    wall, latencies, errors = for_each(keys, callers, op)
    return {
        "ops_per_s": round(len(keys) / wall, 1),
        "cpu_us_per_op": round(cpu.cpu_seconds() * 1e6 / len(keys), 1),
        **latency_ms(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
    }


def reader(kv: KV) -> Callable[[str], object]:
    """A get that fails when the key is missing."""

    def get(key: str) -> object:
        if kv.get(key) is None:
            raise LookupError(f"{key} is missing")
        return None

    return get


def warm_up(kv: KV, prefix: str, callers: int) -> None:
    """Open the connections and run both code paths once."""
    keys = [f"{prefix}warmup/{i}" for i in range(max(WARMUP_OPS, callers))]
    for_each(keys, callers, lambda key: kv.put(key, VALUE))
    for_each(keys, callers, kv.get)


def kv_seq(impl: str, params: dict[str, Any]) -> dict[str, Any]:
    """S1/S2: sequential puts then gets."""
    kv = make_kv(impl, params["endpoint"])
    try:
        warm_up(kv, params["prefix"], 1)
        keys = [f"{params['prefix']}seq/{i:07d}" for i in range(params["ops"])]
        return {
            "put": measure(keys, 1, lambda key: kv.put(key, VALUE)),
            "get": measure(keys, 1, reader(kv)),
        }
    finally:
        kv.close()


def kv_conc(impl: str, params: dict[str, Any]) -> dict[str, Any]:
    """S3: puts then gets from each number of concurrent callers."""
    kv = make_kv(impl, params["endpoint"])
    results: dict[str, Any] = {}
    try:
        warm_up(kv, params["prefix"], max(params["callers"]))
        for callers in params["callers"]:
            keys = [f"{params['prefix']}c{callers}/{i:07d}" for i in range(params["ops"])]
            entry: dict[str, Any] = {}
            for name, op in (("put", lambda key: kv.put(key, VALUE)), ("get", reader(kv))):
                before = kv.coalesced() if isinstance(kv, GeventcKV) else (0, 0)
                entry[name] = measure(keys, callers, op)
                if isinstance(kv, GeventcKV):
                    batches, ops = (a - b for a, b in zip(kv.coalesced(), before, strict=True))
                    entry[name]["txn_batches"] = batches
                    entry[name]["ops_per_batch"] = round(ops / batches, 1) if batches else 0
            results[str(callers)] = entry
        return results
    finally:
        kv.close()


SCENARIOS = {"kv-seq": kv_seq, "kv-conc": kv_conc}

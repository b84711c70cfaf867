"""S1/S2 sequential and S3 concurrent put/get: ops/s, p50/p99 latency, client CPU.

``kv-seq`` runs ``ops`` puts, then ``ops`` gets of the keys just written, from one
caller. ``kv-conc`` does the same from 64 and 256 concurrent callers (``callers``)
sharing one client and pulling keys from one queue: greenlets in the monkey-patched
processes, OS threads for python-etcd3. Values are 256 bytes; every key is distinct.
Each run also records this process's CPU time per operation (etcd runs on the same 2
cores, so a client's CPU per request bounds its throughput).

The Go anchor (``go``: etcd's ``client/v3``; ``go-http``: ``net/http`` over the gateway)
runs these same two workloads in ``benchmarks/go/kvbench/main.go``, which mirrors this
module line by line (keys, values, :data:`WARMUP_OPS`, order, figures); change both
together.

Run through the suite: ``python benchmarks/run.py`` (or by hand, from the repository root,
``python -m benchmarks.worker geventc kv-seq '{"endpoint": "http://127.0.0.1:2379",
"prefix": "/bench/x/", "ops": 200}'``). :data:`SECTIONS` is their part of the report.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from benchmarks import report
from benchmarks.common import VALUE, CpuWindow, for_each, latency_ms
from benchmarks.peers import KV, GeventcKV, make_kv
from benchmarks.report import figure, fmt, joined, per_impl, times, versus, worst

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


# --- the report's sections ------------------------------------------------------------------

OPS = ("put", "get")
CONC_CALLERS = ("64", "256")


def put_get(make: Callable[[str], report.Cell], name: str, where: str = "") -> report.Cell:
    """``put / get``: the cell ``make`` builds for ``{where}put.{name}``, then for get."""
    return joined(*(make(f"{where}{op}.{name}") for op in OPS))


def only(impl: str, cell: report.Cell) -> report.Cell:
    """``cell`` in ``impl``'s row, empty in the others."""
    return lambda f, row: cell(f, row) if row == impl else ""


def cpu_per_op(at: str = "") -> report.Column:
    """The client's CPU per put and per get, in µs."""
    return report.Column(
        "client CPU µs/op (put / get)", put_get(partial(figure, digits=0), "cpu_us_per_op", at)
    )


def sequential_target(number: str, op: str) -> report.Target:
    """S1 (put) or S2 (get): geventc's p50 within 10 % of raw urllib3's."""

    def measured(f: report.Figures, ratio: float) -> str:
        return (
            f"p50 {fmt(f.med('geventc', f'{op}.p50_ms'), 3)} ms vs raw "
            f"{fmt(f.med('raw', f'{op}.p50_ms'), 3)} ms: {times(ratio)} (p99 "
            f"{times(f.ratio('geventc', 'raw', f'{op}.p99_ms'))}; no coalescing: p50 "
            f"{times(f.ratio('geventc-nc', 'raw', f'{op}.p50_ms'))})"
        )

    text = f"sequential {op} latency ≤ 1.1 x raw urllib3"
    return report.Target(number, text, f"{op}.p50_ms", measured, compare_to="raw", at_most=1.1)


def coalescing_target(op: str) -> report.Target:
    """S3: with coalescing, twice python-etcd3's throughput at 64 callers."""
    path = f"64.{op}.ops_per_s"

    def measured(f: report.Figures, ratio: float) -> str:
        return (
            f"{fmt(f.med('geventc', path), 0)} vs {fmt(f.med('etcd3', path), 0)} ops/s: "
            f"{times(ratio)}"
        )

    text = f"64 callers {op}, coalescing: ≥ 2 x python-etcd3 ops/s"
    return report.Target("S3", text, path, measured, compare_to="etcd3", at_least=2)


def uncoalesced_target(op: str) -> report.Target:
    """S3: without coalescing, at least raw urllib3's throughput at every caller count."""

    def ratios(f: report.Figures) -> dict[str, float]:
        return {c: f.ratio("geventc-nc", "raw", f"{c}.{op}.ops_per_s") for c in CONC_CALLERS}

    def measured(f: report.Figures, _worst: float) -> str:
        return ", ".join(f"{times(r)} at {c} callers" for c, r in ratios(f).items())

    text = f"{op} without coalescing: ≥ raw urllib3 ops/s"
    return report.Target("S3", text, lambda f: min(ratios(f).values()), measured, at_least=1)


GO, GO_HTTP = "go", "go-http"


def go_coalescing_target(callers: str) -> report.Target:
    """S3 (issue 14, target 1): with coalescing, at least Go clientv3's throughput."""

    def ratios(f: report.Figures) -> dict[str, float]:
        return {op: f.ratio("geventc", GO, f"{callers}.{op}.ops_per_s") for op in OPS}

    def measured(f: report.Figures, _worst: float) -> str:
        return "; ".join(
            f"{op} {fmt(f.med('geventc', f'{callers}.{op}.ops_per_s'), 0)} vs "
            f"{fmt(f.med(GO, f'{callers}.{op}.ops_per_s'), 0)} ops/s: {times(r)}"
            for op, r in ratios(f).items()
        )

    text = f"{callers} callers put/get, coalescing: ≥ 1.0 x Go clientv3 ops/s"
    return report.Target(
        "S3", text, lambda f: worst(ratios(f).values(), min), measured, at_least=1.0
    )


def go_latency_target() -> report.Target:
    """S1/S2 (issue 14, target 2): sequential p50 within 1.25 x Go net/http's."""

    def ratios(f: report.Figures) -> dict[str, float]:
        return {op: f.ratio("geventc", GO_HTTP, f"{op}.p50_ms") for op in OPS}

    def measured(f: report.Figures, _worst: float) -> str:
        return "; ".join(
            f"{op} {fmt(f.med('geventc', f'{op}.p50_ms'), 3)} vs "
            f"{fmt(f.med(GO_HTTP, f'{op}.p50_ms'), 3)} ms: {times(r)}"
            for op, r in ratios(f).items()
        )

    text = "sequential put/get p50 ≤ 1.25 x Go net/http's (same gateway)"
    return report.Target(
        "S1/S2", text, lambda f: worst(ratios(f).values(), max), measured, at_most=1.25
    )


def cpu_target() -> report.Target:
    """S1/S2 (issue 14, target 2): at most 250 µs of client CPU per sequential op."""

    def most(f: report.Figures) -> float:
        return worst((f.med("geventc", f"{op}.cpu_us_per_op") for op in OPS), max)

    def measured(f: report.Figures, _worst: float) -> str:
        def pair(impl: str) -> str:
            return " / ".join(fmt(f.med(impl, f"{op}.cpu_us_per_op"), 0) for op in OPS)

        return (
            f"{pair('geventc')} µs (Go clientv3 {pair(GO)}, Go net/http {pair(GO_HTTP)}, "
            f"raw urllib3 {pair('raw')})"
        )

    text = "client CPU ≤ 250 µs/op sequential (put / get)"
    return report.Target("S1/S2", text, most, measured, at_most=250)


def against_go(path: str) -> report.Cell:
    """The row's median of ``path`` over Go clientv3's, as ``x1.23``."""
    return lambda f, impl: times(f.ratio(impl, GO, path))


def go_notes(*at: str) -> report.Notes:
    """A closing line per caller count (or one for the sequential runs): geventc ÷ Go."""

    def notes(f: report.Figures) -> list[str]:
        if not f.runs.get(GO):
            return ["Go clientv3 did not run (see Problems): no geventc ÷ Go ratio.", ""]
        lines = []
        for where in at:
            ratios = ", ".join(
                f"{op} {times(f.ratio('geventc', GO, f'{where}{op}.ops_per_s'))}" for op in OPS
            )
            scope = f"{where.rstrip('.')} callers" if where else "sequential"
            lines.append(f"- **geventc ÷ Go clientv3**, {scope}, ops/s: {ratios}")
        return [*lines, ""]

    return notes


def conc_table(callers: str) -> report.Table:
    """S3's table for one number of callers."""
    at = f"{callers}."
    return per_impl(
        report.Column("put ops/s (min-max)", figure(f"{at}put.ops_per_s", 0, spread=True)),
        report.Column("put p99 ms", figure(f"{at}put.p99_ms", 1)),
        report.Column("get ops/s (min-max)", figure(f"{at}get.ops_per_s", 0, spread=True)),
        report.Column("get p99 ms", figure(f"{at}get.p99_ms", 1)),
        report.Column("geventc ÷ this (put / get ops/s)", put_get(versus, "ops_per_s", at)),
        report.Column(
            "geventc no coalescing ÷ this",
            put_get(partial(versus, mine="geventc-nc"), "ops_per_s", at),
        ),
        report.Column("this ÷ Go clientv3 (put / get ops/s)", put_get(against_go, "ops_per_s", at)),
        cpu_per_op(at),
        report.Column(
            "ops per coalesced txn",
            only("geventc", put_get(partial(figure, digits=1), "ops_per_batch", at)),
        ),
        heading=f"### {callers} concurrent callers",
    )


KV_COLUMNS = (("ops_per_s", "ops/s", 0), ("p50_ms", "p50 ms", 3), ("p99_ms", "p99 ms", 3))
SEQUENTIAL = per_impl(
    *(
        report.Column(f"{op} {name}", figure(f"{op}.{key}", digits))
        for op in OPS
        for key, name, digits in KV_COLUMNS
    ),
    cpu_per_op(),
    report.Column("geventc ÷ this: put p50", versus("put.p50_ms")),
    report.Column("get p50", versus("get.p50_ms")),
    report.Column("this ÷ Go clientv3 (put / get ops/s)", put_get(against_go, "ops_per_s")),
)

SECTIONS = (
    report.Section(
        "S1/S2",
        "S1/S2 — sequential put and get (one caller)",
        [SEQUENTIAL],
        [
            sequential_target("S1", "put"),
            sequential_target("S2", "get"),
            go_latency_target(),
            cpu_target(),
        ],
        notes=go_notes(""),
    ),
    report.Section(
        "S3",
        "S3 — concurrent put and get (callers share one client)",
        [conc_table(c) for c in CONC_CALLERS],
        [
            *(coalescing_target(op) for op in OPS),
            *(uncoalesced_target(op) for op in OPS),
            *(go_coalescing_target(c) for c in CONC_CALLERS),
        ],
        notes=go_notes(*(f"{c}." for c in CONC_CALLERS)),
    ),
)

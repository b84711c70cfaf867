"""Watch guarantees as pure functions over a chaos history, with etcd's robustness
definitions (``tests/robustness/validate/watch.go`` of etcd v3.6).

The ground truth is the *reference*: a watch of the run's namespace the harness keeps
on the members' own URLs over plain urllib3 (no geventc watch code), started before
the workload, resumed from the revision after its last event when a member fails, and
never compacted past (the harness compacts only revisions the reference already
delivered). Its records: ``ref-start`` (``revision``: the first revision it watches;
``state``: the namespace's keys before it, ``key -> [value, mod, create]``) and one
``ref`` per answer (``events``: ``[type, key, value, mod, create, prev]``, type
``P``/``D``, keys relative to the namespace). From it :class:`Reference` gives every
event and the state at any revision.

What a watcher recorded (``participants/watchers.py``): ``wstart`` / ``wresp`` /
``wend`` per stream segment, ``wsnap`` / ``wchange`` for snapshot recipes. Each
segment is checked as one watch request of etcd's suite (a segment ends when the
caller is told of a compaction or its stream gives up; the next one is a new watch):

- **filter**: every event matches the watch (key or prefix, NOPUT / NODELETE);
- **ordered**: event revisions never go back;
- **unique**: no (revision, key) twice;
- **atomic**: a response never starts with the revision the previous one ended with
  (raw streams: one response per revision's events);
- **bookmarkable**: no event at or below a progress notification's revision, and
  progress revisions never go back nor below the last event;
- **reliable**: the events delivered are exactly the reference's matching events from
  the segment's start to its last revision (the last event or progress notification,
  or, for a stream still open when its process ended normally, the run's last
  revision: nothing may be missing at the end either);
- **resumable**: the first event is the first matching one at or after the start; a
  segment that ends by compaction was told of a real compaction (one the harness made)
  above the revision it still needed, and the next segment starts at the compacted
  revision (after an error: at the revision after the last delivered; a respawned
  process's ``raw-from`` stream at the one after its previous generation's last);
  a segment that starts at a compacted revision C is not owed C's deletions (etcd's
  compaction at C removes C's tombstones; what it sends of C must be true);
- **prev_kv**: a ``prev`` equals the key's value just before the event in the
  reference (hub updates: exact, ``None`` only for a key that did not exist);
- **hub updates** (``kind=hub``): events of an update not marked ``resynced`` are real
  events (exactly the reference's, in order, none missing since the last one); a
  ``resynced`` update's (synthetic) events turn the listener's copy into etcd's state at
  the update's revision; after every update the state built from the events, and the
  update's own state (``fp``), equal the reference's state at its revision;
- **snapshots** (``kind=tracker``/``config``): each equals the reference's state at its
  revision, revisions never go back, and the last one is current.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Record = dict[str, Any]
Row = list[Any]  # [type, key, value, mod, create, prev]


def fingerprint(items: Mapping[str, tuple[str, int]]) -> str:
    """The fingerprint of a state (key -> (value, mod revision)), as
    ``participants/watchers.py`` records it."""
    text = json.dumps(sorted([k, v, m] for k, (v, m) in items.items()), separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Spec:
    """What a watch asked for."""

    key: str
    prefix: bool
    prev_kv: bool = False
    filters: tuple[str, ...] = ()

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> Spec:
        return cls(
            raw["key"],
            bool(raw.get("prefix")),
            bool(raw.get("prev_kv")),
            tuple(raw.get("filters") or ()),
        )

    def covers(self, key: str) -> bool:
        return key.startswith(self.key) if self.prefix else key == self.key

    def matches(self, row: Row) -> bool:
        if not self.covers(row[1]):
            return False
        if row[0] == "P" and "NOPUT" in self.filters:
            return False
        return not (row[0] == "D" and "NODELETE" in self.filters)


class Reference:
    """The reference history: every event, and the state at any revision."""

    def __init__(self, start: int, state: Mapping[str, Sequence[Any]], events: list[Row]):
        self.start = start
        self.events = events
        self.revs = [e[3] for e in events]
        #: per key: revisions and (value, mod, create) or None (deleted) from then on
        self._key_revs: dict[str, list[int]] = {}
        self._key_vals: dict[str, list[tuple[str, int, int] | None]] = {}
        for key, (value, mod, create) in state.items():
            self._push(key, 0, (value, mod, create))
        for e in events:
            self._push(e[1], e[3], (e[2], e[3], e[4]) if e[0] == "P" else None)
        self.last = self.revs[-1] if self.revs else start - 1

    def _push(self, key: str, rev: int, value: tuple[str, int, int] | None) -> None:
        self._key_revs.setdefault(key, []).append(rev)
        self._key_vals.setdefault(key, []).append(value)

    @classmethod
    def from_records(cls, records: Iterable[Record]) -> Reference | None:
        start: Record | None = None
        events: list[Row] = []
        for r in records:
            if r["src"] != "harness":
                continue
            if r["ev"] == "ref-start":
                start = r
            elif r["ev"] == "ref":
                events.extend(r["events"])
        if start is None:
            return None
        return cls(int(start["revision"]), start.get("state") or {}, events)

    def value_at(self, key: str, rev: int) -> tuple[str, int, int] | None:
        """The key's (value, mod, create) at revision ``rev`` (None: absent)."""
        revs = self._key_revs.get(key)
        if not revs:
            return None
        i = bisect.bisect_right(revs, rev) - 1
        return self._key_vals[key][i] if i >= 0 else None

    def state_at(self, rev: int, spec: Spec | None = None) -> dict[str, tuple[str, int]]:
        """Every key (covered by ``spec``) at ``rev``: key -> (value, mod)."""
        out = {}
        for key in self._key_revs:
            if spec is not None and not spec.covers(key):
                continue
            v = self.value_at(key, rev)
            if v is not None:
                out[key] = (v[0], v[1])
        return out

    def matching(self, spec: Spec, first: int, last: int) -> list[Row]:
        """The events matching ``spec`` with ``first <= revision <= last``."""
        lo = bisect.bisect_left(self.revs, first)
        hi = bisect.bisect_right(self.revs, last)
        return [e for e in self.events[lo:hi] if spec.matches(e)]

    def last_matching(self, spec: Spec) -> int:
        for e in reversed(self.events):
            if spec.matches(e):
                return int(e[3])
        return 0


@dataclass
class Segment:
    """One watch request of one process: its answers and how it ended."""

    src: str
    sid: str
    name: str
    kind: str
    spec: Spec
    start: int
    answers: list[Record] = field(default_factory=list)
    changes: list[Record] = field(default_factory=list)
    end: Record | None = None
    #: its process ended normally (recorded ``done``): an open segment must be current
    finished: bool = False


@dataclass
class Result:
    """Violations found and what was checked."""

    violations: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n


def segments(records: Iterable[Record]) -> list[Segment]:
    """Every stream segment recorded by a watcher process, in order."""
    open_: dict[tuple[str, str], Segment] = {}
    out: list[Segment] = []
    done: set[str] = set()
    for r in records:
        src, ev = r["src"], r["ev"]
        if ev == "wstart":
            seg = Segment(src, r["sid"], r["name"], r["kind"], Spec.of(r["spec"]), int(r["start"]))
            open_[(src, r["sid"])] = seg
            out.append(seg)
        elif ev in ("wresp", "wsnap"):
            seg = open_.get((src, r["sid"]))
            if seg is not None:
                seg.answers.append(r)
        elif ev == "wchange":
            seg = open_.get((src, r["sid"]))
            if seg is not None:
                seg.changes.append(r)
        elif ev == "wend":
            seg = open_.get((src, r["sid"]))
            if seg is not None:
                seg.end = r
        elif ev == "done" and src != "harness":
            done.add(src)
    for seg in out:
        seg.finished = seg.src in done
    return out


def _fmt(row: Row | None) -> str:
    if row is None:
        return "nothing"
    return f"{row[0]} {row[1]}={row[2]!r}@{row[3]}"


def _same(got: Row, want: Row) -> bool:
    same = got[0] == want[0] and got[1] == want[1] and got[2] == want[2] and got[3] == want[3]
    return same and (not got[4] or got[4] == want[4])


def check_stream(seg: Segment, ref: Reference, compactions: Sequence[int], result: Result) -> int:
    """Check a raw or observer segment; the revision it still needed next."""
    name = f"{seg.src} {seg.sid}"
    bad = result.violations
    last_event = 0
    last_progress = 0
    seen: set[tuple[int, str]] = set()
    got: list[Row] = []
    prev_end = 0  # last revision of the previous response with events
    for answer in seg.answers:
        rows: list[Row] = answer["events"]
        if rows and seg.kind == "raw" and rows[0][3] == prev_end:
            bad.append(
                f"{name}: broke atomic: a response starts with revision {prev_end}, "
                "which the previous one ended with"
            )
        for row in rows:
            rev = row[3]
            if not seg.spec.matches(row):
                bad.append(f"{name}: broke filter: {_fmt(row)} does not match {seg.spec}")
            if rev < last_event:
                bad.append(f"{name}: broke ordered: {_fmt(row)} after revision {last_event}")
            if rev <= last_progress:
                bad.append(
                    f"{name}: broke bookmarkable: {_fmt(row)} after a progress "
                    f"notification at {last_progress}"
                )
            if (rev, row[1]) in seen:
                bad.append(f"{name}: broke unique: {_fmt(row)} delivered twice")
            seen.add((rev, row[1]))
            if seg.spec.prev_kv and row[5] is not None:
                before = ref.value_at(row[1], rev - 1)
                if before is None or before[0] != row[5]:
                    bad.append(
                        f"{name}: wrong prev_kv of {_fmt(row)}: {row[5]!r}, the "
                        f"history has {before[0] if before else None!r}"
                    )
            last_event = max(last_event, rev)
            got.append(row)
        if rows:
            prev_end = rows[-1][3]
        if answer.get("pn"):
            rev = int(answer["rev"])
            if rev < last_progress or rev < last_event:
                bad.append(
                    f"{name}: broke bookmarkable: progress notification at {rev} "
                    f"after revision {max(last_progress, last_event)}"
                )
            last_progress = max(last_progress, rev)
    result.add("events", len(got))
    result.add("progress", sum(1 for a in seg.answers if a.get("pn")))
    last = max(last_event, last_progress)
    if seg.end is None and seg.finished:
        last = max(last, ref.last)  # open to the end: it must have caught up
    first = seg.start
    if seg.start in compactions:
        # a watch from the compacted revision C: etcd's compaction removed the
        # tombstones at C, so C's deletions are gone; what it sends of C must be true
        whole = ref.matching(seg.spec, first, first)
        for row in got:
            if row[3] == first and not any(_same(row, w) for w in whole):
                bad.append(f"{name}: {_fmt(row)} at the compacted start is not in the history")
        got = [row for row in got if row[3] != first]
        first += 1
    want = ref.matching(seg.spec, first, last) if last else []
    if got and want and not _same(got[0], want[0]):
        bad.append(
            f"{name}: broke resumable: the first event after start {seg.start} is "
            f"{_fmt(got[0])}, the history's is {_fmt(want[0])}"
        )
    for i in range(max(len(got), len(want))):
        g = got[i] if i < len(got) else None
        w = want[i] if i < len(want) else None
        if g is None or w is None or not _same(g, w):
            what = "missing" if g is None or (w is not None and g[3] > w[3]) else "unexpected"
            bad.append(
                f"{name}: broke reliable: event {i} from start {seg.start} is "
                f"{_fmt(g)}, the history's is {_fmt(w)} ({what}; "
                f"{len(got)} delivered, {len(want)} expected up to {last})"
            )
            break
    needed = max(seg.start, last_event + 1, last_progress + 1)
    if seg.end is not None and seg.end.get("reason") == "compacted":
        result.add("compacted")
        told = int(seg.end.get("compact") or 0)
        made = [c for c in compactions if c >= told]
        if told <= needed:  # etcd refuses a watch from N only when N < its compaction
            bad.append(
                f"{name}: told of a compaction at {told} while it needed {needed} (not compacted)"
            )
        if not made:
            bad.append(
                f"{name}: told of a compaction at {told} the harness never made "
                f"({sorted(compactions)})"
            )
        return told
    return needed


def check_hub(seg: Segment, ref: Reference, result: Result) -> None:
    """Check a hub listener's updates (see the module docstring)."""
    name = f"{seg.src} {seg.sid}"
    bad = result.violations
    whole = Spec("/w/", True)
    model: dict[str, tuple[str, int]] = {}
    pointer = 0
    prev_rev = 0
    for n, u in enumerate(seg.answers):
        rev = int(u["rev"])
        rows: list[Row] = u["events"]
        if rev < prev_rev:
            bad.append(f"{name}: update {n} went back from revision {prev_rev} to {rev}")
        if rows and not u.get("resynced") and rows[0][3] <= prev_rev:
            bad.append(
                f"{name}: update {n} hands out {_fmt(rows[0])} after an update "
                f"that said revision {prev_rev}"
            )
        prev_rev = max(prev_rev, rev)
        if u.get("resynced"):
            result.add("resyncs")
            if n:
                result.add("synthetic", len(rows))
            truth = ref.state_at(rev, seg.spec)
            for row in rows:
                key = row[1]
                had = model.get(key)
                if (had[0] if had else None) != row[5]:
                    bad.append(
                        f"{name}: synthetic {_fmt(row)} at {rev} says prev {row[5]!r}, "
                        f"the listener's copy had {had[0] if had else None!r}"
                    )
                if row[0] == "P":
                    if truth.get(key) != (row[2], row[3]):
                        bad.append(
                            f"{name}: synthetic {_fmt(row)} at {rev}: etcd had {truth.get(key)!r}"
                        )
                    model[key] = (row[2], row[3])
                else:
                    if key in truth:
                        bad.append(
                            f"{name}: synthetic {_fmt(row)} at {rev}: etcd had {truth[key]!r}"
                        )
                    model.pop(key, None)
            pointer = rev + 1
        elif rows:
            last = rows[-1][3]
            want = ref.matching(seg.spec, pointer, last)
            if last > rev:
                bad.append(f"{name}: update {n} at revision {rev} has an event at {last}")
            for i in range(max(len(rows), len(want))):
                g = rows[i] if i < len(rows) else None
                w = want[i] if i < len(want) else None
                if g is None or w is None or not _same(g, w):
                    bad.append(
                        f"{name}: update {n} (revision {rev}, not marked resynced): "
                        f"event {i} is {_fmt(g)}, the history's is {_fmt(w)} "
                        f"(from {pointer})"
                    )
                    break
            for row in rows:
                had = model.get(row[1])
                if (had[0] if had else None) != row[5]:
                    bad.append(
                        f"{name}: wrong prev_kv of {_fmt(row)}: {row[5]!r}, the "
                        f"history has {had[0] if had else None!r}"
                    )
                if row[0] == "P":
                    model[row[1]] = (row[2], row[3])
                else:
                    model.pop(row[1], None)
            result.add("events", len(rows))
            pointer = last + 1
        truth = ref.state_at(rev, seg.spec)
        if model != truth:
            diff = sorted(set(model.items()) ^ set(truth.items()))[:4]
            bad.append(
                f"{name}: after update {n} (revision {rev}, resynced="
                f"{bool(u.get('resynced'))}) the state its events give differs from "
                f"etcd's at {rev}: {diff}"
            )
            return  # what follows would be checked against a copy already wrong
        if u.get("fp") and u["fp"] != fingerprint(ref.state_at(rev, whole)):
            bad.append(f"{name}: update {n}'s state is not etcd's state at its revision {rev}")
    if seg.finished and seg.answers and prev_rev < ref.last_matching(seg.spec):
        bad.append(
            f"{name}: ended at revision {prev_rev}, behind the last change "
            f"{ref.last_matching(seg.spec)}"
        )


def check_snapshots(seg: Segment, ref: Reference, result: Result) -> None:
    """Check a tracker's or config watcher's snapshots and changes."""
    name = f"{seg.src} {seg.sid}"
    bad = result.violations
    base = len(seg.spec.key)
    prev_rev = 0
    for snap in seg.answers:
        rev = int(snap["rev"])
        if rev < prev_rev:
            bad.append(f"{name}: snapshot went back from revision {prev_rev} to {rev}")
        prev_rev = max(prev_rev, rev)
        truth = {k[base:]: v for k, (v, _) in ref.state_at(rev, seg.spec).items()}
        if snap["state"] != truth:
            diff = sorted(set(snap["state"].items()) ^ set(truth.items()))[:4]
            bad.append(f"{name}: snapshot at {rev} is not etcd's state at {rev}: {diff}")
        result.add("snapshots")
    for change in seg.changes:
        value = ref.value_at(seg.spec.key + change["key"], int(change["rev"]))
        if (value[0] if value else None) != change["new"]:
            bad.append(
                f"{name}: change of {change['key']} at {change['rev']} to "
                f"{change['new']!r}: etcd had {value[0] if value else None!r}"
            )
        result.add("changes")
    if seg.finished and seg.answers and prev_rev < ref.last_matching(seg.spec):
        bad.append(
            f"{name}: last snapshot at {prev_rev}, behind the last change "
            f"{ref.last_matching(seg.spec)}"
        )


def check_writes(records: Iterable[Record], ref: Reference, result: Result) -> None:
    """Every put etcd confirmed to the writer is in the reference at its revision."""
    at: dict[int, set[tuple[str, str]]] = {}
    for e in ref.events:
        if e[0] == "P":
            at.setdefault(e[3], set()).add((e[1], e[2]))
    for r in records:
        if r["ev"] == "wack" and r.get("puts") and r["revision"] >= ref.start:
            missing = [p for p in r["puts"] if tuple(p) not in at.get(r["revision"], set())]
            if missing:
                result.violations.append(
                    f"{r['src']}: acknowledged puts {missing} are not in the reference at "
                    f"revision {r['revision']}"
                )
            result.add("acks")


def check(records: Sequence[Record]) -> Result:
    """Every watch guarantee over a history (see the module docstring)."""
    result = Result()
    ref = Reference.from_records(records)
    if ref is None:
        result.violations.append("no reference history (ref-start) recorded")
        return result
    result.add("reference-events", len(ref.events))
    compactions = [int(r["revision"]) for r in records if r["ev"] == "compact"]
    for r in records:
        if r["ev"] == "final-state":
            truth = ref.state_at(int(r["revision"]), Spec("/", True))
            state = {k: (v[0], v[1]) for k, v in r["state"].items()}
            if state != truth:
                result.violations.append(
                    f"the reference disagrees with etcd's final state at {r['revision']}"
                )
    check_writes(records, ref, result)
    segs = segments(records)
    needed: dict[tuple[str, str], tuple[int, str]] = {}  # (src, name) -> next start, why
    by_slot: dict[tuple[str, str], list[tuple[int, Segment]]] = {}
    for seg in segs:
        result.add("streams")
        result.add(f"streams-{seg.kind}")
        key = (seg.src, seg.name)
        if key in needed:
            start, why = needed[key]
            if seg.kind in ("raw", "observer") and seg.start != start:
                result.violations.append(
                    f"{seg.src} {seg.sid}: restarted at {seg.start} after {why}, not at {start}"
                )
            result.add("restarts")
        if seg.kind in ("raw", "observer"):
            nxt = check_stream(seg, ref, compactions, result)
            reason = seg.end.get("reason") if seg.end else "the process ended"
            needed[key] = (nxt, str(reason))
            slot, _, gen = seg.src.partition(".")
            by_slot.setdefault((slot, seg.name), []).append((int(gen or 0), seg))
        elif seg.kind == "hub":
            check_hub(seg, ref, result)
        else:
            check_snapshots(seg, ref, result)
    for (_, name), gens in by_slot.items():
        if name != "raw-from":
            continue
        for (g0, s0), (g1, s1) in itertools.pairwise(gens):
            if g1 != g0 + 1 or not s1.sid.endswith("#0") or s0.end is not None:
                continue
            events = [row for a in s0.answers for row in a["events"]]
            want = max(s0.start, events[-1][3] + 1 if events else 0)
            if s1.start != want:
                result.violations.append(
                    f"{s1.src} {s1.sid}: the respawned watcher resumed at {s1.start}, "
                    f"not at {want} (after {s0.src}'s last event)"
                )
            result.add("process-resumes")
    return result


def main(argv: Sequence[str]) -> int:
    """``python -m tests.chaos.watchcheck HISTORY``: check a kept history again."""
    from .history import load

    result = check(load(argv[0]))
    print(json.dumps(result.counts, sort_keys=True))
    for v in result.violations:
        print(" -", v)
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

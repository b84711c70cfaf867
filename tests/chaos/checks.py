"""The properties, checked over a recorded history (pure functions: records in,
violations out; an empty list means the property held).

Every check takes the whole history: what the harness did and read at the end (its
``params``, ``healed``, ``observed-until`` and ``final-*`` records) and what every
participant recorded. ``python -m tests.chaos.checks PROPERTY HISTORY.jsonl`` runs a
check again on a saved history.
"""

from __future__ import annotations

import bisect
import itertools
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from geventc.recipes.partitioner import partition

from .history import Record, by_source, load

LEADER = "LEADER"
FOLLOWER = "FOLLOWER"


def _one(records: Iterable[Record], ev: str) -> Record:
    found = [r for r in records if r["src"] == "harness" and r["ev"] == ev]
    if not found:
        raise ValueError(f"the history has no harness {ev!r} record")
    return found[-1]


def _killed(records: Iterable[Record]) -> dict[str, float]:
    """Process name -> when the harness killed it."""
    return {r["proc"]: r["t"] for r in records if r["src"] == "harness" and r["ev"] == "kill"}


def _spawned(records: Iterable[Record], slots: Iterable[str] | None = None) -> dict[str, Record]:
    """Process name -> its spawn record (of the given slots)."""
    wanted = None if slots is None else set(slots)
    return {
        r["proc"]: r
        for r in records
        if r["src"] == "harness" and r["ev"] == "spawn" and (wanted is None or r["slot"] in wanted)
    }


def _arg(spawn: Record, name: str) -> str:
    args: list[str] = spawn["args"]
    return args[args.index(name) + 1]


def crashes(records: Iterable[Record]) -> list[str]:
    """A participant that crashed is a violation of whatever it was doing."""
    return [f"{r['src']} crashed: {r.get('error')}" for r in records if r["ev"] == "crash"]


# --- property 1: leader safety -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Belief:
    """A span during which a process believed it led with a lease it could trust."""

    proc: str
    start: float
    end: float
    token: int


#: records after which a process believes it holds nothing (until its next status)
LETTING_GO = ("stopping", "releasing", "acking")


def beliefs(records: list[Record], until: float, holding: str = LEADER) -> dict[str, list[Belief]]:
    """When each process believed it was the leader (or held what ``holding`` says:
    a lock's ACQUIRED) with a valid lease.

    Exactly ``LeaderElector.is_leader`` (or a lock's ``held``) as the instrumentation
    recorded its inputs: the last status reported is ``holding``, the kept lease is the
    one the key is on, it is not LOST (or closed), and now < its deadline (send time of
    the last renewal that succeeded + TTL). A killed process believes nothing after its
    death, a stopping or releasing one nothing after it began to (until its next
    status), and nothing counts after ``until``.
    """
    killed = _killed(records)
    result: dict[str, list[Belief]] = {}
    for src, own in by_source(records).items():
        steps = [r for r in own if r["ev"] in ("status", "lease", *LETTING_GO) and r["t"] <= until]
        if src == "harness" or not steps:
            continue
        stop = min(killed.get(src, math.inf), until)
        status, token, key_lease, lease, lease_state, deadline = None, 0, 0, 0, "LOST", 0.0
        spans: list[Belief] = []
        for i, step in enumerate(steps):
            if step["ev"] == "status":
                status, token, key_lease = step["status"], step["token"], step["key_lease"]
            elif step["ev"] == "lease":
                lease, lease_state, deadline = step["id"], step["state"], step["deadline"]
            else:
                status = None
            start = step["t"]
            end = min(steps[i + 1]["t"] if i + 1 < len(steps) else stop, stop, deadline)
            trusted = lease_state in ("ACTIVE", "SUSPENDED") and lease == key_lease != 0
            if status != holding or not trusted or end <= start:
                continue
            if spans and spans[-1].token == token and spans[-1].end >= start:
                spans[-1] = Belief(src, spans[-1].start, end, token)
            else:
                spans.append(Belief(src, start, end, token))
        result[src] = spans
    return result


def after_steals(
    records: list[Record], all_beliefs: dict[str, list[Belief]]
) -> dict[str, list[Belief]]:
    """The beliefs with each one whose election key the harness deleted ("steal") cut at
    that moment: from then on another candidate may lead while the victim, until its
    watch tells it, still believes it does (its writes are then fenced by etcd)."""
    cut = {proc: list(spans) for proc, spans in all_beliefs.items()}
    for steal in records:
        if steal["src"] != "harness" or steal["ev"] != "steal":
            continue
        spans = cut.get(steal["victim"], [])
        for i, span in enumerate(spans):
            if span.token == steal["token"] and span.start <= steal["t"] < span.end:
                spans[i] = Belief(span.proc, span.start, steal["t"], span.token)
    return cut


def believed_at(spans: list[Belief], t: float) -> Belief | None:
    for span in spans:
        if span.start <= t < span.end:
            return span
    return None


def check_overlaps(all_beliefs: dict[str, list[Belief]]) -> list[str]:
    """At every moment at most one process believes it leads with a valid lease."""
    spans = sorted((b for bs in all_beliefs.values() for b in bs), key=lambda b: b.start)
    violations = []
    for i, first in enumerate(spans):
        for second in spans[i + 1 :]:
            if second.start >= first.end:
                break
            if second.proc != first.proc:
                violations.append(
                    f"two leaders: {first.proc} (token {first.token}) and {second.proc} "
                    f"(token {second.token}) both believed they led with a valid lease "
                    f"from t={second.start:.3f} to t={min(first.end, second.end):.3f}"
                )
    return violations


def token_order(entries: Sequence[Record]) -> list[str]:
    """Log entries (in revision order) never go back in fencing token."""
    violations = []
    for last, entry in itertools.pairwise(entries):
        if entry["token"] < last["token"]:
            violations.append(
                f"fencing token went back: {last['identity']} wrote with token {last['token']} "
                f"at revision {last['revision']}, then {entry['identity']} with token "
                f"{entry['token']} at revision {entry['revision']}"
            )
    return violations


def check_fenced_writes(records: list[Record], all_beliefs: dict[str, list[Belief]]) -> list[str]:
    """Accepted writes never go back in fencing token; none was attempted by a writer
    that had last been told anything but LEADER, or outside its leadership; no
    acknowledged write is lost and no refused one is in the log."""
    entries = sorted(_one(records, "final-log")["entries"], key=lambda e: e["revision"])
    violations = token_order(entries)
    stolen = {
        r["token"]: r["revision"] for r in records if r["src"] == "harness" and r["ev"] == "steal"
    }
    for entry in entries:
        if entry["token"] in stolen and entry["revision"] > stolen[entry["token"]]:
            violations.append(
                f"{entry['identity']} wrote with token {entry['token']} at revision "
                f"{entry['revision']}, after its key was deleted at {stolen[entry['token']]}"
            )
    return violations + check_attempts(records, entries, all_beliefs, LEADER, "is_leader")


def check_attempts(
    records: list[Record],
    entries: Sequence[Record],
    all_beliefs: dict[str, list[Belief]],
    holding: str,
    guard: str,
) -> list[str]:
    """Every log entry was attempted by a writer last told ``holding`` with the token it
    carries (a write attempted after being told SUSPENDED or LOST, or never told
    ``holding``, is a violation); whenever a writer's ``guard`` passed it believed it
    held with a valid lease, that token; an acknowledged write is in the log, a
    refused one is not."""
    violations = []
    attempts = {(r["src"], r["n"]): r for r in records if r["ev"] == "attempt"}
    writes = {(r["src"], r["n"]): r for r in records if r["ev"] == "write"}
    logged = {(e["identity"], e["n"]): e for e in entries}
    for key, entry in logged.items():
        attempt = attempts.get(key)
        what = f"log entry {entry['identity']}#{entry['n']} (token {entry['token']})"
        if attempt is None:
            violations.append(f"{what} has no recorded attempt")
            continue
        if attempt["told"] != holding:
            violations.append(f"{what} was accepted but its writer was last told {attempt['told']}")
        if attempt["token"] != entry["token"]:
            violations.append(f"{what} carries a token its writer did not hold")
        if attempt.get("told_token", entry["token"]) != entry["token"]:
            violations.append(
                f"{what} was accepted but its writer was last told {holding} with token "
                f"{attempt['told_token']}"
            )
    until = _one(records, "observed-until")["t"]
    for key, attempt in attempts.items():
        if attempt["t"] > until:
            continue  # after the end of the observation (the processes are killed then)
        belief = believed_at(all_beliefs.get(key[0], []), attempt["t"])
        if belief is None:
            violations.append(
                f"{key[0]} passed its guard ({guard}) for write #{key[1]} at "
                f"t={attempt['t']:.3f} without holding a valid lease of its key"
            )
        elif belief.token != attempt["token"]:
            violations.append(
                f"{key[0]} passed its guard ({guard}) for write #{key[1]} with token "
                f"{attempt['token']} while it held token {belief.token}"
            )
        write = writes.get(key)
        if write is None:
            continue  # killed or stopped before the answer: either outcome is fine
        if write["result"] == "accepted" and (
            key not in logged or logged[key]["revision"] != write["revision"]
        ):
            violations.append(f"acknowledged write {key[0]}#{key[1]} is not in the log")
        if write["result"] == "fenced" and key in logged:
            violations.append(f"write {key[0]}#{key[1]} was refused but is in the log")
    return violations


def check_single_leader(records: list[Record], all_beliefs: dict[str, list[Belief]]) -> list[str]:
    """After the faults stop, exactly one leader within TTL + 2 s, that stays, that
    every other live candidate follows, and whose key is first in etcd."""
    ttl = _one(records, "params")["ttl"]
    healed = _one(records, "healed")["t"]
    until = _one(records, "observed-until")["t"]
    due = healed + ttl + 2.0
    active = {
        proc: [b for b in spans if b.end > due and b.start < until]
        for proc, spans in all_beliefs.items()
    }
    active = {proc: spans for proc, spans in active.items() if spans}
    if len(active) != 1:
        return [
            f"not exactly one leader from t={due:.3f} (healed + TTL + 2 s) to "
            f"t={until:.3f}: {sorted(active) or 'none'}"
        ]
    ((leader, spans),) = active.items()
    covered = due
    for span in spans:
        if span.start > covered + 1e-6:
            break
        covered = max(covered, span.end)
    violations = []
    if covered < until - 1e-6:
        violations.append(
            f"{leader} did not lead without a break from t={due:.3f} to t={until:.3f} "
            f"(only until t={covered:.3f})"
        )
    killed = _killed(records)
    for src, own in by_source(records).items():
        statuses = [r for r in own if r["ev"] == "status" and r["t"] <= until]
        if src in (leader, "harness") or src in killed or not statuses:
            continue
        last = statuses[-1]
        if last["status"] != FOLLOWER or last["leader"] != leader:
            violations.append(
                f"{src} ends as {last['status']} of {last['leader']!r}, not a follower of {leader}"
            )
    keys = _one(records, "final-election")["keys"]
    if not keys or keys[0]["value"] != leader:
        violations.append(f"etcd's first election key is {keys[:1]}, not {leader}'s")
    return violations


def check_leader_safety(records: list[Record]) -> list[str]:
    """Property 1, every part of it."""
    until = _one(records, "observed-until")["t"]
    all_beliefs = beliefs(records, until)
    cut = after_steals(records, all_beliefs)
    return (
        crashes(records)
        + check_overlaps(cut)
        + check_fenced_writes(records, all_beliefs)
        + check_single_leader(records, cut)
    )


# --- property 2: exactly-once, in-order events -------------------------------------------

COUNTER = "/seq/counter"
ITEMS = 50


def expected_items(n: int) -> dict[str, str]:
    """The tracker's view when the counter is at ``n``: per residue, its newest value."""
    return {str(m % ITEMS): str(m) for m in range(max(1, n - ITEMS + 1), n + 1)}


def fingerprint(n: int) -> tuple[int, int, bool]:
    """What a tracker records of the state at value ``n``: item count, sum of the
    values, and whether every name is its value's residue."""
    values = range(max(1, n - ITEMS + 1), n + 1)
    return len(values), sum(values), True


class _Revisions:
    """Which revision committed value n, from every witness; conflicts are violations."""

    def __init__(self) -> None:
        self.of: dict[int, int] = {}
        self.witness: dict[int, str] = {}
        self.violations: list[str] = []

    def saw(self, n: int, revision: int, who: str) -> None:
        known = self.of.get(n)
        if known is None:
            self.of[n], self.witness[n] = revision, who
        elif known != revision:
            self.violations.append(
                f"value {n} committed at revision {known} per {self.witness[n]} "
                f"but at {revision} per {who}"
            )


def _observer_stream(
    src: str, channel: str, own: list[Record], revisions: _Revisions
) -> tuple[list[str], int | None, list[tuple[int, int, str]]]:
    """Check one observer's deliveries; returns violations, the last value of its last
    segment (None when it ended compacted) and its sync points."""
    violations: list[str] = []
    syncs: list[tuple[int, int, str]] = []
    who = f"{src}/{channel}"
    expect = 0  # the next value
    last_rev = 0
    group: dict[str, int] = {}  # keys of the txn being delivered (prefix observer)
    ended = True

    def close_group() -> None:
        if channel == "prefix" and group and len(group) != 2:
            violations.append(f"{who}: the txn of value {expect - 1} came incomplete: {group}")

    def delivered(key: str, n: int, rev: int) -> None:
        nonlocal expect, last_rev, group
        wanted = {COUNTER} if channel == "key" else {COUNTER, f"/seq/items/{n % ITEMS}"}
        if channel == "prefix" and rev == last_rev and group:
            if key in group or key not in wanted or n != expect - 1:
                violations.append(f"{who}: duplicate or stray event {key}={n} at {rev}")
            group[key] = n
            return
        if rev <= last_rev:
            violations.append(f"{who}: revision went from {last_rev} to {rev} ({key}={n})")
            return
        close_group()
        if n != expect:
            kind = "duplicate" if n < expect else "gap"
            violations.append(f"{who}: {kind}: expected value {expect}, got {n} at {rev}")
        if key not in wanted:
            violations.append(f"{who}: unexpected key {key} for value {n}")
        revisions.saw(n, rev, who)
        expect, last_rev, group = n + 1, rev, {key: n}

    for r in own:
        if r.get("c") != channel:
            continue
        if r["ev"] == "sync":
            if not ended:
                violations.append(f"{who}: re-synced at t={r['t']:.3f} without being told why")
            close_group()
            expect, last_rev, group, ended = r["value"] + 1, r["revision"], {}, False
            syncs.append((r["revision"], r["value"], who))
        elif r["ev"] == "es":
            for key, value, rev, kind in r["es"]:
                if ended:
                    violations.append(f"{who}: event after its observer ended: {key}={value}")
                    continue
                if kind != "PUT" or not value.isdigit():
                    violations.append(f"{who}: unexpected {kind} event {key}={value} at {rev}")
                    continue
                delivered(key, int(value), rev)
        elif r["ev"] == "recipe-error" and r.get("fatal"):
            close_group()
            group = {}
            ended = True
            if not r.get("compacted"):
                violations.append(f"{who}: its observer died: {r['error']}")
            elif last_rev + 1 >= r["compact_revision"]:
                violations.append(
                    f"{who}: told Compacted (compacted at {r['compact_revision']}) but it only "
                    f"needed revision {last_rev + 1} on"
                )
    close_group()
    return violations, None if ended else expect - 1, syncs


def check_sequence(records: list[Record]) -> list[str]:
    """Property 2: every observer delivers exactly the committed sequence (no duplicate,
    no gap, in order, same revisions as every other witness) or was told Compacted
    when it could not; every tracker snapshot is the exact state at its revision; and
    live consumers reach the final value."""
    final = _one(records, "final-seq")
    total, final_rev = final["counter"], final["revision"]
    violations = crashes(records)
    if final["items"] != expected_items(total):
        violations.append(f"etcd's items {final['items']} are not those of value {total}")
    revisions = _Revisions()
    revisions.saw(total, final_rev, "final read")
    for r in records:
        if r["ev"] == "ack" and r["revision"]:
            revisions.saw(r["n"], r["revision"], f"{r['src']} ack")
        if r["ev"] == "ack" and r["n"] > total:
            violations.append(f"{r['src']} acknowledged {r['n']} beyond the final {total}")
    consumers = _spawned(records, _one(records, "params")["consumers"])
    killed = _killed(records)
    syncs: list[tuple[int, int, str]] = []
    snapshots: list[tuple[Record, int]] = []
    for src, own in by_source(records).items():
        if src not in consumers:
            continue
        live = src not in killed
        for channel in ("prefix", "key"):
            found, last, points = _observer_stream(src, channel, own, revisions)
            violations += found
            syncs += points
            if live and last != total:
                violations.append(f"{src}/{channel} ends at value {last}, not {total}")
        snaps = [r for r in own if r["ev"] == "snap"]
        previous = None
        for snap in snaps:
            n = snap["n"]
            if (snap["count"], snap["sum"], snap["names_ok"]) != fingerprint(n):
                violations.append(f"{src}/tracker: snapshot at {snap['r']} is no state: {snap}")
            if previous is not None and (snap["r"] < previous[0] or n < previous[1]):
                violations.append(
                    f"{src}/tracker went back from value {previous[1]} at {previous[0]} "
                    f"to {n} at {snap['r']}"
                )
            previous = (snap["r"], n)
            snapshots.append((snap, n))
        if live and (previous is None or previous[1] != total):
            violations.append(f"{src}/tracker ends at {previous}, not at value {total}")
    violations += revisions.violations
    ordered = sorted(revisions.of.items())
    for (n1, r1), (n2, r2) in itertools.pairwise(ordered):
        if r2 <= r1:
            violations.append(f"value {n2} at revision {r2} is not after value {n1} at {r1}")
    of = revisions.of
    for revision, value, who in syncs:
        if value and value in of and of[value] > revision:
            violations.append(f"{who}: read value {value} at {revision}, before it was committed")
        if value + 1 in of and of[value + 1] <= revision:
            violations.append(f"{who}: read value {value} at {revision}, but {value + 1} was there")
    for snap, n in snapshots:
        if n and n in of and of[n] > snap["r"]:
            violations.append(f"{snap['src']}/tracker: value {n} shown at {snap['r']}, too early")
        if n + 1 in of and of[n + 1] <= snap["r"]:
            violations.append(f"{snap['src']}/tracker: stale value {n} shown at {snap['r']}")
    return violations


# --- property 3: registration convergence ------------------------------------------------


def check_registrations(records: list[Record]) -> list[str]:
    """Property 3: once the faults stop, within 2 x TTL every live resolver's list is
    exactly the live instances (and stays so), as is etcd's registry; no resolver ever
    lists an address nobody registered."""
    params = _one(records, "params")
    ttl, registrars, resolvers = params["ttl"], params["registrars"], params["resolvers"]
    healed = _one(records, "healed")["t"]
    until = _one(records, "observed-until")["t"]
    due = healed + 2 * ttl
    killed = _killed(records)
    spawned = _spawned(records, registrars)
    ever = {a for spawn in spawned.values() for a in _arg(spawn, "--addresses").split(",")}
    live = {
        a
        for proc, spawn in spawned.items()
        if proc not in killed
        for a in _arg(spawn, "--addresses").split(",")
    }
    violations = crashes(records)
    stored = set(_one(records, "final-registry")["addresses"])
    if stored != live:
        violations.append(
            f"etcd's registry differs from the live instances: missing "
            f"{sorted(live - stored)}, extra {sorted(stored - live)}"
        )
    resolver_procs = _spawned(records, resolvers)
    count = params["per_process"]
    sources = by_source(records)
    for src in resolver_procs:
        own = sources.get(src, [])
        for number in range(count):
            views = [r for r in own if r["ev"] == "view" and r["r"] == number and r["t"] <= until]
            who = f"{src}/resolver{number}"
            for view in views:
                phantom = set(view["addrs"]) - ever
                if phantom:
                    violations.append(f"{who} listed unregistered {sorted(phantom)}")
            if src in killed:
                continue
            before = [v for v in views if v["t"] <= due]
            after = [v for v in views if v["t"] > due]
            if not before:
                violations.append(f"{who} had no instance list by t={due:.3f}")
                continue
            for view in [before[-1], *after]:
                got = set(view["addrs"])
                if got != live:
                    violations.append(
                        f"{who} at t={view['t']:.3f} (healed + {view['t'] - healed:.1f}s, "
                        f"revision {view['rev']}) lists {len(got)} instances, not the "
                        f"{len(live)} live ones: missing {sorted(live - got)[:5]}, extra "
                        f"{sorted(got - live)[:5]}"
                    )
                    break
    return violations


# --- property 4: nothing lost on clean shutdown ------------------------------------------


def check_shutdown(records: list[Record]) -> list[str]:
    """Property 4: every stop()/close() called during faults returned within its bound,
    and once etcd was reachable again no key of a stopped recipe remained (only the
    keeper's key of a process whose connector is still open)."""
    params = _one(records, "params")
    bounds: dict[str, float] = params["bounds"]
    violations = crashes(records)
    commanded: dict[str, list[str]] = {}
    for r in records:
        if r["src"] == "harness" and r["ev"] == "command":
            commanded.setdefault(r["proc"], []).append(r["text"])
    sources = by_source(records)
    for src in commanded:
        own = sources.get(src, [])
        for r in own:
            if r["ev"] != "stopped":
                continue
            bound = bounds[r["what"]]
            if r["took"] > bound:
                violations.append(
                    f"{src}: {r['what']} took {r['took']:.2f}s, more than its bound {bound:.2f}s"
                )
            if r.get("error"):
                violations.append(f"{src}: {r['what']} raised {r['error']}")
        done = {r["ev"] for r in own}
        if "stop" in commanded[src] and "stopped-recipes" not in done:
            violations.append(f"{src}: stopping its recipes never returned")
        if "close" in commanded[src] and "exit" not in done:
            violations.append(f"{src}: close() never returned")
    leftovers: dict[str, list[str]] = _one(records, "final-keys")["keys"]
    for proc, keys in sorted(leftovers.items()):
        allowed = {"/keeper"} if "close" not in commanded.get(proc, []) else set()
        extra = sorted(set(keys) - allowed)
        if extra:
            violations.append(f"{proc}: keys left behind after its recipes stopped: {extra}")
        if allowed and "/keeper" not in keys:
            violations.append(f"{proc}: the keeper key of its still open connector is gone")
    return violations


# --- property 5: freshness ----------------------------------------------------------------

#: the recipes of a freshness reader (``participants/fresh.py``)
FRESH_KINDS = ("tracker", "config", "resolver")
#: where the freshness writer writes for each recipe (under the run's namespace): a
#: tracker's and a config's path, and the resolver's registry prefix (Kitex format) of
#: the service :data:`FRESH_SERVICE`
FRESH_PATHS = {"tracker": "/fresh/svc", "config": "/fresh/config", "resolver": "fresh/registry"}
FRESH_SERVICE = "fsvc"
FRESH_COUNTER = "/fresh/counter"


def fresh_name(kind: str, n: int, keys: int) -> str:
    """The item the writer's value ``n`` goes to, for the recipe of ``kind``: a key's
    name, or an instance's address (one of ``keys``: each value replaces the one
    ``keys`` values before it)."""
    slot = n % keys
    return {"tracker": f"s{slot}", "config": f"c{slot}", "resolver": f"10.9.0.{slot}:80"}[kind]


def fresh_fingerprint(pairs: Iterable[tuple[str, str]], kind: str, keys: int) -> Record:
    """What a freshness reader records of a view (and the harness of etcd's final
    state), from its (name, value) pairs: the highest value ``n``, how many items
    (``count``), their ``sum``, and whether every item has the name its value gets
    (``ok``)."""
    values = {name: int(value) if value.isdigit() else -1 for name, value in pairs}
    return {
        "n": max(values.values(), default=0),
        "count": len(values),
        "sum": sum(values.values()),
        "ok": all(fresh_name(kind, v, keys) == name for name, v in values.items()),
    }


def fresh_state(n: int, keys: int) -> tuple[int, int]:
    """(count, sum) of a reader's view at the writer's value ``n``: the ``keys`` newest
    values, one per key."""
    values = range(max(1, n - keys + 1), n + 1)
    return len(values), sum(values)


@dataclass(frozen=True, slots=True)
class View:
    """What a recipe handed its caller at ``t``: the state at value ``n`` (if
    ``count``, ``total`` and ``ok`` say it is one), ``said`` what the item said about
    staleness (None: nothing, e.g. a config change) and ``stale`` what the recipe had
    said last, this item included."""

    t: float
    n: int
    count: int
    total: int
    ok: bool
    said: bool | None
    stale: bool


def fresh_views(own: Iterable[Record], kind: str) -> list[View]:
    """The views of one recipe of a reader process, in order."""
    views: list[View] = []
    stale = False
    for r in own:
        if r["ev"] != "fresh" or r["k"] != kind:
            continue
        said = r.get("stale")
        if said is not None:
            stale = bool(said)
        views.append(View(r["t"], r["n"], r["count"], r["sum"], r["ok"], said, stale))
    return views


@dataclass(frozen=True, slots=True)
class Acks:
    """The writer's acknowledged values in the order they were acknowledged: ``times``
    ascending and ``best[i]`` the highest value acknowledged by ``times[i]``."""

    values: tuple[int, ...]
    times: tuple[float, ...]
    best: tuple[int, ...]

    @classmethod
    def of(cls, pairs: Iterable[tuple[int, float]]) -> Acks:
        ordered = sorted(pairs, key=lambda p: p[1])
        best = tuple(itertools.accumulate((n for n, _ in ordered), max))
        return cls(tuple(n for n, _ in ordered), tuple(t for _, t in ordered), best)

    def by(self, t: float) -> int:
        """The highest value acknowledged at or before ``t`` (0: none)."""
        i = bisect.bisect_right(self.times, t) - 1
        return self.best[i] if i >= 0 else 0

    def when(self, n: int) -> float:
        """When a value >= ``n`` was first acknowledged."""
        return self.times[bisect.bisect_left(self.best, n)]


@dataclass(frozen=True, slots=True)
class Freshness:
    """The bound and margins of the freshness property (from the run's ``params``)."""

    bound: float  # stale_after + margin
    catch_up: float  # a write acknowledged this recently may still be on its way
    keys: int


def check_recipe_freshness(
    who: str, views: Sequence[View], acks: Acks, rules: Freshness, end: float
) -> list[str]:
    """Part (b) of the freshness property for one recipe alive until ``end``: its views
    are states that never go back; whenever it lagged behind an acknowledged write
    (acknowledged at a, or when the recipe started if later) for longer than the bound
    B, it had said stale=True by a + B and had not taken it back by then; and each
    time it said stale=False after stale=True it showed every write acknowledged at
    least ``catch_up`` seconds before."""
    violations: list[str] = []
    if not views:
        return violations
    wrong = [v for v in views if (v.count, v.total) != fresh_state(v.n, rules.keys) or not v.ok]
    if wrong:
        violations.append(
            f"{who}: {len(wrong)} views are no state of the writer's, first at "
            f"t={wrong[0].t:.3f}: value {wrong[0].n}, {wrong[0].count} items, sum {wrong[0].total}"
        )
    for before, after in itertools.pairwise(views):
        if after.n < before.n:
            violations.append(
                f"{who} went back from value {before.n} to {after.n} at t={after.t:.3f}"
            )
            break
    times = [v.t for v in views]
    best = list(itertools.accumulate((v.n for v in views), max))
    late: list[tuple[int, float, float, float]] = []  # value, acked, shown, deadline
    for n, acked in zip(acks.values, acks.times, strict=True):
        start = max(acked, views[0].t)
        deadline = start + rules.bound
        if deadline >= end:
            continue  # the recipe was gone (or the run over) before it had to say
        i = bisect.bisect_left(best, n)
        shown = times[i] if i < len(best) else math.inf
        if shown <= deadline:
            continue
        said = bisect.bisect_right(times, deadline) - 1
        if said < 0 or not views[said].stale:
            late.append((n, acked, shown, deadline))
    if late:
        n, acked, shown, deadline = late[0]
        until = "never" if shown == math.inf else f"only at t={shown:.3f} ({shown - acked:.1f}s)"
        violations.append(
            f"{who} was stale beyond the bound without saying so: value {n}, acknowledged "
            f"at t={acked:.3f}, shown {until}, and no stale=True in effect at "
            f"t={deadline:.3f} (+{rules.bound:g}s); {len(late)} such values in all"
        )
    for i, (before, view) in enumerate(itertools.pairwise(views), start=1):
        if view.said is False and before.stale:
            wanted = acks.by(view.t - rules.catch_up)
            if view.n < wanted:
                j = bisect.bisect_left(best, wanted, lo=i)
                later = f"{times[j] - view.t:.3f}s later" if j < len(best) else "never"
                behind = view.t - acks.when(view.n + 1)
                violations.append(
                    f"{who} said stale=False at t={view.t:.3f} while behind: it showed value "
                    f"{view.n}, but value {view.n + 1} had been acknowledged {behind:.1f}s "
                    f"before and {wanted} at t={acks.when(wanted):.3f} (it showed {wanted} "
                    f"{later})"
                )
    return violations


def check_final_freshness(
    who: str, views: Sequence[View], final: int, rules: Freshness, due: float, until: float
) -> list[str]:
    """Part (a) of the freshness property for one recipe alive at the end: from ``due``
    (the faults healed and the writer done, + the bound) to ``until`` it shows exactly
    etcd's final state and does not say it is stale."""
    shown = [v for v in views if v.t <= until]
    i = bisect.bisect_right([v.t for v in shown], due) - 1
    if i < 0:
        return [f"{who} showed nothing by t={due:.3f}"]
    for view in shown[i:]:
        exact = view.n == final and (view.count, view.total) == fresh_state(final, rules.keys)
        if not exact or view.stale:
            when = "by" if view is shown[i] else "at"
            return [
                f"{who} {when} t={max(view.t, due):.3f} shows value {view.n} "
                f"({view.count} items, stale={view.stale}), not etcd's final value {final}"
            ]
    return []


def check_freshness(records: list[Record]) -> list[str]:
    """Property 5: (a) after the faults stop (``healed``) and the writer's last
    acknowledged write, within the bound, every live reader's tracker, config and
    resolver shows exactly etcd's final state, not stale, until the end; (b) at no
    moment did one lag behind an acknowledged write for longer than the bound without
    having said stale=True by then, and each stale=False after stale=True came when
    it showed every write acknowledged ``catch_up`` seconds before (see
    :func:`check_recipe_freshness`)."""
    params = _one(records, "params")
    rules = Freshness(params["bound"], params["catch_up"], params["keys"])
    healed = _one(records, "healed")["t"]
    until = _one(records, "observed-until")["t"]
    final = _one(records, "final-fresh")
    total = final["counter"]
    violations = crashes(records)
    for kind, got in sorted(final["views"].items()):
        if (got["n"], got["count"], got["sum"], got["ok"]) != (
            total,
            *fresh_state(total, rules.keys),
            True,
        ):
            violations.append(f"etcd's {kind} prefix {got} is not the state of value {total}")
    writers = _spawned(records, [params["writer"]])
    pairs = [(r["n"], r["t"]) for r in records if r["src"] in writers and r["ev"] == "ack"]
    acks = Acks.of(pairs)
    if acks.best and acks.best[-1] > total:
        violations.append(f"value {acks.best[-1]} was acknowledged but etcd's counter is {total}")
    writes_end = max(
        [r["t"] for r in records if r["src"] in writers and r["ev"] in ("ack", "done")],
        default=healed,
    )
    due = max(healed, writes_end) + rules.bound
    killed = _killed(records)
    sources = by_source(records)
    for src in _spawned(records, params["readers"]):
        own = sources.get(src, [])
        end = min(killed.get(src, math.inf), until)
        violations += [
            f"{src}/{r['k']}: its recipe ended: {r['error']}"
            for r in own
            if r["ev"] == "recipe-error" and r.get("fatal") and r["t"] <= end
        ]
        for kind in FRESH_KINDS:
            views = [v for v in fresh_views(own, kind) if v.t <= end]
            who = f"{src}/{kind}"
            violations += check_recipe_freshness(who, views, acks, rules, end)
            if src not in killed:
                violations += check_final_freshness(who, views, total, rules, due, until)
    return violations


# --- properties 6 and 7: lock and semaphore -----------------------------------------

ACQUIRED = "ACQUIRED"


def check_concurrent(all_beliefs: dict[str, list[Belief]], limit: int) -> list[str]:
    """At no moment do more than ``limit`` processes believe they hold with a valid
    lease (a sweep over the belief spans: an end before a start at the same moment)."""
    points = [
        (moment, starts, span)
        for spans in all_beliefs.values()
        for span in spans
        for moment, starts in ((span.start, 1), (span.end, 0))
    ]
    points.sort(key=lambda point: point[:2])
    active: list[Belief] = []
    violations = []
    for moment, starts, span in points:
        if not starts:
            active.remove(span)
            continue
        active.append(span)
        if len({b.proc for b in active}) > limit:
            who = ", ".join(f"{b.proc} (token {b.token})" for b in active)
            violations.append(
                f"{len(active)} holders at once (at most {limit}): {who} believed they held "
                f"with a valid lease from t={moment:.3f} to t={min(b.end for b in active):.3f}"
            )
    return violations


def check_holds(entries: Sequence[Record], limit: int) -> list[str]:
    """Server-side facts of the log (entries in revision order): the entries of one
    fencing token come from one writer, and no more than ``limit`` holders' intervals
    of accepted writes (revision of their first to that of their last) overlap."""
    violations = []
    spans: dict[int, tuple[str, int, int]] = {}
    for entry in entries:
        token, revision = entry["token"], entry["revision"]
        writer, first, _ = spans.get(token, (entry["identity"], revision, revision))
        if writer != entry["identity"]:
            violations.append(
                f"token {token} was written with by {writer} and by {entry['identity']} "
                f"(revision {revision})"
            )
        spans[token] = (writer, first, revision)
    open_spans: list[tuple[int, int]] = []  # (last revision, token) of the overlapping ones
    for token, (_, first, last) in sorted(spans.items(), key=lambda s: s[1][1]):
        open_spans = [(end, t) for end, t in open_spans if end > first] + [(last, token)]
        if len(open_spans) > limit:
            who = ", ".join(
                f"{spans[t][0]} (token {t}, {spans[t][1]}..{end})" for end, t in open_spans
            )
            violations.append(
                f"{len(open_spans)} holders' accepted writes interleave at revision {first} "
                f"(at most {limit}): {who}"
            )
    return violations


def check_ranks(entries: Sequence[Record], ranks: dict[str, list[int]], limit: int) -> list[str]:
    """Every accepted write happened while its writer's key was among the first
    ``limit`` keys of the lock's prefix by create revision (``ranks``: revision -> the
    create revisions of those keys, read from etcd's history at that revision)."""
    violations = []
    for entry in entries:
        first = ranks.get(str(entry["revision"]))
        if first is None:
            violations.append(f"no history read at revision {entry['revision']}")
        elif entry["token"] not in first:
            violations.append(
                f"{entry['identity']}#{entry['n']} was accepted at revision {entry['revision']} "
                f"while its key (created at {entry['token']}) was not among the first {limit} "
                f"(created at {first})"
            )
    return violations


def check_progress(records: list[Record], slots: Sequence[str], due: float) -> list[str]:
    """Once the faults are over, every live holder had a write accepted between ``due``
    and the end of the observation."""
    until = _one(records, "observed-until")["t"]
    killed = _killed(records)
    wrote = {
        r["src"]
        for r in records
        if r["ev"] == "write" and r["result"] == "accepted" and due <= r["t"] <= until
    }
    return [
        f"{proc} had no write accepted from t={due:.3f} (healed + TTL + 2 s) to t={until:.3f}"
        for proc in sorted(_spawned(records, slots))
        if proc not in killed and proc not in wrote
    ]


def check_holders(records: list[Record]) -> list[str]:
    """Properties 6 (lock: ``max_holders`` 1) and 7 (semaphore): at no moment more than
    ``max_holders`` processes believe they hold with a valid lease; every guard that
    passed was within such a belief, and every accepted write was attempted while its
    writer was last told ACQUIRED with its token (never after SUSPENDED or LOST);
    server side, the accepted writes of at most ``max_holders`` holders interleave (for
    a lock: tokens never go back), and each was accepted while its key was among the
    first ``max_holders``; after the faults every live holder writes again."""
    params = _one(records, "params")
    limit = params["max_holders"]
    until = _one(records, "observed-until")["t"]
    entries = sorted(_one(records, "final-log")["entries"], key=lambda e: e["revision"])
    all_beliefs = beliefs(records, until, ACQUIRED)
    violations = (
        crashes(records)
        + check_concurrent(all_beliefs, limit)
        + check_attempts(records, entries, all_beliefs, ACQUIRED, "held")
        + check_holds(entries, limit)
        + check_ranks(entries, _one(records, "final-ranks")["ranks"], limit)
    )
    if limit == 1:
        violations += token_order(entries)
    due = _one(records, "healed")["t"] + params["ttl"] + 2.0
    return violations + check_progress(records, params["holders"], due)


# --- property 8: counter ------------------------------------------------------------------


def check_counter(records: list[Record]) -> list[str]:
    """Property 8: the final value is the number of acknowledged increments plus at
    most the number whose outcome is unknown (IndeterminateWrite, or in flight when
    the process was killed); every acknowledged add returned its own value (no two the
    same, none beyond the final one, increasing in each process); every live adder
    stopped when told and added after the faults."""
    params = _one(records, "params")
    final = _one(records, "final-counter")["value"]
    healed = _one(records, "healed")["t"]
    violations = crashes(records)
    killed = _killed(records)
    sources = by_source(records)
    acked: dict[int, str] = {}
    unknown = 0
    for proc in sorted(_spawned(records, params["adders"])):
        own = sources.get(proc, [])
        outcomes = [r for r in own if r["ev"] in ("added", "indeterminate", "add-error")]
        unknown += sum(r["ev"] == "indeterminate" for r in outcomes)
        unknown += sum(r["ev"] == "add" for r in own) - len(outcomes)  # in flight at a kill
        values = [r["value"] for r in outcomes if r["ev"] == "added"]
        for value in values:
            if value in acked:
                violations.append(f"{acked[value]} and {proc} were both told the value {value}")
            if not 1 <= value <= final:
                violations.append(f"{proc} was told the value {value}; the final one is {final}")
            acked[value] = proc
        for before, after in itertools.pairwise(values):
            if after <= before:
                violations.append(f"{proc} was told {before}, then {after}")
        if proc in killed:
            continue
        if not any(r["ev"] == "done" for r in own):
            violations.append(f"{proc} did not stop adding when told")
        if not any(r["ev"] == "added" and r["t"] > healed for r in own):
            violations.append(f"{proc} had no add acknowledged after the faults")
    if not len(acked) <= final <= len(acked) + unknown:
        violations.append(
            f"the counter ends at {final}, but {len(acked)} adds were acknowledged and "
            f"{unknown} have an unknown outcome"
        )
    return violations


# --- property 9: partitioner --------------------------------------------------------------


def check_partitions(records: list[Record]) -> list[str]:
    """Property 9: no item was ever in the ACQUIRED sets of two members while both
    believed it with a valid lease; within ``ttl + settle`` of ``healed`` every live
    member has ACQUIRED its share of the live members (the partition function) and
    keeps it until the end, and etcd has every item owned by exactly that member."""
    params = _one(records, "params")
    items, slots = params["items"], params["members"]
    until = _one(records, "observed-until")["t"]
    due = _one(records, "healed")["t"] + params["ttl"] + params["settle"]
    violations = crashes(records)
    statuses = {(r["src"], r["token"]): r for r in records if r["ev"] == "status"}
    owned: dict[str, dict[str, list[Belief]]] = {}  # item -> process -> spans
    for proc, spans in beliefs(records, until, ACQUIRED).items():
        for span in spans:
            for item in statuses[(proc, span.token)]["items"]:
                owned.setdefault(item, {}).setdefault(proc, []).append(span)
    for item, spans in sorted(owned.items()):
        violations += [f"item {item}: {v}" for v in check_concurrent(spans, 1)]
    killed = _killed(records)
    sources = by_source(records)
    live: dict[str, str] = {}  # process -> the identity of its current member
    for proc in _spawned(records, slots):
        members = [r["identity"] for r in sources.get(proc, []) if r["ev"] == "member"]
        if proc not in killed and members:
            live[proc] = members[-1]
    identities = sorted(live.values())
    final = _one(records, "final-partition")
    if sorted(final["members"]) != identities:
        violations.append(f"etcd's members are {sorted(final['members'])}, not {identities}")
    expected = {item: who for who in identities for item in partition(who, identities, items)}
    wrong = {
        item: (final["owners"].get(item), expected.get(item))
        for item in items
        if final["owners"].get(item) != expected.get(item)
    }
    if wrong:
        violations.append(f"etcd's owners differ (item: (owner, expected)): {wrong}")
    for proc, identity in sorted(live.items()):
        share = list(partition(identity, identities, items))
        own = [
            r for r in sources.get(proc, []) if r["ev"] == "status" and r["identity"] == identity
        ]
        before = [r for r in own if r["t"] <= due]
        for r in [*before[-1:], *(r for r in own if due < r["t"] <= until)]:
            if r["status"] != ACQUIRED or r["items"] != share:
                violations.append(
                    f"{identity} is {r['status']} of {r['items']} at t={max(r['t'], due):.3f} "
                    f"(healed + TTL + {params['settle']:g} s), not ACQUIRED of its share {share}"
                )
                break
        if not before:
            violations.append(f"{identity} reported nothing by t={due:.3f}")
    return violations


# --- property 10: queue ------------------------------------------------------------------

HELD = "HELD"


def _of(records: Iterable[Record], procs: Iterable[str], *evs: str) -> list[Record]:
    wanted = set(procs)
    return [r for r in records if r["src"] in wanted and r["ev"] in evs]


def _unresolved(records: list[Record], procs: Iterable[str], start: str, ends: set[str]) -> int:
    """How many ``start`` records of these processes have no end record after them
    (each process does one thing at a time: only its last can be in flight)."""
    count = 0
    sources = by_source(records)
    for proc in procs:
        own = [r["ev"] for r in sources.get(proc, []) if r["ev"] == start or r["ev"] in ends]
        count += bool(own) and own[-1] == start
    return count


def check_queue(records: list[Record]) -> list[str]:
    """Property 10: every item is delivered at most once (acked by a claimer or taken
    by a taker, never both, never twice), only items that were put are delivered, a
    claimer acks only what it claimed, no two consumers hold claims of one item at
    once (with valid leases), and nothing acknowledged is lost: at the end the queue is
    empty and every acknowledged put was delivered, except items whose delivery may
    have happened unseen (an ack or take whose outcome is unknown: IndeterminateWrite,
    or in flight when its consumer was killed)."""
    params = _one(records, "params")
    until = _one(records, "observed-until")["t"]
    producers = _spawned(records, params["producers"])
    claimers = _spawned(records, params["claimers"])
    takers = _spawned(records, params["takers"])
    violations = crashes(records)
    attempted = {r["value"] for r in _of(records, producers, "put")}
    acknowledged = {r["value"] for r in _of(records, producers, "put-ok")}
    delivered: dict[str, list[str]] = {}
    for r in _of(records, [*claimers, *takers], "acked", "taken"):
        delivered.setdefault(r["value"], []).append(f"{r['ev']} by {r['src']}")
    for value, how in sorted(delivered.items()):
        if len(how) > 1:
            violations.append(f"{value} was delivered {len(how)} times: {', '.join(how)}")
        if value not in attempted:
            violations.append(f"{value} was delivered ({how[0]}) but nobody put it")
    claimed = {(r["src"], r["value"]) for r in _of(records, claimers, "claimed")}
    violations += [
        f"{r['src']} acked {r['value']} without claiming it"
        for r in _of(records, claimers, "acked")
        if (r["src"], r["value"]) not in claimed
    ]
    keys = {(r["src"], r["token"]): r["key"] for r in _of(records, claimers, "status")}
    holds: dict[str, dict[str, list[Belief]]] = {}  # item -> process -> claim spans
    for proc, spans in beliefs(records, until, HELD).items():
        for span in spans:
            holds.setdefault(keys[(proc, span.token)], {}).setdefault(proc, []).append(span)
    for key, spans in sorted(holds.items()):
        violations += [f"claims of {key}: {v}" for v in check_concurrent(spans, 1)]
    final = _one(records, "final-queue")["values"]
    if final:
        violations.append(f"the queue still holds {len(final)} items at the end: {final[:5]}")
    unseen = {r["value"] for r in _of(records, claimers, "ack-error") if r["indeterminate"]}
    acking = by_source(_of(records, claimers, "acking", "acked", "ack-lost"))
    unseen |= {own[-1]["value"] for own in acking.values() if own[-1]["ev"] == "acking"}
    lost = sorted(acknowledged - set(delivered) - set(final) - unseen)
    takes = len(
        [r for r in _of(records, takers, "take-error") if r["indeterminate"]]
    ) + _unresolved(records, takers, "taking", {"taken", "take-none", "take-error"})
    if len(lost) > takes:
        violations.append(
            f"{len(lost)} acknowledged items were never delivered (only {takes} takes have "
            f"an unknown outcome): {lost[:10]}"
        )
    return violations


CHECKS = {
    "leader-safety": check_leader_safety,
    "exactly-once": check_sequence,
    "registration": check_registrations,
    "shutdown": check_shutdown,
    "freshness": check_freshness,
    "lock": check_holders,
    "semaphore": check_holders,
    "counter": check_counter,
    "partitioner": check_partitions,
    "queue": check_queue,
}


def main(argv: list[str]) -> int:
    """``python -m tests.chaos.checks PROPERTY HISTORY``: check a saved history again."""
    if len(argv) != 2 or argv[0] not in CHECKS:
        print(f"usage: python -m tests.chaos.checks {{{','.join(CHECKS)}}} HISTORY.jsonl")
        return 2
    violations = CHECKS[argv[0]](load(argv[1]))
    for violation in violations:
        print(violation)
    print(f"{len(violations)} violations")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

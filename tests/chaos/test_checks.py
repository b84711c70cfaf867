"""The property checks and the schedule, on small hand-made histories (no etcd)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from . import checks, resources
from .history import Record
from .schedule import MEMBER_DOWN, MEMBER_UP, Profile, _Deck, make_plan


def rec(src: str, ev: str, t: float, **fields: Any) -> Record:
    return {"src": src, "ev": ev, "t": t, **fields}


def harness(ev: str, t: float, **fields: Any) -> Record:
    return rec("harness", ev, t, **fields)


# --- property 1 ------------------------------------------------------------------------


def leader(src: str, t: float, token: int, lease: int) -> Record:
    return rec(src, "status", t, status="LEADER", token=token, leader=src, key_lease=lease)


def follower(src: str, t: float, of: str, lease: int) -> Record:
    return rec(src, "status", t, status="FOLLOWER", token=0, leader=of, key_lease=lease)


def lease(src: str, t: float, lease_id: int, deadline: float, state: str = "ACTIVE") -> Record:
    return rec(src, "lease", t, id=lease_id, state=state, deadline=deadline)


def election(*extra: Record, log: list[dict[str, Any]] | None = None) -> list[Record]:
    """A's lease is renewed until t=5 (valid until 8); A is paused, B takes over at 8.5
    and leads until the end at 20; the faults stop at t=10 (TTL 3)."""
    records = [
        harness("params", 0.0, ttl=3),
        lease("a", 0.0, 1, 3.0),
        leader("a", 0.1, 10, 1),
        lease("b", 0.2, 2, 3.2),
        follower("b", 0.3, "a", 2),
        *(lease("a", t, 1, t + 3.0) for t in (1.0, 2.0, 3.0, 4.0, 5.0)),
        *(lease("b", t, 2, t + 3.0) for t in (1.2, 2.2, 3.2, 4.2, 5.2, 6.2, 7.2, 8.2)),
        leader("b", 8.5, 20, 2),
        *(lease("b", t + 0.2, 2, t + 3.2) for t in range(9, 20)),
        lease("a", 9.0, 1, 8.0, "LOST"),
        rec("a", "status", 9.0, status="LOST", token=0, leader="a", key_lease=1),
        lease("a", 9.1, 3, 12.1),
        follower("a", 9.2, "b", 3),
        *(lease("a", t + 0.1, 3, t + 3.1) for t in range(10, 20)),
        harness("healed", 10.0),
        harness("observed-until", 20.0),
        harness("final-log", 20.1, entries=log or []),
        harness("final-election", 20.1, keys=[{"value": "b"}, {"value": "a"}]),
        *extra,
    ]
    return sorted(records, key=lambda r: r["t"])


def test_beliefs_follow_status_lease_and_deadline() -> None:
    spans = checks.beliefs(election(), until=20.0)
    assert [(b.start, b.end, b.token) for b in spans["a"]] == [(0.1, 8.0, 10)]
    assert [(b.start, b.end, b.token) for b in spans["b"]] == [(8.5, 20.0, 20)]
    assert checks.check_leader_safety(election()) == []


def test_a_new_lease_does_not_extend_a_leadership_on_the_old_key() -> None:
    records = [
        lease("a", 0.0, 1, 3.0),
        leader("a", 0.1, 10, 1),
        lease("a", 2.0, 1, 2.5, "LOST"),
        lease("a", 2.1, 7, 5.1),  # regranted, but the key is on lease 1
    ]
    spans = checks.beliefs(records, until=10.0)
    assert [(b.start, b.end) for b in spans["a"]] == [(0.1, 2.0)]


def test_two_leaders_at_once_are_found() -> None:
    records = election(leader("c", 7.0, 30, 5), lease("c", 6.9, 5, 9.9))
    found = checks.check_overlaps(checks.beliefs(records, until=20.0))
    assert any("a (token 10) and c (token 30)" in v for v in found), found


def test_a_killed_leader_believes_nothing_after_its_death() -> None:
    records = election(harness("kill", 4.0, proc="a"), leader("c", 6.0, 30, 5))
    records.append(lease("c", 5.9, 5, 8.4))
    spans = checks.beliefs(records, until=20.0)
    assert spans["a"][0].end == 4.0
    assert checks.check_overlaps(spans) == []


def test_a_stolen_key_ends_the_belief_its_holder_still_has() -> None:
    # the harness deletes a's key at 4.0; c leads from 4.1 while a believes until 8.0
    steal = harness("steal", 4.0, victim="a", token=10, revision=50)
    records = election(steal, leader("c", 4.1, 60, 5), lease("c", 4.0, 5, 7.0))
    all_beliefs = checks.beliefs(records, until=20.0)
    assert checks.check_overlaps(all_beliefs)
    assert checks.check_overlaps(checks.after_steals(records, all_beliefs)) == []
    late = election(steal, log=[entry("a", 1, 10, 51)])
    found = checks.check_fenced_writes(late, checks.beliefs(late, 20.0))
    assert any("after its key was deleted" in v for v in found), found


def entry(identity: str, n: int, token: int, revision: int) -> dict[str, Any]:
    return {"identity": identity, "n": n, "token": token, "revision": revision}


def test_fenced_writes_pass_when_in_order_and_attempted_as_leader() -> None:
    log = [entry("a", 1, 10, 11), entry("b", 1, 20, 25)]
    records = election(
        rec("a", "attempt", 1.5, n=1, told="LEADER", token=10),
        rec("a", "write", 1.6, n=1, result="accepted", revision=11),
        rec("b", "attempt", 9.5, n=1, told="LEADER", token=20),
        rec("b", "write", 9.6, n=1, result="accepted", revision=25),
        log=log,
    )
    assert checks.check_fenced_writes(records, checks.beliefs(records, 20.0)) == []


@pytest.mark.parametrize(
    ("log", "extra", "expected"),
    [
        ([entry("b", 1, 20, 11), entry("a", 1, 10, 12)], [], "fencing token went back"),
        ([entry("a", 1, 10, 11)], [], "has no recorded attempt"),
        (
            [entry("a", 1, 10, 11)],
            [rec("a", "attempt", 1.5, n=1, told="SUSPENDED", token=10)],
            "last told SUSPENDED",
        ),
        (
            [],
            [
                rec("a", "attempt", 1.5, n=1, told="LEADER", token=10),
                rec("a", "write", 1.6, n=1, result="accepted", revision=11),
            ],
            "acknowledged write a#1 is not in the log",
        ),
        (
            [entry("a", 1, 10, 11)],
            [
                rec("a", "attempt", 1.5, n=1, told="LEADER", token=10),
                rec("a", "write", 1.6, n=1, result="fenced", revision=11),
            ],
            "was refused but is in the log",
        ),
        (
            [],
            [rec("a", "attempt", 8.2, n=1, told="LEADER", token=10)],  # deadline was 8.0
            "passed its guard",
        ),
    ],
)
def test_fenced_write_violations_are_found(
    log: list[dict[str, Any]], extra: list[Record], expected: str
) -> None:
    records = election(*extra, log=log)
    found = checks.check_fenced_writes(records, checks.beliefs(records, 20.0))
    assert any(expected in v for v in found), found


def test_no_leader_after_the_faults_is_found() -> None:
    records = [r for r in election() if not (r["src"] == "b" and r["t"] > 12.0)]
    found = checks.check_single_leader(records, checks.beliefs(records, 20.0))
    assert found and "not exactly one leader" in found[0] and "none" in found[0], found
    records = [r for r in election() if not (r["src"] == "b" and 15.0 < r["t"] < 18.0)]
    found = checks.check_single_leader(records, checks.beliefs(records, 20.0))
    assert found and "did not lead without a break" in found[0], found


def test_a_follower_of_someone_else_is_found() -> None:
    records = election(follower("a", 15.0, "ghost", 3))
    found = checks.check_single_leader(records, checks.beliefs(records, 20.0))
    assert any("not a follower of b" in v for v in found), found


# --- property 2 ------------------------------------------------------------------------


def events(n_from: int, n_to: int, first_rev: int, prefix: bool) -> list[list[Any]]:
    out: list[list[Any]] = []
    for n in range(n_from, n_to + 1):
        rev = first_rev + n - n_from
        out.append(["/seq/counter", str(n), rev, "PUT"])
        if prefix:
            out.append([f"/seq/items/{n % 50}", str(n), rev, "PUT"])
    return out


def snap(src: str, t: float, revision: int, n: int) -> Record:
    count, total, ok = checks.fingerprint(n)
    return rec(src, "snap", t, c="tracker", r=revision, n=n, count=count, sum=total, names_ok=ok)


def sequence(
    *extra: Record, total: int = 60, prefix_events: list[list[Any]] | None = None
) -> list[Record]:
    """Values 1..total committed at revisions 11..10+total; one consumer saw them all."""
    return [
        harness("params", 0.0, consumers=["c0"]),
        harness("spawn", 0.0, proc="c0.0", slot="c0", args=[]),
        rec("w.0", "ack", 1.0, n=1, revision=11),
        rec("c0.0", "sync", 0.5, c="prefix", revision=10, value=0),
        rec("c0.0", "sync", 0.5, c="key", revision=10, value=0),
        rec("c0.0", "es", 2.0, c="prefix", es=prefix_events or events(1, total, 11, True)),
        rec("c0.0", "es", 2.0, c="key", es=events(1, total, 11, False)),
        snap("c0.0", 1.0, 10, 0),
        snap("c0.0", 2.0, 10 + total, total),
        *extra,
        harness(
            "final-seq", 3.0, counter=total, revision=10 + total, items=checks.expected_items(total)
        ),
    ]


def test_an_exact_sequence_passes() -> None:
    assert checks.check_sequence(sequence()) == []


@pytest.mark.parametrize(
    ("prefix_events", "expected"),
    [
        (events(1, 30, 11, True) + events(31, 60, 35, True), "revision went from"),
        (events(1, 30, 11, True) + events(30, 60, 40, True), "duplicate or stray"),
        (events(1, 30, 11, True) + events(30, 60, 41, True), "duplicate: expected value 31"),
        (events(1, 30, 11, True) + events(32, 60, 42, True), "gap: expected value 31, got 32"),
        (events(1, 30, 11, True)[:-1] + events(31, 60, 41, True), "came incomplete"),
        (events(1, 59, 11, True) + [["/seq/counter", "60", 70, "PUT"]] * 2, "duplicate or stray"),
    ],
)
def test_sequence_violations_are_found(prefix_events: list[list[Any]], expected: str) -> None:
    found = checks.check_sequence(sequence(prefix_events=prefix_events))
    assert any(expected in v for v in found), found


def test_a_compaction_the_consumer_was_told_of_is_allowed() -> None:
    records = sequence(prefix_events=events(1, 20, 11, True))
    records[5:5] = [
        rec(
            "c0.0",
            "recipe-error",
            2.1,
            c="prefix",
            fatal=True,
            compacted=True,
            compact_revision=40,
            error="x",
        ),
        rec("c0.0", "sync", 2.2, c="prefix", revision=45, value=35),
        rec("c0.0", "es", 2.3, c="prefix", es=events(36, 60, 46, True)),
    ]
    records.sort(key=lambda r: r["t"])
    assert checks.check_sequence(records) == []


def test_a_needless_compacted_report_and_a_silent_skip_are_found() -> None:
    needless = sequence(prefix_events=events(1, 20, 11, True))
    needless += [
        rec(
            "c0.0",
            "recipe-error",
            2.1,
            c="prefix",
            fatal=True,
            compacted=True,
            compact_revision=25,
            error="x",
        ),
        rec("c0.0", "sync", 2.2, c="prefix", revision=45, value=35),
        rec("c0.0", "es", 2.3, c="prefix", es=events(36, 60, 46, True)),
    ]
    assert any("only needed revision 31" in v for v in checks.check_sequence(needless))
    silent = sequence(prefix_events=events(1, 20, 11, True))
    silent += [
        rec("c0.0", "sync", 2.2, c="prefix", revision=45, value=35),
        rec("c0.0", "es", 2.3, c="prefix", es=events(36, 60, 46, True)),
    ]
    assert any("without being told why" in v for v in checks.check_sequence(silent))


def test_tracker_and_catch_up_violations_are_found() -> None:
    wrong = snap("c0.0", 1.5, 30, 20)
    wrong["sum"] += 1
    found = checks.check_sequence(sequence(wrong))
    assert any("is no state" in v for v in found), found
    stale = checks.check_sequence(sequence(snap("c0.0", 2.5, 70, 30)))
    assert any("went back" in v for v in stale), stale
    assert any("stale value 30" in v for v in stale), stale
    behind = [r for r in sequence() if r["ev"] != "es" or r["c"] != "key"]
    assert any(
        "c0.0/key ends at value None" in v or "ends at value" in v
        for v in checks.check_sequence(behind)
    )


def test_two_witnesses_disagreeing_on_a_revision_are_found() -> None:
    found = checks.check_sequence(sequence(rec("w.0", "ack", 1.1, n=5, revision=99)))
    assert any("value 5 committed at revision" in v for v in found), found


# --- property 3 ------------------------------------------------------------------------


def registrations(*views: Record, stored: list[str] | None = None) -> list[Record]:
    """r0.0 was killed, r0.1 replaced it; r1.0 lives; the resolver process q0.0 lives."""
    return [
        harness("params", 0.0, ttl=3, registrars=["r0", "r1"], resolvers=["q0"], per_process=1),
        harness("spawn", 0.0, proc="r0.0", slot="r0", args=["--addresses", "a,b"]),
        harness("spawn", 0.0, proc="r1.0", slot="r1", args=["--addresses", "c"]),
        harness("spawn", 0.0, proc="q0.0", slot="q0", args=[]),
        harness("kill", 2.0, proc="r0.0"),
        harness("spawn", 3.0, proc="r0.1", slot="r0", args=["--addresses", "d,e"]),
        harness("healed", 10.0),
        *views,
        harness("observed-until", 20.0),
        harness("final-registry", 20.0, addresses=stored or ["c", "d", "e"]),
    ]


def view(t: float, *addrs: str) -> Record:
    return rec("q0.0", "view", t, r=0, rev=1, addrs=sorted(addrs))


def test_converged_resolvers_pass() -> None:
    records = registrations(view(1.0, "a", "b", "c"), view(12.0, "c", "d", "e"))
    assert checks.check_registrations(records) == []


@pytest.mark.parametrize(
    ("views", "stored", "expected"),
    [
        ([view(1.0, "a", "b", "c"), view(16.5, "c", "d", "e")], None, "lists 3 instances"),
        ([view(12.0, "c", "d", "e"), view(18.0, "c", "d")], None, "missing ['e']"),
        ([view(12.0, "c", "d", "e", "zz")], None, "unregistered ['zz']"),
        ([view(12.0, "c", "d", "e")], ["a", "c", "d", "e"], "extra ['a']"),
        ([], None, "had no instance list"),
    ],
)
def test_registration_violations_are_found(
    views: list[Record], stored: list[str] | None, expected: str
) -> None:
    found = checks.check_registrations(registrations(*views, stored=stored))
    assert any(expected in v for v in found), found


# --- property 4 ------------------------------------------------------------------------


def shutdown(*extra: Record, keys: dict[str, list[str]] | None = None) -> list[Record]:
    return [
        harness("params", 0.0, ttl=3, bounds={"elector.stop": 4.0, "connector.close": 10.0}),
        harness("command", 1.0, proc="s0.0", text="stop"),
        rec("s0.0", "stopped", 1.5, what="elector.stop", took=0.5, error=None),
        rec("s0.0", "stopped-recipes", 1.5),
        harness("command", 2.0, proc="s1.0", text="close"),
        rec("s1.0", "stopped", 3.0, what="connector.close", took=1.0, error=None),
        rec("s1.0", "exit", 3.0),
        *extra,
        harness("final-keys", 9.0, keys=keys or {"s0.0": ["/keeper"], "s1.0": []}),
    ]


def test_a_clean_shutdown_passes() -> None:
    assert checks.check_shutdown(shutdown()) == []


@pytest.mark.parametrize(
    ("extra", "keys", "expected"),
    [
        ([rec("s0.0", "stopped", 6.0, what="elector.stop", took=4.5, error=None)], None, "bound"),
        ([], {"s0.0": ["/eph/k1", "/keeper"], "s1.0": []}, "left behind"),
        ([], {"s0.0": ["/keeper"], "s1.0": ["/keeper"]}, "left behind"),
        ([], {"s0.0": [], "s1.0": []}, "keeper key"),
        ([harness("command", 5.0, proc="s2.0", text="close")], None, "never returned"),
    ],
)
def test_shutdown_violations_are_found(
    extra: list[Record], keys: dict[str, list[str]] | None, expected: str
) -> None:
    found = checks.check_shutdown(shutdown(*extra, keys=keys))
    assert any(expected in v for v in found), found


# --- property 5 ------------------------------------------------------------------------

KEYS = 3


def fv(
    t: float, n: int, stale: bool | None = False, kind: str = "tracker", src: str = "f0.0"
) -> Record:
    """A view of reader ``src``'s recipe ``kind``: the state at value ``n``."""
    count, total = checks.fresh_state(n, KEYS)
    return rec(src, "fresh", t, k=kind, n=n, count=count, sum=total, ok=True, stale=stale)


def following(kind: str, lo: int = 1, hi: int = 30, src: str = "f0.0") -> list[Record]:
    """``src``'s recipe ``kind`` shows value n 0.1 s after it was acknowledged (a
    config's changes say nothing about staleness)."""
    said = None if kind == "config" else False
    return [fv(0.5 * n + 0.1, n, said, kind, src) for n in range(lo, hi + 1)]


def freshness(*extra: Record, drop: tuple[str, float, float] | None = None) -> list[Record]:
    """The writer fw.0 acknowledges value n at t = n / 2 (1..30, done at 15.2); the
    faults stop at t=10; reader f0.0's three recipes follow it 0.1 s behind; the bound
    is 7 s, so by t=22.2 they must show etcd's final value 30; observed until t=25.
    ``drop`` = (kind, from, to) leaves out that recipe's views in that span."""
    views = [fv(0.2, 0, False, kind) for kind in checks.FRESH_KINDS]
    for kind in checks.FRESH_KINDS:
        views += following(kind)
    if drop is not None:
        kind, lo, hi = drop
        views = [v for v in views if not (v["k"] == kind and lo <= v["t"] <= hi)]
    state = dict(zip(("count", "sum"), checks.fresh_state(30, KEYS), strict=True))
    final = {kind: {"n": 30, **state, "ok": True} for kind in checks.FRESH_KINDS}
    records = [
        harness("params", 0.0, bound=7.0, catch_up=1.0, keys=KEYS, readers=["f0"], writer="fw"),
        harness("spawn", 0.0, proc="f0.0", slot="f0", args=[]),
        harness("spawn", 0.0, proc="fw.0", slot="fw", args=[]),
        *(rec("fw.0", "ack", 0.5 * n, n=n, revision=10 + n) for n in range(1, 31)),
        rec("fw.0", "done", 15.2, value=30),
        harness("healed", 10.0),
        *views,
        *extra,
        harness("observed-until", 25.0),
        harness("final-fresh", 25.1, counter=30, revision=40, views=final),
    ]
    return sorted(records, key=lambda r: r["t"])


def test_fresh_recipes_pass() -> None:
    assert checks.check_freshness(freshness()) == []


def test_a_lag_that_was_said_in_time_passes() -> None:
    # values 6.. (acknowledged from t=3.0) not shown until t=12.1; stale said at 9.0
    # (before 3.0 + 7), current again at 12.1 with everything acknowledged by 11.1
    records = freshness(fv(9.0, 5, True), drop=("tracker", 3.0, 12.0))
    assert checks.check_freshness(records) == []


def test_the_fingerprint_names_each_item() -> None:
    got = checks.fresh_fingerprint([("s1", "4"), ("s2", "5"), ("s0", "3")], "tracker", KEYS)
    assert got == {"n": 5, "count": 3, "sum": 12, "ok": True}
    assert not checks.fresh_fingerprint([("s1", "5")], "tracker", KEYS)["ok"]
    addresses = [("10.9.0.1:80", "4")]
    assert checks.fresh_fingerprint(addresses, "resolver", KEYS)["ok"]


@pytest.mark.parametrize(
    ("extra", "drop", "expected"),
    [
        # (a) the tracker stops at value 25: not the final state by t=22.2
        ([], ("tracker", 12.7, 30.0), "by t=22.200 shows value 25"),
        # (a) the resolver says stale at the end
        ([fv(23.0, 30, True, "resolver")], None, "at t=23.000 shows value 30"),
        # (a) the config has shown nothing by then
        ([], ("config", 0.0, 30.0), "f0.0/config showed nothing"),
        # (b) silent lag: values 6..23 never shown, nothing said
        ([], ("tracker", 3.0, 12.0), "stale beyond the bound without saying so: value 6"),
        # (b) said, but too late: 10.5 > 3.0 + 7
        ([fv(10.5, 5, True)], ("tracker", 3.0, 12.0), "no stale=True in effect at t=10.000"),
        # (b) said, then taken back while still behind
        (
            [fv(8.0, 5, True), fv(9.5, 5, False)],
            ("tracker", 3.0, 12.0),
            "said stale=False at t=9.500 while behind: it showed value 5, but value 6 had "
            "been acknowledged 6.5s before and 17 at t=8.500 (it showed 17 2.600s later)",
        ),
        # a config that shows a state that never was
        (
            [rec("f0.0", "fresh", 4.0, k="config", n=7, count=3, sum=99, ok=True, stale=None)],
            None,
            "views are no state of the writer's",
        ),
        ([fv(6.0, 2, None, "config")], None, "f0.0/config went back from value 11 to 2"),
        (
            [rec("f0.0", "recipe-error", 5.0, k="resolver", error="boom", fatal=True)],
            None,
            "f0.0/resolver: its recipe ended: boom",
        ),
        ([rec("fw.0", "ack", 15.1, n=31, revision=99)], None, "value 31 was acknowledged"),
    ],
)
def test_freshness_violations_are_found(
    extra: list[Record], drop: tuple[str, float, float] | None, expected: str
) -> None:
    found = checks.check_freshness(freshness(*extra, drop=drop))
    assert any(expected in v for v in found), found


def test_a_killed_reader_owes_nothing_after_its_death() -> None:
    records = freshness(harness("kill", 5.0, proc="f0.0"), drop=("tracker", 5.0, 30.0))
    records = [r for r in records if not (r["src"] == "f0.0" and r["t"] > 5.0)]
    assert checks.check_freshness(records) == []
    # ... but what it owed while it lived stands: values from 1.5 on, never shown
    early = freshness(harness("kill", 9.0, proc="f0.0"), drop=("tracker", 1.5, 30.0))
    early = [r for r in early if not (r["src"] == "f0.0" and r["t"] > 9.0)]
    found = checks.check_freshness(early)
    assert any("f0.0/tracker was stale beyond the bound" in v for v in found), found


# --- properties 6 and 7: lock and semaphore ------------------------------------------


def held(
    src: str, token: int, start: float, end: float, writes: list[tuple[int, float, int]]
) -> list[Record]:
    """``src`` holds with fencing token ``token`` (its key on lease ``token``, renewed
    until long after) from ``start`` until it releases at ``end``, appending write n
    at t with revision r for each (n, t, r) of ``writes``."""
    records = [
        lease(src, start - 0.1, token, 30.0),
        rec(src, "status", start, status="ACQUIRED", token=token, key_lease=token),
    ]
    for n, t, revision in writes:
        records += [
            rec(src, "attempt", t, n=n, token=token, told="ACQUIRED", told_token=token),
            rec(src, "write", t + 0.01, n=n, result="accepted", revision=revision),
        ]
    return [
        *records,
        rec(src, "releasing", end),
        rec(src, "status", end + 0.01, status="RELEASED", token=0, key_lease=token),
    ]


def entries_of(records: list[Record]) -> list[dict[str, Any]]:
    """The log entries of the accepted writes in ``records``."""
    tokens = {(r["src"], r["n"]): r["token"] for r in records if r["ev"] == "attempt"}
    return [
        entry(r["src"], r["n"], tokens[(r["src"], r["n"])], r["revision"])
        for r in records
        if r["ev"] == "write" and r["result"] == "accepted"
    ]


def holders(
    *holds: list[Record],
    limit: int = 1,
    log: list[dict[str, Any]] | None = None,
    ranks: dict[str, list[int]] | None = None,
) -> list[Record]:
    """Holders a.0 and b.0 (TTL 3); the faults stop at t=5, so each must write again
    between t=10 (healed + TTL + 2 s) and the end at t=13. ``log`` and ``ranks``
    default to what the accepted writes say (each writer first at its revision)."""
    own = [r for hold in holds for r in hold]
    entries = entries_of(own) if log is None else log
    if ranks is None:
        ranks = {str(e["revision"]): [e["token"]] for e in entries}
    records = [
        harness("params", 0.0, ttl=3, holders=["a", "b"], max_holders=limit),
        harness("spawn", 0.0, proc="a.0", slot="a", args=[]),
        harness("spawn", 0.0, proc="b.0", slot="b", args=[]),
        *own,
        harness("healed", 5.0),
        harness("observed-until", 13.0),
        harness("final-log", 13.1, entries=entries),
        harness("final-ranks", 13.1, ranks=ranks),
    ]
    return sorted(records, key=lambda r: r["t"])


#: a.0 and b.0 take turns: before the faults end and again after
TURNS = [
    held("a.0", 10, 1.0, 2.0, [(1, 1.2, 11), (2, 1.5, 12)]),
    held("b.0", 13, 2.5, 3.5, [(1, 2.7, 14), (2, 3.0, 15)]),
    held("a.0", 20, 10.5, 11.0, [(3, 10.6, 21)]),
    held("b.0", 22, 11.5, 12.0, [(3, 11.6, 23)]),
]


def test_holders_taking_turns_pass() -> None:
    assert checks.check_holders(holders(*TURNS)) == []
    spans = checks.beliefs(holders(*TURNS), 13.0, checks.ACQUIRED)
    assert [(b.start, b.end, b.token) for b in spans["a.0"]] == [(1.0, 2.0, 10), (10.5, 11.0, 20)]


def test_a_holder_whose_lease_ran_out_believes_nothing_after_its_deadline() -> None:
    # a.0 is paused from t=1.6: its lease is not renewed past t=3.0; b.0 takes over at
    # 3.2 while a.0 (resumed at 4.0) still says ACQUIRED: only its deadline counts
    late = held("a.0", 10, 1.0, 4.5, [(1, 1.2, 11)])
    late[0] = lease("a.0", 0.9, 10, 3.0)
    taken = held("b.0", 13, 3.2, 4.0, [(1, 3.3, 14)])
    assert checks.check_holders(holders(late, taken, *TURNS[2:])) == []
    # ... but a guard that passed after the deadline is found, accepted or not
    after = [*late, rec("a.0", "attempt", 4.2, n=2, token=10, told="ACQUIRED", told_token=10)]
    found = checks.check_holders(holders(after, taken, *TURNS[2:]))
    assert any("a.0 passed its guard (held) for write #2 at t=4.200" in v for v in found), found


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # b.0 believes it holds while a.0 still does
        (lambda h: [h[0], held("b.0", 13, 1.8, 3.5, [(1, 2.7, 14)]), *h[2:]], "2 holders at once"),
        # a.0's second write was attempted after it was told SUSPENDED, and accepted
        (
            lambda h: [
                [
                    *h[0][:4],
                    rec("a.0", "status", 1.4, status="SUSPENDED", token=0, key_lease=10),
                    rec("a.0", "attempt", 1.5, n=2, token=10, told="SUSPENDED", told_token=0),
                    *h[0][5:],
                ],
                *h[1:],
            ],
            "was accepted but its writer was last told SUSPENDED",
        ),
        # b.0 does not get the lock again after the faults
        (lambda h: h[:3], "b.0 had no write accepted"),
    ],
)
def test_holder_violations_are_found(change: Any, expected: str) -> None:
    found = checks.check_holders(holders(*change(TURNS)))
    assert any(expected in v for v in found), found


def test_server_side_interleaving_and_ranks_are_found() -> None:
    own = [r for hold in TURNS for r in hold]
    log = entries_of(own)
    log[1] = {**log[1], "revision": 14}  # a.0's second write after b.0's first
    log[2] = {**log[2], "revision": 12}
    found = checks.check_holders(holders(*TURNS, log=log))
    assert any("2 holders' accepted writes interleave at revision 12" in v for v in found), found
    assert any("fencing token went back" in v for v in found), found
    assert any("acknowledged write a.0#2 is not in the log" in v for v in found), found
    ranks = {str(e["revision"]): [e["token"]] for e in entries_of(own)}
    ranks["14"] = [10]  # a.0's key was still first when b.0's write was accepted
    found = checks.check_holders(holders(*TURNS, ranks=ranks))
    assert any("b.0#1 was accepted at revision 14 while its key" in v for v in found), found
    twice = [*entries_of(own), entry("b.0", 9, 10, 30)]
    found = checks.check_holds(twice, 1)
    assert any("token 10 was written with by a.0 and by b.0" in v for v in found), found


def test_a_semaphore_allows_its_holders_but_not_one_more() -> None:
    two = [
        held("a.0", 10, 1.0, 3.0, [(1, 1.2, 11), (2, 2.5, 14)]),
        held("b.0", 12, 1.1, 3.1, [(1, 1.3, 13), (2, 2.6, 15)]),
        *TURNS[2:],
    ]
    assert checks.check_holders(holders(*two, limit=2)) == []
    third = held("c.0", 16, 2.0, 2.8, [(1, 2.1, 12), (2, 2.7, 16)])
    found = checks.check_holders(holders(*two, third, limit=2))
    assert any("3 holders at once (at most 2)" in v for v in found), found
    assert any("3 holders' accepted writes interleave" in v for v in found), found


# --- property 8: counter ----------------------------------------------------------------


def adds(*extra: Record, final: int = 4) -> list[Record]:
    """Adders a0.0 and a1.0 were told the values 1..4; the faults stop at t=5."""
    return [
        harness("params", 0.0, adders=["a0", "a1"]),
        harness("spawn", 0.0, proc="a0.0", slot="a0", args=[]),
        harness("spawn", 0.0, proc="a1.0", slot="a1", args=[]),
        *(rec(src, "add", t, n=n) for src, n, t in (("a0.0", 1, 1.0), ("a1.0", 1, 1.1))),
        rec("a0.0", "added", 1.2, n=1, value=1),
        rec("a1.0", "added", 1.3, n=1, value=2),
        harness("healed", 5.0),
        *(rec(src, "add", t, n=2) for src, t in (("a0.0", 6.0), ("a1.0", 6.1))),
        rec("a0.0", "added", 6.2, n=2, value=3),
        rec("a1.0", "added", 6.3, n=2, value=4),
        *extra,
        rec("a0.0", "done", 8.0),
        rec("a1.0", "done", 8.0),
        harness("final-counter", 9.0, value=final),
    ]


def test_every_acknowledged_increment_counts_once() -> None:
    assert checks.check_counter(adds()) == []
    # one more whose outcome is unknown may or may not be in the counter
    unknown = [rec("a0.0", "add", 7.0, n=3), rec("a0.0", "indeterminate", 7.5, n=3)]
    assert checks.check_counter(adds(*unknown)) == []
    assert checks.check_counter(adds(*unknown, final=5)) == []


@pytest.mark.parametrize(
    ("extra", "final", "expected"),
    [
        ([], 5, "ends at 5, but 4 adds were acknowledged and 0 have an unknown outcome"),
        ([], 3, "was told the value 4; the final one is 3"),
        (
            [rec("a0.0", "add", 7.0, n=3), rec("a0.0", "add-error", 7.5, n=3, error="x")],
            5,
            "ends at 5",
        ),
        ([rec("a1.0", "add", 7.0, n=3), rec("a1.0", "added", 7.1, n=3, value=3)], 4, "both told"),
        ([rec("a1.0", "add", 7.0, n=3), rec("a1.0", "added", 7.1, n=3, value=1)], 4, "told 4"),
    ],
)
def test_counter_violations_are_found(extra: list[Record], final: int, expected: str) -> None:
    found = checks.check_counter(adds(*extra, final=final))
    assert any(expected in v for v in found), found


def test_an_add_in_flight_when_its_adder_was_killed_may_count() -> None:
    killed = [rec("a1.0", "add", 7.0, n=3), harness("kill", 7.1, proc="a1.0")]
    records = [r for r in adds(*killed, final=5) if not (r["src"] == "a1.0" and r["t"] > 7.1)]
    assert checks.check_counter(records) == []
    not_stopped = [r for r in adds() if r["ev"] != "done" or r["src"] != "a1.0"]
    assert any("a1.0 did not stop" in v for v in checks.check_counter(not_stopped))


# --- property 9: partitioner ------------------------------------------------------------

ITEMS4 = ["i0", "i1", "i2", "i3"]


def part(src: str, t: float, state: str, items: list[str], token: int, lease_id: int) -> Record:
    identity = f"{src}-0"
    return rec(
        src, "status", t, status=state, token=token, identity=identity, items=items,
        key_lease=lease_id,
    )  # fmt: skip


def partitions(*extra: Record, renew_until: float = 13.0, **final: Any) -> list[Record]:
    """p0.0 owns every item from t=1; p1.0 joins and at t=2.5 they own their halves
    ([i0, i2] and [i1, i3]); the faults stop at t=5; every share must be settled by
    t=11 (healed + TTL + 3 s) and stay so until t=13."""
    records = [
        harness("params", 0.0, ttl=3, members=["p0", "p1"], items=ITEMS4, settle=3.0),
        harness("spawn", 0.0, proc="p0.0", slot="p0", args=[]),
        harness("spawn", 0.0, proc="p1.0", slot="p1", args=[]),
        rec("p0.0", "member", 0.5, identity="p0.0-0"),
        rec("p1.0", "member", 1.6, identity="p1.0-0"),
        *(lease("p0.0", t, 1, t + 3.0) for t in range(0, int(renew_until))),
        *(lease("p1.0", t + 0.7, 2, t + 3.7) for t in range(1, 13)),
        part("p0.0", 1.0, "ACQUIRED", ITEMS4, 1, 1),
        part("p1.0", 1.8, "ALLOCATING", [], 1, 2),
        part("p0.0", 2.0, "RELEASE", ITEMS4, 2, 1),
        part("p0.0", 2.1, "ALLOCATING", [], 3, 1),
        part("p0.0", 2.5, "ACQUIRED", ["i0", "i2"], 4, 1),
        part("p1.0", 2.6, "ACQUIRED", ["i1", "i3"], 2, 2),
        harness("healed", 5.0),
        *extra,
        harness("observed-until", 13.0),
        harness(
            "final-partition",
            13.1,
            **{
                "owners": {"i0": "p0.0-0", "i1": "p1.0-0", "i2": "p0.0-0", "i3": "p1.0-0"},
                "members": ["p0.0-0", "p1.0-0"],
                **final,
            },
        ),
    ]
    return sorted(records, key=lambda r: r["t"])


def test_partitions_that_hand_over_pass() -> None:
    assert checks.check_partitions(partitions()) == []


def test_an_item_acquired_twice_is_found_unless_the_first_lease_ran_out() -> None:
    early = partitions(part("p1.0", 1.7, "ACQUIRED", ["i1", "i3"], 9, 2))
    found = checks.check_partitions(early)
    assert any("item i1: 2 holders at once" in v for v in found), found
    assert any("item i3: 2 holders at once" in v for v in found), found

    # p0.0 is paused with every item from t=1.2 (its lease valid until 4.0): p1.0 may
    # take them all at 4.5, and p0.0's ACQUIRED it still says means nothing then
    def kept(r: Record) -> bool:  # p0.0 says nothing after 1.9, p1.0 acquires later
        return r["t"] < 1.9 or (r["src"] != "p0.0" and r["ev"] != "status")

    paused = [r for r in partitions(renew_until=2) if kept(r)]
    paused += [
        part("p1.0", 4.5, "ACQUIRED", ITEMS4, 3, 2),
        harness("kill", 6.0, proc="p0.0"),
    ]
    paused = sorted(paused, key=lambda r: r["t"])
    final = {"owners": dict.fromkeys(ITEMS4, "p1.0-0"), "members": ["p1.0-0"]}
    paused[-1] = harness("final-partition", 13.1, **final)
    assert checks.check_partitions(paused) == []


@pytest.mark.parametrize(
    ("extra", "final", "expected"),
    [
        (
            [part("p1.0", 9.0, "RELEASE", ["i1", "i3"], 5, 2)],
            {},
            "p1.0-0 is RELEASE of ['i1', 'i3'] at t=11.000",
        ),
        (
            [part("p1.0", 12.0, "ACQUIRED", ["i1"], 5, 2)],
            {},
            "p1.0-0 is ACQUIRED of ['i1'] at t=12.000",
        ),
        ([], {"owners": {"i0": "p0.0-0"}}, "etcd's owners differ"),
        ([], {"members": ["p0.0-0"]}, "etcd's members are ['p0.0-0']"),
    ],
)
def test_partition_convergence_violations_are_found(
    extra: list[Record], final: dict[str, Any], expected: str
) -> None:
    found = checks.check_partitions(partitions(*extra, **final))
    assert any(expected in v for v in found), found


# --- property 10: queue ----------------------------------------------------------------


def claimed(src: str, value: str, token: int, start: float, end: float) -> list[Record]:
    """``src`` claims ``value`` (the key ``/jobs/<value>``, its marker at revision
    ``token`` on lease 7, renewed until long after) at ``start`` and acks it at
    ``end``."""
    key = f"/jobs/{value}"
    return [
        lease(src, start - 0.1, 7, 30.0),
        rec(src, "status", start, status="HELD", token=token, key_lease=7, key=key),
        rec(src, "claimed", start + 0.01, value=value, key=key, token=token),
        rec(src, "acking", end, value=value, token=token),
        rec(src, "status", end + 0.01, status="ACKED", token=token, key_lease=7, key=key),
        rec(src, "acked", end + 0.02, value=value, key=key),
    ]


def taken(src: str, value: str, t: float) -> list[Record]:
    return [rec(src, "taking", t), rec(src, "taken", t + 0.01, value=value, key=f"/jobs/{value}")]


def jobs(*extra: Record, final: list[str] | None = None) -> list[Record]:
    """u.0 puts v1..v4; k.0 claims and acks v1 and v3, l.0 claims and acks v2, t.0
    takes v4."""
    records = [
        harness("params", 0.0, ttl=3, producers=["u"], claimers=["k", "l"], takers=["t"]),
        *(harness("spawn", 0.0, proc=f"{s}.0", slot=s, args=[]) for s in "uklt"),
        *(
            rec("u.0", ev, 0.5 + n / 10, value=f"v{n}")
            for n in range(1, 5)
            for ev in ("put", "put-ok")
        ),
        *claimed("k.0", "v1", 11, 1.0, 1.5),
        *claimed("l.0", "v2", 12, 1.1, 1.6),
        *claimed("k.0", "v3", 13, 2.0, 2.5),
        *taken("t.0", "v4", 2.0),
        *extra,
        harness("observed-until", 10.0),
        harness("final-queue", 10.1, values=final or []),
    ]  # fmt: skip
    return sorted(records, key=lambda r: r["t"])


def test_a_queue_delivering_each_item_once_passes() -> None:
    assert checks.check_queue(jobs()) == []
    # an item claimed by a consumer that was paused past its lease and claimed again
    paused = claimed("k.0", "v5", 14, 3.0, 9.0)
    paused[0] = lease("k.0", 2.9, 7, 5.0)  # not renewed after t=2
    paused[-3:] = [
        rec("k.0", "acking", 9.0, value="v5", token=14),
        rec("k.0", "ack-lost", 9.1, value="v5", reason="another consumer claimed it"),
    ]
    again = [*claimed("l.0", "v5", 15, 5.5, 6.0), rec("u.0", "put", 2.5, value="v5")]
    assert checks.check_queue(jobs(*paused, *again)) == []


@pytest.mark.parametrize(
    ("extra", "final", "expected"),
    [
        (taken("t.0", "v1", 3.0), None, "v1 was delivered 2 times: acked by k.0, taken by t.0"),
        (claimed("l.0", "v1", 20, 3.0, 3.5), None, "v1 was delivered 2 times"),
        (taken("t.0", "zz", 3.0), None, "zz was delivered (taken by t.0) but nobody put it"),
        ([rec("l.0", "acked", 3.0, value="v3")], None, "l.0 acked v3 without claiming it"),
        ([], ["v9"], "the queue still holds 1 items"),
        (
            [rec("u.0", "put", 3.0, value="v5"), rec("u.0", "put-ok", 3.1, value="v5")],
            None,
            "1 acknowledged items were never delivered (only 0 takes have an unknown "
            "outcome): ['v5']",
        ),
    ],
)
def test_queue_violations_are_found(
    extra: list[Record], final: list[str] | None, expected: str
) -> None:
    found = checks.check_queue(jobs(*extra, final=final))
    assert any(expected in v for v in found), found


def test_two_claims_of_one_item_at_once_are_found() -> None:
    both = jobs(*claimed("l.0", "v1", 21, 1.2, 1.4))
    found = checks.check_queue(both)
    assert any("claims of /jobs/v1: 2 holders at once" in v for v in found), found


def test_an_item_whose_delivery_went_unseen_is_not_lost() -> None:
    put = [rec("u.0", "put", 3.0, value="v5"), rec("u.0", "put-ok", 3.1, value="v5")]
    in_flight = [rec("t.0", "taking", 4.0), harness("kill", 4.5, proc="t.0")]
    assert checks.check_queue(jobs(*put, *in_flight)) == []
    acking = claimed("l.0", "v5", 20, 4.0, 4.5)[:4]  # killed while acking
    assert checks.check_queue(jobs(*put, *acking, harness("kill", 4.6, proc="l.0"))) == []
    unknown = [*acking, rec("l.0", "ack-error", 4.6, value="v5", indeterminate=True)]
    unknown += [rec("l.0", "ack-lost", 5.0, value="v5", reason="the item was acked since")]
    assert checks.check_queue(jobs(*put, *unknown)) == []


# --- schedule ----------------------------------------------------------------------------

PROFILE = Profile(
    "test",
    slots=["e0", "e1", "e2"],
    member_kinds={
        "kill": 1.0,
        "pause-leader": 1.0,
        "pause-two": 1.0,
        "blackhole": 1.0,
        "isolate": 0.5,
        "isolate-leader": 0.5,
        "replace": 0.5,
        "blackhole-all": 0.5,
        "failpoint": 0.5,
    },
    failpoints=("raftBeforeSave", "raftAfterSave"),
    member_quiet=3.0,
    compact_every=(2.0, 4.0),
)


def test_a_seed_always_gives_the_same_plan() -> None:
    assert make_plan(7, 30.0, PROFILE) == make_plan(7, 30.0, PROFILE)
    assert make_plan(7, 30.0, PROFILE) != make_plan(8, 30.0, PROFILE)


@pytest.mark.parametrize("seed", range(20))
def test_member_faults_never_overlap_and_every_fault_ends(seed: int) -> None:
    plan = make_plan(seed, 30.0, PROFILE)
    down: dict[int, float] = {}
    for action in plan.actions:
        assert 0 <= action.at <= 30.0
        if action.kind in MEMBER_DOWN:
            assert not down, f"two member faults at once at {action.at}"
            down[action.ref] = action.at
        elif action.kind in MEMBER_UP:
            assert down.pop(action.ref) <= action.at <= 30.0 - PROFILE.member_quiet
    assert not down
    slots_down: set[str] = set()
    for action in plan.actions:
        if action.kind in ("kill", "pause"):
            assert action.target not in slots_down
            slots_down.add(action.target)
        elif action.kind in ("respawn", "resume"):
            slots_down.remove(action.target)
    assert not slots_down
    counts = plan.counts()
    assert sum(counts.get(kind, 0) for kind in MEMBER_DOWN) > 3
    assert counts.get("compact", 0) > 3


def test_some_plans_take_the_quorum_away_for_a_moment() -> None:
    plans = [make_plan(seed, 30.0, PROFILE) for seed in range(20)]
    assert sum(plan.counts().get("member-pause-two", 0) for plan in plans) >= 5


def test_every_member_fault_kind_comes_up_and_targets_what_it_should() -> None:
    actions = [a for seed in range(10) for a in make_plan(seed, 30.0, PROFILE).actions]
    kinds = {a.kind for a in actions}
    assert set(MEMBER_DOWN) <= kinds, set(MEMBER_DOWN) - kinds
    for action in actions:
        if action.kind == "member-blackhole-all":
            assert action.target == ""
        elif action.kind == "member-isolate":
            assert action.target in ("leader", "0", "1", "2")
        elif action.kind in ("member-blackhole", "member-replace", "member-pause-two"):
            assert action.target in ("0", "1", "2")


def test_member_faults_are_dealt_from_a_deck() -> None:
    # each round of the deck holds every kind, twice its weight times: a short run
    # gets varied faults, a long one the weights' proportions
    deck = _Deck(random.Random(1), {"kill": 1.0, "isolate": 0.5, "replace": 0.2, "pause": 0})
    for _ in range(3):
        dealt = sorted(deck.deal() for _ in range(4))
        assert dealt == ["isolate", "kill", "kill", "replace"]


def test_a_profile_can_open_with_a_chosen_fault() -> None:
    opening = Profile("x", member_kinds={"kill": 1.0}, opening="blackhole-all")
    for seed in range(5):
        downs = [a.kind for a in make_plan(seed, 20.0, opening).actions if a.kind in MEMBER_DOWN]
        assert downs[0] == "member-blackhole-all" and set(downs[1:]) == {"member-kill"}


def test_holders_are_paused_in_pairs_of_actions_that_end() -> None:
    profile = Profile("x", holder_pause_every=(1.0, 3.0), pause_for=(3.3, 5.0))
    for seed in range(5):
        plan = make_plan(seed, 30.0, profile)
        pauses = {a.ref: a.at for a in plan.actions if a.kind == "pause-holder"}
        resumes = {a.ref: a.at for a in plan.actions if a.kind == "resume-holder"}
        assert len(pauses) >= 5 and pauses.keys() == resumes.keys()
        assert all(pauses[ref] < resumes[ref] <= 30.0 for ref in pauses)


def test_an_unknown_member_fault_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown member fault kinds"):
        make_plan(1, 10.0, Profile("x", member_kinds={"explode": 1.0}))


# --- resources ---------------------------------------------------------------------------


def test_resources_are_reported_per_process_and_kind() -> None:
    mib = 2**20
    records = [
        rec("harness", "resources", 0.0, rss=100 * mib, fds=20, greenlets=50),
        rec("e0.0", "resources", 0.0, rss=30 * mib, fds=10, greenlets=12),
        rec("e0.0", "resources", 30.0, rss=31 * mib, fds=11, greenlets=12),
        rec("e1.2", "resources", 40.0, rss=29 * mib, fds=9, greenlets=10),
        rec("harness", "resources", 60.0, rss=101 * mib, fds=21, greenlets=52),
    ]
    found = resources.series(records)
    assert {s.src: s.kind for s in found} == {"harness": "harness", "e0.0": "e", "e1.2": "e"}
    lines = resources.report(found)
    assert lines[0].startswith("e0.0 0s:30.0M/10fd/12g  30s:31.0M/11fd/12g")
    summary = {line.split()[0]: line.split() for line in lines[lines.index("") + 2 :]}
    assert summary["e"][1:4] == ["2", "e0.0", "30s"]
    assert summary["e"][5:] == ["30.0/31.0/31.0", "10/11/11", "12/12/12"]
    assert summary["harness"][5:] == ["100.0/101.0/101.0", "20/21/21", "50/52/52"]
    # several histories: participants are told apart by their run, the harness is one
    merged = resources.merge([resources.series(records, "a-1"), resources.series(records, "b-1")])
    assert sorted(s.src for s in merged) == [
        "a-1:e0.0",
        "a-1:e1.2",
        "b-1:e0.0",
        "b-1:e1.2",
        "harness",
    ]


def test_a_process_samples_its_own_resources() -> None:
    now = resources.sample()
    assert now["rss"] > 10 * 2**20 and now["fds"] >= 3 and now["greenlets"] >= 1

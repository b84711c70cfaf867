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
    },
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

"""The property checks and the schedule, on small hand-made histories (no etcd)."""

from __future__ import annotations

from typing import Any

import pytest

from . import checks
from .history import Record
from .schedule import Profile, make_plan


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


# --- schedule ----------------------------------------------------------------------------

PROFILE = Profile(
    "test",
    slots=["e0", "e1", "e2"],
    member_kinds={"kill": 1.0, "pause-leader": 1.0, "pause-two": 1.0},
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
        if action.kind in ("member-kill", "member-pause", "member-pause-two"):
            assert not down, f"two member faults at once at {action.at}"
            down[action.ref] = action.at
        elif action.kind in ("member-restart", "member-resume", "member-resume-two"):
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
    assert counts.get("member-kill", 0) + counts.get("member-pause", 0) > 3
    assert counts.get("compact", 0) > 3


def test_some_plans_take_the_quorum_away_for_a_moment() -> None:
    plans = [make_plan(seed, 30.0, PROFILE) for seed in range(20)]
    assert sum(plan.counts().get("member-pause-two", 0) for plan in plans) >= 5

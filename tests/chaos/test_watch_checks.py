"""The watch-guarantee checks (``watchcheck.py``) on small hand-made histories: for each
property one history that keeps it and one that breaks it (fast, no etcd)."""

from __future__ import annotations

from typing import Any

import pytest

from . import watchcheck
from .watchcheck import fingerprint

Rec = dict[str, Any]

#: the reference: revisions 10..15 of the prefix /w/ (and /x outside it)
REF_EVENTS: list[list[Any]] = [
    ["P", "/w/a", "a1", 10, 10, None],
    ["P", "/w/b", "b1", 11, 11, None],
    ["P", "/w/a", "a2", 12, 10, "a1"],
    ["P", "/w/c", "c1", 12, 12, None],  # a txn: two keys at 12
    ["D", "/w/b", "", 13, 0, "b1"],
    ["P", "/x", "x1", 14, 14, None],
    ["P", "/w/b", "b2", 15, 15, None],
]
PREFIX = {"key": "/w/", "prefix": True, "prev_kv": True, "filters": [], "progress": False}


def history(*records: Rec, compactions: tuple[int, ...] = (), done: bool = True) -> list[Rec]:
    out: list[Rec] = [{"src": "harness", "ev": "ref-start", "revision": 10, "state": {}}]
    by_rev: dict[int, list[list[Any]]] = {}
    for e in REF_EVENTS:
        by_rev.setdefault(e[3], []).append(e)
    out += [{"src": "harness", "ev": "ref", "rev": r, "events": ev} for r, ev in by_rev.items()]
    out += [{"src": "harness", "ev": "compact", "revision": c} for c in compactions]
    out += [{"src": "w.0", **r} for r in records]
    if done:
        out.append({"src": "w.0", "ev": "done"})
    return out


def start(sid: str = "s#0", kind: str = "raw", spec: dict[str, Any] | None = None, at: int = 10):
    name = sid.split("#")[0]
    return {
        "ev": "wstart",
        "sid": sid,
        "name": name,
        "kind": kind,
        "spec": spec or PREFIX,
        "start": at,
    }


def resp(*rows: list[Any], rev: int = 0, sid: str = "s#0", pn: bool = False, **more: Any) -> Rec:
    rev = rev or (rows[-1][3] if rows else 0)
    return {
        "ev": "wresp",
        "sid": sid,
        "rev": rev,
        "events": [list(r) for r in rows],
        "pn": pn,
        **more,
    }


E = REF_EVENTS
GOOD = [resp(E[0]), resp(E[1]), resp(E[2], E[3]), resp(E[4]), resp(E[6])]


def violations(records: list[Rec]) -> list[str]:
    return watchcheck.check(records).violations


def test_a_complete_stream_passes() -> None:
    result = watchcheck.check(history(start(), *GOOD))
    assert result.violations == []
    assert result.counts["events"] == 6


def test_ordered() -> None:
    bad = violations(
        history(start(), resp(E[1]), resp(E[0]), resp(E[2], E[3]), resp(E[4]), resp(E[6]))
    )
    assert any("broke ordered" in v for v in bad)


def test_unique() -> None:
    bad = violations(history(start(), *GOOD[:2], resp(E[1], rev=11), *GOOD[2:]))
    assert any("broke unique" in v for v in bad)


def test_atomic() -> None:
    assert not violations(history(start(), *GOOD))
    split = [resp(E[0]), resp(E[1]), resp(E[2]), resp(E[3]), resp(E[4]), resp(E[6])]
    assert any("broke atomic" in v for v in violations(history(start(), *split)))


def test_reliable_gap_and_missing_end() -> None:
    gap = [resp(E[0]), resp(E[1]), resp(E[4]), resp(E[6])]  # revision 12 never came
    assert any("broke reliable" in v for v in violations(history(start(), *gap)))
    # open until the process ended normally: the last events must have come
    short = GOOD[:-1]
    assert any("broke reliable" in v for v in violations(history(start(), *short)))
    # a killed process's stream is checked up to what it delivered only
    assert not violations(history(start(), *short, done=False))


def test_resumable() -> None:
    assert not violations(history(start(at=12), resp(E[2], E[3]), resp(E[4]), resp(E[6])))
    late = violations(history(start(at=12), resp(E[4]), resp(E[6])))
    assert any("broke resumable" in v for v in late)


def test_bookmarkable() -> None:
    ok = [resp(E[0]), resp(rev=11, pn=False), resp(E[1]), resp(rev=11, pn=True), *GOOD[2:]]
    assert not violations(history(start(), *ok))
    early = [resp(E[0]), resp(rev=11, pn=True), *GOOD[1:]]  # 11 announced before it came
    assert any("broke bookmarkable" in v for v in violations(history(start(), *early)))
    back = [*GOOD[:3], resp(rev=12, pn=True), resp(rev=11, pn=True), *GOOD[3:]]
    assert any("broke bookmarkable" in v for v in violations(history(start(), *back)))


def test_prev_kv() -> None:
    wrong = ["P", "/w/a", "a2", 12, 10, "zz"]
    bad = violations(
        history(start(), resp(E[0]), resp(E[1]), resp(wrong, E[3]), resp(E[4]), resp(E[6]))
    )
    assert any("wrong prev_kv" in v for v in bad)
    missing = ["P", "/w/a", "a2", 12, 10, None]  # etcd may omit it (compaction): allowed
    fine = [resp(E[0]), resp(E[1]), resp(missing, E[3]), resp(E[4]), resp(E[6])]
    assert not violations(history(start(), *fine))


def test_filters() -> None:
    noput = {**PREFIX, "filters": ["NOPUT"]}
    assert not violations(history(start(spec=noput), resp(E[4])))
    bad = violations(history(start(spec=noput), resp(E[0]), resp(E[4])))
    assert any("broke filter" in v for v in bad)
    key = {"key": "/w/b", "prefix": False, "prev_kv": False, "filters": []}
    assert not violations(history(start(spec=key), resp(E[1]), resp(E[4]), resp(E[6])))
    outside = violations(history(start(spec=key), resp(E[1]), resp(E[3]), resp(E[4]), resp(E[6])))
    assert any("broke filter" in v for v in outside)


def test_a_told_compaction_and_the_restart_after_it() -> None:
    told = {"ev": "wend", "sid": "s#0", "reason": "compacted", "compact": 13}
    again = [start("s#1", at=13), resp(E[6], sid="s#1")]  # 13's tombstone is gone: allowed
    ok = history(start(), resp(E[0]), told, *again, compactions=(13,))
    assert violations(ok) == []
    never = history(start(), resp(E[0]), told, *again, compactions=(12,))
    assert any("never made" in v for v in violations(never))
    needless = {"ev": "wend", "sid": "s#0", "reason": "compacted", "compact": 11}
    bad = history(start(), resp(E[0]), resp(E[1]), needless, start("s#1", at=11), compactions=(11,))
    assert any("while it needed 12" in v for v in violations(bad))
    skipped = history(
        start(), resp(E[0]), told, start("s#1", at=15), resp(E[6], sid="s#1"), compactions=(13,)
    )
    assert any("restarted at 15" in v for v in violations(skipped))


def _state(*items: tuple[str, str, int]) -> str:
    return fingerprint({k: (v, m) for k, v, m in items})


HUB = {"key": "/w/", "prefix": True, "prev_kv": True, "filters": [], "progress": False}


def hub(*updates: Rec) -> list[Rec]:
    return history(start("h#0", "hub", HUB, 0), *updates)


def test_hub_updates_and_a_consistent_synthetic_diff() -> None:
    first = resp(E[0], rev=10, sid="h#0", resynced=True, fp=_state(("/w/a", "a1", 10)))
    # compacted meanwhile: re-read at 13 (a2 and c1 put, b put and deleted): a diff
    diff = resp(
        ["P", "/w/a", "a2", 12, 10, "a1"],
        ["P", "/w/c", "c1", 12, 12, None],
        rev=13,
        sid="h#0",
        resynced=True,
        fp=_state(("/w/a", "a2", 12), ("/w/c", "c1", 12)),
    )
    last = resp(
        E[6], sid="h#0", fp=_state(("/w/a", "a2", 12), ("/w/b", "b2", 15), ("/w/c", "c1", 12))
    )
    result = watchcheck.check(hub(first, diff, last))
    assert result.violations == []
    assert result.counts["synthetic"] == 2


def test_hub_synthetic_events_not_marked_or_not_consistent() -> None:
    first = resp(E[0], rev=10, sid="h#0", resynced=True)
    unmarked = resp(
        ["P", "/w/a", "a2", 12, 10, "a1"], ["P", "/w/c", "c1", 12, 12, None], rev=13, sid="h#0"
    )
    bad = violations(hub(first, unmarked, resp(E[6], sid="h#0")))
    assert any("not marked resynced" in v for v in bad)
    wrong = resp(["P", "/w/a", "a2", 12, 10, "a1"], rev=13, sid="h#0", resynced=True)  # c1 left out
    assert any(
        "differs from etcd's" in v for v in violations(hub(first, wrong, resp(E[6], sid="h#0")))
    )


def test_hub_state_fingerprint_and_revision() -> None:
    first = resp(E[0], rev=10, sid="h#0", resynced=True, fp=_state(("/w/a", "zz", 10)))
    assert any("not etcd's state" in v for v in violations(hub(first)))
    back = [resp(E[0], rev=10, sid="h#0", resynced=True), resp(rev=9, sid="h#0")]
    assert any("went back" in v for v in violations(hub(*back)))


@pytest.mark.parametrize("kind", ["tracker", "config"])
def test_snapshots(kind: str) -> None:
    spec = {"key": "/w/", "prefix": True}
    good = [
        {"ev": "wsnap", "sid": "t#0", "rev": 12, "state": {"a": "a2", "b": "b1", "c": "c1"}},
        {"ev": "wsnap", "sid": "t#0", "rev": 15, "state": {"a": "a2", "b": "b2", "c": "c1"}},
    ]
    assert not violations(history(start("t#0", kind, spec, 0), *good))
    wrong = [{"ev": "wsnap", "sid": "t#0", "rev": 13, "state": {"a": "a2", "b": "b1", "c": "c1"}}]
    assert any(
        "not etcd's state at 13" in v
        for v in violations(history(start("t#0", kind, spec, 0), *wrong))
    )
    behind = violations(history(start("t#0", kind, spec, 0), good[0]))
    assert any("behind the last change" in v for v in behind)
    change = {"ev": "wchange", "sid": "t#0", "key": "b", "new": "b9", "rev": 15}
    assert any(
        "change of b" in v for v in violations(history(start("t#0", kind, spec, 0), *good, change))
    )


def test_acknowledged_writes_are_in_the_reference() -> None:
    ack = {
        "ev": "wack",
        "revision": 12,
        "puts": [["/w/a", "a2"], ["/w/c", "c1"]],
        "succeeded": True,
    }
    assert not violations(history(ack))
    lost = {"ev": "wack", "revision": 13, "puts": [["/w/a", "a3"]], "succeeded": True}
    assert any("not in the reference" in v for v in violations(history(lost)))


def test_a_respawned_watcher_resumes_after_its_last_event() -> None:
    gen0 = [start("raw-from#0", at=10), resp(E[0], sid="raw-from#0"), resp(E[1], sid="raw-from#0")]
    out = history(*gen0, done=False)
    out += [
        {"src": "w.1", **start("raw-from#0", at=12)},
        {"src": "w.1", **resp(E[2], E[3], sid="raw-from#0")},
        {"src": "w.1", **resp(E[4], sid="raw-from#0")},
        {"src": "w.1", **resp(E[6], sid="raw-from#0")},
        {"src": "w.1", "ev": "done"},
    ]
    result = watchcheck.check(out)
    assert result.violations == [] and result.counts["process-resumes"] == 1
    skipped = [
        dict(r, start=13) if r.get("ev") == "wstart" and r["src"] == "w.1" else r for r in out
    ]
    assert any("resumed at 13" in v for v in violations(skipped))


def test_hub_events_older_than_a_revision_already_handed_out() -> None:
    first = resp(E[0], rev=10, sid="h#0", resynced=True)
    late = resp(E[0], rev=10, sid="h#0")  # a1 again, after the state at 10 had it
    bad = violations(hub(first, late))
    assert any("after an update that said revision 10" in v for v in bad)
    assert not violations(
        hub(
            first,
            resp(E[1], sid="h#0"),
            resp(E[2], E[3], sid="h#0"),
            resp(E[4], sid="h#0"),
            resp(E[6], sid="h#0"),
        )
    )

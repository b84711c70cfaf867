"""The linearizability checks on small hand-made histories: porcupine (the Go checker
of ``tests/chaos/porcupine``, built if stale; skipped only when ``go`` is absent) and
the revision checks of :mod:`.linearizability`, each on a history that passes and on
histories that break it (a stale read, a lost write, a revision going back, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from . import linearizability as lin

MS = 1_000_000  # nanoseconds


@pytest.fixture(scope="module")
def checker() -> Path:
    try:
        return lin.build_checker()
    except lin.GoMissing as exc:
        pytest.skip(f"porcupine checks skipped: {exc}")


def op(
    src: str, g: int, n: int, kind: str, call: float, ret: float, **fields: Any
) -> dict[str, Any]:
    """An ``op`` record as kvclient writes it (times in ms; status ok unless given)."""
    fields.setdefault("status", "ok")
    return {
        "ev": "op",
        "src": src,
        "g": g,
        "n": n,
        "op": kind,
        "call": int(call * MS),
        "ret": int(ret * MS),
        **fields,
    }


def put(g: int, n: int, call: float, ret: float, value: str, rev: int, **more: Any) -> Any:
    return op("p", g, n, "put", call, ret, key="k", value=value, rev=rev, **more)


def get(
    g: int, n: int, call: float, ret: float, value: str | None, mod: int = 0, **more: Any
) -> Any:
    if value is None:
        return op("p", g, n, "get", call, ret, key="k", found=False, **more)
    return op("p", g, n, "get", call, ret, key="k", found=True, got=value, mod=mod, **more)


def check(
    tmp_path: Path, checker: Path, records: list[dict[str, Any]], model: str = "single"
) -> lin.Verdict:
    return lin.check_history(records, model, str(tmp_path), binary=checker, timeout=20)


def linearizable() -> list[dict[str, Any]]:
    """Two writers and readers of one key, with overlaps, a cas and a delete."""
    return [
        put(0, 1, 0, 10, "a", 2),
        get(1, 1, 5, 12, "a", 2, rev=2),  # concurrent with the put: may see it
        put(0, 2, 20, 30, "b", 3),
        get(1, 2, 21, 25, "a", 2, rev=2),  # concurrent, before b took effect
        get(2, 1, 26, 40, "b", 3),
        op("p", 0, 3, "cas", 41, 50, key="k", expect="b", value="c", rev=4, succeeded=True),
        op(
            "p",
            1,
            3,
            "cas",
            51,
            55,
            key="k",
            expect="b",
            value="d",
            rev=4,
            succeeded=False,
            found=True,
            got="c",
            mod=4,
        ),
        op("p", 2, 2, "delete", 56, 60, key="k", rev=5, deleted=1),
        get(1, 4, 61, 62, None, rev=5),
        # an unknown write nobody saw, and one somebody saw
        put(0, 4, 63, 64, "e", 0, status="unknown", error="IndeterminateWrite"),
        put(2, 3, 65, 66, "f", 0, status="unknown", error="IndeterminateWrite"),
        get(1, 5, 100, 101, "f", 7, rev=7),
        get(1, 6, 102, 103, None, status="read-fail", error="Timeout"),
    ]


def test_a_linearizable_history_passes(tmp_path: Path, checker: Path) -> None:
    verdict = check(tmp_path, checker, linearizable())
    assert verdict.passed, verdict.violations
    assert verdict.result == "ok"
    assert verdict.counts["ok"] == 10 and verdict.counts["unknown"] == 2
    assert verdict.checked == 11  # the unseen unknown write and the failed read left out


def test_a_stale_read_fails(tmp_path: Path, checker: Path) -> None:
    records = linearizable()
    # after b returned (30) a read still sees a (revisions consistent: a stale member)
    records.append(get(3, 1, 31, 33, "a", 2, rev=2))
    verdict = check(tmp_path, checker, records)
    assert verdict.result == "illegal"
    assert not verdict.passed
    assert (tmp_path / "porcupine.html").exists()
    assert any("revision went back" in v for v in verdict.violations)


def test_a_stale_read_fails_porcupine_alone(tmp_path: Path, checker: Path) -> None:
    records = [
        put(0, 1, 0, 10, "a", 2),
        put(0, 2, 20, 30, "b", 3),
        get(1, 1, 40, 50, "a", 2),  # Client.get: no header revision to check
    ]
    verdict = check(tmp_path, checker, records)
    assert verdict.result == "illegal"
    assert not lin.revision_violations(lin.operations(records))


def test_a_lost_write_fails(tmp_path: Path, checker: Path) -> None:
    records = [
        put(0, 1, 0, 10, "a", 2),
        put(1, 1, 20, 30, "b", 3),  # acknowledged...
        get(2, 1, 40, 50, "a", 2),  # ...but a later read sees the value before it
    ]
    assert check(tmp_path, checker, records).result == "illegal"


def test_a_failed_cas_that_should_have_succeeded_fails(tmp_path: Path, checker: Path) -> None:
    records = [
        put(0, 1, 0, 10, "a", 2),
        op(
            "p",
            1,
            1,
            "cas",
            20,
            30,
            key="k",
            expect="a",
            value="b",
            rev=2,
            succeeded=False,
            found=True,
            got="a",
            mod=2,
        ),
    ]
    assert check(tmp_path, checker, records).result == "illegal"


def test_writes_out_of_revision_order_fail(tmp_path: Path, checker: Path) -> None:
    records = [
        put(0, 1, 0, 10, "a", 5),
        put(1, 1, 20, 30, "b", 4),  # after a, yet an older revision
    ]
    verdict = check(tmp_path, checker, records)
    assert verdict.result == "illegal"
    assert any("revision went back" in v for v in verdict.violations)


def test_a_write_reusing_a_returned_revision_fails() -> None:
    ops = lin.operations([get(0, 1, 0, 10, "x", 3, rev=3), put(1, 1, 20, 30, "a", 3)])
    assert any("already answered" in v for v in lin.revision_violations(ops))


def test_a_read_of_a_failed_write_fails(tmp_path: Path, checker: Path) -> None:
    records = [
        put(0, 1, 0, 10, "a", 0, status="fail", error="Unavailable: no leader"),
        get(1, 1, 20, 30, "a", 2, rev=2),
    ]
    verdict = check(tmp_path, checker, records)
    assert verdict.result == "illegal"
    assert any("failed for sure" in v for v in verdict.violations)


def test_mod_revisions_must_match_the_write() -> None:
    ops = lin.operations([put(0, 1, 0, 10, "a", 2), get(1, 1, 20, 30, "a", 3, rev=3)])
    assert any("written at revision 2" in v for v in lin.revision_violations(ops))
    unknown = lin.operations(
        [
            put(0, 1, 0, 10, "a", 0, status="unknown"),
            get(1, 1, 20, 30, "a", 3, rev=3),
            get(2, 1, 20, 30, "a", 4, rev=4),
        ]
    )
    assert any("at mod_revision 4" in v for v in lin.revision_violations(unknown))


def test_two_writes_of_a_key_at_one_revision_fail() -> None:
    ops = lin.operations([put(0, 1, 0, 10, "a", 2), put(1, 1, 0, 10, "b", 2)])
    assert any("both wrote k" in v for v in lin.revision_violations(ops))


def test_a_value_nobody_wrote_fails() -> None:
    ops = lin.operations([get(1, 1, 20, 30, "zz", 3, rev=3)])
    assert any("nobody wrote" in v for v in lin.revision_violations(ops))


def test_an_unknown_write_may_take_effect_late(tmp_path: Path, checker: Path) -> None:
    records = [
        put(0, 1, 0, 10, "a", 2),
        put(1, 1, 20, 21, "b", 0, status="unknown"),  # its caller gave up at 21...
        get(2, 1, 30, 40, "a", 2),  # ...still not applied at 40
        get(2, 2, 50, 60, "b", 3),  # applied by 60
    ]
    assert check(tmp_path, checker, records).passed


def test_implied_reads_are_left_out_without_changing_the_verdict() -> None:
    records = [put(0, 1, 0, 10, "a", 2)] + [get(g, 1, 5 + g, 20 + g, "a", 2) for g in range(1, 9)]
    ops = lin.operations(records)
    implied = lin.implied_reads(ops)
    assert len(implied) == 6  # the first to return and the last invoked stay
    kept = [o for n, o in enumerate(ops) if n not in implied]
    assert min(o["ret"] for o in kept if o["op"] == "get") == int(21 * MS)
    assert max(o["call"] for o in kept if o["op"] == "get") == int(13 * MS)


def multi_op(g: int, n: int, kind: str, call: float, ret: float, **fields: Any) -> Any:
    return op("m", g, n, kind, call, ret, **fields)


def test_multi_key_histories(tmp_path: Path, checker: Path) -> None:
    good = [
        multi_op(
            0,
            1,
            "txn",
            0,
            10,
            compare=[["x", None], ["y", None]],
            success=[["put", "x", "x1"], ["put", "y", "y1"]],
            rev=2,
            succeeded=True,
        ),
        multi_op(1, 1, "range", 20, 30, kvs={"x": ["x1", 2], "y": ["y1", 2]}, rev=2),
        multi_op(
            0,
            2,
            "txn",
            31,
            40,
            compare=[["x", "x1"], ["y", "nope"]],
            success=[["delete", "x", ""]],
            rev=2,
            succeeded=False,
            reads=[[True, "x1", 2], [True, "y1", 2]],
        ),
        multi_op(
            1,
            2,
            "txn",
            41,
            50,
            compare=[["x", "x1"], ["y", "y1"]],
            success=[["delete", "x", ""], ["put", "y", "y2"]],
            rev=3,
            succeeded=True,
        ),
        multi_op(2, 1, "get", 51, 52, key="y", found=True, got="y2", mod=3),
        multi_op(2, 2, "get", 53, 54, key="x", found=False),
    ]
    assert check(tmp_path, checker, good, "multi").passed
    # a range that sees half of an atomic txn
    torn = [*good, multi_op(3, 1, "range", 45, 60, kvs={"x": ["x1", 2], "y": ["y2", 3]}, rev=3)]
    assert check(tmp_path, checker, torn, "multi").result == "illegal"


def test_an_unseen_unknown_put_that_a_delete_needs_stays(tmp_path: Path, checker: Path) -> None:
    records = [
        put(0, 1, 0, 10, "a", 2),
        op("p", 1, 1, "delete", 11, 20, key="k", rev=3, deleted=1),
        put(0, 2, 30, 31, "b", 0, status="unknown"),  # nobody read b...
        op("p", 1, 2, "delete", 40, 50, key="k", rev=5, deleted=1),  # ...but it was there
    ]
    ops = lin.operations(records)
    assert not lin.unseen_unknown(ops, ["k"])
    assert check(tmp_path, checker, records).passed


def test_unknown_deletes_stay_only_when_an_absence_was_seen(tmp_path: Path, checker: Path) -> None:
    records = [
        put(0, 1, 0, 10, "a", 2),
        op("p", 1, 1, "delete", 11, 12, key="k", status="unknown"),
        get(2, 1, 20, 30, "a", 2, rev=2),
    ]
    assert lin.unseen_unknown(lin.operations(records), ["k"]) == {1}
    records.append(get(2, 2, 40, 50, None, rev=2))  # the unknown delete took effect
    assert not lin.unseen_unknown(lin.operations(records), ["k"])
    assert check(tmp_path, checker, records).passed

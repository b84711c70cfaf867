"""Linearizability of the KV API under faults: the ``kvclient`` participants' operations
converted for porcupine, the revision checks porcupine's value model does not make, and
the driver of the Go checker (``tests/chaos/porcupine``).

The history's ``op`` records (see :mod:`.participants.kvclient`) become porcupine
operations, one JSON line each (:func:`porcupine_history`):

- ``ok``: call and return as recorded, the answer as output;
- ``unknown`` (an IndeterminateWrite, a Timeout or ConnectionFailed of a write, or its
  caller interrupted): return at infinity and any output allowed (it may take effect at
  any moment after its call, or never). One whose value a read returned did take
  effect, before that read returned: that read's return is its return, and the
  mod_revision the read showed its revision. Unknown writes nothing depended on are left
  out (:func:`unseen_unknown`: taking effect last, or never, is always possible for
  them, so no verdict changes; each one kept is a pending operation porcupine tries at
  every step of its search);
- ``fail`` (a write geventc says was not applied): left out (never happened), so a read
  of its value fails the check, and :func:`revision_violations` says so by name;
- ``read-fail``: left out (a failed read has no effect);
- reads that other reads of the same version imply (:func:`implied_reads`): left out.

Models (``tests/chaos/porcupine/main.go``): ``single`` checks every key on its own (its
value, or absent, and the revision of its last change) for the single-key workloads,
``multi`` one model of every key (a map key -> value and last change, and the highest
revision written) for the multi-key one. Both also require what etcd's revisions say of
the order: a write of a key takes a revision above the key's last change, a read shows
the value *and* mod_revision of the state, and no header revision is below the key's
last change (multi: below the highest revision written), so writes of a key linearize
in revision order, which keeps the search nearly linear with dozens of concurrent
readers.

:func:`revision_violations` checks, over every answer with a header revision:

- revisions never go back in real time: an operation invoked after another returned
  answers a header revision >= that one's;
- a write that took effect (put, a delete that deleted, a cas or txn that succeeded and
  put) answers a revision strictly greater than every revision answered before it was
  invoked, and no two writes of one key share a revision;
- a read's ``mod_revision`` is the revision of the write whose value it returned (that
  write's answer, when it has one; every read of a value whose write is unknown agrees),
  at most the read's header revision, and no read returns a value before its write was
  invoked, nor a value nobody wrote, nor one whose write failed for sure.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .history import Record, load
from .schedule import MEMBER_DOWN, MEMBER_UP

PORCUPINE = Path(__file__).resolve().parent / "porcupine"
#: the checker binary (built from PORCUPINE when older than its sources)
BINARY = Path(tempfile.gettempdir()) / "geventc-porcupine" / "porcupine-check"
BUILD_TIMEOUT = 600.0
#: how long the Go checker may search before it says "unknown" (a failure)
CHECK_TIMEOUT = 120.0
WRITES = ("put", "delete", "cas", "txn")
#: shown per kind of violation at most
SHOWN = 10


class GoMissing(RuntimeError):
    """``go`` is not on PATH and no up-to-date checker binary exists."""


def sources() -> list[Path]:
    """The files the checker is built from."""
    return [PORCUPINE / "go.mod", PORCUPINE / "go.sum", *sorted(PORCUPINE.glob("*.go"))]


def build_checker(binary: Path = BINARY, timeout: float = BUILD_TIMEOUT) -> Path:
    """The checker binary, built with ``go build -mod=readonly`` unless it is newer than
    every source. Raises :class:`GoMissing` when it must be built and ``go`` is absent,
    ``RuntimeError`` (with go's output) when the build fails."""
    if binary.exists() and all(s.stat().st_mtime <= binary.stat().st_mtime for s in sources()):
        return binary
    go = shutil.which("go")
    if go is None:
        raise GoMissing("the `go` command is not on PATH (needed to build tests/chaos/porcupine)")
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(f".{binary.name}.{os.getpid()}")
    result = subprocess.run(
        [go, "build", "-mod=readonly", "-o", str(partial), "."],
        cwd=PORCUPINE,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise RuntimeError(f"go build of tests/chaos/porcupine failed:\n{result.stderr}")
    partial.replace(binary)
    return binary


# --- the operations ---------------------------------------------------------------------


def operations(records: Iterable[Record]) -> list[Record]:
    """The ``op`` records of a history, each with ``client``: a number per greenlet of
    each process (porcupine's client ids), in order of their calls."""
    ops = [r for r in records if r.get("ev") == "op"]
    ops.sort(key=lambda r: (r["call"], r["ret"]))
    clients: dict[tuple[str, int], int] = {}
    for op in ops:
        op["client"] = clients.setdefault((op["src"], op["g"]), len(clients))
    return ops


def counts(ops: Sequence[Record]) -> Counter[str]:
    """Operations per status (``ok``, ``unknown``, ``fail``, ``read-fail``)."""
    return Counter(op["status"] for op in ops)


def written_values(op: Record) -> list[tuple[str, str]]:
    """The (key, value) pairs a write puts, if it takes effect."""
    kind = op["op"]
    if kind in ("put", "cas"):
        return [(op["key"], op["value"])]
    if kind == "txn":
        return [(k, v) for what, k, v in op["success"] if what == "put"]
    return []


def reads_of(op: Record) -> list[tuple[str, str, int]]:
    """The (key, value, mod_revision) of every value an answered operation returned."""
    if op["status"] != "ok":
        return []
    kind = op["op"]
    if kind == "get" or (kind == "cas" and not op["succeeded"]):
        return [(op["key"], op["got"], op.get("mod", 0))] if op.get("found") else []
    if kind == "txn" and not op["succeeded"]:
        return [
            (k, value, mod)
            for (k, _), (found, value, mod) in zip(op["compare"], op["reads"], strict=True)
            if found
        ]
    if kind == "range":
        return [(k, value, mod) for k, (value, mod) in op["kvs"].items()]
    return []


def took_effect(op: Record) -> bool:
    """Whether an answered write changed something (so its revision is a new one)."""
    kind = op["op"]
    if op["status"] != "ok" or kind not in WRITES:
        return False
    if kind == "delete":
        return bool(op["deleted"])
    if kind == "put":
        return True
    return bool(op["succeeded"]) and bool(written_values(op) or kind == "cas")


# --- porcupine's input ------------------------------------------------------------------


def porcupine_history(ops: Sequence[Record], model: str) -> list[dict[str, Any]]:
    """The header and operation lines of the Go checker's input (see module docstring)."""
    keys = sorted(
        {op["key"] for op in ops if "key" in op}
        | {k for op in ops for k, _ in op.get("compare", ())}
        | {k for op in ops for _, k, _ in op.get("success", ())}
        | {k for op in ops for k in op.get("kvs", {})}
    )
    index = {k: n for n, k in enumerate(keys)}
    first_seen: dict[str, int] = {}  # value -> the earliest return of a read showing it
    seen_at: dict[str, int] = {}  # value -> the mod_revision a read showed it at
    for op in ops:
        for _key, value, mod in reads_of(op):
            if value not in first_seen or op["ret"] < first_seen[value]:
                first_seen[value] = op["ret"]
            seen_at.setdefault(value, mod)
    unseen = unseen_unknown(ops, keys)
    lines: list[dict[str, Any]] = [{"model": model, "keys": keys}]
    implied = implied_reads(ops) if model == "single" else set()
    for n, op in enumerate(ops):
        status, kind = op["status"], op["op"]
        if status in ("fail", "read-fail") or n in implied or n in unseen:
            continue
        ret: int | None = op["ret"]
        out: dict[str, Any] = {}
        if status == "unknown":
            values = [v for _, v in written_values(op)]
            seen = [first_seen[v] for v in values if v in first_seen]
            # taking effect before the first read of its value returned, if it was read
            ret = min(seen) if seen and min(seen) >= op["call"] else None
            # its revision: the one reads showed its value at (0: unknown)
            out = {"unknown": True, "rev": next((seen_at[v] for v in values if v in seen_at), 0)}
        entry: dict[str, Any] = {
            "id": n,
            "client": op["client"],
            "call": op["call"],
            "return": ret,
            "key": op.get("key", ""),
            "in": _input(op, index),
            "out": out if status == "unknown" else _output(op),
        }
        if model == "single" and kind not in ("get", "put", "delete", "cas"):
            raise ValueError(f"operation {kind!r} in a single-key history")
        lines.append(entry)
    return lines


def unseen_unknown(ops: Sequence[Record], keys: Sequence[str]) -> set[int]:
    """The indices of the unknown writes left out of porcupine's input because no
    operation depended on them: taking effect after every other operation (or never) is
    then always possible for them, so leaving them out changes no verdict, and each one
    kept is one more pending operation porcupine tries at every step of its search.

    - A put, cas or txn (without deletes) is left out when no other operation mentions
      one of its (unique) values, as a read's result or a compare's operand, and no
      delete that deleted something (it saw the key present, not its value) of a key
      it writes returned after its call. In any linearization only writes of the key
      can then come between it and the key's next write, and none of them depends on it.
    - A delete is left out when no operation whose outcome depends on its key's absence
      returned after its call: a read that found nothing (a get, a failed cas's or txn's
      read, a range without the key), a delete that deleted nothing, a cas or txn that
      succeeded comparing the key's absence, or an unknown one kept (it may have)."""
    mentioned: set[str] = set()
    present_seen: dict[str, int] = {}  # key -> latest return of a delete that deleted
    for op in ops:
        mentioned.update(value for _key, value, _mod in reads_of(op))
        mentioned.update(expect for _key, expect in _compares(op) if expect is not None)
        if op["op"] == "delete" and op["status"] == "ok" and op["deleted"]:
            present_seen[op["key"]] = max(present_seen.get(op["key"], -1), op["ret"])
    left_out: set[int] = set()
    for n, op in enumerate(ops):
        if op["status"] != "unknown" or op["op"] not in ("put", "cas", "txn"):
            continue
        if op["op"] == "txn" and any(what == "delete" for what, _k, _v in op["success"]):
            continue
        written = written_values(op)
        if any(v in mentioned for _k, v in written):
            continue
        if all(present_seen.get(k, -1) < op["call"] for k, _v in written):
            left_out.add(n)

    absent_seen: dict[str, float] = {}

    def saw(key: str, when: float) -> None:
        absent_seen[key] = max(absent_seen.get(key, -1), when)

    for n, op in enumerate(ops):
        kind, status = op["op"], op["status"]
        if status == "unknown" and kind in ("cas", "txn") and n not in left_out:
            for key, expect in _compares(op):
                if expect is None:
                    saw(key, float("inf"))  # it may have taken effect: the key was absent
        if status != "ok":
            continue
        if (kind == "get" and not op["found"]) or (kind == "delete" and not op["deleted"]):
            saw(op["key"], op["ret"])
        elif kind in ("cas", "txn") and op["succeeded"]:
            for key, expect in _compares(op):
                if expect is None:
                    saw(key, op["ret"])
        elif kind == "cas" and not op.get("found"):
            saw(op["key"], op["ret"])
        elif kind == "txn":
            for (key, _), (found, _v, _m) in zip(op["compare"], op["reads"], strict=True):
                if not found:
                    saw(key, op["ret"])
        elif kind == "range":
            for key in keys:
                if key not in op["kvs"]:
                    saw(key, op["ret"])
    for n, op in enumerate(ops):
        unknown_delete = op["status"] == "unknown" and op["op"] == "delete"
        if unknown_delete and absent_seen.get(op["key"], -1) < op["call"]:
            left_out.add(n)
    return left_out


def _compares(op: Record) -> list[tuple[str, str | None]]:
    """The (key, expected value or None for absent) compares of a cas or txn."""
    if op["op"] == "cas":
        return [(op["key"], op["expect"])]
    return [(k, v) for k, v in op.get("compare", ())]


def implied_reads(ops: Sequence[Record]) -> set[int]:
    """The indices of the single-key reads that other reads imply (left out of
    porcupine's input: its search slows down a lot with dozens of concurrent readers).

    In the single-key model a read that found a value shows its mod_revision too, so it
    names one version of the key, and the key's writes linearize in revision order:
    version j holds from the point of its write, p_j, to that of the next, p_j+1. A read
    of version j invoked at c and returned at r linearizes iff p_j <= r and
    p_j+1 >= c (the closed intervals of porcupine). Over every read of version j these
    are implied by the read that returned first and the one invoked last; every other
    read of that version (a get, or a failed cas: it changes nothing) is left out. Reads
    that found nothing name no version and all stay."""
    first: dict[tuple[str, str, int], tuple[int, int]] = {}  # -> (ret, index)
    last: dict[tuple[str, str, int], tuple[int, int]] = {}  # -> (call, index)
    reads: list[tuple[int, tuple[str, str, int]]] = []
    for n, op in enumerate(ops):
        if op["status"] != "ok" or op["op"] not in ("get", "cas"):
            continue
        if (op["op"] == "cas" and op["succeeded"]) or not op.get("found") or not op.get("mod"):
            continue
        version = (op["key"], op["got"], op["mod"])
        reads.append((n, version))
        if version not in first or op["ret"] < first[version][0]:
            first[version] = (op["ret"], n)
        if version not in last or op["call"] > last[version][0]:
            last[version] = (op["call"], n)
    return {n for n, v in reads if n not in (first[v][1], last[v][1])}


def _input(op: Record, index: dict[str, int]) -> dict[str, Any]:
    kind = op["op"]
    entry: dict[str, Any] = {"op": kind}
    if "key" in op:
        entry["key"] = op["key"]
        entry["idx"] = index[op["key"]]
    if kind in ("put", "cas"):
        entry["value"] = op["value"]
    if kind == "cas":
        entry["expect"] = op["expect"]
    if kind == "txn":
        entry["compare"] = [{"key": index[k], "value": v} for k, v in op["compare"]]
        entry["success"] = [
            {"op": what, "key": index[k], "value": v} for what, k, v in op["success"]
        ]
    return entry


def _output(op: Record) -> dict[str, Any]:
    kind = op["op"]
    out: dict[str, Any] = {"rev": op.get("rev", 0)}
    if kind == "get":
        out.update(found=op["found"], value=op.get("got") or "", mod=op.get("mod", 0))
    elif kind == "delete":
        out["deleted"] = op["deleted"]
    elif kind == "cas":
        out["succeeded"] = op["succeeded"]
        out.update(found=op.get("found", False), value=op.get("got") or "", mod=op.get("mod", 0))
    elif kind == "txn":
        out["succeeded"] = op["succeeded"]
        out["reads"] = [
            {"found": f, "value": v or "", "mod": mod} for f, v, mod in op.get("reads", ())
        ]
    elif kind == "range":
        out["kvs"] = {
            k: {"found": True, "value": value, "mod": mod} for k, (value, mod) in op["kvs"].items()
        }
    return out


def write_porcupine_history(path: str, ops: Sequence[Record], model: str) -> int:
    """Write the checker's input to ``path``; the number of operations in it."""
    lines = porcupine_history(ops, model)
    with open(path, "w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(json.dumps(line, separators=(",", ":")) + "\n")
    return len(lines) - 1


# --- the revision checks ----------------------------------------------------------------


def revision_violations(ops: Sequence[Record]) -> list[str]:
    """Every revision property of the module docstring that ``ops`` break (at most
    :data:`SHOWN` of each kind, then how many more)."""
    found: dict[str, list[str]] = {}

    def bad(kind: str, text: str) -> None:
        found.setdefault(kind, []).append(text)

    answered = [op for op in ops if op["status"] == "ok" and op.get("rev")]
    # real time: sweep the calls in order, with the highest revision returned before each
    by_ret = sorted(answered, key=lambda op: op["ret"])
    rets = [op["ret"] for op in by_ret]
    best: list[Record] = []  # best[i]: the op of highest revision among by_ret[: i + 1]
    for op in by_ret:
        best.append(op if not best or op["rev"] > best[-1]["rev"] else best[-1])
    for op in answered:
        i = bisect.bisect_left(rets, op["call"]) - 1  # returned strictly before the call
        if i < 0:
            continue
        before = best[i]
        if op["rev"] < before["rev"]:
            bad(
                "back",
                f"revision went back: {_name(op)} answered {op['rev']} < {before['rev']}"
                f" of {_name(before)}, which returned before it was invoked",
            )
        elif took_effect(op) and op["rev"] == before["rev"]:
            bad(
                "write",
                f"write {_name(op)} took revision {op['rev']}, already answered by "
                f"{_name(before)} before it was invoked",
            )

    writers: dict[str, Record] = {}
    for op in ops:
        for _key, value in written_values(op):
            writers[value] = op
    at: dict[tuple[str, int], tuple[str, Record]] = {}  # (key, revision) -> value, writer
    for op in ops:
        if not took_effect(op):
            continue
        changes = written_values(op) if op["op"] != "delete" else [(op["key"], "")]
        if op["op"] == "txn":
            changes = [(k, v) for what, k, v in op["success"]]
        for key, value in changes:
            other = at.setdefault((key, op["rev"]), (value, op))
            if other[1] is not op:
                bad(
                    "shared",
                    f"{_name(op)} and {_name(other[1])} both wrote {key} at revision {op['rev']}",
                )

    mods: dict[str, tuple[int, Record]] = {}
    for op in ops:
        for key, value, mod in reads_of(op):
            writer = writers.get(value)
            if writer is None or (key, value) not in written_values(writer):
                bad("nobody", f"{_name(op)} read {key}={value!r}, which nobody wrote there")
                continue
            if writer["status"] == "fail":
                bad(
                    "failed",
                    f"{_name(op)} read {value!r} of {_name(writer)}, a write that "
                    f"failed for sure ({writer.get('error')})",
                )
            if op["ret"] < writer["call"]:
                bad(
                    "early",
                    f"{_name(op)} returned {value!r} before its write {_name(writer)} was invoked",
                )
            if op.get("rev") and mod > op["rev"]:
                bad(
                    "mod",
                    f"{_name(op)}: mod_revision {mod} of {key} above its header "
                    f"revision {op['rev']}",
                )
            if writer["status"] == "ok":
                if mod != writer["rev"]:
                    bad(
                        "mod",
                        f"{_name(op)} read {value!r} at mod_revision {mod}, written at "
                        f"revision {writer['rev']} by {_name(writer)}",
                    )
            else:
                known = mods.setdefault(value, (mod, op))
                if known[0] != mod:
                    bad(
                        "mod",
                        f"{_name(op)} read {value!r} at mod_revision {mod}, "
                        f"{_name(known[1])} at {known[0]}",
                    )
    violations: list[str] = []
    for texts in found.values():
        violations += texts[:SHOWN]
        if len(texts) > SHOWN:
            violations.append(f"... and {len(texts) - SHOWN} more like the last one")
    return violations


def _name(op: Record) -> str:
    what = op["op"]
    target = op.get("key") or ",".join(k for k, _ in op.get("compare", ())) or "*"
    return f"{op['src']}/g{op['g']}#{op['n']} {what}({target})"


# --- the Go checker ---------------------------------------------------------------------


@dataclass
class Verdict:
    """The outcome of checking one history: porcupine's and the revision checks'."""

    ops: int
    counts: Counter[str]
    checked: int  # operations handed to porcupine
    result: str  # ok, illegal, unknown (porcupine's)
    check_seconds: float
    output: str
    input_path: str
    html_path: str
    violations: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.result == "ok" and not self.violations

    def summary(self) -> str:
        c = self.counts
        return (
            f"operations {self.ops} (ok {c['ok']}, unknown {c['unknown']}, failed writes "
            f"{c['fail']}, failed reads {c['read-fail']}; {self.checked} to porcupine), "
            f"porcupine {self.result} in {self.check_seconds:.2f}s"
        )


def check_history(
    records: Sequence[Record],
    model: str,
    directory: str,
    *,
    binary: Path | None = None,
    timeout: float = CHECK_TIMEOUT,
    visualize: bool = False,
) -> Verdict:
    """Run the revision checks and porcupine (its input ``porcupine.jsonl`` and, on
    failure or with ``visualize``, ``porcupine.html`` in ``directory``)."""
    ops = operations(records)
    input_path = os.path.join(directory, "porcupine.jsonl")
    html_path = os.path.join(directory, "porcupine.html")
    checked = write_porcupine_history(input_path, ops, model)
    command = [str(binary or build_checker()), "-timeout", f"{timeout}s", "-html", html_path]
    if visualize:
        command.append("-visualize")
    started = time.monotonic()
    done = subprocess.run(
        [*command, input_path], capture_output=True, text=True, timeout=timeout + 120, check=False
    )
    took = time.monotonic() - started
    output = done.stdout + done.stderr
    match = re.search(r"^result: (\w+)", done.stdout, re.M)
    result = match.group(1) if match else f"error (exit {done.returncode})"
    if done.returncode not in (0, 1) or (result == "ok") != (done.returncode == 0):
        result = f"error (exit {done.returncode})"
    verdict = Verdict(len(ops), counts(ops), checked, result, took, output, input_path, html_path)
    verdict.violations = revision_violations(ops)
    if result != "ok":
        lines = [line for line in output.splitlines() if "illegal" in line or "unknown" in line]
        shown = "; ".join(lines[:5]) or output[-2000:]
        extra = f", visualisation {html_path}" if os.path.exists(html_path) else ""
        verdict.violations.insert(
            0, f"porcupine: the history is not linearizable ({result}): {shown}{extra}"
        )
    return verdict


def ops_by_fault(records: Sequence[Record]) -> Counter[str]:
    """How many operations were invoked during each kind of member fault: from a
    member-down record (``member-kill``, ``member-pause``, ...; ``-leader`` when the
    raft leader was its target) to the next member-up record (member faults never
    overlap), and ``none`` outside them. Compactions and client pauses are not windows
    (they are instants, or the paused client invokes nothing)."""
    windows: list[tuple[float, float, str]] = []
    opened: tuple[float, str] | None = None
    for r in records:
        if r.get("src") != "harness":
            continue
        ev = r.get("ev")
        if ev in MEMBER_DOWN and opened is None:
            kind = str(ev) + ("-leader" if r.get("target") == "leader" else "")
            opened = (float(r["t"]), kind)
        elif ev in MEMBER_UP and opened is not None:
            windows.append((opened[0], float(r["t"]), opened[1]))
            opened = None
    if opened is not None:
        windows.append((opened[0], float("inf"), opened[1]))
    starts = [w[0] for w in windows]
    found: Counter[str] = Counter()
    for op in operations(records):
        at = op["call"] / 1e9
        i = bisect.bisect_right(starts, at) - 1
        found[windows[i][2] if i >= 0 and at < windows[i][1] else "none"] += 1
    return found


def model_of(records: Iterable[Record]) -> str:
    """The model a history's ``params`` record names (``single`` without one)."""
    for r in records:
        if r.get("ev") == "params" and "model" in r:
            return str(r["model"])
    return "single"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.chaos.linearizability HISTORY``: re-check a kept history."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("history")
    parser.add_argument("--model", choices=("single", "multi"), help="default: the history's")
    parser.add_argument("--visualize", action="store_true", help="write porcupine.html anyway")
    parser.add_argument("--timeout", type=float, default=CHECK_TIMEOUT)
    parser.add_argument(
        "--by-fault", action="store_true", help="also count the operations per member fault"
    )
    args = parser.parse_args(argv)
    records = load(args.history)
    if args.by_fault:
        split = ops_by_fault(records).most_common()
        print("operations by member fault: " + ", ".join(f"{k} {v}" for k, v in split))
    model = args.model or model_of(records)
    verdict = check_history(
        records,
        model,
        os.path.dirname(os.path.abspath(args.history)),
        timeout=args.timeout,
        visualize=args.visualize,
    )
    print(verdict.output.rstrip())
    print(verdict.summary())
    for violation in verdict.violations:
        print(f"  - {violation}")
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())

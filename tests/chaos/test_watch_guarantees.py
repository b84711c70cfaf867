"""Watch guarantees under faults, checked with etcd's robustness definitions.

A writer (``participants/watchwriter.py``: random puts, deletes and multi-key txns
under ``/w/``) and a watcher process (``participants/watchers.py``: raw streams of
every kind, Observers, hub listeners, a ServiceTracker and a ConfigWatcher) run while
the seed's plan kills, pauses, blackholes, isolates and replaces members, compacts,
and kills or pauses the watcher (a respawned watcher resumes its ``raw-from`` stream
after its previous generation's last event). The ground truth is a reference watch the
harness keeps over plain urllib3 on the members' own URLs (:class:`ReferenceWatch`):
no geventc watch code is under it, it starts before the workload, and compaction never
passes what it delivered (``Run.compact_limit``), so the whole history of the run is
known. ``watchcheck.check`` then checks every stream (see its docstring).

The cluster runs the oldest etcd build in ``tests/etcd/bin`` at or after
:data:`FIXED_19179` (3.5.35 when ``tests/etcd/build.py`` built it), unless
``ETCD_BIN`` / ``ETCD_VERSION`` choose: etcd 3.5.1 (the default binary) has etcd's bug
#19179, a watch opened at the compaction revision misses that revision's deletions,
which this run finds (``ETCD_VERSION=3.5.1`` shows it in long runs).

Bounded: seeds 1 and 2, 20 s of faults each (about 65 s in all with the cluster's
start). Long:
``GEVENTC_CHAOS_SECONDS=600 GEVENTC_CHAOS_SEED=7,8 GEVENTC_CHAOS_KEEP=1 pytest-gevent -m
chaos tests/chaos/test_watch_guarantees.py``; ``python -m tests.chaos.watchcheck
HISTORY`` re-checks a kept history.
"""

from __future__ import annotations

import base64
import glob
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
import urllib3

from geventc.testing import EtcdCluster
from geventc.testing.faults import FaultHarnessUnavailable
from geventc.testing.releases import binary_release

from . import watchcheck
from .harness import ROOT, SUMMARIES, Run, Settings
from .schedule import Profile, make_plan
from .test_chaos import MEMBER_FAULTS

pytestmark = [pytest.mark.chaos, pytest.mark.cluster]

SETTINGS = Settings.from_env()
#: the bounded run: the first two fixed seeds, 20 s of faults each
BOUNDED_SEEDS = 2
BOUNDED_SECONDS = 20.0
#: etcd sends a progress notification to a watch that asked for them every second
PROGRESS_INTERVAL = "1s"
#: watcher processes, each starting on another member (a blackhole or a kill of one
#: member then always hits the streams of one of them)
WATCHERS = ("watchers0", "watchers1", "watchers2")
PROFILE = Profile(
    "watch",
    slots=WATCHERS,
    slot_kinds={"kill": 0.6, "short-pause": 1.0, "pause": 0.4},
    slot_gap=(3.0, 7.0),
    pause_for=(3.0, 5.0),
    member_kinds={**MEMBER_FAULTS, "blackhole": 2.0},
    #: a frozen proxy first: its watchers fail over (after the liveness bound) to a
    #: member whose history was compacted meanwhile (resumption after compaction)
    opening="blackhole",
    compact_every=(1.0, 2.5),
)


#: the oldest release this run was verified on without etcd's watch bug #19179 (a
#: watch opened at the compaction revision misses that revision's deletions: etcd
#: 3.5.1, the default binary, has it; its fix is in 3.5.35, 3.6.16 and 3.7.3)
FIXED_19179 = (3, 5, 35)


def etcd_binary() -> str | None:
    """The binary of this module's cluster: the one ``ETCD_BIN`` / ``ETCD_VERSION`` ask
    for; else the newest build in ``tests/etcd/bin`` without etcd's bug #19179 (built by
    ``python tests/etcd/build.py``, as ``.ci/run`` does); else the default (None)."""
    if os.environ.get("ETCD_BIN") or os.environ.get("ETCD_VERSION"):
        return None
    found = [binary_release(p) for p in glob.glob(os.path.join(ROOT, "tests/etcd/bin/etcd-3.*"))]
    fixed = [r for r in found if r is not None and not r.failpoints and r.version >= FIXED_19179]
    return min(fixed, key=lambda r: r.version).binary if fixed else None


@pytest.fixture(scope="module")
def cluster() -> Iterator[EtcdCluster]:
    """A 3-member cluster of this module (members in network namespaces behind fault
    proxies) whose members send progress notifications every second."""
    try:
        members = EtcdCluster(
            3,
            binary=etcd_binary(),
            fsync=False,
            netns=True,
            proxied=True,
            extra_args=[f"--experimental-watch-progress-notify-interval={PROGRESS_INTERVAL}"],
        ).start()
    except FaultHarnessUnavailable as exc:
        pytest.skip(f"the chaos runs need member network namespaces: {exc}")
    try:
        yield members
    finally:
        members.stop()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _text(value: str | None) -> str:
    return base64.b64decode(value or "").decode()


class ReferenceWatch:
    """The ground truth: a watch of the namespace over urllib3 on the members' own
    URLs, from ``start``, with ``prev_kv`` and progress notifications; when its
    stream breaks or stays silent for 4 s it watches again, on the next member, from
    the revision after the last one delivered (answers older than that are dropped).
    Records one ``ref`` per answer with events (keys relative to the namespace)."""

    def __init__(self, run: Run, start: int) -> None:
        self.run = run
        self.root = f"/{run.namespace}"
        self.prefix = (self.root + "/").encode()
        self.next = start
        #: every revision up to this one was delivered
        self.last = start - 1
        self.reconnects = 0
        self.errors: list[str] = []
        self._pool = urllib3.PoolManager(retries=False)
        self._greenlet = gevent.spawn(self._follow)

    def stop(self) -> None:
        self._greenlet.kill()
        self._pool.clear()

    def _follow(self) -> None:
        index = 0
        while True:
            members = self.run.cluster.members
            url = members[index % len(members)].client_url
            index += 1
            try:
                self._watch(url)
            except Exception as exc:  # any failure: the next member, from self.next
                self.errors.append(f"{url}: {exc!r}")
            self.reconnects += 1
            gevent.sleep(0.05)

    def _watch(self, url: str) -> None:
        end = self.prefix[:-1] + bytes([self.prefix[-1] + 1])
        body = {
            "create_request": {
                "key": _b64(self.prefix),
                "range_end": _b64(end),
                "start_revision": str(self.next),
                "prev_kv": True,
                "progress_notify": True,
            }
        }
        response = self._pool.request(
            "POST",
            f"{url}/v3/watch",
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            preload_content=False,
            timeout=urllib3.Timeout(connect=1.0, read=4.0),
        )
        try:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")
            buffer = b""
            for chunk in response.read_chunked():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        self._message(json.loads(line))
        finally:
            response.release_conn()

    def _message(self, message: dict[str, Any]) -> None:
        if "result" not in message:
            raise RuntimeError(f"watch error {message}")
        result = message["result"]
        if result.get("canceled"):
            raise RuntimeError(f"watch canceled: {result}")
        revision = int(result.get("header", {}).get("revision", 0))
        events = result.get("events") or []
        rows = []
        for event in events:
            kv = event["kv"]
            mod = int(kv.get("mod_revision", 0))
            if mod < self.next:
                continue  # a replay of what was delivered before
            put = event.get("type", "PUT") == "PUT"
            key = _text(kv["key"])[len(self.root) :]
            prev = event.get("prev_kv")
            rows.append(
                [
                    "P" if put else "D",
                    key,
                    _text(kv.get("value")) if put else "",
                    mod,
                    int(kv.get("create_revision", 0)) if put else 0,
                    _text(prev.get("value")) if prev else None,
                ]
            )
        if rows:
            self.run.record("ref", rev=revision, events=rows)
            self.next = rows[-1][3] + 1
            self.last = rows[-1][3]
        elif not events and not result.get("created") and revision >= self.next:
            self.next = revision + 1  # a progress notification: all up to it was sent
            self.last = revision


def _final_state(run: Run) -> tuple[int, dict[str, list[Any]]]:
    read = run.client.get_prefix(f"/{run.namespace}/")
    root = len(f"/{run.namespace}")
    state = {
        kv.key.decode()[root:]: [kv.value.decode(), kv.mod_revision, kv.create_revision]
        for kv in read.kvs
    }
    return read.header.revision, state


def _resume_from(run: Run, slot: str, first: int) -> int:
    """Where a new generation of the watcher starts its ``raw-from`` stream: after the
    last event its previous generation delivered (the run's first revision at first)."""
    segs = [
        s
        for s in watchcheck.segments(run.history.records)
        if s.name == "raw-from" and s.src.split(".")[0] == slot
    ]
    if not segs:
        return first
    last = segs[-1]
    if last.end is not None and last.end.get("reason") == "compacted":
        return int(last.end["compact"])
    events = [row for a in last.answers for row in a["events"]]
    return max(last.start, events[-1][3] + 1 if events else 0)


@pytest.mark.parametrize("seed", SETTINGS.bounded_seeds(BOUNDED_SEEDS))
def test_watch_guarantees(cluster: EtcdCluster, seed: int, request: pytest.FixtureRequest) -> None:
    seeds = SETTINGS.bounded_seeds(BOUNDED_SEEDS)
    seconds = SETTINGS.seconds / len(seeds) if SETTINGS.seconds else BOUNDED_SECONDS
    with Run("watch", seed, cluster, SETTINGS, test_id=f"test_watch_guarantees[{seed}]") as run:
        run.test_module = "tests/chaos/test_watch_guarantees.py"
        run.recheck = "python -m tests.chaos.watchcheck"
        cluster.heal()
        run.record("cluster", endpoints=cluster.endpoints)
        revision, state = _final_state(run)
        first = revision + 1
        run.record("ref-start", revision=first, state=state)
        ref = ReferenceWatch(run, first)
        run.compact_limit = lambda: ref.last
        try:
            run.fleet.add(
                "writer",
                "watchwriter",
                lambda gen: [*run.base_args(0), "--seed", str(seed)],
            )
            for index, slot in enumerate(WATCHERS):
                run.fleet.add(
                    slot,
                    "watchers",
                    lambda gen, i=index, s=slot: [
                        *run.base_args(i + gen),
                        "--from",
                        str(_resume_from(run, s, first)),
                    ],
                )
            run.fleet.wait_ready(run.fleet.procs(), 30.0)
            run.execute(make_plan(seed, seconds, PROFILE))
            run.heal()
            run.wait(1.0)
            run.fleet.command("writer", "stop")
            run.history.wait_for(
                lambda: any(r["ev"] == "done" for r in run.history.of(src=_name(run, "writer"))),
                10.0,
            )
            revision, state = _final_state(run)
            run.record("final-state", revision=revision, state=state)
            run.history.wait_for(lambda: ref.last >= revision, 15.0)
            for slot in WATCHERS:
                _wait_caught_up(run, slot, revision)
            run.wait(2.5)  # idle: progress notifications on every progress stream
            for slot in WATCHERS:
                run.fleet.command(slot, "stop")
            for slot in WATCHERS:
                run.history.wait_for(
                    lambda s=slot: any(
                        r["ev"] == "done" for r in run.history.of(src=_name(run, s))
                    ),
                    10.0,
                )
        finally:
            ref.stop()
        run.record("ref-end", last=ref.last, reconnects=ref.reconnects, errors=ref.errors[-20:])
        result = watchcheck.check(run.history.records)
        line = _summary(run, result, ref)
        SUMMARIES.append(line)
        print(line)
        run.verdict(result.violations + run.check_alive())


def _name(run: Run, slot: str) -> str:
    proc = run.fleet.current(slot)
    return proc.name if proc is not None else ""


def _wait_caught_up(run: Run, slot: str, revision: int, timeout: float = 15.0) -> None:
    """Wait until every stream of the live watcher delivered up to ``revision`` (the
    stream with progress notifications), its hub listener and snapshots reflect it."""
    src = _name(run, slot)

    def caught_up() -> bool:
        last: dict[str, int] = {}
        for r in run.history.of(src=src):
            if r["ev"] in ("wresp", "wsnap"):
                name = r["sid"].split("#")[0]
                last[name] = max(last.get(name, 0), int(r["rev"]))
        names = ("raw-prefix-progress", "raw-quiet-progress", "hub-prefix", "tracker", "config")
        return all(last.get(n, 0) >= revision for n in names)

    started = time.monotonic()
    run.history.wait_for(caught_up, timeout)
    run.record("caught-up", proc=src, took=time.monotonic() - started, ok=caught_up())


def _summary(run: Run, result: watchcheck.Result, ref: ReferenceWatch) -> str:
    c = result.counts
    last: dict[str, int] = {}  # per process: its connector's watch restarts
    for r in run.history.records:
        if r["ev"] == "wstats":
            last[r["src"]] = int(r.get("watch_restarts", 0))
    restarts = sum(last.values())
    faults = ", ".join(f"{k} {v}" for k, v in sorted(run.counts.items())) or "none"
    release = run.cluster.release.name if run.cluster.release else "etcd ?"
    return (
        f"watch seed {run.seed} ({release}): {c.get('streams', 0)} streams "
        f"({', '.join(f'{k[8:]} {v}' for k, v in sorted(c.items()) if k.startswith('streams-'))}), "
        f"{c.get('events', 0)} events checked ({c.get('reference-events', 0)} in the "
        f"reference), {c.get('snapshots', 0)} snapshots, {c.get('progress', 0)} progress "
        f"notifications, {c.get('restarts', 0)} stream restarts by the caller + "
        f"{restarts} by geventc's failover, {c.get('compacted', 0)} compactions told, "
        f"{c.get('resyncs', 0)} hub resyncs ({c.get('synthetic', 0)} synthetic events), "
        f"{c.get('process-resumes', 0)} process resumes, {c.get('acks', 0)} acked writes, "
        f"reference reconnects {ref.reconnects}; faults: {faults}; "
        f"{len(result.violations)} violations"
    )

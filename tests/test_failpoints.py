"""etcd's own failpoints: a member crashes before or after persisting or applying a raft
entry while a geventc client writes, and nothing acknowledged is lost.

The failpoint build is etcd 3.6.16 with its ``// gofail:`` comments rewritten by the
pinned gofail (``python tests/etcd/build.py 3.6-failpoints``; the fixture runs it, a
no-op when cached). Each case panics one member (the raft leader or a follower) at one
failpoint with ``panic`` over ``GOFAIL_HTTP`` while writers put unique keys, and checks:

- the member's process exits, with gofail's panic in its log;
- the cluster keeps serving: writes are acknowledged after the crash;
- no acknowledged put is lost (each is read back with its value, through the cluster
  and, once it caught up, from the restarted member alone); a put that raised
  ``IndeterminateWrite`` is there with its value or absent; a put that failed otherwise
  (it was never sent) is absent;
- the member restarts with its data (same member ID, ``--initial-cluster-state
  existing``) and catches up to the others' revision.

The cases are skipped only when ``go`` is absent and no failpoint build is there (as the
Go interop tests), and in the release matrix's runs of another release
(``ETCD_VERSION`` other than 3.6: the failpoint build is 3.6.16 whatever it says, so it
runs once, in the default suite). The first tests need neither: they check how the
failpoint build is chosen and how a member gets its environment.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import pytest
from chaos.harness import Run, Settings
from chaos.schedule import Profile, make_plan

from geventc import Client
from geventc.errors import EtcdError, IndeterminateWrite
from geventc.testing import EtcdCluster, EtcdServer
from geventc.testing.failpoints import FailpointError, Gofail
from geventc.testing.releases import EtcdNotFound, binary_release, find_etcd_binary, find_release

BUILD = Path(__file__).resolve().parent / "etcd" / "build.py"
#: (failpoint, which member it crashes): before/after the raft log is persisted, before
#: an entry is applied, before/after the backend commits what was applied
CASES = (
    ("raftBeforeSave", "follower"),
    ("raftAfterSave", "leader"),
    ("beforeApplyOneEntryNormal", "leader"),
    ("beforeCommit", "follower"),
    ("afterCommit", "leader"),
)
WRITERS = 6
#: the writers' client timeout: a put in flight when the leader dies waits for it (its
#: proposal is lost with the leader; etcd answers only after its own request timeout)
TIMEOUT = 2.0
#: puts invoked after the crash that must be acknowledged, and the seconds they may take
AFTER_CRASH_PUTS = 30
SERVE_WITHIN = 20.0


def fake_etcd(directory: Path, name: str, version: str) -> Path:
    path = directory / name
    path.write_text(f"#!/bin/sh\necho 'etcd Version: {version}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Stand-ins for 3.6.1, 3.6.16 and a 3.6.16 failpoint build (the newest file)."""
    fake_etcd(tmp_path, "etcd-3.6.1", "3.6.1")
    fake_etcd(tmp_path, "etcd-3.6.16", "3.6.16")
    fake_etcd(tmp_path, "etcd-3.6.16-failpoints", "3.6.16")
    fake_etcd(tmp_path, "etcd-3.6.17-failpoints", "3.6.17")
    monkeypatch.setenv("GEVENTC_ETCD_PATH", str(tmp_path))
    monkeypatch.delenv("ETCD_BIN", raising=False)
    monkeypatch.delenv("ETCD_VERSION", raising=False)
    return tmp_path


def test_a_plain_release_name_never_chooses_a_failpoint_build(builds: Path) -> None:
    assert find_release("3.6").binary == str(builds / "etcd-3.6.16")
    assert not find_release("3.6.16").failpoints


def test_a_failpoints_release_name_chooses_failpoint_builds_only(
    builds: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert find_release("3.6-failpoints").binary == str(builds / "etcd-3.6.17-failpoints")
    chosen = find_release("3.6.16-failpoints")
    assert chosen.binary == str(builds / "etcd-3.6.16-failpoints")
    assert chosen.failpoints and chosen.name == "3.6.16"
    with pytest.raises(EtcdNotFound, match=r"3\.6\.16-failpoints"):
        find_release("3.6.1-failpoints")  # the message lists what was found
    monkeypatch.setenv("ETCD_VERSION", "3.6.16-failpoints")
    assert find_etcd_binary() == str(builds / "etcd-3.6.16-failpoints")


def test_etcd_bin_without_failpoints_is_refused_for_a_failpoints_release(
    builds: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ETCD_VERSION", "3.6-failpoints")
    monkeypatch.setenv("ETCD_BIN", str(builds / "etcd-3.6.16"))
    with pytest.raises(EtcdNotFound, match=r"not ETCD_VERSION=3\.6-failpoints"):
        find_etcd_binary()
    monkeypatch.setenv("ETCD_BIN", str(builds / "etcd-3.6.16-failpoints"))
    assert find_etcd_binary() == str(builds / "etcd-3.6.16-failpoints")
    monkeypatch.setenv("ETCD_VERSION", "3.6")  # the same release, with failpoints: fine
    assert find_etcd_binary() == str(builds / "etcd-3.6.16-failpoints")


def test_member_env_is_laid_over_the_environment_without_etcd_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ETCD_NAME", "stray")
    binary = fake_etcd(tmp_path, "etcd", "3.6.16")
    cluster = EtcdCluster(2, binary=str(binary), member_env=lambda m: {"WHO": m.name})
    try:
        envs = [member.environment() for member in cluster.members]
    finally:
        cluster.stop()
    assert [env["WHO"] for env in envs] == ["m0", "m1"]
    assert not any(name.startswith("ETCD_") for env in envs for name in env)
    assert envs[0]["PATH"] == os.environ["PATH"]


def test_a_member_process_starts_and_restarts_with_its_member_env() -> None:
    with EtcdServer(fsync=False, member_env=lambda m: {"GEVENTC_TEST_WHO": m.name}) as server:
        member = server.members[0]
        assert _process_env(member.process)["GEVENTC_TEST_WHO"] == "m0"
        server.restart(member)
        assert _process_env(member.process)["GEVENTC_TEST_WHO"] == "m0"


def _process_env(process: subprocess.Popen[bytes] | None) -> dict[str, str]:
    assert process is not None
    raw = Path(f"/proc/{process.pid}/environ").read_bytes()
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {name.decode(): value.decode() for name, _, value in pairs}


def test_gofail_keeps_a_members_address_until_its_ports_change(tmp_path: Path) -> None:
    binary = fake_etcd(tmp_path, "etcd", "3.6.16")
    gofail = Gofail()
    cluster = EtcdCluster(2, binary=str(binary), member_env=gofail)
    try:
        first, second = cluster.members
        address = gofail(first)["GOFAIL_HTTP"]
        assert address.startswith(f"{first.client_host}:")
        assert gofail.address(first) == address
        assert gofail.address(second) != address
        first.client_port += 1  # moved to new ports (a neighbour took one)
        assert gofail.address(first) != address
        with pytest.raises(FailpointError, match="is the member running"):
            gofail.list(first)  # nothing listens there
    finally:
        cluster.stop()
        gofail.close()


# --- the failpoint build ------------------------------------------------------------


@pytest.fixture(scope="module")
def failpoint_binary() -> str:
    """``tests/etcd/bin/etcd-3.6.16-failpoints``, built (or copied from the cache) by
    ``tests/etcd/build.py``, then chosen by its release name as a user would."""
    wanted = os.environ.get("ETCD_VERSION", "").strip()
    if wanted and not wanted.startswith("3.6"):
        pytest.skip(
            f"ETCD_VERSION={wanted}: the failpoint build is 3.6.16 whatever the run's "
            "release; it runs in the default suite"
        )
    if shutil.which("go") is None:
        try:
            return find_release("3.6.16-failpoints").binary
        except EtcdNotFound:
            pytest.skip("the `go` command is not on PATH (needed for the failpoint build)")
    build = subprocess.run(
        [sys.executable, str(BUILD), "3.6-failpoints"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if build.returncode != 0:
        raise RuntimeError(f"the failpoint build failed:\n{build.stdout}{build.stderr}")
    release = find_release("3.6.16-failpoints")
    assert release.failpoints and binary_release(release.binary) is not None
    return release.binary


@pytest.fixture(scope="module")
def gofail() -> Iterator[Gofail]:
    hook = Gofail()
    yield hook
    hook.close()


@pytest.fixture(scope="module")
def cluster(failpoint_binary: str, gofail: Gofail) -> Iterator[EtcdCluster]:
    """3 members of the failpoint build, each serving its failpoints (``GOFAIL_HTTP``)."""
    running = EtcdCluster(3, binary=failpoint_binary, fsync=False, member_env=gofail).start()
    try:
        yield running
    finally:
        for member in running.members:  # no graceful stop (a leader hands over first)
            member.kill()
        running.stop()


def test_every_member_of_the_failpoint_build_serves_etcds_failpoints(
    cluster: EtcdCluster, gofail: Gofail
) -> None:
    for member in cluster.members:
        listed = gofail.list(member)
        assert {name for name, _ in CASES} <= set(listed), listed
        assert all(terms == "" for terms in listed.values())  # all off at start
    member = cluster.members[0]
    with pytest.raises(FailpointError, match="400"):
        gofail.enable(member, "noSuchFailpoint", "panic")
    gofail.enable(member, "raftBeforeLeaderSend", "sleep(1)")
    assert gofail.list(member)["raftBeforeLeaderSend"] == "sleep(1)"
    gofail.disable(member, "raftBeforeLeaderSend")
    assert gofail.list(member)["raftBeforeLeaderSend"] == ""


@dataclass
class Writes:
    """What the writers were told: acknowledged puts (key → value), puts that raised
    ``IndeterminateWrite``, and puts that failed otherwise (never applied)."""

    acked: dict[str, str] = field(default_factory=dict)
    indeterminate: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    #: (invoked at, key) of each acknowledged put
    acked_at: list[tuple[float, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _writer(
    client: Client, prefix: str, number: int, writes: Writes, stop: gevent.event.Event
) -> None:
    sequence = 0
    while not stop.is_set():
        key, value = f"{prefix}{number}/{sequence:06d}", f"v{number}.{sequence}"
        sequence += 1
        invoked = time.monotonic()
        try:
            client.put(key, value)
        except IndeterminateWrite as exc:
            writes.indeterminate[key] = value
            writes.errors.append(repr(exc))
        except EtcdError as exc:
            writes.failed[key] = value
            writes.errors.append(repr(exc))
        else:
            writes.acked[key] = value
            writes.acked_at.append((invoked, key))


@pytest.mark.parametrize(("failpoint", "role"), CASES, ids=[f"{f}-{r}" for f, r in CASES])
def test_a_member_crashing_at_a_failpoint_loses_no_acknowledged_write(
    cluster: EtcdCluster, gofail: Gofail, failpoint: str, role: str
) -> None:
    cluster.wait_healthy()
    victim = cluster.leader() if role == "leader" else cluster.followers()[0]
    member_id = _status(cluster, victim.client_url)["header"]["member_id"]
    prefix = f"/failpoints/{failpoint}-{role}/"
    writes = Writes()
    stop = gevent.event.Event()
    client = Client(cluster.endpoints, timeout=TIMEOUT)
    try:
        writers = [gevent.spawn(_writer, client, prefix, n, writes, stop) for n in range(WRITERS)]
        deadline = time.monotonic() + 5
        while len(writes.acked) < 20 and time.monotonic() < deadline:
            gevent.sleep(0.01)
        assert len(writes.acked) >= 20, writes.errors[:5]

        gofail.enable(victim, failpoint, "panic")
        armed = time.monotonic()
        assert gofail.wait_exit(victim, timeout=10), f"{victim.name} did not crash at {failpoint}"
        crashed = time.monotonic()
        deadline = crashed + SERVE_WITHIN
        while _served_after(writes, crashed) < AFTER_CRASH_PUTS and time.monotonic() < deadline:
            gevent.sleep(0.01)
        served = time.monotonic()
        stop.set()
        gevent.joinall(writers, timeout=15, raise_error=True)
    finally:
        stop.set()
        client.close()

    assert victim.process is not None and victim.process.returncode not in (0, None)
    log = victim.log_tail(400)
    assert f"failpoint panic: {failpoint}" in log or "failpoint panic" in log, log[-2000:]
    served_after = _served_after(writes, crashed)
    assert served_after >= AFTER_CRASH_PUTS, (
        f"{served_after} puts invoked after {victim.name} crashed were acknowledged within "
        f"{SERVE_WITHIN} s, not {AFTER_CRASH_PUTS}: {writes.errors[-5:]}"
    )

    cluster.restart(victim)  # with its data: --initial-cluster-state existing
    assert _status(cluster, victim.client_url)["header"]["member_id"] == member_id
    _check_writes(cluster, writes, prefix, None)
    revision = _caught_up(cluster, victim)
    _check_writes(cluster, writes, prefix, victim.client_url)
    print(
        f"{failpoint} on the {role} {victim.name}: crashed {crashed - armed:.2f} s after "
        f"arming, served again {served - crashed:.2f} s later; {len(writes.acked)} "
        f"acknowledged ({served_after} invoked after the crash), "
        f"{len(writes.indeterminate)} indeterminate, {len(writes.failed)} failed; "
        f"caught up at revision {revision}"
    )


def _served_after(writes: Writes, crashed: float) -> int:
    return sum(1 for invoked, _ in writes.acked_at if invoked > crashed)


def _status(cluster: EtcdCluster, endpoint: str) -> dict[str, object]:
    answer = cluster.admin("/v3/maintenance/status", {}, endpoint=endpoint)
    assert isinstance(answer, dict)
    return answer


def _caught_up(cluster: EtcdCluster, member: object, timeout: float = 15.0) -> int:
    """Wait until every member reports the same revision (nothing is written now)."""
    deadline = time.monotonic() + timeout
    while True:
        revisions = {
            int(_status(cluster, m.client_url)["header"]["revision"])  # type: ignore[index]
            for m in cluster.members
        }
        if len(revisions) == 1:
            return revisions.pop()
        if time.monotonic() > deadline:
            raise AssertionError(f"{member} did not catch up: revisions {revisions}")
        time.sleep(0.1)


def _check_writes(cluster: EtcdCluster, writes: Writes, prefix: str, only: str | None) -> None:
    """Every acknowledged put is there with its value, every indeterminate one there
    with its value or absent, every failed one absent; read through the cluster
    (linearizable), or from member ``only`` alone (serializable: its own state)."""
    with Client([only] if only else cluster.endpoints, timeout=10.0) as reader:
        stored = {
            kv.key_str: kv.value_str
            for kv in reader.get_prefix(prefix, serializable=only is not None).kvs
        }
    where = f"member {only} alone" if only else "the cluster"
    lost = sorted(key for key in writes.acked if stored.get(key) != writes.acked[key])
    assert not lost, f"{len(lost)} acknowledged puts are not on {where}: {lost[:10]}"
    wrong = sorted(
        key for key, value in writes.indeterminate.items() if key in stored and stored[key] != value
    )
    assert not wrong, f"indeterminate puts with another value on {where}: {wrong[:10]}"
    applied = sorted(key for key in writes.failed if key in stored)
    assert not applied, f"puts that failed (never sent) are on {where}: {applied[:10]}"
    unknown = set(stored) - set(writes.acked) - set(writes.indeterminate)
    assert not unknown, f"keys nobody wrote on {where}: {sorted(unknown)[:10]}"


# --- the chaos schedule's member-failpoint episodes ---------------------------------


def _failpoint_profile(**overrides: object) -> Profile:
    options: dict[str, Any] = {
        "name": "failpoint-smoke",
        "member_kinds": {"failpoint": 1.0, "failpoint-leader": 1.0},
        "failpoints": ("raftAfterSave", "beforeCommit"),
        "member_gap": (0.2, 0.3),
        "member_down": (1.5, 2.0),
    }
    options.update(overrides)
    return Profile(**options)


def test_a_failpoint_episode_names_one_of_the_profiles_failpoints() -> None:
    plan = make_plan(7, 30.0, _failpoint_profile())
    downs = [a for a in plan.actions if a.kind == "member-failpoint"]
    ups = {a.ref for a in plan.actions if a.kind == "member-restart"}
    assert len(downs) > 5 and {a.ref for a in downs} == ups
    assert {a.arg for a in downs} == {"raftAfterSave", "beforeCommit"}
    assert {a.target for a in downs} <= {"leader", "0", "1", "2"}
    assert "leader" in {a.target for a in downs}
    assert make_plan(7, 30.0, _failpoint_profile()) == plan  # the seed fixes it
    with pytest.raises(ValueError, match="no failpoints"):
        make_plan(7, 30.0, _failpoint_profile(failpoints=()))


def test_the_harness_crashes_a_member_at_a_failpoint_and_restarts_it(
    cluster: EtcdCluster, tmp_path: Path
) -> None:
    cluster.wait_healthy()
    profile = _failpoint_profile(
        member_kinds={"failpoint": 1.0}, failpoints=("raftAfterSave",), member_down=(4.0, 4.5)
    )
    plan = make_plan(1, 5.0, profile)
    assert [a.kind for a in plan.actions] == ["member-failpoint", "member-restart"]
    settings = Settings(seconds=None, seeds=(1,), directory=str(tmp_path), keep=False)
    stop = gevent.event.Event()
    writes = Writes()
    with (
        Client(cluster.endpoints, timeout=TIMEOUT) as client,
        Run("failpoint-smoke", 1, cluster, settings) as run,
    ):
        writer = gevent.spawn(_writer, client, "/failpoints/harness/", 0, writes, stop)
        try:
            run.execute(plan)
        finally:
            stop.set()
            writer.join(10)
        cluster.wait_healthy()
        records = list(run.history.records)
    armed = [r for r in records if r["ev"] == "failpoint-armed"]
    restarted = [r for r in records if r["ev"] == "member-restart"]
    assert [r["failpoint"] for r in armed] == ["raftAfterSave"]
    assert restarted and restarted[0]["crashed"] is True, (restarted, len(writes.acked))
    assert restarted[0]["member"] == armed[0]["member"]
    assert run.counts["member-failpoint"] == 1
    assert not [r for r in records if r["ev"] == "action-failed"]
    _check_writes(cluster, writes, "/failpoints/harness/", None)

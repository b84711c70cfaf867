"""The chaos properties, each over the fixed seeds (or ``GEVENTC_CHAOS_SEED``).

A run starts participant processes, executes the seed's fault plan against them and
the module's 3-member cluster, heals everything, reads etcd's final state into the
history and checks the property over the history (see README.md)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from geventc.recipes.base import STOP_TIMEOUT
from geventc.testing import EtcdCluster
from geventc.testing.faults import FaultHarnessUnavailable

from . import checks
from .harness import Run, Settings, bounded
from .schedule import Profile, make_plan

pytestmark = [pytest.mark.chaos, pytest.mark.cluster]

SETTINGS = Settings.from_env()
#: member faults (weights): one member killed, paused, cut off from its peers, behind a
#: frozen client proxy, or wiped and re-added (or the raft leader killed, paused or cut
#: off), and now and then two paused together for a moment (no quorum)
MEMBER_FAULTS = {
    "kill": 1.0,
    "pause": 1.0,
    "kill-leader": 0.5,
    "pause-leader": 0.5,
    "pause-two": 0.5,
    "blackhole": 1.0,
    "isolate": 1.0,
    "isolate-leader": 1.0,
    "replace": 0.5,
}
SEEDS = pytest.mark.parametrize("seed", SETTINGS.seeds)
#: the toolkit's properties run one seed in the bounded run (any given ones otherwise)
ONE_SEED = pytest.mark.parametrize("seed", SETTINGS.bounded_seeds(1))


@pytest.fixture(scope="module")
def cluster() -> Iterator[EtcdCluster]:
    """The chaos runs' own 3-member cluster (their faults touch no other test): each
    member in its own network namespace (so it can be cut off from its peers) behind a
    fault proxy (so its clients can be cut off from it); participants use the proxies."""
    try:
        members = EtcdCluster(3, fsync=False, netns=True, proxied=True).start()
    except FaultHarnessUnavailable as exc:
        pytest.skip(f"the chaos runs need member network namespaces: {exc}")
    try:
        yield members
    finally:
        members.stop()


def start(run: Run, cluster: EtcdCluster) -> None:
    cluster.heal()  # whatever an earlier run left behind
    run.record("cluster", endpoints=cluster.endpoints)


def start_slots(
    run: Run, slots: Sequence[str], module: str, args: Callable[[int, str, int], list[str]]
) -> None:
    """Start a process of ``module`` in each slot (and later, each one it respawns):
    ``args(index, slot, gen)`` are its arguments after the endpoints (rotated by the
    slot's index) and the run's namespace."""
    for index, slot in enumerate(slots):

        def make(gen: int, index: int = index, slot: str = slot) -> list[str]:
            return [*run.base_args(index), *args(index, slot, gen)]

        run.fleet.add(slot, module, make)


def lease_profile(name: str, slots: Sequence[str], ttl: int, **more: Any) -> Profile:
    """The faults of a property about holders of a lease: each process killed (and
    respawned), paused past the TTL (its lease expires while it still believes it
    holds) or briefly; every member fault but ``blackhole-all``, none in the last 3 s
    (see README: a raft leader change re-arms every lease)."""
    return Profile(
        name,
        slots=slots,
        slot_kinds={"kill": 1.0, "pause": 1.0, "short-pause": 0.5},
        pause_for=(ttl + 0.3, ttl + 2.0),
        member_kinds=MEMBER_FAULTS,
        member_quiet=3.0,
        **more,
    )


def read_log(run: Run, path: str) -> list[dict[str, Any]]:
    """The shared log's entries (JSON values) with the revision each was written at."""
    entries = []
    for kv in run.client.get_prefix(run.key(path)).kvs:
        value = json.loads(kv.value)
        entries.append({**value, "revision": kv.mod_revision, "key": kv.key_str})
    return entries


def told_and_done(run: Run, slots: Sequence[str], text: str, ev: str, timeout: float) -> bool:
    """Send ``text`` to the current process of each slot and wait until each recorded
    ``ev``; False after ``timeout`` seconds."""
    procs = [run.fleet.command(slot, text) for slot in slots]
    names = {proc.name for proc in procs if proc is not None}

    def done() -> bool:
        return names <= {r["src"] for r in run.history.records if r["ev"] == ev}

    return run.history.wait_for(done, timeout)


# --- property 1 ------------------------------------------------------------------------


@SEEDS
@bounded(10.0)
def test_leader_safety(
    cluster: EtcdCluster, seed: int, seconds: float, request: pytest.FixtureRequest
) -> None:
    ttl = 3
    slots = [f"e{i}" for i in range(5)]
    with Run("leader-safety", seed, cluster, SETTINGS, test_id=request.node.name) as run:
        start(run, cluster)
        run.record("params", ttl=ttl, seconds=seconds, electors=slots)

        def elector(index: int, slot: str, gen: int) -> list[str]:
            return [
                *("--path", "/election", "--identity", f"{slot}.{gen}"),
                *("--ttl", str(ttl), "--log", "/log"),
            ]

        start_slots(run, slots, "elector", elector)
        run.fleet.wait_ready(run.fleet.procs(), 30, "status")
        profile = lease_profile("leader-safety", slots, ttl, steal_every=(2.0, 5.0))
        run.election = run.key("/election/")
        run.execute(make_plan(seed, seconds, profile))
        run.heal(ready="status")
        run.wait(ttl + 2.0 + 1.5)
        run.record("observed-until")
        run.fleet.stop_all()  # no write after the log is read
        run.record("final-log", entries=read_log(run, "/log/"))
        election = run.client.get_prefix(
            run.key("/election/"), sort_target="CREATE", sort_order="ASCEND"
        )
        keys = [
            {"key": kv.key_str, "create_revision": kv.create_revision, "value": kv.value_str}
            for kv in election.kvs
        ]
        run.record("final-election", keys=keys)
        run.verdict(checks.check_leader_safety(run.history.records))


# --- property 2 ------------------------------------------------------------------------


@SEEDS
@bounded(12.0)
def test_exactly_once_in_order(
    cluster: EtcdCluster, seed: int, seconds: float, request: pytest.FixtureRequest
) -> None:
    consumers = [f"c{i}" for i in range(2)]
    count = 5000 if SETTINGS.seconds is None else max(5000, int(150 * seconds))
    with Run("exactly-once", seed, cluster, SETTINGS, test_id=request.node.name) as run:
        start(run, cluster)
        first = run.client.put(run.key("/seq/counter"), "0").header.revision
        run.record("params", count=count, seconds=seconds, consumers=consumers, writer="w")

        def consumer(index: int, slot: str, gen: int) -> list[str]:
            return ["--start-revision", str(first + 1)] if gen == 0 else []

        start_slots(run, consumers, "consumer", consumer)
        run.fleet.wait_ready(run.fleet.procs(), 30)
        rate = [] if SETTINGS.seconds is None else ["--rate", f"{count / seconds:.1f}"]

        def writer_args(gen: int) -> list[str]:
            return [*run.base_args(gen), "--count", str(count), *rate]

        writer = run.fleet.add("w", "writer", writer_args)
        run.fleet.wait_ready([writer], 30)
        profile = Profile(
            "exactly-once",
            slots=[*consumers, "w"],
            slot_kinds={"kill": 0.5, "pause": 1.0, "short-pause": 1.0},
            kinds_of={"w": {"kill": 1.0, "short-pause": 1.0}},
            pause_for=(1.5, 4.0),
            member_kinds=MEMBER_FAULTS,
            compact_every=(2.0, 5.0),
        )
        run.execute(make_plan(seed, seconds, profile))
        run.heal()

        def done() -> bool:
            return any(r["ev"] == "done" for r in run.history.records)

        if not run.history.wait_for(done, 60 + count / 100):
            run.verdict([f"the writer did not write {count} values in time"])

        def caught_up() -> bool:
            live = set(run.alive())
            last: dict[tuple[str, str], int] = {}
            for r in reversed(run.history.records):
                if r["src"] in live and r["ev"] == "es":
                    last.setdefault((r["src"], r["c"]), int(r["es"][-1][1]))
                elif r["src"] in live and r["ev"] == "snap":
                    last.setdefault((r["src"], "tracker"), r["n"])
            wanted = [(p, c) for p in live if p[0] == "c" for c in ("prefix", "key", "tracker")]
            return all(last.get(k) == count for k in wanted)

        run.history.wait_for(caught_up, 30, poll=0.5)
        run.record("observed-until")
        counter = run.client.get(run.key("/seq/counter"))
        assert counter is not None
        items = run.client.get_prefix(run.key("/seq/items/"))
        cut = len(run.key("/seq/items/"))
        run.record(
            "final-seq",
            counter=int(counter.value),
            revision=counter.mod_revision,
            items={kv.key_str[cut:]: kv.value_str for kv in items.kvs},
        )
        run.verdict(checks.check_sequence(run.history.records))


# --- property 3 ------------------------------------------------------------------------


@SEEDS
@bounded(10.0)
def test_registration_convergence(
    cluster: EtcdCluster, seed: int, seconds: float, request: pytest.FixtureRequest
) -> None:
    ttl = 3
    registrars = [f"r{i}" for i in range(5)]  # 10 instances each
    resolvers = [f"q{i}" for i in range(4)]  # 5 resolvers each
    with Run("registration", seed, cluster, SETTINGS, test_id=request.node.name) as run:
        start(run, cluster)
        run.record(
            "params",
            ttl=ttl,
            seconds=seconds,
            registrars=registrars,
            resolvers=resolvers,
            per_process=5,
        )

        def registrar(index: int, slot: str, gen: int) -> list[str]:
            addresses = ",".join(f"10.{index}.{gen}.{k + 1}:8080" for k in range(10))
            return ["--service", "svc", "--ttl", str(ttl), "--addresses", addresses]

        start_slots(run, registrars, "registrar", registrar)
        start_slots(run, resolvers, "resolvers", lambda *_: ["--service", "svc", "--count", "5"])
        run.fleet.wait_ready(run.fleet.procs(), 30)
        profile = Profile(
            "registration",
            slots=[*registrars, *resolvers],
            slot_kinds={"kill": 1.0, "pause": 1.0, "short-pause": 0.5},
            pause_for=(ttl + 0.5, ttl + 2.5),
            slot_gap=(3.0, 8.0),
            member_kinds=MEMBER_FAULTS,
        )
        run.execute(make_plan(seed, seconds, profile))
        run.heal()
        run.wait(2 * ttl + 1.5)
        run.record("observed-until")
        prefix = run.key("kitex/registry-etcd/svc/")
        stored = run.client.get_prefix(prefix, keys_only=True)
        run.record("final-registry", addresses=[kv.key_str[len(prefix) :] for kv in stored.kvs])
        run.verdict(checks.check_registrations(run.history.records))


# --- property 4 ------------------------------------------------------------------------

#: how long a recipe's stop() may take: base.STOP_TIMEOUT, + 1 s of scheduling slack
RECIPE_BOUND = STOP_TIMEOUT + 1.0
BOUNDS = {
    "elector.stop": RECIPE_BOUND,
    "ephemeral.delete": RECIPE_BOUND,
    "observer.stop": RECIPE_BOUND,
    "tracker.stop": RECIPE_BOUND,
    # stops its three keys one after the other
    "registry.close": 3 * RECIPE_BOUND,
    # no documented bound; from the code, while closing only the elector's resign and
    # the last key's revoke of the shared lease talk to etcd (each within a stop), then
    # the watches and greenlets get 2 s each to end
    "connector.close": 2 * RECIPE_BOUND + 3 * 2.0 + 1.0,
}


def rounds(last: dict[str, list[str]], count: int) -> dict[str, list[str]]:
    """Each slot's commands for ``count`` rounds (one in the bounded run): every round
    but the last ends with ``close`` and a new process."""
    return {
        slot: [*(([*(c for c in cmds if c != "close"), "close", "respawn"]) * (count - 1)), *cmds]
        for slot, cmds in last.items()
    }


def order(seed: int, slot: str) -> str:
    """The order in which a participant stops its recipes (fixed by the seed)."""
    steps = ["elector", "keys", "registry", "observer", "tracker"]
    random.Random(f"{seed}:{slot}").shuffle(steps)
    return ",".join(steps)


@SEEDS
@bounded(8.0)
def test_clean_shutdown(
    cluster: EtcdCluster, seed: int, seconds: float, request: pytest.FixtureRequest
) -> None:
    ttl = 3
    slots = [f"s{i}" for i in range(6)]
    with Run("shutdown", seed, cluster, SETTINGS, test_id=request.node.name) as run:
        start(run, cluster)
        run.record("params", ttl=ttl, seconds=seconds, bounds=BOUNDS)
        for index, slot in enumerate(slots):

            def holder(gen: int, index: int = index, slot: str = slot) -> list[str]:
                return [
                    *("--endpoints", run.endpoints_for(index)),
                    *("--namespace", f"{run.namespace}/{slot}", "--ttl", str(ttl)),
                    *("--identity", f"{slot}.{gen}", "--order", order(seed, slot)),
                ]

            run.fleet.add(slot, "shutdown", holder)
        run.fleet.wait_ready(run.fleet.procs(), 30)
        profile = Profile(
            "shutdown",
            slots=(),
            # a member is down most of the time, so most calls meet one
            member_kinds={
                "kill": 1.0,
                "pause": 1.0,
                "kill-leader": 0.5,
                "pause-leader": 0.5,
                "pause-two": 0.5,
                "blackhole": 1.0,
                "isolate": 0.5,
                "isolate-leader": 0.5,
                "replace": 0.5,
            },
            member_gap=(0.2, 0.8),
            member_down=(1.5, 3.5),
            commands=rounds(
                {
                    "s0": ["stop", "close"],
                    "s1": ["stop"],
                    "s2": ["close"],
                    "s3": ["stop", "close"],
                    "s4": ["close"],
                    "s5": ["stop"],
                },
                count=max(1, int(seconds // 10)),
            ),
        )
        run.execute(make_plan(seed, seconds, profile))
        run.heal(ready=None)
        procs = run.fleet.procs()

        def returned() -> bool:
            seen = {(r["src"], r["ev"]) for r in run.history.records}
            commanded = {(r["proc"], r["text"]) for r in run.history.of("harness", "command")}
            return all(
                (proc, "exit" if text == "close" else "stopped-recipes") in seen
                for proc, text in commanded
            )

        run.history.wait_for(returned, max(BOUNDS.values()) + 5)
        run.wait(ttl + 2.0)  # keys whose delete failed go with their lease
        run.record("observed-until")
        leftovers = {}
        for proc in procs:
            prefix = f"/{run.namespace}/{proc.slot}/"
            found = run.client.get_prefix(prefix, keys_only=True)
            leftovers[proc.name] = sorted("/" + kv.key_str[len(prefix) :] for kv in found.kvs)
        run.record("final-keys", keys=leftovers)
        run.verdict(checks.check_shutdown(run.history.records))


# --- property 5 ------------------------------------------------------------------------

#: the freshness bound is the readers' ``Liveness.stale_after`` plus this margin: the
#: liveness greenlet checks the data's age once a second (so "stale" comes up to 1 s
#: after the age passes stale_after), and 1 s for delivery and scheduling on a loaded
#: machine
FRESH_MARGIN = 2.0
#: a write acknowledged less than this long ago may still be on its way to a watch: a
#: recipe that says it is current again must show every write older than that
CATCH_UP = 1.0
#: the member faults of the freshness runs: all of the others, and every client proxy
#: frozen at once (the cluster is healthy and the writer, on the members' own URLs,
#: keeps writing: the readers must say they are stale)
FRESH_FAULTS = {**MEMBER_FAULTS, "blackhole-all": 2.5}
#: the writer's items per recipe (each value replaces the one FRESH_KEYS before it)
FRESH_KEYS = 10


def fresh_final(run: Run, keys: int) -> dict[str, Any]:
    """etcd's state of the freshness prefixes: the counter and each recipe's view."""
    counter = run.client.get(run.key(checks.FRESH_COUNTER))
    assert counter is not None
    views = {}
    for kind, path in checks.FRESH_PATHS.items():
        if kind == "resolver":
            path = f"{path}/{checks.FRESH_SERVICE}"
        prefix = run.key(path + "/")
        found = run.client.get_prefix(prefix).kvs
        values = (
            [json.loads(kv.value)["tags"]["n"] for kv in found]
            if kind == "resolver"
            else [kv.value_str for kv in found]
        )
        names = [kv.key_str[len(prefix) :] for kv in found]
        views[kind] = checks.fresh_fingerprint(zip(names, values, strict=True), kind, keys)
    return {"counter": int(counter.value), "revision": counter.mod_revision, "views": views}


@SEEDS
@bounded(12.0)
def test_freshness(
    cluster: EtcdCluster, seed: int, seconds: float, request: pytest.FixtureRequest
) -> None:
    readers = [f"f{i}" for i in range(3)]
    with Run("freshness", seed, cluster, SETTINGS, test_id=request.node.name) as run:
        start(run, cluster)
        run.client.put(run.key(checks.FRESH_COUNTER), "0")
        stale_after = run.client.liveness.stale_after  # the readers' too: same defaults
        run.record(
            "params",
            seconds=seconds,
            readers=readers,
            writer="fw",
            keys=FRESH_KEYS,
            stale_after=stale_after,
            bound=stale_after + FRESH_MARGIN,
            catch_up=CATCH_UP,
        )
        start_slots(run, readers, "fresh", lambda *_: ["--keys", str(FRESH_KEYS)])
        run.fleet.wait_ready(run.fleet.procs(), 30)

        def writer_args(gen: int) -> list[str]:
            endpoints = run.direct_endpoints_for(gen)  # not the proxies
            return [
                "--endpoints",
                endpoints,
                "--namespace",
                run.namespace,
                "--keys",
                str(FRESH_KEYS),
            ]

        run.fleet.wait_ready([run.fleet.add("fw", "freshwriter", writer_args)], 30)
        profile = Profile(
            "freshness",
            slots=["f2", "fw"],
            # one reader is killed now and then (its new process starts, maybe during a
            # fault); none is paused: a paused reader cannot say it is stale
            slot_kinds={"kill": 1.0},
            kinds_of={"fw": {"kill": 1.0, "short-pause": 1.0}},
            slot_gap=(3.0, 8.0),
            member_kinds=FRESH_FAULTS,
            opening="blackhole-all",
            all_down=(5.0, 9.0),  # past stale_after, sometimes past the bound
            compact_every=(3.0, 6.0),
        )
        run.execute(make_plan(seed, seconds, profile))
        run.heal()
        run.wait(1.0)  # the writer writes on for a moment in a healthy cluster
        if not told_and_done(run, ["fw"], "stop", "done", 30):
            run.verdict(["the writer did not stop in time"])
        run.wait(stale_after + FRESH_MARGIN + 1.5)
        run.record("observed-until")
        run.record("final-fresh", **fresh_final(run, FRESH_KEYS))
        run.verdict(checks.check_freshness(run.history.records))


# --- properties 6 and 7 ----------------------------------------------------------------


def read_ranks(run: Run, path: str, entries: Sequence[dict[str, Any]], limit: int) -> Any:
    """For each revision of an accepted write: the create revisions of the first
    ``limit`` keys (by create revision) under ``path`` at that revision, from etcd's
    history (nothing is compacted in these runs)."""
    ranks = {}
    for revision in sorted({entry["revision"] for entry in entries}):
        found = run.client.get_prefix(
            run.key(path),
            revision=revision,
            sort_target="CREATE",
            sort_order="ASCEND",
            limit=limit,
            keys_only=True,
        )
        ranks[str(revision)] = [kv.create_revision for kv in found.kvs]
    return ranks


def run_holders(
    cluster: EtcdCluster,
    seed: int,
    seconds: float,
    request: pytest.FixtureRequest,
    *,
    semaphore: int = 0,
) -> None:
    """Lock (``semaphore`` 0) or semaphore safety: holders that acquire, append fenced
    writes to a log and release, over and over, under faults; then the log, etcd's
    history of the holders' keys at each write, and :func:`checks.check_holders`."""
    ttl = 3
    prop = "semaphore" if semaphore else "lock"
    slots = [f"h{i}" for i in range(5 if semaphore else 4)]
    limit = semaphore or 1
    with Run(prop, seed, cluster, SETTINGS, test_id=request.node.name) as run:
        start(run, cluster)
        run.record("params", ttl=ttl, seconds=seconds, holders=slots, max_holders=limit)

        def holder(index: int, slot: str, gen: int) -> list[str]:
            return [
                *("--path", "/held", "--identity", f"{slot}.{gen}", "--ttl", str(ttl)),
                *("--max-holders", str(semaphore), "--log", "/log"),
            ]

        start_slots(run, slots, "holder", holder)
        run.fleet.wait_ready(run.fleet.procs(), 30)
        profile = lease_profile(prop, slots, ttl, holder_pause_every=(1.0, 3.0))
        run.execute(make_plan(seed, seconds, profile))
        run.heal()
        run.wait(ttl + 2.0 + 4.0)  # every live holder must write again in the last 4 s
        run.record("observed-until")
        run.fleet.stop_all()  # no write after the log is read
        entries = read_log(run, "/log/")
        run.record("final-log", entries=entries)
        run.record("final-ranks", ranks=read_ranks(run, "/held/", entries, limit))
        run.verdict(checks.check_holders(run.history.records))


@ONE_SEED
@bounded(10.0)
def test_lock_safety(
    cluster: EtcdCluster, seed: int, seconds: float, request: pytest.FixtureRequest
) -> None:
    run_holders(cluster, seed, seconds, request)


@ONE_SEED
@bounded(10.0)
def test_semaphore_safety(
    cluster: EtcdCluster, seed: int, seconds: float, request: pytest.FixtureRequest
) -> None:
    run_holders(cluster, seed, seconds, request, semaphore=2)


# --- property 8 ------------------------------------------------------------------------


@ONE_SEED
@bounded(10.0)
def test_counter_exactly_once(
    cluster: EtcdCluster, seed: int, seconds: float, request: pytest.FixtureRequest
) -> None:
    adders = [f"a{i}" for i in range(3)]
    with Run("counter", seed, cluster, SETTINGS, test_id=request.node.name) as run:
        start(run, cluster)
        run.record("params", seconds=seconds, adders=adders)
        start_slots(run, adders, "adder", lambda *_: ["--path", "/counter"])
        run.fleet.wait_ready(run.fleet.procs(), 30)
        profile = Profile(
            "counter",
            slots=adders,
            slot_kinds={"kill": 1.0, "pause": 0.5, "short-pause": 1.0},
            pause_for=(1.5, 4.0),
            # mostly faults that lose the answers of writes already sent (the raft
            # leader killed, paused or cut off), one after the other
            member_kinds={
                **MEMBER_FAULTS,
                "kill-leader": 2.0,
                "pause-leader": 1.5,
                "isolate-leader": 1.5,
            },
            member_gap=(0.2, 1.0),
            member_down=(1.0, 2.5),
        )
        run.execute(make_plan(seed, seconds, profile))
        run.heal()
        run.wait(1.0)  # adds in a healthy cluster too
        if not told_and_done(run, adders, "stop", "done", 30):
            run.verdict(["the adders did not stop in time"])
        run.record("observed-until")
        stored = run.client.get(run.key("/counter"))
        run.record("final-counter", value=int(stored.value) if stored is not None else 0)
        run.verdict(checks.check_counter(run.history.records))


# --- property 9 ------------------------------------------------------------------------


@ONE_SEED
@bounded(10.0)
def test_partitioner_ownership(
    cluster: EtcdCluster, seed: int, seconds: float, request: pytest.FixtureRequest
) -> None:
    ttl = 3
    settle = 3.0  # to re-balance once the dead members' leases expired
    slots = [f"p{i}" for i in range(4)]
    items = [f"i{k:02d}" for k in range(12)]
    with Run("partitioner", seed, cluster, SETTINGS, test_id=request.node.name) as run:
        start(run, cluster)
        run.record("params", ttl=ttl, seconds=seconds, members=slots, items=items, settle=settle)

        def member(index: int, slot: str, gen: int) -> list[str]:
            return [
                *("--path", "/part", "--identity", f"{slot}.{gen}", "--ttl", str(ttl)),
                *("--items", ",".join(items)),
                *(["--auto-release"] if index == len(slots) - 1 else []),  # one of them
            ]

        start_slots(run, slots, "partitioner", member)
        run.fleet.wait_ready(run.fleet.procs(), 30)
        run.execute(make_plan(seed, seconds, lease_profile("partitioner", slots, ttl)))
        run.heal()
        run.wait(ttl + settle + 1.5)
        run.record("observed-until")
        run.fleet.stop_all()
        prefix = run.key("/part/")
        found = run.client.get_prefix(prefix).kvs
        named = {kv.key_str[len(prefix) :]: kv.value_str for kv in found}
        run.record(
            "final-partition",
            owners={k[len("items/") :]: v for k, v in named.items() if k.startswith("items/")},
            members=[k[len("members/") :] for k in named if k.startswith("members/")],
        )
        run.verdict(checks.check_partitions(run.history.records))


# --- property 10 -----------------------------------------------------------------------


@ONE_SEED
@bounded(10.0)
def test_queue_delivery(
    cluster: EtcdCluster, seed: int, seconds: float, request: pytest.FixtureRequest
) -> None:
    ttl = 3
    producers, claimers, takers = ["u0"], ["k0", "k1"], ["t0"]
    consumers = [*claimers, *takers]
    with Run("queue", seed, cluster, SETTINGS, test_id=request.node.name) as run:
        start(run, cluster)
        run.record(
            "params",
            ttl=ttl,
            seconds=seconds,
            producers=producers,
            claimers=claimers,
            takers=takers,
        )

        def worker(index: int, slot: str, gen: int) -> list[str]:
            mode = "claim" if slot in claimers else "take"
            return ["--path", "/jobs", "--mode", mode, "--ttl", str(ttl)]

        start_slots(run, consumers, "worker", worker)
        start_slots(
            run,
            producers,
            "producer",
            lambda _, slot, gen: ["--path", "/jobs", "--identity", f"{slot}.{gen}"],
        )
        run.fleet.wait_ready(run.fleet.procs(), 30)
        profile = lease_profile(
            "queue",
            [*consumers, *producers],
            ttl,
            kinds_of={slot: {"kill": 1.0, "short-pause": 1.0} for slot in producers},
        )
        run.execute(make_plan(seed, seconds, profile))
        run.heal()
        run.wait(1.0)  # puts in a healthy cluster too
        if not told_and_done(run, producers, "stop", "done", 30):
            run.verdict(["the producers did not stop in time"])

        def drained() -> bool:
            return run.client.get_prefix(run.key("/jobs/"), count_only=True).count == 0

        run.history.wait_for(drained, 2 * ttl + 10.0, poll=0.5)  # claims of the dead expire
        if not told_and_done(run, consumers, "stop", "done", 30):
            run.verdict(["the consumers did not stop in time"])
        run.record("observed-until")
        left = run.client.get_prefix(run.key("/jobs/")).kvs
        run.record("final-queue", values=[kv.value_str for kv in left])
        run.verdict(checks.check_queue(run.history.records))

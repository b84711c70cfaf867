"""The chaos properties, each over the fixed seeds (or ``GEVENTC_CHAOS_SEED``).

A run starts participant processes, executes the seed's fault plan against them and
the module's 3-member cluster, heals everything, reads etcd's final state into the
history and checks the property over the history (see README.md)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from geventc.recipes.base import STOP_TIMEOUT
from geventc.testing import EtcdCluster
from geventc.testing.faults import FaultHarnessUnavailable

from . import checks
from .harness import Run, Settings
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
F = TypeVar("F", bound=Callable[..., Any])


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


def bounded(seconds: float) -> Callable[[F], F]:
    """The seconds of fault injection of a test in the bounded run."""

    def mark(test: F) -> F:
        test.chaos_seconds = seconds  # type: ignore[attr-defined]
        return test

    return mark


@pytest.fixture
def seconds(request: pytest.FixtureRequest) -> float:
    """Seconds of fault injection for this test: the bounded default, or an equal share
    of ``GEVENTC_CHAOS_SECONDS`` among the chaos tests selected."""
    default: float = request.function.chaos_seconds
    if SETTINGS.seconds is None:
        return default
    selected = [
        item
        for item in request.session.items
        if hasattr(getattr(item, "function", None), "chaos_seconds")
    ]
    return max(default, SETTINGS.seconds / max(1, len(selected)))


def start(run: Run, cluster: EtcdCluster) -> None:
    cluster.heal()  # whatever an earlier run left behind
    run.record("cluster", endpoints=cluster.endpoints)


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
        for index, slot in enumerate(slots):

            def elector(gen: int, index: int = index, slot: str = slot) -> list[str]:
                return [
                    *run.base_args(index),
                    *("--path", "/election", "--identity", f"{slot}.{gen}"),
                    *("--ttl", str(ttl), "--log", "/log"),
                ]

            run.fleet.add(slot, "elector", elector)
        run.fleet.wait_ready(run.fleet.procs(), 30, "status")
        profile = Profile(
            "leader-safety",
            slots=slots,
            slot_kinds={"kill": 1.0, "pause": 1.0, "short-pause": 0.5},
            pause_for=(ttl + 0.3, ttl + 2.0),
            member_kinds=MEMBER_FAULTS,
            member_quiet=3.0,  # see README: a raft leader change re-arms every lease
            steal_every=(2.0, 5.0),
        )
        run.election = run.key("/election/")
        run.execute(make_plan(seed, seconds, profile))
        run.heal(ready="status")
        run.wait(ttl + 2.0 + 1.5)
        run.record("observed-until")
        run.fleet.stop_all()  # no write after the log is read
        log = run.client.get_prefix(run.key("/log/"))
        entries = []
        for kv in log.kvs:
            value = json.loads(kv.value)
            entries.append({**value, "revision": kv.mod_revision, "key": kv.key_str})
        run.record("final-log", entries=entries)
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
        for index, slot in enumerate(consumers):

            def consumer(gen: int, index: int = index) -> list[str]:
                start_at = ["--start-revision", str(first + 1)] if gen == 0 else []
                return [*run.base_args(index), *start_at]

            run.fleet.add(slot, "consumer", consumer)
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
        for index, slot in enumerate(registrars):

            def registrar(gen: int, index: int = index) -> list[str]:
                addresses = ",".join(f"10.{index}.{gen}.{k + 1}:8080" for k in range(10))
                return [
                    *run.base_args(index),
                    *("--service", "svc", "--ttl", str(ttl), "--addresses", addresses),
                ]

            run.fleet.add(slot, "registrar", registrar)
        for index, slot in enumerate(resolvers):

            def resolver(gen: int, index: int = index) -> list[str]:
                return [*run.base_args(index), "--service", "svc", "--count", "5"]

            run.fleet.add(slot, "resolvers", resolver)
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
        for index, slot in enumerate(readers):

            def reader(gen: int, index: int = index) -> list[str]:
                return [*run.base_args(index), "--keys", str(FRESH_KEYS)]

            run.fleet.add(slot, "fresh", reader)
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
        writer = run.fleet.current("fw")
        assert writer is not None
        run.fleet.command("fw", "stop")

        def done() -> bool:
            return any(r["src"] == writer.name and r["ev"] == "done" for r in run.history.records)

        if not run.history.wait_for(done, 30):
            run.verdict([f"the writer {writer.name} did not stop in time"])
        run.wait(stale_after + FRESH_MARGIN + 1.5)
        run.record("observed-until")
        run.record("final-fresh", **fresh_final(run, FRESH_KEYS))
        run.verdict(checks.check_freshness(run.history.records))

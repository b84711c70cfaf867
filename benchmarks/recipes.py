"""S6 election hand-over and S7 registry → resolver latency (geventc only: etcd3gw and
python-etcd3 have neither an election nor a registry).

``election``: two candidates on two connectors of this process. ``rounds`` times the
leader resigns (``stop()``) and the clock runs until the other candidate's channel says
LEADER; the resigned identity then campaigns again with a new elector and waits as
follower. Then ``crash_rounds`` times a separate Python process (``python -m
benchmarks.worker geventc election-holder``) wins an election with ``crash_ttl``; once
this process follows it, the holder is SIGKILLed at a random point of its renewal cycle
and the clock runs until the follower leads.

``registry``: a ``Registry`` registers ``n`` instances over ``services`` services (64 at
a time); a ``Resolver`` on another connector watches every service. ``rounds`` times an
instance is registered, then deregistered; each change is timed from the call until the
resolver's watch channel shows it.

Run through the suite: ``python benchmarks/run.py``; :data:`SECTIONS` is their part of the
report.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import threading
import time
from typing import Any

from benchmarks import report
from benchmarks.common import for_each, latency_ms, median
from benchmarks.report import figure, fmt, joined, latency, one_impl, p99_target

WAIT = 30.0


class Candidate:
    """A started elector and the moments its channel said LEADER / FOLLOWER."""

    def __init__(self, conn: Any, path: str, identity: str, ttl: int) -> None:
        import gevent

        self.identity = identity
        self.elector = conn.leader_elector(path, identity, ttl=ttl)
        self.leading = threading.Event()
        self.following = threading.Event()
        self.led_at = 0.0
        gevent.spawn(self._read, self.elector.start())

    def _read(self, channel: Any) -> None:
        from geventc import ElectionEvent, ElectionStatus

        for event in channel:
            if not isinstance(event, ElectionEvent):
                continue
            if event.status is ElectionStatus.LEADER:
                self.led_at = time.perf_counter()
                self.leading.set()
            elif event.status is ElectionStatus.FOLLOWER:
                self.following.set()

    def wait(self, flag: threading.Event, what: str, timeout: float = WAIT) -> None:
        """Wait for ``flag`` or fail saying ``what`` did not happen."""
        if not flag.wait(timeout):
            raise TimeoutError(f"{self.identity} did not become {what} within {timeout}s")


def election(impl: str, params: dict[str, Any]) -> dict[str, Any]:
    """S6: clean and crash hand-overs."""
    import geventc

    conns = [geventc.connect([params["endpoint"]]) for _ in range(2)]
    try:
        clean = _clean(conns, params["prefix"] + "clean", params["rounds"], params["ttl"])
        crashes = [
            _crash(conns[0], params, f"{params['prefix']}crash{i}")
            for i in range(params["crash_rounds"])
        ]
    finally:
        for conn in conns:
            conn.close()
    ttl = params["crash_ttl"]
    return {
        "clean": latency_ms(clean),
        "crash_ttl": ttl,
        "crash_s": [round(c, 3) for c in crashes],
        "crash_over_ttl_s": [round(c - ttl, 3) for c in crashes],
    }


def _clean(conns: list[Any], path: str, rounds: int, ttl: int) -> list[float]:
    leader = Candidate(conns[0], path, "node-0", ttl)
    leader.wait(leader.leading, "leader")
    follower = Candidate(conns[1], path, "node-1", ttl)
    follower.wait(follower.following, "follower")
    seconds = []
    for round_ in range(rounds):
        started = time.perf_counter()
        leader.elector.stop()  # resign
        follower.wait(follower.leading, "leader")
        seconds.append(follower.led_at - started)
        again = Candidate(conns[round_ % 2], path, leader.identity, ttl)
        again.wait(again.following, "follower")
        leader, follower = follower, again
    leader.elector.stop()
    follower.elector.stop()
    return seconds


def _crash(conn: Any, params: dict[str, Any], path: str) -> float:
    import gevent

    ttl = params["crash_ttl"]
    holder_params = {"endpoint": params["endpoint"], "path": path, "ttl": ttl}
    command = [sys.executable, "-m", "benchmarks.worker", "geventc", "election-holder"]
    command.append(json.dumps(holder_params))
    holder = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    follower: Candidate | None = None
    try:
        with gevent.Timeout(WAIT, TimeoutError("the holder process did not lead in time")):
            line = holder.stdout.readline() if holder.stdout else ""
        if not line.startswith("LEADER"):
            raise RuntimeError(f"the holder process said {line!r}")
        follower = Candidate(conn, path, "survivor", ttl)
        follower.wait(follower.following, "follower")
        time.sleep(random.uniform(0, ttl / 3))  # anywhere in the holder's renewal cycle
        started = time.perf_counter()
        holder.kill()
        holder.wait()
        follower.wait(follower.leading, "leader", timeout=ttl + WAIT)
        return follower.led_at - started
    finally:
        holder.kill()
        holder.wait()
        if follower is not None:
            follower.elector.stop()


def election_holder(impl: str, params: dict[str, Any]) -> dict[str, Any]:
    """Lead the election at ``path``, say so on stdout, and hold it until killed."""
    import geventc

    conn = geventc.connect([params["endpoint"]])
    holder = Candidate(conn, params["path"], "holder", params["ttl"])
    holder.wait(holder.leading, "leader")
    print("LEADER", flush=True)
    while True:
        time.sleep(3600)


class Expectation:
    """What the resolver must show next: ``address`` present in (or gone from)
    ``service``; set when it does."""

    def __init__(self) -> None:
        self.service = ""
        self.address = ""
        self.present = True
        self.met = threading.Event()
        self.met_at = 0.0

    def arm(self, service: str, address: str, present: bool) -> None:
        """Wait for a new change."""
        self.service, self.address, self.present = service, address, present
        self.met.clear()

    def check(self, service: str, addresses: set[str]) -> None:
        """The resolver delivered ``addresses`` for ``service``."""
        matches = service == self.service and (self.address in addresses) == self.present
        if matches and not self.met.is_set():
            self.met_at = time.perf_counter()
            self.met.set()


def registry(impl: str, params: dict[str, Any]) -> dict[str, Any]:
    """S7: registry changes as the resolver sees them."""
    import gevent

    import geventc
    from geventc import Instance, Registry, Resolver

    prefix = params["prefix"] + "registry"
    services = [f"svc{s}" for s in range(params["services"])]
    instances = [
        Instance(services[i % len(services)], f"10.1.{i // 250}.{i % 250 + 1}:8080")
        for i in range(params["n"])
    ]
    server, client = geventc.connect([params["endpoint"]]), geventc.connect([params["endpoint"]])
    try:
        registrations = Registry(server, prefix=prefix, ttl=params["ttl"])
        wall, _, errors = for_each(instances, 64, registrations.register)
        resolver = Resolver(client, prefix=prefix)
        expected = Expectation()

        def follow(service: str) -> None:
            for snapshot in resolver.watch(service):
                expected.check(service, {i.address for i in snapshot.instances})

        for service in services:
            gevent.spawn(follow, service)
        added: list[float] = []
        removed: list[float] = []
        for round_ in range(params["rounds"]):
            extra = Instance(services[round_ % len(services)], f"10.2.0.{round_ % 250 + 1}:9000")
            for present, call, samples in (
                (True, registrations.register, added),
                (False, registrations.deregister, removed),
            ):
                expected.arm(extra.service, extra.address, present)
                started = time.perf_counter()
                call(extra)
                if not expected.met.wait(WAIT):
                    raise TimeoutError(f"the resolver did not see {extra.address} change")
                samples.append(expected.met_at - started)
        return {
            "instances": params["n"],
            "services": len(services),
            "register_s": round(wall, 3),
            "register_errors": len(errors),
            "change": latency_ms(added + removed),
            "register": latency_ms(added),
            "deregister": latency_ms(removed),
        }
    finally:
        client.close()
        server.close()  # revokes the shared lease: every registration goes at once


SCENARIOS = {"election": election, "election-holder": election_holder, "registry": registry}


# --- the report's sections ------------------------------------------------------------------


def crashes(f: report.Figures) -> list[float]:
    """Every crash hand-over of every run, in seconds."""
    return [c for run in f.runs.get("geventc", []) for c in run.get("crash_s", [])]


def crash_ttl(f: report.Figures) -> float:
    """The TTL of the crash rounds (nan without a run)."""
    runs = f.runs.get("geventc", [])
    return runs[0].get("crash_ttl", math.nan) if runs else math.nan


def worst_crash(f: report.Figures) -> float:
    """The slowest crash hand-over, in seconds (nan without one)."""
    return max(crashes(f), default=math.nan)


def hand_overs(f: report.Figures) -> list[list[str]]:
    """S6's rows: the clean hand-overs, then the crashes."""
    seconds = crashes(f)
    return [
        [
            "clean resign → new leader",
            f"{fmt(f.med('geventc', 'clean.samples'), 0)} per repetition",
            *(fmt(f.med("geventc", f"clean.{k}"), 1) for k in ("p50_ms", "p99_ms", "max_ms")),
        ],
        [
            f"SIGKILLed leader process → new leader (TTL {crash_ttl(f)} s)",
            str(len(seconds)),
            fmt(median(seconds) * 1000, 0),
            "-",
            fmt(worst_crash(f) * 1000, 0),
        ],
    ]


def relative_to_ttl(f: report.Figures) -> list[str]:
    """S6's closing line: each crash hand-over against the TTL."""
    ttl = crash_ttl(f)
    relative = ", ".join(f"{c:.2f} s (TTL {c - ttl:+.2f})" for c in crashes(f))
    return [f"Crash hand-overs, each relative to the TTL: {relative or '-'}.", ""]


SECTIONS = (
    report.Section(
        "S6",
        "S6 — election hand-over (geventc only: etcd3gw and python-etcd3 have no election)",
        [report.Table(["hand-over", "rounds", "p50 ms", "p99 ms", "max ms"], hand_overs)],
        [
            p99_target("S6", "clean hand-over p99 ≤ 100 ms", "clean"),
            report.Target(
                "S6",
                "crashed leader → new leader ≤ TTL + 1 s",
                worst_crash,
                lambda f, worst: (
                    f"worst {fmt(worst, 2)} s with TTL {crash_ttl(f)} s ({len(crashes(f))} crashes)"
                ),
                at_most=lambda f: crash_ttl(f) + 1,
            ),
        ],
        needs="geventc",
        notes=relative_to_ttl,
    ),
    report.Section(
        "S7",
        "S7 — registry → resolver (geventc only: etcd3gw and python-etcd3 have no registry)",
        [
            one_impl(
                "geventc",
                report.Column(
                    "instances / services", joined(figure("instances", 0), figure("services", 0))
                ),
                report.Column("register all s", figure("register_s", 2)),
                report.Column("any change p50 / p99 ms", latency("change")),
                report.Column("register p50 / p99 ms", latency("register")),
                report.Column("deregister p50 / p99 ms", latency("deregister")),
            )
        ],
        [p99_target("S7", "registry change → resolver p99 ≤ 100 ms", "change")],
        needs="geventc",
    ),
)

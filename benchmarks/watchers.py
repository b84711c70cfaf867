"""S5: many service trackers in one process; streams, fan-out latency, CPU and RSS.

``services`` services of ``instances`` instances each are written under the key
prefix first (Kitex-style values). Then ``n`` subscribers follow them, subscriber ``i``
following service ``i % services``:

* geventc: ``conn.service_tracker(path).start()`` and one greenlet reading each
  tracker's channel (the connector shares one watch stream per service path); then,
  in the same worker, the same number of trackers made with
  ``conn.service_tracker(path, channel=shared)``, all putting into one
  ``Channel(latest_per_source=True)`` read by one greenlet (``shared_channel`` in the
  figures: the fan-out without a greenlet woken up per tracker);
* a peer: read the service's keys, then watch its prefix (etcd3gw ``watch_prefix``,
  python-etcd3 ``add_watch_prefix_callback``, raw urllib3 a streaming ``POST
  /v3/watch``), applying each event to its own copy; that is one watch per subscriber.

Measured: time until every subscriber has its first snapshot; the watch streams and
watchers etcd counts (``etcd_debugging_mvcc_watch_stream_total`` / ``..._watcher_total``
at ``/metrics``, minus what was open before); RSS before and after (VmRSS after
``gc.collect()``); CPU at rest over ``window`` seconds; then ``rounds`` times a put to one
service (a plain urllib3 write, the same for everyone) and the time until the *last*
subscriber of that service has delivered the new value, and ``fanout_rounds`` times one
txn touching every service and the time until all ``n`` subscribers have it (and
the CPU time this process spent meanwhile, ``every_service_cpu_ms``, the median).

Run through the suite: ``python benchmarks/run.py``; :data:`SECTIONS` is its part of the
report.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from benchmarks import report
from benchmarks.common import (
    CpuWindow,
    Gateway,
    b64,
    for_each,
    instance_value,
    latency_ms,
    median,
)
from benchmarks.common import rss_kib as rss
from benchmarks.peers import Peer, WatchEvent, make_peer
from benchmarks.report import figure, fmt, joined, latency, per_impl, versus

NEW = "new"  # the instance name each round writes
START_CALLERS = 64
WAIT = 30.0  # the most a round or the start waits


class Deliveries:
    """Which subscribers have their first snapshot, and which have delivered the token
    last written to their service."""

    def __init__(self, n: int, services: int, instances: int) -> None:
        self.service_of = [i % services for i in range(n)]
        self.per_service = Counter(self.service_of)
        self.instances = instances
        self.synced = [False] * n
        self.unsynced = n
        self.all_synced = threading.Event()
        self.token = [""] * services
        self.got = [""] * n
        self.pending = 0
        self.done = threading.Event()
        self.finished_at = 0.0
        self.finished_cpu = 0.0  # process CPU time when the last subscriber had it

    def arm(self, services: list[int], token: str) -> None:
        """Expect ``token`` from every subscriber of ``services``."""
        for service in services:
            self.token[service] = token
        self.pending = sum(self.per_service[s] for s in services)
        self.done.clear()

    def deliver(self, index: int, snapshot: Mapping[str, str]) -> None:
        """Subscriber ``index`` delivered ``snapshot`` (instance name -> value)."""
        if not self.synced[index] and len(snapshot) >= self.instances:
            self.synced[index] = True
            self._one_synced()
        token = self.token[self.service_of[index]]
        if token and self.got[index] != token and snapshot.get(NEW) == token:
            self.got[index] = token
            self.pending -= 1  # inline: once per subscriber and change
            if not self.pending:
                self.finish()

    def deliver_shared(self, service: int, first: bool, snapshot: Mapping[str, str]) -> None:
        """One subscriber of ``service`` delivered ``snapshot`` (a tracker of a shared
        channel: which one is not known, but each delivers one snapshot per change, and
        ``first`` says it is one's first)."""
        if first and len(snapshot) >= self.instances:
            self._one_synced()
        token = self.token[service]
        if token and snapshot.get(NEW) == token:
            self.pending -= 1  # inline: once per subscriber and change
            if not self.pending:
                self.finish()

    def _one_synced(self) -> None:
        self.unsynced -= 1
        if not self.unsynced:
            self.all_synced.set()

    def finish(self) -> None:
        """Every subscriber armed for has delivered the token."""
        self.finished_at = time.perf_counter()
        self.finished_cpu = time.process_time()
        self.done.set()


def trackers(impl: str, params: dict[str, Any]) -> dict[str, Any]:
    """S5 for ``impl``."""
    gateway = Gateway(params["endpoint"])
    prefix = params["prefix"]
    try:
        gateway.put_many(
            {
                f"{prefix}svc{s}/inst{j}": instance_value(s * params["instances"] + j)
                for s in range(params["services"])
                for j in range(params["instances"])
            }
        )
        deliveries = Deliveries(params["n"], params["services"], params["instances"])
        if impl != "geventc":
            return _measure(params, gateway, deliveries, _PeerSubscribers(impl, params))
        figures = _measure(params, gateway, deliveries, _GeventcSubscribers(params))
        if params.get("shared", True):
            again = Deliveries(params["n"], params["services"], params["instances"])
            shared = _measure(params, gateway, again, _GeventcSubscribers(params, shared=True))
            figures["shared_channel"] = {k: shared[k] for k in SHARED_FIGURES if k in shared}
        return figures
    finally:
        gateway.delete_prefix(prefix)
        gateway.close()


#: the figures of the shared-channel run kept in ``shared_channel``
SHARED_FIGURES = (
    "synced",
    "first_state_s",
    "rss_per_subscriber_bytes",
    "cpu_us_per_delivery",
    "one_service",
    "every_service",
    "every_service_cpu_ms",
    "teardown_s",
)


class _GeventcSubscribers:
    """ServiceTrackers of one connector, each read by a greenlet (or, ``shared``, all
    putting into one channel read by one greenlet)."""

    def __init__(self, params: dict[str, Any], *, shared: bool = False) -> None:
        import geventc

        self.params = params
        self.shared = shared
        self.conn = geventc.connect([params["endpoint"]])
        self.conn.get(params["prefix"] + "warm-up")

    def start(self, deliveries: Deliveries) -> dict[str, Any]:
        """Start the trackers, wait for their first state and weigh them; then start
        one reading greenlet per tracker (or one for the shared channel)."""
        import gevent

        from geventc import Channel, ServiceSnapshot

        started = time.perf_counter()
        prefix = self.params["prefix"]
        shared: Any = Channel(latest_per_source=True) if self.shared else None
        tracked = [
            self.conn.service_tracker(f"{prefix}svc{s}", channel=shared)
            for s in deliveries.service_of
        ]
        channels = [tracker.start() for tracker in tracked]
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and not all(
            len(t.services) >= deliveries.instances for t in tracked
        ):
            gevent.sleep(0.01)
        figures = {
            "first_state_s": round(time.perf_counter() - started, 3),
            "rss_no_reader_kib": rss(),
        }

        def consume(index: int, channel: Any) -> None:
            for item in channel:
                if type(item) is ServiceSnapshot and item.error is None:
                    deliveries.deliver(index, item.services)

        def consume_shared() -> None:
            service_of = {f"{prefix}svc{s}": s for s in range(self.params["services"])}
            unseen = Counter(deliveries.service_of)  # trackers yet to deliver a first state
            tokens = deliveries.token
            for item in shared:  # Deliveries.deliver_shared inline: the loop is measured
                if type(item) is not ServiceSnapshot or item.error is not None:
                    continue
                service = service_of[item.path]
                if deliveries.unsynced and unseen[service] > 0:  # a first state
                    unseen[service] -= 1
                    deliveries.deliver_shared(service, True, item.services)
                    continue
                token = tokens[service]
                if token and item.services.get(NEW) == token:
                    deliveries.pending -= 1
                    if not deliveries.pending:
                        deliveries.finish()

        if shared is not None:
            gevent.spawn(consume_shared)
            return figures
        for index, channel in enumerate(channels):
            gevent.spawn(consume, index, channel)
        return figures

    def extra(self) -> dict[str, Any]:
        return {"client_streams": self.conn.hub.streams}

    def close(self) -> None:
        self.conn.close()


class _PeerSubscribers:
    """One read and one watch per subscriber, each keeping its own copy."""

    def __init__(self, impl: str, params: dict[str, Any]) -> None:
        self.params = params
        self.peer: Peer = make_peer(impl, params["endpoint"])
        self.peer.put(params["prefix"] + "warm-up", "")
        self.cancels: list[Callable[[], None]] = []

    def start(self, deliveries: Deliveries) -> dict[str, Any]:
        """Read and watch for every subscriber, 64 at a time."""

        def subscribe(index: int) -> None:
            path = f"{self.params['prefix']}svc{deliveries.service_of[index]}/"
            cut = len(path)
            state = {k[cut:]: v for k, v in self.peer.get_prefix(path).items()}

            def on_events(events: list[WatchEvent]) -> None:
                for is_put, key, value in events:
                    if is_put:
                        state[key[cut:]] = value
                    else:
                        state.pop(key[cut:], None)
                deliveries.deliver(index, state)

            self.cancels.append(self.peer.watch_prefix(path, on_events))
            deliveries.deliver(index, state)

        for_each(list(range(len(deliveries.service_of))), START_CALLERS, subscribe)
        return {}

    def extra(self) -> dict[str, Any]:
        return {"client_streams": len(self.cancels)}

    def close(self) -> None:
        for_each(self.cancels, START_CALLERS, lambda cancel: cancel())
        self.peer.close()


def _measure(
    params: dict[str, Any], gateway: Gateway, deliveries: Deliveries, subscribers: Any
) -> dict[str, Any]:
    n, services = params["n"], params["services"]
    streams_before, watchers_before = gateway.watch_counts()
    rss_before = rss()
    started = time.perf_counter()
    try:
        early = subscribers.start(deliveries)
        synced = deliveries.all_synced.wait(WAIT)
        sync_s = time.perf_counter() - started
        time.sleep(params["settle"])
        rss_after = rss()
        streams, watchers = gateway.watch_counts()
        cpu = CpuWindow()
        time.sleep(params["window"])
        cpu_at_rest = cpu.percent()
        cpu = CpuWindow()
        one = [
            _round(gateway, deliveries, params, [r % services], f"r{r}")
            for r in range(params["rounds"])
        ]
        cpu_per_delivery = cpu.cpu_seconds() / max(1, sum(not math.isnan(x) for x in one))
        every = list(range(services))
        fanout_cpu: list[float] = []
        fanout = [
            _round(gateway, deliveries, params, every, f"f{r}", fanout_cpu)
            for r in range(params["fanout_rounds"])
        ]
        figures = {
            "subscribers": n,
            "services": services,
            "synced": synced,
            "sync_s": round(sync_s, 3),
            "streams": streams - streams_before,
            "watchers": watchers - watchers_before,
            **subscribers.extra(),
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
            "rss_per_subscriber_bytes": round((rss_after - rss_before) * 1024 / n, 1),
            "rss_per_tracker_no_reader_bytes": round(
                (early.get("rss_no_reader_kib", math.nan) - rss_before) * 1024 / n, 1
            ),
            "first_state_s": early.get("first_state_s", round(sync_s, 3)),
            "cpu_percent_at_rest": round(cpu_at_rest, 3),
            "cpu_us_per_delivery": round(cpu_per_delivery * 1e6 / max(1, n // services), 1),
            "one_service": _latencies(one),
            "every_service": _latencies(fanout),
            "every_service_cpu_ms": round(median(fanout_cpu) * 1000, 2),
        }
    finally:
        closing = time.perf_counter()
        subscribers.close()
    figures["teardown_s"] = round(time.perf_counter() - closing, 3)
    return figures


def _round(
    gateway: Gateway,
    deliveries: Deliveries,
    params: dict[str, Any],
    services: list[int],
    token: str,
    cpu: list[float] | None = None,
) -> float:
    """Write ``token`` to ``services``; seconds until their last subscriber had it
    (and, into ``cpu``, the CPU seconds this process spent meanwhile: the write's
    request, then receiving, decoding and delivering the change)."""
    deliveries.arm(services, token)
    ops = [
        {"request_put": {"key": b64(f"{params['prefix']}svc{s}/{NEW}"), "value": b64(token)}}
        for s in services
    ]
    started, cpu_started = time.perf_counter(), time.process_time()
    gateway.post("/v3/kv/txn", {"success": ops})
    if not deliveries.done.wait(WAIT):
        return math.nan
    if cpu is not None:
        cpu.append(deliveries.finished_cpu - cpu_started)
    return deliveries.finished_at - started


def _latencies(seconds: list[float]) -> dict[str, Any]:
    delivered = [s for s in seconds if not math.isnan(s)]
    return {**latency_ms(delivered), "timeouts": len(seconds) - len(delivered)}


SCENARIOS = {"trackers": trackers}


# --- the report's section -------------------------------------------------------------------


def subscriber_count(f: report.Figures) -> str:
    """geventc's number of subscribers, for the targets."""
    return fmt(f.med("geventc", "subscribers"), 0)


def streams_measured(f: report.Figures, streams: float) -> str:
    """etcd's stream count against the prefixes watched."""
    services = f.med("geventc", "services")
    return (
        f"{fmt(streams, 0)} streams (etcd's count) for {fmt(services, 0)} prefixes, "
        f"{subscriber_count(f)} trackers"
    )


def one_service_measured(f: report.Figures, p99: float) -> str:
    """The p99 of a put to one service, and how many trackers follow that service."""
    n, services = f.med("geventc", "subscribers"), f.med("geventc", "services")
    per_service = fmt(n / services if services else math.nan, 0)
    return f"{fmt(p99, 1)} ms: put to one service → its last of {per_service} trackers"


def fanout_measured(f: report.Figures, shared: float) -> str:
    """The fan-out p99 on a shared channel, and with a reading greenlet per tracker."""
    own = f.med("geventc", "every_service.p99_ms")
    return (
        f"{fmt(shared, 1)} ms on one shared channel; {fmt(own, 1)} ms with a channel and a "
        "reading greenlet per tracker"
    )


def rss_measured(f: report.Figures, per_tracker: float) -> str:
    """RSS per tracker, without and with a reading greenlet."""
    with_reader = f.med("geventc", "rss_per_subscriber_bytes")
    return (
        f"{fmt(per_tracker, 0)} B per tracker; {fmt(with_reader, 0)} B with a reading greenlet each"
    )


def _geventc_only(*columns: report.Column, heading: str) -> report.Table:
    """A one-row table of geventc's figures under ``heading``."""
    return report.Table(
        [c.header for c in columns],
        lambda f: [[c.cell(f, "geventc") for c in columns]] if f.runs.get("geventc") else [],
        heading,
    )


SECTIONS = (
    report.Section(
        "S5",
        "S5 — service trackers",
        [
            per_impl(
                report.Column(
                    "subscribers / services",
                    joined(figure("subscribers", 0), figure("services", 0)),
                ),
                report.Column("first snapshots s", figure("first_state_s", 2)),
                report.Column("etcd watch streams", figure("streams", 0)),
                report.Column("etcd watchers", figure("watchers", 0)),
                report.Column(
                    "RSS B/tracker (no reader)", figure("rss_per_tracker_no_reader_bytes", 0)
                ),
                report.Column(
                    "RSS B/subscriber (with its reader)", figure("rss_per_subscriber_bytes", 0)
                ),
                report.Column("CPU % at rest", figure("cpu_percent_at_rest", 3)),
                report.Column("CPU µs per delivered snapshot", figure("cpu_us_per_delivery", 1)),
                report.Column("put → last of its service p50 / p99 ms", latency("one_service")),
                report.Column(
                    "txn to every service → last of all p50 / p99 ms", latency("every_service")
                ),
                report.Column(
                    "client CPU ms per such txn", figure("every_service_cpu_ms", 1, spread=True)
                ),
                report.Column("geventc ÷ this: p99", versus("one_service.p99_ms")),
            ),
            _geventc_only(
                report.Column("trackers on one shared channel", figure("subscribers", 0)),
                report.Column("first snapshots s", figure("shared_channel.first_state_s", 2)),
                report.Column(
                    "CPU µs per delivered snapshot",
                    figure("shared_channel.cpu_us_per_delivery", 1),
                ),
                report.Column(
                    "put → last of its service p50 / p99 ms", latency("shared_channel.one_service")
                ),
                report.Column(
                    "txn to every service → last of all p50 / p99 ms",
                    latency("shared_channel.every_service"),
                ),
                report.Column(
                    "client CPU ms per such txn",
                    figure("shared_channel.every_service_cpu_ms", 1, spread=True),
                ),
                report.Column("close s", figure("shared_channel.teardown_s", 2)),
                heading=(
                    "geventc, the same trackers made with `conn.service_tracker(path, "
                    "channel=shared)`: one `Channel(latest_per_source=True)` read by one "
                    "greenlet"
                ),
            ),
        ],
        [
            report.Target(
                "S5",
                "watch streams ≤ distinct watched prefixes",
                "streams",
                streams_measured,
                at_most="services",
            ),
            report.Target(
                "S5",
                "put → last subscriber's snapshot p99 ≤ 100 ms",
                "one_service.p99_ms",
                one_service_measured,
                at_most=100,
            ),
            report.Target(
                "S5",
                lambda f: (
                    f"(stricter reading) one txn to every service → last of all "
                    f"{subscriber_count(f)} subscribers ≤ 100 ms"
                ),
                "every_service.p99_ms",
                lambda f, every: f"{fmt(every, 1)} ms (max over the rounds' p99)",
                at_most=100,
            ),
            report.Target(
                "S5",
                lambda f: (
                    f"(issue 14) one txn to every service → last of all {subscriber_count(f)} "
                    "trackers p99 ≤ 50 ms (trackers on one shared channel)"
                ),
                "shared_channel.every_service.p99_ms",
                fanout_measured,
                at_most=50,
            ),
            report.Target(
                "S5",
                "< 5 KiB RSS per tracker",
                "rss_per_tracker_no_reader_bytes",
                rss_measured,
                below=5120,
            ),
        ],
    ),
)

"""S4: many ephemeral keys in one process; what they cost at rest.

geventc creates ``n`` keys with ``conn.ephemeral_key(path).create(value, ttl=ttl)``
(64 at a time, spread over ``dirs`` directories ``d0/``, ``d1/``..., each value a
Kitex-style instance of about 60 bytes): all share the connector's one lease
for that TTL, renewed every TTL/3. A peer has no shared lease: it grants one lease per
key, puts the key on it, and a refresher loop renews every lease every TTL/3 (16
refreshes at a time), which is what etcd3gw, python-etcd3 and a raw client offer.

Measured: the create time; after ``settle`` seconds, the keep-alive HTTP requests per
second over a ``window`` (geventc: every request its transport sent, from
``client.transport.requests``; a peer: its refresh calls), this process's CPU over the
window in % of a core (``time.process_time``), the RSS before and after creating the
keys (VmRSS after ``gc.collect()``), and that every key is still there after the window.

Run through the suite: ``python benchmarks/run.py``; :data:`SECTIONS` is its part of the
report.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from benchmarks import report
from benchmarks.common import CpuWindow, Gateway, for_each, instance_value, rss_kib
from benchmarks.peers import Peer, make_peer
from benchmarks.report import figure, fmt, per_impl, versus

CREATE_CALLERS = 64
REFRESH_CALLERS = 16


def ephemeral(impl: str, params: dict[str, Any]) -> dict[str, Any]:
    """S4 for ``impl``."""
    gateway = Gateway(params["endpoint"])
    try:
        if impl == "geventc":
            return _geventc(params, gateway)
        return _peer(make_peer(impl, params["endpoint"]), params, gateway)
    finally:
        gateway.delete_prefix(params["prefix"])
        gateway.close()


def _keys(params: dict[str, Any]) -> list[str]:
    return [f"{params['prefix']}d{i % params['dirs']}/k{i}" for i in range(params["n"])]


def _values(params: dict[str, Any]) -> list[str]:
    return [instance_value(i) for i in range(params["n"])]


def _figures(
    params: dict[str, Any], create: tuple[float, list[float], list[str]], rss: tuple[int, int]
) -> dict[str, Any]:
    wall, _, errors = create
    n = params["n"]
    return {
        "keys": n,
        "ttl": params["ttl"],
        "window_s": params["window"],
        "create_s": round(wall, 3),
        "create_keys_per_s": round(n / wall, 1),
        "create_errors": len(errors),
        "first_error": errors[0] if errors else "",
        "rss_before_kib": rss[0],
        "rss_after_kib": rss[1],
        "rss_per_key_bytes": round((rss[1] - rss[0]) * 1024 / n, 1),
    }


def _geventc(params: dict[str, Any], gateway: Gateway) -> dict[str, Any]:
    import geventc

    conn = geventc.connect([params["endpoint"]])
    try:
        conn.put(params["prefix"] + "warm-up", "")
        paths, values, indexes = _keys(params), _values(params), list(range(params["n"]))
        rss_before = rss_kib()  # the paths and values are not part of the keys' cost
        leases = LeaseWatcher(conn)
        keys = [conn.ephemeral_key(path) for path in paths]
        create = for_each(
            indexes,
            params.get("callers", CREATE_CALLERS),
            lambda i: keys[i].create(values[i], ttl=params["ttl"]),
        )
        time.sleep(params["settle"])
        leases.stop()  # before the window: its polling would count as CPU at rest
        figures = _figures(params, create, (rss_before, rss_kib()))
        transport, liveness = conn.client.transport, conn.client.liveness
        requests, probes = transport.requests, liveness.probes
        cpu = CpuWindow()
        time.sleep(params["window"])
        cpu_percent = cpu.percent()
        # the liveness probes (one per endpoint carrying watches, every keepalive_time)
        # are counted apart: they do not grow with the keys either (see C3)
        probed = liveness.probes - probes
        sent = transport.requests - requests - probed
        ttls = {lease.ttl for lease in conn.lease_keeper.leases()}
        leases.ids.update(lease.id for lease in conn.lease_keeper.leases())
        figures.update(_troubles(keys), lease_ids=len(leases.ids))
        figures.update(
            liveness_probes_per_s=round(probed / params["window"], 3),
            keepalive_requests=sent,
            keepalive_requests_per_s=round(sent / params["window"], 3),
            expected_requests_per_s=round(sum(3 / ttl for ttl in ttls), 3),
            cpu_percent=round(cpu_percent, 3),
            leases=len(ttls),
            watch_streams=conn.hub.streams,
            alive_after_window=gateway.count(params["prefix"] + "d"),
        )
    finally:
        started = time.perf_counter()
        conn.close()
    figures["teardown_s"] = round(time.perf_counter() - started, 3)
    return figures


def _troubles(keys: list[Any]) -> dict[str, int]:
    """What the keys' channels reported since they were created."""
    from geventc import EphemeralEvent, EphemeralStatus

    counts = {"lost_events": 0, "restored_events": 0, "error_events": 0}
    for key in keys:
        if not key.running:
            continue
        while (event := key.channel.get_nowait()) is not None:
            if not isinstance(event, EphemeralEvent):
                counts["error_events"] += 1
            elif event.status is EphemeralStatus.LOST:
                counts["lost_events"] += 1
            else:
                counts["restored_events"] += 1
    return counts


class LeaseWatcher:
    """Notes every shared lease ID the connector holds (every 50 ms, while the keys are
    created): more than one per TTL means a lease was lost and granted again."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.ids: set[int] = set()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopped.wait(0.05):
            self.ids.update(lease.id for lease in self.conn.lease_keeper.leases() if lease.id)

    def stop(self) -> None:
        """Stop looking."""
        self.stopped.set()
        self.thread.join()


class Refresher:
    """A peer's keep-alive loop: every ``period`` seconds, refresh every lease (16 at
    a time, so one cycle fits in the period)."""

    def __init__(self, peer: Peer, leases: list[Any], period: float) -> None:
        self.peer = peer
        self.leases = leases
        self.period = period
        self.sent = 0
        self.failures = 0
        self.longest_cycle = 0.0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        cycle = 0.0
        while not self.stopped.wait(max(0.0, self.period - cycle)):
            started = time.monotonic()
            for_each(list(self.leases), REFRESH_CALLERS, self._refresh)
            cycle = time.monotonic() - started
            self.longest_cycle = max(self.longest_cycle, cycle)

    def _refresh(self, lease: Any) -> None:
        try:
            self.peer.refresh(lease)
            self.sent += 1
        except Exception:
            self.failures += 1

    def stop(self) -> None:
        """End the loop (after the cycle in progress) and wait for it."""
        self.stopped.set()
        self.thread.join(timeout=30)


def _peer(peer: Peer, params: dict[str, Any], gateway: Gateway) -> dict[str, Any]:
    paths, values, indexes = _keys(params), _values(params), list(range(params["n"]))
    live: list[Any] = []  # every lease granted so far: the refresher keeps them all alive

    def create(index: int) -> None:
        lease = peer.grant(params["ttl"])
        live.append(lease)
        peer.put_leased(paths[index], values[index], lease)

    try:
        peer.put(params["prefix"] + "warm-up", "")
        rss_before = rss_kib()
        refresher = Refresher(peer, live, params["ttl"] / 3)
        create_run = for_each(indexes, params.get("callers", CREATE_CALLERS), create)
        time.sleep(params["settle"])
        figures = _figures(params, create_run, (rss_before, rss_kib()))
        sent = refresher.sent
        cpu = CpuWindow()
        time.sleep(params["window"])
        cpu_percent = cpu.percent()
        sent = refresher.sent - sent
        refresher.stop()
        figures.update(
            keepalive_requests=sent,
            keepalive_requests_per_s=round(sent / params["window"], 3),
            expected_requests_per_s=round(len(paths) * 3 / params["ttl"], 3),
            cpu_percent=round(cpu_percent, 3),
            leases=len(paths),
            refresh_failures=refresher.failures,
            longest_refresh_cycle_s=round(refresher.longest_cycle, 3),
            alive_after_window=gateway.count(params["prefix"] + "d"),
        )
        started = time.perf_counter()
        for_each(live, CREATE_CALLERS, peer.revoke)
        figures["teardown_s"] = round(time.perf_counter() - started, 3)
        return figures
    finally:
        peer.close()


SCENARIOS = {"ephemeral": ephemeral}


# --- the report's section -------------------------------------------------------------------


def with_other(
    path: str, digits: int, other: str, other_digits: int, unit: str = ""
) -> report.Cell:
    """A cell ``a (b)``: the median of ``path`` and, in brackets, of ``other``."""
    return lambda f, impl: (
        f"{fmt(f.med(impl, path), digits)} ({fmt(f.med(impl, other), other_digits)}{unit})"
    )


def per_thousand_keys(path: str, digits: int) -> report.Cell:
    """The median of ``path`` per 1,000 keys."""

    def cell(f: report.Figures, impl: str) -> str:
        keys = f.med(impl, "keys")
        return fmt(f.med(impl, path) * (1000 / keys if keys else math.nan), digits)

    return cell


def alive(f: report.Figures, impl: str) -> str:
    """The keys still there after the window, of those created."""
    return f"{fmt(f.med(impl, 'alive_after_window'), 0)}/{fmt(f.med(impl, 'keys'), 0)}"


def troubles(f: report.Figures, impl: str) -> str:
    """What went wrong in S4, summed over the runs."""
    parts = [f"{fmt(f.total(impl, 'create_errors'), 0)} create errors"]
    if impl == "geventc":
        parts.append(f"{fmt(f.total(impl, 'lost_events'), 0)} LOST events")
        regrants = f.total(impl, "lease_ids") - len(f.runs.get(impl, []))
        parts.append(f"{fmt(regrants, 0)} lease re-grants")
    else:
        parts.append(f"{fmt(f.total(impl, 'refresh_failures'), 0)} refresh failures")
    errors = [e for r in f.runs.get(impl, []) if (e := r.get("first_error"))]
    return ", ".join(parts) + (f" (first: {errors[0][:80]})" if errors else "")


def key_count(f: report.Figures) -> str:
    """geventc's number of keys, for the targets."""
    return fmt(f.med("geventc", "keys"), 0)


def requests_off_by(f: report.Figures) -> float:
    """Keep-alive requests more or fewer than expected over geventc's window (nan when a
    figure is missing)."""
    rate, expected = (
        f.med("geventc", "keepalive_requests_per_s"),
        f.med("geventc", "expected_requests_per_s"),
    )
    return abs(rate - expected) * f.med("geventc", "window_s")


def requests_measured(f: report.Figures, _off_by: float) -> str:
    """The keep-alive rate against the expected one."""
    return (
        f"{fmt(f.med('geventc', 'keepalive_requests_per_s'), 2)}/s for {key_count(f)} keys on "
        f"{fmt(f.med('geventc', 'leases'), 0)} TTL "
        f"(expected {fmt(f.med('geventc', 'expected_requests_per_s'), 2)}/s)"
    )


def cpu_measured(f: report.Figures, cpu: float) -> str:
    """geventc's CPU at rest, and how many runs lost keys."""
    losing = sum(1 for run in f.runs.get("geventc", []) if run.get("lost_events"))
    caveat = f"; {losing} of {len(f.runs['geventc'])} runs lost keys, see S4" if losing else ""
    return f"{fmt(cpu, 3)} % for {key_count(f)} keys (median{caveat})"


SECTIONS = (
    report.Section(
        "S4",
        "S4 — ephemeral keys at rest",
        [
            per_impl(
                report.Column("keys", figure("keys", 0)),
                report.Column("leases", figure("leases", 0)),
                report.Column(
                    "create s (keys/s)", with_other("create_s", 2, "create_keys_per_s", 0, "/s")
                ),
                report.Column(
                    "keep-alive req/s (expected)",
                    with_other("keepalive_requests_per_s", 2, "expected_requests_per_s", 2),
                ),
                report.Column(
                    "req/s per 1,000 keys", per_thousand_keys("keepalive_requests_per_s", 2)
                ),
                report.Column("CPU % of a core at rest", figure("cpu_percent", 2, spread=True)),
                report.Column("CPU % per 1,000 keys", per_thousand_keys("cpu_percent", 3)),
                report.Column("RSS B/key", figure("rss_per_key_bytes", 0, spread=True)),
                report.Column("geventc ÷ this: RSS/key", versus("rss_per_key_bytes")),
                report.Column("keys alive after the window", alive),
                report.Column("problems (all runs)", troubles),
            )
        ],
        [
            report.Target(
                "S4",
                "keep-alive requests/s = distinct TTLs ÷ (TTL/3), whatever the number of keys",
                requests_off_by,
                requests_measured,
                at_most=1.01,
            ),
            report.Target(
                "S4",
                "client CPU at rest < 1 % of a core for 10,000 keys",
                "cpu_percent",
                cpu_measured,
                below=1,
            ),
            report.Target(
                "S4",
                "< 2 KiB RSS per key",
                "rss_per_key_bytes",
                lambda f, rss: f"{fmt(rss, 0)} B per key ({key_count(f)} keys)",
                below=2048,
            ),
        ],
    ),
)

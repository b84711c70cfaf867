"""C1 teardown, C2 churn and C3 at rest: what letting go of many objects costs, whether
memory comes back, and what a large idle fleet costs (geventc only).

``teardown`` (C1): first ``keys`` ephemeral keys in *one* directory (created by 64
callers), then every one of them ``delete()``-d at once (one greenlet each, as a
registry's close or a process's shutdown hook does); measured: the wall time until
the last delete returned, how many etcd confirmed, the process's CPU, the gRPC calls
etcd started meanwhile by method (``grpc_server_started_total`` in ``/metrics``) and the
keys left. Then the same number of keys in one directory on a fresh connector, let go
of by ``conn.close()`` (which revokes their shared lease). Then, for each kind of
``objects`` (``trackers`` over 100 paths, ephemeral ``keys``, ``locks`` on distinct
paths), a fresh connector holding ``objects`` of them is closed: the time
``conn.close()`` takes, whether its :class:`~geventc.recipes.base.Release` is
confirmed, the warnings it logged, the calls etcd started and the keys left.

``churn`` (C2): ``rounds`` times, ``objects`` objects (split evenly over ``kinds``:
ephemeral keys, trackers, locks) are created and stopped again on one connector; after
each round the process's RSS (VmRSS after ``gc.collect()``) and what the connector
still tracks (recipes, watch streams, shared leases, greenlets, liveness subjects). RSS
stays flat when nothing leaks: the first round sets the high-water mark.

``at-rest`` (C3): ``keys`` ephemeral keys and as many trackers over ``services`` paths,
liveness checks on (the default); after ``settle`` seconds, over a ``window``: every
HTTP request the transport sent less the lease renewals (liveness probes, anything
else), per endpoint in use and per second; the calls etcd started by method; the
process's CPU in % of a core.

Run through the suite (``python benchmarks/run.py --only C1,C2,C3``) or by hand from
the repository root: ``python -m benchmarks.worker geventc teardown '{"endpoint":
"http://127.0.0.1:2379", "prefix": "/bench/x/", "keys": 2000, "objects": 1000,
"kinds": ["trackers", "keys", "locks"]}'``. :data:`SECTIONS` is their part of the
report.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from benchmarks import report
from benchmarks.common import CpuWindow, Gateway, for_each, instance_value, rss_kib
from benchmarks.report import figure, fmt, joined
from benchmarks.toolkit import served

CALLERS = 64  # concurrent creates
SERVICES = 100  # paths the trackers follow
KINDS = ("trackers", "keys", "locks")
WAIT = 60.0  # the most a round's set-up waits


# --- C1: teardown ---------------------------------------------------------------------------


def teardown(impl: str, params: dict[str, Any]) -> dict[str, Any]:
    """C1: releasing many keys of one directory; closing connectors with many objects."""
    gateway = Gateway(params["endpoint"])
    prefix = params["prefix"]
    try:
        figures: dict[str, Any] = {"keys": params["keys"], "objects": params["objects"]}
        figures["release_all"] = _release_all(params, gateway, f"{prefix}release/dir/")
        figures["close_keys_one_dir"] = _close_with(
            params, gateway, "keys", params["keys"], f"{prefix}close/dir/", one_dir=True
        )
        for kind in params.get("kinds", KINDS):
            figures[f"close_{kind}"] = _close_with(
                params, gateway, kind, params["objects"], f"{prefix}{kind}/"
            )
        closes = [figures[f"close_{k}"]["close_s"] for k in params.get("kinds", KINDS)]
        figures["close_s_max"] = max(closes, default=math.nan)
        return figures
    finally:
        gateway.delete_prefix(prefix)
        gateway.close()


def _connect(params: dict[str, Any]) -> Any:
    import geventc

    conn = geventc.connect([params["endpoint"]])
    conn.put(params["prefix"] + "warm-up", "")
    return conn


def _create_keys(conn: Any, paths: list[str]) -> list[Any]:
    """Ephemeral keys at ``paths``, created by 64 callers (raises the first error)."""
    keys = [conn.ephemeral_key(path) for path in paths]
    _, _, errors = for_each(
        list(range(len(keys))), CALLERS, lambda i: keys[i].create(instance_value(i), ttl=10)
    )
    if errors:
        raise RuntimeError(f"{len(errors)} creates failed, first: {errors[0]}")
    return keys


def _release_all(params: dict[str, Any], gateway: Gateway, directory: str) -> dict[str, Any]:
    """Every key of one directory deleted at once, one greenlet each."""
    import gevent

    conn = _connect(params)
    try:
        keys = _create_keys(conn, [f"{directory}k{i}" for i in range(params["keys"])])
        calls, cpu = served(gateway), CpuWindow()
        started = time.perf_counter()
        deletes = [gevent.spawn(key.delete) for key in keys]
        gevent.joinall(deletes)
        took = time.perf_counter() - started
        left = gateway.count(directory)
        deadline = time.monotonic() + WAIT
        while gateway.count(directory) and time.monotonic() < deadline:
            time.sleep(0.02)  # what was handed to the background is deleted meanwhile
        return {
            "keys": len(keys),
            "release_s": round(took, 3),
            "confirmed": sum(bool(g.value) for g in deletes),
            "keys_left": left,
            "all_gone_s": round(time.perf_counter() - started, 3),
            "cpu_s": round(cpu.cpu_seconds(), 3),
            "etcd_requests": dict(served(gateway) - calls),
            "keys_left_after_wait": gateway.count(directory),
        }
    finally:
        conn.close()


def _close_with(
    params: dict[str, Any],
    gateway: Gateway,
    kind: str,
    n: int,
    where: str,
    *,
    one_dir: bool = False,
) -> dict[str, Any]:
    """A fresh connector holding ``n`` objects of ``kind``, closed."""
    from benchmarks.liveness import Warnings  # here: it patches with gevent (done already)

    conn = _connect(params)
    held = _hold(conn, kind, n, where, one_dir=one_dir)
    logger, warnings = logging.getLogger("geventc"), Warnings()
    logger.addHandler(warnings)
    calls, cpu = served(gateway), CpuWindow()
    started = time.perf_counter()
    try:
        release = conn.close()
    finally:
        took = time.perf_counter() - started
        logger.removeHandler(warnings)
    del held
    return {
        "objects": n,
        "close_s": round(took, 3),
        "confirmed": bool(release),
        "detail": release.detail[:200],
        "warnings": warnings.count,
        "first_warning": warnings.first[0][:200] if warnings.first else "",
        "cpu_s": round(cpu.cpu_seconds(), 3),
        "etcd_requests": dict(served(gateway) - calls),
        "keys_left": gateway.count(where),
    }


def _hold(conn: Any, kind: str, n: int, where: str, *, one_dir: bool = False) -> list[Any]:
    """``n`` started objects of ``kind`` under ``where``."""
    if kind == "keys":
        paths = [f"{where}k{i}" if one_dir else f"{where}s{i % SERVICES}/k{i}" for i in range(n)]
        return _create_keys(conn, paths)
    if kind == "locks":
        locks = [conn.lock(f"{where}{i}") for i in range(n)]
        _, _, errors = for_each(locks, CALLERS, lambda lock: lock.acquire(timeout=WAIT))
        if errors:
            raise RuntimeError(f"{len(errors)} acquires failed, first: {errors[0]}")
        return locks
    if kind == "trackers":
        trackers = [conn.service_tracker(f"{where}s{i % SERVICES}") for i in range(n)]
        for tracker in trackers:
            tracker.start()
        return trackers
    raise ValueError(f"unknown kind {kind!r}")


# --- C2: churn ------------------------------------------------------------------------------


def churn(impl: str, params: dict[str, Any]) -> dict[str, Any]:
    """C2: ``rounds`` of creating and stopping ``objects`` objects; RSS after each."""
    gateway = Gateway(params["endpoint"])
    conn = _connect(params)
    kinds = params.get("kinds", KINDS)
    each = max(1, params["objects"] // len(kinds))
    try:
        rss, rounds = [rss_kib()], []
        for number in range(params["rounds"]):
            started = time.perf_counter()
            objects: list[Any] = []
            for kind in kinds:
                objects += _hold(conn, kind, each, f"{params['prefix']}r{number}/{kind}/")
            made = time.perf_counter() - started
            for_each(objects, CALLERS, lambda recipe: recipe.stop())
            del objects
            time.sleep(params.get("settle", 0.5))
            rss.append(rss_kib())
            rounds.append(
                {
                    "create_s": round(made, 2),
                    "round_s": round(time.perf_counter() - started, 2),
                    **_tracked(conn),
                }
            )
        left_tracked = _tracked(conn)
        steady = rss[2:] if len(rss) > 2 else rss[1:]
        return {
            "objects_per_round": each * len(kinds),
            "kinds": list(kinds),
            "rounds": params["rounds"],
            "rss_kib": rss,
            "rss_first_round_kib": rss[1] - rss[0] if len(rss) > 1 else math.nan,
            "rss_growth_after_first_kib": steady[-1] - steady[0] if steady else math.nan,
            "per_round": rounds,
            "left_tracked": left_tracked,
            "keys_left": gateway.count(params["prefix"] + "r"),
        }
    finally:
        conn.close()
        gateway.close()


def _tracked(conn: Any) -> dict[str, int]:
    """What the connector still tracks (all 0 once every object stopped)."""
    keeper = conn.lease_keeper
    return {
        "recipes": len(conn._recipes),
        "watch_streams": conn.hub.streams,
        "shared_leases": len(keeper.leases()),
        "greenlets": len(conn.group),
        "liveness_subjects": len(conn.client.liveness._subjects),
        "unrevoked_leases": len(keeper._unrevoked),
    }


# --- C3: at rest ----------------------------------------------------------------------------


def at_rest(impl: str, params: dict[str, Any]) -> dict[str, Any]:
    """C3: ``keys`` keys + as many trackers, liveness on; the requests and CPU at rest."""
    import gevent

    gateway = Gateway(params["endpoint"])
    conn = _connect(params)
    n, services = params["keys"], params.get("services", SERVICES)
    try:
        paths = [f"{params['prefix']}s{i % services}/k{i}" for i in range(n)]
        _create_keys(conn, paths)
        trackers = [conn.service_tracker(f"{params['prefix']}s{i % services}") for i in range(n)]
        for tracker in trackers:
            tracker.start()
        deadline = time.monotonic() + WAIT
        expected = n // services
        while time.monotonic() < deadline and any(len(t.services) < expected for t in trackers):
            gevent.sleep(0.05)
        time.sleep(params["settle"])
        transport, liveness = conn.client.transport, conn.client.liveness
        renewals = _renewals(conn)
        sent, probes, calls = transport.requests, liveness.probes, served(gateway)
        cpu = CpuWindow()
        time.sleep(params["window"])
        cpu_percent = cpu.percent()
        window = params["window"]
        sent = transport.requests - sent
        renewed = _renewals(conn) - renewals
        etcd = served(gateway) - calls
        endpoints = max(1, len({s.endpoint for s in liveness._streams} - {""}))
        beyond = sent - renewed
        return {
            "keys": n,
            "trackers": len(trackers),
            "window_s": window,
            "endpoints_in_use": endpoints,
            "watch_streams": conn.hub.streams,
            "http_requests": sent,
            "lease_renewals": renewed,
            "liveness_probes": liveness.probes - probes,
            "requests_beyond_renewals_per_s_per_endpoint": round(beyond / window / endpoints, 3),
            "etcd_requests": dict(etcd),
            "etcd_requests_beyond_renewals_per_s": round(
                (etcd.total() - etcd["LeaseKeepAlive"]) / window, 3
            ),
            "cpu_percent": round(cpu_percent, 3),
        }
    finally:
        conn.close()
        gateway.close()


def _renewals(conn: Any) -> int:
    return sum(lease.renewals for lease in conn.lease_keeper.leases())


SCENARIOS: dict[str, Callable[[str, dict[str, Any]], dict[str, Any]]] = {
    "teardown": teardown,
    "churn": churn,
    "at-rest": at_rest,
}


# --- the report's sections ------------------------------------------------------------------


def requests_cell(path: str) -> report.Cell:
    """The calls etcd started (``path`` holds them by method), as ``Method n, ...``."""

    def cell(f: report.Figures, impl: str) -> str:
        runs = f.runs.get(impl, [])
        calls: Counter[str] = Counter()
        for run in runs[:1]:
            calls.update(report.field(run, path) or {})
        return ", ".join(f"{m} {n}" for m, n in sorted(calls.items())) or "none"

    return cell


def close_row(kind: str, label: str) -> list[report.Column]:
    """The columns of one close measurement."""
    entry = f"close_{kind}"
    return [
        report.Column("connector holding", lambda f, i, label=label: label),
        report.Column("objects", figure(f"{entry}.objects", 0)),
        report.Column("close s", figure(f"{entry}.close_s", 3)),
        report.Column("confirmed", figure(f"{entry}.confirmed", 0)),
        report.Column("warnings logged", figure(f"{entry}.warnings", 0)),
        report.Column("etcd requests", requests_cell(f"{entry}.etcd_requests")),
        report.Column("keys left", figure(f"{entry}.keys_left", 0)),
    ]


def close_rows(f: report.Figures) -> list[list[str]]:
    """C1's close table: one row per kind measured."""
    runs = f.runs.get("geventc", [])
    kinds = [("keys_one_dir", "keys in one directory")]
    kinds += [(k, k) for k in KINDS if runs and f"close_{k}" in runs[0]]
    return [[c.cell(f, "geventc") for c in close_row(k, label)] for k, label in kinds]


RELEASE = report.one_impl(
    "geventc",
    report.Column("keys in one directory", figure("release_all.keys", 0)),
    report.Column("delete() all at once s", figure("release_all.release_s", 3)),
    report.Column("confirmed", figure("release_all.confirmed", 0)),
    report.Column("keys left then", figure("release_all.keys_left", 0)),
    report.Column("all keys gone s", figure("release_all.all_gone_s", 3)),
    report.Column("client CPU s", figure("release_all.cpu_s", 2)),
    report.Column("etcd requests", requests_cell("release_all.etcd_requests")),
)

CLOSES = report.Table(
    [c.header for c in close_row("keys", "keys")], close_rows, "### `conn.close()`"
)


def churn_rounds(f: report.Figures, impl: str) -> str:
    """RSS after each round, in MiB."""
    runs = f.runs.get(impl, [])
    return " / ".join(f"{kib / 1024:.1f}" for kib in runs[0]["rss_kib"]) if runs else "-"


def tracked_left(f: report.Figures, impl: str) -> str:
    """What the connector still tracked after the last round."""
    runs = f.runs.get(impl, [])
    left = runs[0].get("left_tracked", {}) if runs else {}
    return ", ".join(f"{k} {v}" for k, v in left.items()) or "-"


CHURN = report.one_impl(
    "geventc",
    report.Column("objects per round (kinds)", lambda f, i: _churn_what(f)),
    report.Column("rounds", figure("rounds", 0)),
    report.Column("RSS MiB: start / after each round", churn_rounds),
    report.Column("first round KiB", figure("rss_first_round_kib", 0)),
    report.Column("growth from round 2 to the last KiB", figure("rss_growth_after_first_kib", 0)),
    report.Column("still tracked after the last round", tracked_left),
    report.Column("keys left", figure("keys_left", 0)),
)


def _churn_what(f: report.Figures) -> str:
    runs = f.runs.get("geventc", [])
    if not runs:
        return "-"
    return f"{fmt(runs[0]['objects_per_round'], 0)} ({', '.join(runs[0]['kinds'])})"


REST = report.one_impl(
    "geventc",
    report.Column("keys / trackers", joined(figure("keys", 0), figure("trackers", 0))),
    report.Column("watch streams", figure("watch_streams", 0)),
    report.Column("window s", figure("window_s", 0)),
    report.Column(
        "HTTP requests: all / lease renewals / liveness probes",
        joined(
            figure("http_requests", 0), figure("lease_renewals", 0), figure("liveness_probes", 0)
        ),
    ),
    report.Column(
        "beyond renewals req/s per endpoint",
        figure("requests_beyond_renewals_per_s_per_endpoint", 3),
    ),
    report.Column("etcd requests (by method)", requests_cell("etcd_requests")),
    report.Column("CPU % of a core", figure("cpu_percent", 3)),
)


def close_measured(f: report.Figures, worst: float) -> str:
    """The slowest close, and every kind's."""
    runs = f.runs.get("geventc", [])
    parts = [
        f"{k} {fmt(f.med('geventc', f'close_{k}.close_s'), 3)} s"
        for k in KINDS
        if runs and f"close_{k}" in runs[0]
    ]
    each = fmt(f.med("geventc", "objects"), 0)
    return f"{fmt(worst, 3)} s at worst ({', '.join(parts)}; {each} each)"


def rss_measured(f: report.Figures, kib: float) -> str:
    """RSS growth after the first round."""
    return f"{fmt(kib, 0)} KiB from round 2 to round {fmt(f.med('geventc', 'rounds'), 0)}"


def release_measured(f: report.Figures, took: float) -> str:
    """The all-at-once release, and the close that revokes the lease instead."""
    close = f.med("geventc", "close_keys_one_dir.close_s")
    gone = f.med("geventc", "release_all.all_gone_s")
    return (
        f"{fmt(took, 3)} s by {fmt(f.med('geventc', 'keys'), 0)} delete()s at once (all "
        f"gone after {fmt(gone, 3)} s); {fmt(close, 3)} s by conn.close() (one lease revoked)"
    )


SECTIONS = (
    report.Section(
        "C1",
        "C1 — teardown: releasing many keys, closing a connector holding many objects",
        [RELEASE, CLOSES],
        [
            report.Target(
                "C1",
                lambda f: (
                    f"releasing {fmt(f.med('geventc', 'keys'), 0)} keys of one directory < 0.5 s"
                ),
                "release_all.release_s",
                release_measured,
                below=0.5,
            ),
            report.Target(
                "C1",
                lambda f: f"conn.close() with {fmt(f.med('geventc', 'objects'), 0)} objects < 1 s",
                "close_s_max",
                close_measured,
                below=1.0,
            ),
        ],
        needs="geventc",
    ),
    report.Section(
        "C2",
        "C2 — churn: creating and stopping objects in a loop (RSS after each round)",
        [CHURN],
        [
            report.Target(
                "C2",
                "RSS flat over the rounds: < 1 MiB growth after the first round",
                "rss_growth_after_first_kib",
                rss_measured,
                below=1024,
            ),
        ],
        needs="geventc",
    ),
    report.Section(
        "C3",
        "C3 — at rest: keys and trackers with the liveness checks on",
        [REST],
        [
            report.Target(
                "C3",
                "≤ 1 request/s per endpoint beyond the lease renewals",
                "requests_beyond_renewals_per_s_per_endpoint",
                lambda f, rate: (
                    f"{fmt(rate, 3)}/s ({fmt(f.med('geventc', 'keys'), 0)} keys + "
                    f"{fmt(f.med('geventc', 'trackers'), 0)} trackers)"
                ),
                at_most=1.0,
            ),
            report.Target(
                "C3",
                "< 1 % of a core at rest",
                "cpu_percent",
                lambda f, cpu: f"{fmt(cpu, 3)} %",
                below=1.0,
            ),
        ],
        needs="geventc",
    ),
)

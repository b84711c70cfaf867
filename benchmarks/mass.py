"""M1 — mass creation: ``n`` objects of each kind created at once in one process.

For each kind (``puts``: plain coalesced puts, the yardstick; ``ephemeral``:
``conn.ephemeral_key(path).create(value, ttl)``; ``registry``: ``registry.register(
Instance(...))``; ``lock``: ``conn.lock(path).acquire()`` on distinct paths;
``semaphore``: ``conn.semaphore(path, 2).acquire()`` on distinct paths; ``queue``:
``queue.put(item)`` into one queue), a fresh connector creates ``n`` of them, one greenlet
each, all spawned at once (as a server registering what it serves at start-up does).
Measured: the wall time from the first spawn until the last create returned, the rate
against the ``puts`` of the same run (issue target: ≥ 0.5 x, and 10,000 in < 1 s), the
client CPU per object, and the HTTP requests the transport sent for them (coalescing puts
up to 127 creates in one txn). Then the objects are released (``conn.close()``), timed.

geventc only: the peers create each key with its own request (see S4). Run through the
suite: ``python benchmarks/run.py --only M1``, or by hand from the repository root:
``python -m benchmarks.worker geventc mass-create '{"endpoint": "http://127.0.0.1:2379",
"prefix": "/bench/m/", "n": 10000, "kinds": ["puts", "ephemeral"]}'``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent

from benchmarks import report
from benchmarks.common import Gateway
from benchmarks.report import figure, fmt

KINDS = ("puts", "ephemeral", "registry", "lock", "semaphore", "queue")
TTL = 10
WAIT = 60.0  # the longest one create may take


def mass_create(impl: str, params: dict[str, Any]) -> dict[str, Any]:
    """M1: every kind of ``params["kinds"]``, ``params["n"]`` objects each."""
    if impl != "geventc":
        raise ValueError("mass-create measures geventc only")
    gateway = Gateway(params["endpoint"])
    try:
        return {
            kind: create_many(params["endpoint"], f"{params['prefix']}{kind}/", kind, params["n"])
            for kind in params.get("kinds", KINDS)
        }
    finally:
        gateway.delete_prefix(params["prefix"])
        gateway.close()


def _maker(conn: Any, prefix: str, kind: str, n: int) -> Callable[[int], object]:
    """What creating object ``i`` of ``kind`` is, with everything it needs made first."""
    import geventc

    if kind == "puts":
        return lambda i: conn.put(f"{prefix}{i}", "v" * 60)
    if kind == "ephemeral":
        keys = [conn.ephemeral_key(f"{prefix}{i}") for i in range(n)]
        return lambda i: keys[i].create("v" * 60, TTL)
    if kind == "registry":
        registry = conn.registry(prefix=prefix, ttl=TTL)
        return lambda i: registry.register(
            geventc.Instance("svc", f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:8080")
        )
    if kind == "lock":
        locks = [conn.lock(f"{prefix}{i}", ttl=TTL) for i in range(n)]
        return lambda i: _held(locks[i].acquire(timeout=WAIT))
    if kind == "semaphore":
        semaphores = [conn.semaphore(f"{prefix}{i}", 2, ttl=TTL) for i in range(n)]
        return lambda i: _held(semaphores[i].acquire(timeout=WAIT))
    if kind == "queue":
        queue = conn.queue(prefix.rstrip("/"))
        return lambda i: queue.put(f"item {i}")
    raise ValueError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")


def _held(acquired: bool) -> None:
    if not acquired:
        raise TimeoutError(f"not acquired within {WAIT:.0f}s")


def create_many(endpoint: str, prefix: str, kind: str, n: int) -> dict[str, Any]:
    """``n`` objects of ``kind`` created at once on a fresh connector; then closed."""
    import geventc

    conn = geventc.connect([endpoint])
    try:
        make = _maker(conn, prefix, kind, n)
        coalescer = conn.client.coalescer
        requests, batches = conn.client.transport.requests, coalescer.batches if coalescer else 0
        cpu, started = time.process_time(), time.perf_counter()
        greenlets = [gevent.spawn(make, i) for i in range(n)]
        gevent.joinall(greenlets, timeout=WAIT + 10)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        errors = [repr(g.exception) for g in greenlets if g.ready() and not g.successful()]
        unfinished = sum(not g.ready() for g in greenlets)
        sent = conn.client.transport.requests - requests
        txns = (coalescer.batches if coalescer else 0) - batches
    finally:
        closing = time.perf_counter()
        conn.close()
        closed = time.perf_counter() - closing
    return {
        "n": n,
        "seconds": round(wall, 4),
        "per_s": round(n / wall, 1),
        "cpu_us": round(cpu / n * 1e6, 1),
        "requests": sent,
        "batches": txns,
        "close_s": round(closed, 4),
        "errors": len(errors) + unfinished,
        "first_error": errors[0] if errors else ("unfinished" if unfinished else ""),
    }


SCENARIOS = {"mass-create": mass_create}


# --- the report's section -------------------------------------------------------------------


def ratio_to_puts(kind: str) -> report.Number:
    """``kind``'s creates per second over the plain coalesced puts' in the same runs."""
    return lambda f: f.med("geventc", f"{kind}.per_s") / f.med("geventc", "puts.per_s")


def rows(f: report.Figures) -> list[list[str]]:
    """One row per kind that ran."""
    runs = f.runs.get("geventc", [])
    kinds = [k for k in KINDS if runs and k in runs[0]]
    out = []
    for kind in kinds:
        out.append(
            [
                kind,
                fmt(f.med("geventc", f"{kind}.n"), 0),
                figure(f"{kind}.seconds", 3)(f, "geventc"),
                figure(f"{kind}.per_s", 0)(f, "geventc"),
                report.times(ratio_to_puts(kind)(f)),
                figure(f"{kind}.cpu_us", 0)(f, "geventc"),
                figure(f"{kind}.requests", 0)(f, "geventc"),
                figure(f"{kind}.close_s", 3)(f, "geventc"),
                fmt(f.total("geventc", f"{kind}.errors"), 0),
            ]
        )
    return out


HEADERS = (
    "kind",
    "objects",
    "create s",
    "objects/s",
    "÷ plain puts",
    "client CPU µs/object",
    "HTTP requests",
    "close s",
    "errors",
)


def _target(kind: str) -> report.Target:
    def measured(f: report.Figures, ratio: float) -> str:
        return (
            f"{fmt(f.med('geventc', f'{kind}.n'), 0)} in "
            f"{fmt(f.med('geventc', f'{kind}.seconds'), 2)} s, x{fmt(ratio, 2)} plain puts "
            f"({fmt(f.med('geventc', f'{kind}.requests'), 0)} requests)"
        )

    return report.Target(
        "M1",
        f"{kind}: created at ≥ 0.5 x the rate of plain coalesced puts",
        ratio_to_puts(kind),
        measured,
        at_least=0.5,
    )


def _under_a_second(f: report.Figures) -> float:
    runs = f.runs.get("geventc", [])
    kinds = [k for k in KINDS[1:] if runs and k in runs[0]]
    return max((f.med("geventc", f"{k}.seconds") for k in kinds), default=float("nan"))


def _slowest(f: report.Figures, seconds: float) -> str:
    return f"slowest kind {fmt(seconds, 2)} s for {fmt(f.med('geventc', 'puts.n'), 0)} objects"


SECTIONS = (
    report.Section(
        "M1",
        "M1 — mass creation (one process, all at once)",
        [report.Table(HEADERS, rows)],
        [
            *(_target(kind) for kind in KINDS[1:]),
            report.Target(
                "M1",
                "10,000 of each kind created in < 1 s",
                _under_a_second,
                _slowest,
                below=1.0,
            ),
        ],
        needs="geventc",
    ),
)

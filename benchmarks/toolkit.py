"""T1 locks (geventc beside etcd3gw's and python-etcd3's), T2 many locks at rest and T3
the queue: what geventc's coordination toolkit costs.

``lock`` (T1, every implementation, each in its own worker process like every
scenario): first a *probe*: one client holds a lock and a second tries to wait for it
for 0.2 s, which tells whether the implementation's waiting acquire works. Then
*uncontended*: one holder (a started ``conn.lock(path, ttl=)`` for geventc,
``client.lock(name, ttl)`` for the peers) acquires and releases ``cycles`` times, after
20 cycles of warm-up; measured: cycles/s, each cycle's latency, the client's CPU, the
gRPC calls etcd started during the loop by method (``grpc_server_started_total`` in
its ``/metrics``: every gateway request is one), and, for geventc, the HTTP requests
its transport sent (``conn.client.transport.requests``) less the lease keep-alives
etcd counted meanwhile. Then *contended*: ``holders`` holders of one lock, each on its
own connector (client), in greenlets (geventc, etcd3gw) or OS threads (python-etcd3,
which is not gevent-friendly). A holder that acquires holds ``hold`` seconds and
releases; it queues again once another holder has acquired, so every release finds
``holders - 1`` waiters. Measured, ``rounds`` times after ``holders`` hand-overs of
warm-up: from the moment a holder calls ``release()`` until the next holder's
``acquire()`` returns; holds that overlapped (a correct lock has none); the calls etcd
started and the leases granted per hand-over; the leases left on etcd after the
clients closed. etcd3gw's ``acquire()`` is a single try, so its waiters try again every
10 ms, and so do python-etcd3's when its waiting acquire fails (the probe says why).

``many-locks`` (T2, geventc only: the peers' locks grant a lease per acquire and never
renew it): ``n`` locks on distinct paths, spread over the TTLs ``ttls``, acquired by 64
callers (a tenth, then the rest) and held in one process; the live greenlets before,
after the tenth and after all; after ``settle`` seconds, over a ``window`` at rest: the
leases the connector keeps (against the distinct TTLs), the lease keep-alives etcd
received per second (against ``Σ 3/TTL``), every HTTP request the transport sent, watch
streams, RSS and CPU; then how long ``conn.close()`` takes, the warnings it logs and
the lock keys left on etcd right after it.

``queue`` (T3, geventc only: the peers have no queue): see :func:`queue`.

Run through the suite: ``python benchmarks/run.py --only T1,T2,T3`` (or by hand, from
the repository root, ``python -m benchmarks.worker etcd3gw lock '{"endpoint":
"http://127.0.0.1:2379", "prefix": "/bench/x/", "ttl": 10, "cycles": 100, "holders":
4, "rounds": 20, "hold": 0.001}'``). :data:`SECTIONS` is their part of the report.
"""

from __future__ import annotations

import gc
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from benchmarks import report
from benchmarks.common import CpuWindow, Gateway, for_each, latency_ms, median, rss_kib
from benchmarks.leases import requests_off_by
from benchmarks.peers import LABELS, Etcd3gwPeer, Etcd3Peer
from benchmarks.report import figure, fmt, joined, latency, one_impl, per_impl, versus

WAIT = 30.0  # the longest one acquire may wait
POLL = 0.01  # how often a waiter retries when the implementation cannot wait
PROBE = 0.2  # how long the probe's second client waits
WARMUP = 20  # uncontended cycles before the measured ones
CALLERS = 64  # T2: concurrent acquires
STARTED = re.compile(r'^grpc_server_started_total\{.*grpc_method="(\w+)".*\} (\S+)$')


# --- what etcd served, and what the client spent --------------------------------------------


def served(gateway: Gateway) -> Counter[str]:
    """The gRPC calls etcd started so far, by method (the gateway makes one per request)."""
    response = gateway.pool.request("GET", gateway.endpoint + "/metrics", timeout=10.0)
    calls: Counter[str] = Counter()
    for line in response.data.decode().splitlines():
        if found := STARTED.match(line):
            calls[found.group(1)] += int(float(found.group(2)))
    return calls


class Meter:
    """From its creation on: the calls etcd started, the client's HTTP requests (when it
    counts them) and the CPU of this process."""

    def __init__(self, gateway: Gateway, requests: Callable[[], int | None]) -> None:
        self.gateway = gateway
        self.requests = requests
        self.calls = served(gateway)
        self.sent = requests()
        self.cpu = CpuWindow()

    def figures(self, per: int) -> dict[str, Any]:
        """The costs so far, divided by ``per`` (cycles, hand-overs, ...) where it says
        ``per``; ``http_per`` leaves out the lease keep-alives."""
        cpu = self.cpu.cpu_seconds()
        calls = served(self.gateway) - self.calls
        count = max(1, per)
        figures: dict[str, Any] = {
            "etcd_requests_per": round(calls.total() / count, 3),
            "by_method": {method: round(n / count, 3) for method, n in sorted(calls.items())},
            "leases_per": round(calls["LeaseGrant"] / count, 3),
            "keepalives": calls["LeaseKeepAlive"],
            "cpu_us_per": round(cpu * 1e6 / count, 1),
        }
        sent = self.requests()
        if sent is not None and self.sent is not None:
            figures["http_requests"] = sent - self.sent
            figures["http_per"] = round((sent - self.sent - calls["LeaseKeepAlive"]) / count, 3)
        return figures


def lease_ids(gateway: Gateway) -> set[str]:
    """Every lease etcd has now."""
    return {lease["ID"] for lease in gateway.post("/v3/lease/leases", {}).get("leases", [])}


def revoke(gateway: Gateway, ids: set[str]) -> None:
    """Revoke the leases ``ids`` (those already gone are skipped), so that the next worker
    does not pay for their expiry."""
    for_each(sorted(ids), 8, lambda lease: gateway.post("/v3/lease/revoke", {"ID": lease}))


# --- the locks under test --------------------------------------------------------------------


class Holder(Protocol):
    """One lock object: what the scenarios call."""

    def acquire(self, timeout: float) -> bool: ...

    def release(self) -> object: ...


class Locks(Protocol):
    """One client (connector) of an implementation, making its lock objects; made with
    ``(endpoint, broken)``, ``broken`` being why its waiting acquire fails ("" when it
    works; only python-etcd3 uses it)."""

    waits: bool  # whether its acquire can wait for the lock
    waiting: str  # how a contended acquire waits here

    def lock(self, name: str, ttl: int) -> Holder: ...

    def requests(self) -> int | None: ...

    def close(self) -> None: ...


class GeventcLocks:
    """A connector's ``conn.lock(path, ttl=)``, started (so it keeps its lease share
    between a release and the next acquire)."""

    waits = True
    waiting = "the shared watch of the lock's prefix"

    def __init__(self, endpoint: str, broken: str = "") -> None:
        import geventc

        self.conn = geventc.connect([endpoint])

    def lock(self, name: str, ttl: int) -> Holder:
        lock = self.conn.lock(name, ttl=ttl)
        lock.start()
        return lock

    def requests(self) -> int | None:
        return int(self.conn.client.transport.requests)

    def close(self) -> None:
        self.conn.close()


class Polled:
    """A peer's lock whose waiting is done by trying again every ``POLL`` seconds."""

    def __init__(self, lock: Any, attempt: Callable[[], bool]) -> None:
        self.lock = lock
        self.attempt = attempt

    def acquire(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.attempt():
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL)
        return True

    def release(self) -> object:
        return self.lock.release()


class PeerLocks:
    """What the peers' lock clients share: they count no HTTP requests of their own."""

    peer: Etcd3gwPeer | Etcd3Peer

    def requests(self) -> int | None:
        return None

    def close(self) -> None:
        self.peer.close()


class Etcd3gwLocks(PeerLocks):
    """etcd3gw's ``client.lock(id, ttl)``: ``acquire()`` is one txn on a new lease; it
    cannot wait."""

    waits = False
    waiting = f"trying again every {POLL * 1000:.0f} ms (acquire() is one try)"

    def __init__(self, endpoint: str, broken: str = "") -> None:
        self.peer = Etcd3gwPeer(endpoint)

    def lock(self, name: str, ttl: int) -> Holder:
        lock = self.peer.client.lock(id=name, ttl=ttl)
        return Polled(lock, lock.acquire)


class Etcd3Locks(PeerLocks):
    """python-etcd3's ``client.lock(name, ttl)``; when its waiting acquire fails
    (``broken`` says how), its waiters try once every ``POLL`` seconds instead."""

    waits = True
    peer: Etcd3Peer

    def __init__(self, endpoint: str, broken: str = "") -> None:
        self.peer = Etcd3Peer(endpoint)
        self.broken = broken
        self.waiting = (
            f"trying again every {POLL * 1000:.0f} ms (its waiting acquire fails)"
            if broken
            else "watch_once on the key, then a new try"
        )

    def lock(self, name: str, ttl: int) -> Holder:
        lock = self.peer.client.lock(name, ttl=ttl)
        return Polled(lock, lambda: etcd3_try(lock)) if self.broken else lock


def etcd3_try(lock: Any) -> bool:
    """One try of a python-etcd3 lock. Its ``acquire`` retries through tenacity with a
    wait function of tenacity's old two-argument signature, which the tenacity
    installed here calls with one: the ``TypeError`` comes right after a failed try,
    so it means the lock is held elsewhere."""
    try:
        return bool(lock.acquire(timeout=0))
    except TypeError:
        return False


MAKERS: dict[str, type[GeventcLocks | Etcd3gwLocks | Etcd3Locks]] = {
    "geventc": GeventcLocks,
    "etcd3gw": Etcd3gwLocks,
    "etcd3": Etcd3Locks,
}


def probe(make: Callable[[], Locks], name: str, ttl: int) -> str:
    """Whether a contended acquire can wait: "" when it can (it timed out or failed
    quietly), else the error it raised."""
    first, second = make(), make()
    try:
        held = first.lock(name, ttl)
        if not held.acquire(WAIT):
            return "the first holder could not acquire"
        try:
            second.lock(name, ttl).acquire(PROBE)
            return ""
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"[:200]
        finally:
            held.release()
    finally:
        first.close()
        second.close()


# --- T1: one holder, then many ---------------------------------------------------------------


def lock(impl: str, params: dict[str, Any]) -> dict[str, Any]:
    """T1 for ``impl``."""
    endpoint, prefix, ttl = params["endpoint"], params["prefix"], params["ttl"]
    gateway = Gateway(endpoint)
    before = lease_ids(gateway)
    try:
        make = MAKERS[impl]
        broken = probe(lambda: make(endpoint, ""), prefix + "probe", ttl) if make.waits else ""
        figures: dict[str, Any] = {
            "waiting_acquire": (broken or "works") if make.waits else "none: one try per call"
        }
        one = make(endpoint, broken)
        try:
            figures["uncontended"] = uncontended(one, prefix + "one", params, gateway)
        finally:
            one.close()
        holders = [make(endpoint, broken) for _ in range(params["holders"])]
        try:
            figures["waiting"] = holders[0].waiting
            figures["holders"] = len(holders)
            figures["contended"] = contended(holders, prefix + "busy", params, gateway)
        finally:
            for each in holders:
                each.close()
        left = lease_ids(gateway) - before
        figures["leases_left"] = len(left)
        revoke(gateway, left)
        return figures
    finally:
        gateway.delete_prefix(prefix)
        gateway.delete_prefix("/locks" + prefix)  # the peers' keys: /locks/ + name
        gateway.close()


def cycle(holder: Holder) -> bool:
    """Acquire and release once; False when the acquire failed."""
    if not holder.acquire(WAIT):
        return False
    holder.release()
    return True


def uncontended(
    locks: Locks, name: str, params: dict[str, Any], gateway: Gateway
) -> dict[str, Any]:
    """``cycles`` acquire + release cycles of one holder."""
    holder = locks.lock(name, params["ttl"])
    for _ in range(WARMUP):
        cycle(holder)
    cycles = params["cycles"]
    seconds: list[float] = []
    failed = 0
    meter = Meter(gateway, locks.requests)
    started = time.perf_counter()
    for _ in range(cycles):
        begun = time.perf_counter()
        failed += not cycle(holder)
        seconds.append(time.perf_counter() - begun)
    wall = time.perf_counter() - started
    return {
        "cycles": cycles,
        "ops_per_s": round(cycles / wall, 1),
        **latency_ms(seconds),
        "failed": failed,
        **meter.figures(cycles),
    }


class Baton:
    """What the holders of one lock share in this process: who holds it, when the last
    release began, and the hand-over times."""

    def __init__(self, wanted: int, budget: float) -> None:
        self.changed = threading.Condition()
        self.turns = 0
        self.holder = -1
        self.released_at = 0.0
        self.samples: list[float] = []
        self.overlaps = 0
        self.timeouts = 0
        self.errors: list[str] = []
        self.wanted = wanted
        self.deadline = time.monotonic() + budget

    @property
    def done(self) -> bool:
        """Enough hand-overs, an error, or out of time."""
        return (
            len(self.samples) >= self.wanted
            or bool(self.errors)
            or time.monotonic() > self.deadline
        )

    def took(self, who: int, at: float) -> int:
        """``who`` acquired at ``at``: note the hand-over; its turn number."""
        with self.changed:
            self.overlaps += self.holder >= 0
            if self.released_at:
                self.samples.append(at - self.released_at)
                self.released_at = 0.0
            self.holder = who
            self.turns += 1
            self.changed.notify_all()
            return self.turns

    def leaving(self) -> None:
        """The holder is about to call ``release()``."""
        with self.changed:
            self.holder = -1
            self.released_at = time.perf_counter()

    def wait_next(self, turn: int) -> None:
        """Wait until another holder acquired after ``turn`` (or the end)."""
        with self.changed:
            self.changed.wait_for(lambda: self.turns != turn or self.done, timeout=WAIT)

    def fail(self, error: Exception) -> None:
        """Note an error: the run ends."""
        with self.changed:
            self.errors.append(f"{type(error).__name__}: {error}"[:200])
            self.changed.notify_all()


def take_turns(baton: Baton, holder: Holder, who: int, hold: float) -> None:
    """One holder's loop: acquire, hold, release, wait for the next holder, again."""
    while not baton.done:
        try:
            if not holder.acquire(WAIT):
                baton.timeouts += 1
                continue
            turn = baton.took(who, time.perf_counter())
            time.sleep(hold)
            baton.leaving()
            holder.release()
        except Exception as exc:
            baton.fail(exc)
            return
        baton.wait_next(turn)


def requests_of(clients: Sequence[Locks]) -> int | None:
    """The HTTP requests the clients sent so far (None when they do not count them)."""
    counts = [client.requests() for client in clients]
    return sum(n for n in counts if n is not None) if None not in counts else None


def contended(
    clients: Sequence[Locks], name: str, params: dict[str, Any], gateway: Gateway
) -> dict[str, Any]:
    """``holders`` holders on one lock, ``rounds`` measured hand-overs."""
    warm = len(clients)
    baton = Baton(params["rounds"] + warm, params.get("budget", 60.0))
    holders = [client.lock(name, params["ttl"]) for client in clients]
    meter = Meter(gateway, lambda: requests_of(clients))
    threads = [
        threading.Thread(target=take_turns, args=(baton, h, i, params["hold"]), daemon=True)
        for i, h in enumerate(holders)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(params.get("budget", 60.0) + 2 * WAIT)
    return {
        **latency_ms(baton.samples[warm:]),
        "turns": baton.turns,
        "overlaps": baton.overlaps,
        "timeouts": baton.timeouts,
        "errors": baton.errors,
        **meter.figures(baton.turns),
    }


# --- T2: many locks held at rest --------------------------------------------------------------


def live_greenlets() -> int:
    """Greenlets started and not finished in this process."""
    from greenlet import greenlet

    return sum(1 for item in gc.get_objects() if isinstance(item, greenlet) and bool(item))


def must_acquire(holder: Holder) -> None:
    """Acquire, or raise saying it was not acquired in time."""
    if not holder.acquire(WAIT):
        raise TimeoutError(f"{holder!r} was not acquired within {WAIT:.0f}s")


def many_locks(impl: str, params: dict[str, Any]) -> dict[str, Any]:
    """T2: ``n`` locks on distinct paths held in one process; their cost at rest."""
    import geventc

    gateway = Gateway(params["endpoint"])
    conn = geventc.connect([params["endpoint"]])
    try:
        conn.put(params["prefix"] + "warm-up", "")
        figures, locks = hold_many(conn, params)
        meter = Meter(gateway, lambda: int(conn.client.transport.requests))
        time.sleep(params["window"])
        rest, window = meter.figures(1), params["window"]
        figures.update(
            window_s=window,
            cpu_percent=round(rest["cpu_us_per"] / 1e4 / window, 3),
            keepalive_requests_per_s=round(rest["keepalives"] / window, 3),
            expected_requests_per_s=round(sum(3 / ttl for ttl in set(params["ttls"])), 3),
            http_requests_per_s=round(rest["http_requests"] / window, 3),
            etcd_requests_at_rest=rest["by_method"],
            leases=len(conn.lease_keeper.leases()),
            lease_ids_on_locks=len({lock.lease.id for lock in locks if lock.lease}),
            held=sum(lock.held for lock in locks),
            watch_streams=conn.hub.streams,
        )
        figures.update(closing(conn, gateway, params["prefix"] + "locks/"))
        return figures
    finally:
        conn.close()
        gateway.delete_prefix(params["prefix"])
        gateway.close()


def hold_many(conn: Any, params: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """Acquire ``n`` locks (a tenth, then the rest, counting the live greenlets after
    each part) and wait ``settle`` seconds."""
    ttls, n = params["ttls"], params["n"]
    paths = [f"{params['prefix']}locks/{i}" for i in range(n)]
    greenlets, rss = [live_greenlets()], rss_kib()
    locks = [conn.lock(path, ttl=ttls[i % len(ttls)]) for i, path in enumerate(paths)]
    wall, errors = 0.0, list[str]()
    for part in (locks[: n // 10], locks[n // 10 :]):
        took, _, failed = for_each(part, CALLERS, must_acquire)
        wall, errors = wall + took, errors + failed
        greenlets.append(live_greenlets())
    time.sleep(params["settle"])
    figures = {
        "locks": n,
        "ttls": len(set(ttls)),
        "ttl_values": sorted(set(ttls)),
        "acquire_s": round(wall, 3),
        "acquire_per_s": round(n / wall, 1),
        "acquire_errors": len(errors),
        "first_error": errors[0] if errors else "",
        "greenlets": greenlets,
        "greenlets_before": greenlets[0],
        "greenlets_after": greenlets[-1],
        "rss_per_lock_bytes": round((rss_kib() - rss) * 1024 / n, 1),
    }
    return figures, locks


def closing(conn: Any, gateway: Gateway, keys: str) -> dict[str, Any]:
    """Close the connector holding the locks: how long it took, the warnings it
    logged (and the first), and the lock keys still on etcd right after."""
    from benchmarks.liveness import Warnings  # here: it patches with gevent (done already)

    logger, warnings = logging.getLogger("geventc"), Warnings()
    logger.addHandler(warnings)
    started = time.perf_counter()
    try:
        conn.close()
    finally:
        logger.removeHandler(warnings)
    return {
        "close_s": round(time.perf_counter() - started, 3),
        "close_warnings": warnings.count,
        "first_close_warning": warnings.first[0] if warnings.first else "",
        "keys_left_after_close": gateway.count(keys),
    }


# --- T3: the queue ---------------------------------------------------------------------------


def queue(impl: str, params: dict[str, Any]) -> dict[str, Any]:
    """T3: ``items`` items through a ``conn.queue(path)``, for each mode (``take``: at
    most once; ``claim``: claim then ack, at least once) and each number of
    ``workers``: that many producer greenlets put on one connector (each put is timed
    from its call) while that many consumer greenlets take or claim + ack on another
    connector. Measured: items/s from the first put to the last item done, the
    producers' puts/s, each consumer call's latency (and, in the JSON only, each
    item's from its put call to its take or ack returning, which counts its time in
    the queue), and the calls etcd started per item."""
    import geventc

    gateway = Gateway(params["endpoint"])
    producer, consumer = (geventc.connect([params["endpoint"]]) for _ in range(2))
    try:
        return {
            f"{mode}{workers}": pipeline(
                (producer, consumer),
                f"{params['prefix']}{mode}{workers}",
                mode,
                workers,
                params["items"],
                gateway,
            )
            for mode in MODES
            for workers in params["workers"]
        }
    finally:
        producer.close()
        consumer.close()
        gateway.delete_prefix(params["prefix"])
        gateway.delete_prefix("__claims" + params["prefix"])
        gateway.close()


MODES = ("take", "claim")
QUEUE_WARMUP = 5


def consume(sink: Any, mode: str) -> bytes:
    """Take one item, or claim one and ack it; its value."""
    if mode == "take":
        item = sink.take(WAIT)
        if item is None:
            raise TimeoutError(f"nothing to take within {WAIT:.0f}s")
        return bytes(item.value)
    claimed = sink.claim(WAIT)
    if claimed is None:
        raise TimeoutError(f"nothing to claim within {WAIT:.0f}s")
    claimed.ack()
    return bytes(claimed.value)


def pipeline(
    conns: tuple[Any, Any], path: str, mode: str, workers: int, n: int, gateway: Gateway
) -> dict[str, Any]:
    """``n`` items from ``workers`` producers on ``conns[0]`` to as many consumers on
    ``conns[1]``."""
    source, sink = conns[0].queue(path), conns[1].queue(path)
    for i in range(QUEUE_WARMUP):
        source.put(f"warm-up {i}")
        consume(sink, mode)
    put_at, done_at = [0.0] * n, [0.0] * n

    def produce(index: int) -> None:
        put_at[index] = time.perf_counter()
        source.put(str(index))

    def finish(_slot: int) -> None:
        done_at[int(consume(sink, mode))] = time.perf_counter()

    meter = Meter(gateway, lambda: sum(int(c.client.transport.requests) for c in conns))
    started = time.perf_counter()
    taken: list[tuple[float, list[float], list[str]]] = []
    consumers = threading.Thread(target=lambda: taken.append(for_each(range(n), workers, finish)))
    consumers.start()
    put_wall, _, put_errors = for_each(range(n), workers, produce)
    consumers.join()
    sink.stop()
    calls, take_errors = (taken[0][1], taken[0][2]) if taken else ([], ["unfinished"])
    errors = put_errors + take_errors
    done = [d - p for d, p in zip(done_at, put_at, strict=True) if d]
    return {
        "mode": mode,
        "items": n,
        "workers": workers,
        "items_per_s": round(len(done) / (max(done_at) - started), 1) if done else 0.0,
        "puts_per_s": round(n / put_wall, 1),
        **latency_ms(calls),
        "end_to_end": latency_ms(done),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "missing": n - len(done),
        **meter.figures(n),
    }


SCENARIOS = {"lock": lock, "many-locks": many_locks, "queue": queue}


# --- the report's sections ------------------------------------------------------------------


def methods(entry: str) -> report.Cell:
    """The calls etcd started per cycle (or hand-over), by method: ``Txn 2.00, ...``."""

    def cell(f: report.Figures, impl: str) -> str:
        names = sorted({m for run in f.runs.get(impl, []) for m in run[entry]["by_method"]})
        return ", ".join(f"{m} {fmt(f.med(impl, f'{entry}.by_method.{m}'), 2)}" for m in names)

    return cell


def text(path: str) -> report.Cell:
    """A text field of the row's first run."""
    return lambda f, impl: str(report.field(f.runs[impl][0], path) or "-")


def overlaps(f: report.Figures, impl: str) -> str:
    """Overlapping holds, timed-out acquires and errors, over every run."""
    errors = [e for run in f.runs.get(impl, []) for e in run["contended"]["errors"]]
    total = f"{fmt(f.total(impl, 'contended.overlaps'), 0)} / "
    total += f"{fmt(f.total(impl, 'contended.timeouts'), 0)} / {len(errors)}"
    return total + (f" ({errors[0][:80]})" if errors else "")


def lock_notes(f: report.Figures) -> list[str]:
    """T1's closing lines: what each probe of a waiting acquire found."""
    lines = [
        f"- {LABELS[impl]}'s waiting acquire (probe): "
        f"{f.runs[impl][0].get('waiting_acquire', '-')}."
        for impl in f.impls()
    ]
    return [*lines, ""]


def close_notes(f: report.Figures) -> list[str]:
    """T2's closing line: the first warning ``conn.close()`` logged, if any."""
    first = [w for run in f.runs.get("geventc", []) if (w := run.get("first_close_warning"))]
    if not first:
        return []
    return [f"First warning `conn.close()` logged: `{first[0][:160]}`", ""]


def requests_per_cycle(f: report.Figures, per: float) -> str:
    """geventc's HTTP requests per uncontended cycle, with the raw counts."""
    u = "uncontended"
    return (
        f"{fmt(per, 3)} per acquire + release ({fmt(f.med('geventc', f'{u}.cycles'), 0)} "
        f"cycles: {fmt(f.med('geventc', f'{u}.http_requests'), 0)} HTTP requests, "
        f"{fmt(f.med('geventc', f'{u}.keepalives'), 0)} of them lease keep-alives)"
    )


def keepalives_measured(f: report.Figures, _off_by: float) -> str:
    """T2's keep-alive rate against Σ 3/TTL, the TTLs spelled out."""
    runs = f.runs.get("geventc", [])
    terms = " + ".join(f"3/{ttl}" for ttl in runs[0]["ttl_values"]) if runs else "-"
    rate, expected = (
        fmt(f.med("geventc", name), 2)
        for name in ("keepalive_requests_per_s", "expected_requests_per_s")
    )
    return f"{rate}/s for {fmt(f.med('geventc', 'locks'), 0)} locks; {terms} = {expected}/s"


def greenlets(f: report.Figures, impl: str) -> str:
    """Live greenlets before acquiring, after a tenth of the locks and after all."""
    runs = f.runs.get(impl, [])
    parts = zip(*(run["greenlets"] for run in runs), strict=True) if runs else ()
    return " / ".join(fmt(median(part), 0) for part in parts)


UNCONTENDED = per_impl(
    report.Column("cycles/s (min-max)", figure("uncontended.ops_per_s", 0, spread=True)),
    report.Column("cycle p50 / p99 ms", latency("uncontended")),
    report.Column("etcd requests per cycle", figure("uncontended.etcd_requests_per", 2)),
    report.Column("by method", methods("uncontended")),
    report.Column("HTTP requests per cycle, keep-alives aside", figure("uncontended.http_per", 3)),
    report.Column("leases granted per cycle", figure("uncontended.leases_per", 2)),
    report.Column("client CPU µs per cycle", figure("uncontended.cpu_us_per", 0)),
    report.Column("geventc ÷ this: cycles/s", versus("uncontended.ops_per_s")),
    heading="### Uncontended: one holder acquires and releases",
)

CONTENDED = per_impl(
    report.Column("holders", figure("holders", 0)),
    report.Column("a waiter waits by", text("waiting")),
    report.Column("hand-overs", figure("contended.samples", 0)),
    report.Column(
        "release → next acquire p50 / p99 / max ms",
        joined(latency("contended"), figure("contended.max_ms")),
    ),
    report.Column("etcd requests per hand-over", figure("contended.etcd_requests_per", 1)),
    report.Column("by method", methods("contended")),
    report.Column("HTTP requests per hand-over", figure("contended.http_per", 2)),
    report.Column("leases granted per hand-over", figure("contended.leases_per", 2)),
    report.Column("leases left on etcd after close", figure("leases_left", 0)),
    report.Column("overlapping holds / timeouts / errors (all runs)", overlaps),
    report.Column("geventc ÷ this: p50", versus("contended.p50_ms")),
    heading="### Contended: holders on separate connectors hand one lock over",
)

MANY = one_impl(
    "geventc",
    report.Column("locks / TTLs", joined(figure("locks", 0), figure("ttls", 0))),
    report.Column("leases kept", figure("leases", 0)),
    report.Column(
        "acquire all s (locks/s)", joined(figure("acquire_s", 2), figure("acquire_per_s", 0))
    ),
    report.Column(
        "keep-alive req/s (expected)",
        joined(figure("keepalive_requests_per_s", 2), figure("expected_requests_per_s", 2)),
    ),
    report.Column("all HTTP req/s at rest", figure("http_requests_per_s", 2)),
    report.Column("live greenlets: before / a tenth held / all held", greenlets),
    report.Column("watch streams", figure("watch_streams", 0)),
    report.Column("RSS B/lock", figure("rss_per_lock_bytes", 0, spread=True)),
    report.Column("CPU % of a core at rest", figure("cpu_percent", 3)),
    report.Column("held after the window", figure("held", 0)),
    report.Column(
        "close s / warnings / lock keys left",
        joined(
            figure("close_s", 2), figure("close_warnings", 0), figure("keys_left_after_close", 0)
        ),
    ),
)

DOES = {"take": "take() (at most once)", "claim": "claim() + ack() (at least once)"}


def queue_rows(f: report.Figures) -> list[list[str]]:
    """T3's rows: one per mode and number of producers (= consumers)."""
    runs = f.runs.get("geventc", [])
    rows = []
    for entry in runs[0] if runs else {}:
        workers = f.med("geventc", f"{entry}.workers")
        cells = [
            figure(f"{entry}.items", 0),
            figure(f"{entry}.items_per_s", 0, spread=True),
            figure(f"{entry}.puts_per_s", 0),
            latency(entry),
            figure(f"{entry}.etcd_requests_per", 2),
            methods(entry),
            figure(f"{entry}.http_per", 2),
            figure(f"{entry}.cpu_us_per", 0),
            joined(figure(f"{entry}.errors", 0), figure(f"{entry}.missing", 0)),
        ]
        head = [DOES[runs[0][entry]["mode"]], f"{fmt(workers, 0)} / {fmt(workers, 0)}"]
        rows.append([*head, *(cell(f, "geventc") for cell in cells)])
    return rows


QUEUE = report.Table(
    [
        "consumers call",
        "producers / consumers",
        "items",
        "items/s, first put → last done (min-max)",
        "producers' puts/s",
        "consumer's call p50 / p99 ms",
        "etcd requests per item",
        "by method",
        "HTTP requests per item",
        "client CPU µs per item",
        "errors / items missing",
    ],
    queue_rows,
)

SECTIONS = (
    report.Section(
        "T1",
        "T1 — locks: geventc's `conn.lock()`, etcd3gw's and python-etcd3's `client.lock()`",
        [UNCONTENDED, CONTENDED],
        [
            report.Target(
                "T1",
                "uncontended acquire + release ≤ 2 HTTP requests",
                "uncontended.http_per",
                requests_per_cycle,
                at_most=2,
            ),
        ],
        needs="geventc",
        notes=lock_notes,
    ),
    report.Section(
        "T2",
        "T2 — many locks held in one process, at rest (one repetition; geventc only: the "
        "peers' locks grant a lease per acquire and never renew it)",
        [MANY],
        [
            report.Target(
                "T2",
                "leases = distinct TTLs, whatever the number of locks",
                "leases",
                lambda f, n: (
                    f"{fmt(n, 0)} leases for {fmt(f.med('geventc', 'locks'), 0)} "
                    f"locks on {fmt(f.med('geventc', 'ttls'), 0)} TTLs"
                ),
                at_most="ttls",
            ),
            report.Target(
                "T2",
                "keep-alive requests/s = Σ 3/TTL over the distinct TTLs",
                requests_off_by,
                keepalives_measured,
                at_most=lambda f: f.med("geventc", "leases") + 0.01,  # ±1 renewal a lease
            ),
        ],
        needs="geventc",
        notes=close_notes,
    ),
    report.Section(
        "T3",
        "T3 — queue: `conn.queue(path)`, producers and consumers on two connectors "
        "(geventc only: the peers have no queue)",
        [QUEUE],
        needs="geventc",
        notes=lambda f: [
            "A consumer's call is one `take()`, or one `claim()` and its `ack()`; it "
            "includes waiting for the next item when the consumers have caught up.",
            "",
        ],
    ),
)

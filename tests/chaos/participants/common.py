"""What every participant shares: JSON-line output, command input, options, and the
lease/election instrumentation the leader-safety check needs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import gevent
from gevent.event import Event
from gevent.fileobject import FileObjectPosix

import geventc
from geventc.errors import IndeterminateWrite

from .. import resources

T = TypeVar("T")


def emit(ev: str, **fields: Any) -> None:
    """Print one history record (stdout is a pipe the harness reads line by line)."""
    fields["t"] = fields.get("t", time.monotonic())
    sys.stdout.write(json.dumps({"ev": ev, **fields}, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def options(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every participant takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--endpoints", required=True, help="comma-separated etcd URLs")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--connect-timeout", type=float, default=0.5)
    return parser


def connect(args: argparse.Namespace) -> geventc.Connector:
    """A connector with the participant's endpoints, namespace and timeouts."""
    return geventc.connect(
        args.endpoints.split(","),
        namespace=args.namespace,
        timeout=args.timeout,
        connect_timeout=args.connect_timeout,
    )


def commands() -> Iterator[str]:
    """The command lines on stdin, read cooperatively; ends when stdin closes."""
    stdin = FileObjectPosix(sys.stdin.fileno(), "rb", close=False)
    for raw in iter(stdin.readline, b""):
        line = raw.decode().strip()
        if line:
            yield line


def stop_on_command() -> Event:
    """An event set when the harness sends ``stop`` (read in a greenlet of its own)."""
    stop = Event()

    def follow() -> None:
        for line in commands():
            if line == "stop":
                stop.set()

    gevent.spawn(follow)
    return stop


def repeat_until_stopped(step: Callable[[int], None], interval: float) -> None:
    """Record ``ready``, then call ``step(n)`` for n = 1, 2, ... every ``interval``
    seconds until the harness sends ``stop``; then record ``done`` (with how many) and
    wait to be killed."""
    stop = stop_on_command()
    emit("ready")
    n = 0
    while not stop.is_set():
        n += 1
        step(n)
        stop.wait(interval)
    emit("done", steps=n)
    sleep_forever()


def tried(ev: str, call: Callable[[], T], pause: float = 0.2) -> T | None:
    """``call()``; on an etcd error record ``ev`` (the error, and whether it was an
    IndeterminateWrite: the write may have been applied), pause and return None."""
    try:
        return call()
    except geventc.EtcdError as exc:
        unknown = isinstance(exc, IndeterminateWrite)
        emit(ev, error=repr(exc), indeterminate=unknown)
        gevent.sleep(pause)
        return None


def append_fenced(
    log: str,
    identity: str,
    n: int,
    token: int,
    send: Callable[[list[geventc.TxnOp]], geventc.TxnResult],
    refused: type[Exception] | tuple[type[Exception], ...] = (),
) -> str:
    """Append entry ``n`` of ``identity`` (``{identity, n, token}`` at
    ``log/<identity>/<n>``) with ``send`` (a guarded txn), recording ``write``: its
    result (``accepted``, ``fenced`` when etcd refused the guard: the txn failed or
    raised ``refused``, ``error`` when the outcome is unknown) and revision; the
    result."""
    key = f"{log}/{identity}/{n:06d}"
    value = json.dumps({"identity": identity, "n": n, "token": token})
    try:
        result = send([geventc.Op.put(key, value)])
    except refused as exc:
        emit("write", n=n, result="fenced", error=repr(exc))
        return "fenced"
    except geventc.EtcdError as exc:
        emit("write", n=n, result="error", error=repr(exc))
        return "error"
    outcome = "accepted" if result.succeeded else "fenced"
    emit("write", n=n, result=outcome, revision=result.header.revision)
    return outcome


def read_counter(conn: geventc.Connector, key: str) -> tuple[int, int]:
    """The integer stored at ``key`` and its revision (retried until etcd answers)."""
    while True:
        try:
            kv = conn.get(key)
            if kv is None:
                raise RuntimeError(f"{key} does not exist; the harness creates it")
            return int(kv.value), kv.mod_revision
        except geventc.EtcdError as exc:
            emit("error", op="read", error=repr(exc))
            gevent.sleep(0.05)


def write_next(conn: geventc.Connector, key: str, n: int, puts: list[geventc.TxnOp]) -> int:
    """Commit value ``n`` of the counter at ``key`` (only if it holds ``n - 1``) with
    ``puts``, recording an ``ack`` (``late`` when an earlier indeterminate try of ``n``
    turns out applied); the counter's value afterwards."""
    try:
        result = conn.txn([geventc.Compare.value(key) == str(n - 1)], puts, [geventc.Op.get(key)])
    except geventc.EtcdError as exc:  # maybe applied: the next read tells
        emit("error", op="write", n=n, error=repr(exc))
        value, revision = read_counter(conn, key)
        if value >= n:
            emit("ack", n=n, revision=revision if value == n else 0, late=True)
        return value
    if result.succeeded:
        emit("ack", n=n, revision=result.header.revision)
        return n
    read = result.responses[0]
    assert isinstance(read, geventc.RangeResult) and read.kvs
    stored = int(read.kvs[0].value)
    if stored < n - 1:
        raise RuntimeError(f"the counter went back from {n - 1} to {stored}")
    if stored == n:  # an earlier indeterminate try of n was applied
        emit("ack", n=n, revision=read.kvs[0].mod_revision, late=True)
    return stored


def run(main: Callable[[], None]) -> None:
    """Run a participant: log to stderr, report a crash as a record, exit 1 on it."""
    logging.basicConfig(
        level=os.environ.get("GEVENTC_CHAOS_LOG", "WARNING"),
        stream=sys.stderr,
        format=f"%(relativeCreated)8.0fms {os.getpid()} %(levelname)s %(name)s: %(message)s",
    )
    emit("start", pid=os.getpid(), argv=sys.argv[1:])
    gevent.spawn(resources.sample_forever, emit)  # RSS, fds, greenlets every 30 s
    try:
        main()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # report it in the history, where the checks see it
        emit("crash", error=repr(exc), traceback=traceback.format_exc()[-4000:])
        sys.stdout.flush()
        os._exit(1)
    emit("exit")
    sys.stdout.flush()
    os._exit(0)  # do not wait for leftover greenlets


def timed(what: str, call: Callable[[], object]) -> float:
    """Run ``call``, record how long it took (and its error, if any); the duration."""
    started = time.monotonic()
    error = None
    try:
        call()
    except Exception as exc:
        error = repr(exc)
    took = time.monotonic() - started
    emit("stopped", what=what, started=started, took=took, error=error)
    return took


def emit_status(status: str, token: int, key_lease: int, **fields: Any) -> None:
    """Record a holder's ``status`` the moment it is decided: its fencing ``token`` and
    the lease its key is on, as :func:`checks.beliefs` reads them."""
    emit("status", status=status, token=token, key_lease=key_lease, **fields)


def instrument_leases() -> None:
    """Record every change of a kept lease (``lease``: id, state, and the deadline =
    send time of the last renewal that succeeded + TTL) the moment a grant, a renewal
    or a close returns: with the holder's ``status`` records the checks know, for any
    moment, whether it could still trust its lease (test instrumentation, not public
    API)."""
    from geventc.lease import KeptLease

    def lease_line(lease: KeptLease) -> None:
        emit("lease", id=lease.id, state=lease.state.value, deadline=lease._deadline)

    def wrap_lease(name: str) -> None:
        original = getattr(KeptLease, name)

        def wrapper(self: KeptLease, *args: Any, **kwargs: Any) -> Any:
            try:
                return original(self, *args, **kwargs)
            finally:
                lease_line(self)

        setattr(KeptLease, name, wrapper)

    for name in ("_grant_once", "_renew", "close"):
        wrap_lease(name)


def record_events(recipe: type[Any], record: Callable[[Any, Any], None]) -> None:
    """Call ``record(recipe, event)`` for every event a recipe of the class ``recipe``
    puts on its channel, the moment it does (test instrumentation: ``Recipe._emit``)."""
    original = recipe._emit

    def emit_and_record(self: Any, event: Any) -> None:
        original(self, event)
        record(self, event)

    recipe._emit = emit_and_record


def instrument_election() -> None:
    """Record exactly what ``LeaderElector.is_leader`` depends on, when it changes.

    Test instrumentation (not public API): every status the elector reports is
    recorded at the moment it is decided (``status``, with the lease the election key
    is on), and every change of the kept lease (``lease``, see
    :func:`instrument_leases`). From these the checks know, for any moment, whether the
    candidate believed it led with a lease it could still trust.
    """
    from geventc.recipes.election import LeaderElector

    instrument_leases()
    original_report = LeaderElector._report_status

    def report(self: LeaderElector, *args: Any, **kwargs: Any) -> None:
        before = self._last
        original_report(self, *args, **kwargs)
        event = self._last
        if event is not None and event is not before:
            emit_status(
                event.status.value,
                event.fencing_token,
                self._lease_of_key,
                leader=event.leader,
                lease=self._lease.id if self._lease is not None else 0,
                error=repr(event.error) if event.error else None,
            )

    LeaderElector._report_status = report


def instrument_contender() -> None:
    """Record exactly what a lock's or semaphore's ``held`` depends on, when it changes:
    every status it reports (``status``: ACQUIRED with its fencing token, SUSPENDED,
    LOST, RELEASED, and the lease its key is on) the moment it is decided, and every
    change of the kept lease (:func:`instrument_leases`)."""
    from geventc.recipes.contender import Contender, LockEvent

    instrument_leases()

    def status(holder: Contender, event: object) -> None:
        if isinstance(event, LockEvent):
            emit_status(
                event.status.value,
                event.fencing_token,
                holder._lease_of_key,
                key=event.key,
                error=repr(event.error) if event.error else None,
            )

    record_events(Contender, status)


def instrument_claims() -> None:
    """Record exactly what a queue claim's ``held`` depends on: every claim the moment
    it is made (``status`` HELD, its fencing token: the marker's mod revision, the
    lease its marker is on, the item's key) and every change of its status after
    (SUSPENDED, HELD again, LOST, ACKED, RELEASED), and every change of the kept lease
    (:func:`instrument_leases`)."""
    from geventc.recipes.queue import ClaimedItem

    instrument_leases()

    def status(claim: ClaimedItem) -> None:
        emit_status(
            claim.status.value,
            claim.claim_revision,
            claim.lease_id,
            key=claim.item.key_str,
            reason=claim.reason,
        )

    original_init, original_set = ClaimedItem.__init__, ClaimedItem._set

    def init(self: ClaimedItem, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        status(self)

    def changed(self: ClaimedItem, *args: Any, **kwargs: Any) -> bool:
        done: bool = original_set(self, *args, **kwargs)
        if done:
            status(self)
        return done

    ClaimedItem.__init__ = init  # type: ignore[method-assign]
    ClaimedItem._set = changed  # type: ignore[method-assign]


def drain(channel: Any, told: Any, kind: type[Any]) -> Any:
    """Read every event pending on ``channel`` without waiting: record each problem
    (``recipe-error``) and return the last event of type ``kind`` (or ``told`` when
    none came)."""
    while (event := channel.get_nowait()) is not None:
        if isinstance(event, kind):
            told = event
        elif isinstance(event, geventc.RecipeError):
            emit("recipe-error", error=repr(event.error), fatal=event.fatal)
    return told


def sleep_forever() -> None:
    """Block this greenlet (the process then lives until it is killed)."""
    while True:
        gevent.sleep(3600)

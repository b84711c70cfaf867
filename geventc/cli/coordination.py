"""The coordination commands: ``elect`` (campaign to lead a path until Ctrl-C
resigns) and ``lock`` (hold a lock until Ctrl-C, or while a command runs, as
``etcdctl lock``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .follow import follow
from .options import add_command, add_seconds, positive_float, positive_int
from .output import Line, Output
from .settings import EXIT_OK, Settings, probe

if TYPE_CHECKING:
    from ..recipes.contender import LockEvent
    from ..recipes.election import ElectionEvent
    from ..recipes.lock import Lock


def cmd_elect(args: argparse.Namespace, settings: Settings) -> int:
    """``elect PATH IDENTITY [--ttl N]``: each status change until Ctrl-C resigns."""
    out = settings.out
    with settings.connect() as conn:
        elector = conn.leader_elector(args.path, args.identity, ttl=args.ttl)
        path = elector.path.decode("utf-8", "replace")
        probe(conn, path + "/")
        follow(
            out,
            elector.start,
            lambda event: out.line(_election_text(event), _election_data(event, path)),
            release=elector.stop,
            released=Line(f"resigned from {path}", {"event": "RESIGNED", "path": path}),
        )
    return EXIT_OK


def _election_text(event: ElectionEvent) -> str:
    """``LEADER (fencing token N)``, or the status, the leader and what is wrong."""
    status = event.status.value
    if status == "LEADER":
        return f"LEADER (fencing token {event.fencing_token})"
    text = f"{status} (leader: {event.leader or 'none'})" + (" STALE" if event.stale else "")
    return text + (f": {event.error}" if event.error else "")


def _election_data(event: ElectionEvent, path: str) -> dict[str, Any]:
    """An election event for ``--json``."""
    data: dict[str, Any] = {
        "event": event.status.value,
        "path": path,
        "leader": event.leader,
        "fencing_token": event.fencing_token,
        "stale": event.stale,
    }
    if event.error is not None:
        data["error"] = str(event.error)
    return data


def cmd_lock(args: argparse.Namespace, settings: Settings) -> int:
    """``lock NAME [--ttl N] [--wait S] [-- COMMAND ARGS...]``: hold the lock NAME
    (Go ``concurrency.Mutex``'s layout, as ``etcdctl lock``) until Ctrl-C, printing
    its key and each change; with a command, run it while the lock is held (with
    ``ETCD_LOCK_KEY`` and ``ETCD_LOCK_REV`` in its environment), release, and exit
    with its exit code. If the lock is lost while the command runs, the command is
    terminated and the exit code is 1: it never runs on without the lock."""
    from ..errors import NotAcquired

    out = settings.out
    command = list(args.exec_command)
    with settings.connect() as conn:
        lock = conn.lock(args.name, ttl=args.ttl)
        name = lock.path.decode("utf-8", "replace")
        probe(conn, name + "/")
        lock.start()
        try:
            if not lock.acquire(args.wait):
                raise NotAcquired(f"{name} was not acquired within {args.wait:g}s")
            key = lock.key or ""
            out.line(key, {"event": "ACQUIRED", "key": key, "fencing_token": lock.fencing_token})
            if command:
                return _run_locked(lock, command)
            follow(
                out,
                lambda: lock.channel,
                _lock_printer(out, name),
                release=lock.release,
                released=Line(f"released {name}", {"event": "RELEASED", "path": name}),
            )
            return EXIT_OK
        finally:
            lock.stop()


def _lock_printer(out: Output, name: str) -> Callable[[LockEvent], None]:
    """Prints each change of the lock after the first ACQUIRED (printed as its key);
    ``LOST`` ends the command (exit 1)."""
    seen = {"acquired": False}

    def render(event: LockEvent) -> None:
        status = event.status.value
        if status == "ACQUIRED" and not seen["acquired"]:
            seen["acquired"] = True
            return
        if status == "RELEASED":
            return
        text = status + (f" (fencing token {event.fencing_token})" if event.fencing_token else "")
        text += f": {event.error}" if event.error else ""
        data: dict[str, Any] = {
            "event": status,
            "path": name,
            "key": event.key,
            "fencing_token": event.fencing_token,
        }
        if event.error is not None:
            data["error"] = str(event.error)
        out.line(text, data)
        if status == "LOST":
            from ..errors import NotLockHolder

            raise NotLockHolder(f"the lock {name} was lost: {event.error}")

    return render


def _run_locked(lock: Lock, command: list[str]) -> int:
    """Run ``command`` while ``lock`` is held; its exit code, or 1 (after terminating
    it) when the lock is lost meanwhile."""
    import os

    import gevent
    from gevent import subprocess
    from gevent.event import Event

    from ..recipes.contender import LockEvent, LockStatus
    from .settings import CommandError

    env = dict(os.environ, ETCD_LOCK_KEY=lock.key or "", ETCD_LOCK_REV=str(lock.fencing_token))
    try:
        child = subprocess.Popen(command, env=env)
    except OSError as exc:
        raise CommandError(f"cannot run {command[0]!r}: {exc.strerror or exc}") from None
    lost = Event()

    def watch_lock() -> None:
        for event in lock.channel:
            if isinstance(event, LockEvent) and event.status is LockStatus.LOST:
                lost.set()
                child.terminate()
                return

    watcher = gevent.spawn(watch_lock)
    try:
        code = child.wait()
    finally:
        watcher.kill()
        if child.poll() is None:
            child.terminate()
            child.wait()
    if lost.is_set():
        raise CommandError(f"the lock was lost while {command[0]!r} ran; it was terminated")
    outcome = lock.release()
    if not outcome.confirmed:
        raise CommandError(outcome.detail)
    return int(code)


def register(commands: Any) -> None:
    """Add ``elect`` and ``lock``."""
    command = add_command(
        commands, "elect", cmd_elect, "campaign to lead PATH until Ctrl-C resigns"
    )
    command.add_argument("path", metavar="PATH")
    command.add_argument("identity", metavar="IDENTITY")
    add_seconds(
        command, "--ttl", positive_int, "lease TTL of the candidacy (default: 10)", default=10
    )
    command = add_command(
        commands,
        "lock",
        cmd_lock,
        "hold the lock NAME until Ctrl-C, or while COMMAND runs (exit code passed through)",
    )
    command.add_argument("name", metavar="NAME")
    add_seconds(command, "--ttl", positive_int, "lease TTL of the lock (default: 10)", default=10)
    add_seconds(
        command,
        "--wait",
        positive_float,
        "give up (exit 1) when not acquired within this many seconds (default: no limit)",
        default=None,
    )
    command.add_argument(
        "exec_command",
        nargs="*",
        metavar="-- COMMAND ARGS",
        help="run COMMAND while holding the lock; ETCD_LOCK_KEY and ETCD_LOCK_REV are set",
    )

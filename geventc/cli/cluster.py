"""The cluster commands: ``health`` (every member, once or until Ctrl-C; the exit code
says how the cluster is), and etcdctl's ``member list``, ``endpoint status`` and
``endpoint health`` (one line per member or endpoint, as etcdctl's simple output)."""

from __future__ import annotations

import argparse
import math
import time
from typing import TYPE_CHECKING, Any

from .follow import follow
from .options import add_command, add_seconds, positive_float
from .settings import DEFAULT_ENDPOINT, EXIT_DEGRADED, EXIT_FAILED, EXIT_OK, CommandError, Settings

if TYPE_CHECKING:
    from ..connector import Connector
    from ..recipes.health import ClusterHealth
    from ..wire import Member, Status


def cmd_health(args: argparse.Namespace, settings: Settings) -> int:
    """``health [--watch]``: exit 0 HEALTHY, 3 DEGRADED, 1 UNHEALTHY."""
    out = settings.out
    seen: list[ClusterHealth] = []

    def show(health: ClusterHealth) -> None:
        seen.append(health)
        out.line(_health_text(health), _health_data(health))

    with settings.connect() as conn:
        monitor = conn.health_monitor(once=not args.watch, interval=args.interval)
        follow(
            out,
            monitor.start,
            show,
            release=monitor.stop,
        )
    if not seen:
        raise CommandError("the health check gave no result")
    if settings.endpoints is None and not any(m.healthy for m in seen[-1].members):
        from .diagnose import START_HINT
        from .process import stderr

        stderr(f"hint: {START_HINT}")
    return _exit_code(seen[-1])


def _exit_code(health: ClusterHealth) -> int:
    """0 for a healthy cluster, 3 for a degraded one, else 1."""
    from ..recipes.health import ClusterStatus

    codes = {ClusterStatus.HEALTHY: EXIT_OK, ClusterStatus.DEGRADED: EXIT_DEGRADED}
    return codes.get(health.status, EXIT_FAILED)


def _health_text(health: ClusterHealth) -> str:
    """The status, then a line per member."""
    lines = [health.status.value]
    for m in health.members:
        state = "healthy" if m.healthy else "unhealthy"
        role = ", leader" if m.leader else ""
        error = f": {m.error}" if m.error else ""
        lines.append(f"  {m.name} {m.endpoint or '-'} {state}{role}{error}")
    return "\n".join(lines)


def _health_data(health: ClusterHealth) -> dict[str, Any]:
    """The cluster's health for ``--json``."""
    members = [
        {
            "name": m.name,
            "endpoint": m.endpoint,
            "healthy": m.healthy,
            "leader": m.leader,
            "error": m.error,
        }
        for m in health.members
    ]
    return {"status": health.status.value, "members": members}


# --- member list ------------------------------------------------------------------------


def cmd_member_list(args: argparse.Namespace, settings: Settings) -> int:
    """``member list``: one line per member, as etcdctl's simple output (``ID, status,
    name, peer URLs, client URLs, is learner``); ``--json``: one object per member."""
    with settings.connect() as conn:
        members = conn.members()
    for m in members:
        settings.out.line(", ".join(_member_row(m)), _member_data(m))
    return EXIT_OK


def _member_row(m: Member) -> list[str]:
    """etcdctl's columns of a member (a member without a name has not started)."""
    status = "started" if m.name else "unstarted"
    urls = [",".join(m.peer_urls), ",".join(m.client_urls)]
    return [f"{m.id:x}", status, m.name, *urls, "true" if m.is_learner else "false"]


def _member_data(m: Member) -> dict[str, Any]:
    """A member for ``--json`` (its ID in hex, as in the text)."""
    return {
        "id": f"{m.id:x}",
        "status": "started" if m.name else "unstarted",
        "name": m.name,
        "peer_urls": list(m.peer_urls),
        "client_urls": list(m.client_urls),
        "is_learner": m.is_learner,
    }


# --- endpoint status and health --------------------------------------------------------


def _targets(conn: Connector, args: argparse.Namespace, settings: Settings) -> list[str]:
    """The endpoints to ask: the given ones (or the default), or with ``--cluster``
    every client URL of the member list."""
    if not args.cluster:
        return settings.endpoints or [DEFAULT_ENDPOINT]
    urls = [url for m in conn.members() for url in m.client_urls]
    return list(dict.fromkeys(urls))


def cmd_endpoint_status(args: argparse.Namespace, settings: Settings) -> int:
    """``endpoint status [--cluster]``: one line per endpoint, as etcdctl's simple
    output (``endpoint, ID, version, db size, is leader, is learner, raft term, raft
    index, raft applied index, errors``); an endpoint that does not answer is an error
    (exit 1) after the others were printed."""
    from ..errors import EtcdError
    from .diagnose import explain

    out = settings.out
    failed: list[str] = []
    with settings.connect() as conn:
        for endpoint in _targets(conn, args, settings):
            try:
                status = conn.status(endpoint)
            except EtcdError as exc:
                failed.append(f"{endpoint}: {explain(exc, settings.endpoints is None)}")
                continue
            out.line(", ".join(_status_row(endpoint, status)), _status_data(endpoint, status))
    if failed:
        raise CommandError("no status from " + "; ".join(failed))
    return EXIT_OK


def _status_row(endpoint: str, s: Status) -> list[str]:
    """etcdctl's columns of an endpoint's status (3.5's, which 3.6's help still lists)."""
    return [
        endpoint,
        f"{s.member_id:x}",
        s.version,
        si_bytes(s.db_size),
        str(s.is_leader).lower(),
        str(s.is_learner).lower(),
        str(s.raft_term),
        str(s.raft_index),
        str(s.raft_applied_index),
        ", ".join(s.errors),
    ]


def _status_data(endpoint: str, s: Status) -> dict[str, Any]:
    """An endpoint's status for ``--json``."""
    return {
        "endpoint": endpoint,
        "id": f"{s.member_id:x}",
        "version": s.version,
        "db_size": s.db_size,
        "db_size_in_use": s.db_size_in_use,
        "leader": f"{s.leader:x}",
        "is_leader": s.is_leader,
        "is_learner": s.is_learner,
        "raft_term": s.raft_term,
        "raft_index": s.raft_index,
        "raft_applied_index": s.raft_applied_index,
        "errors": list(s.errors),
    }


def si_bytes(size: int) -> str:
    """A size as etcdctl prints it (go-humanize's ``Bytes``): ``8.2 kB``, ``20 MB``."""
    if size < 10:
        return f"{size} B"
    exponent = min(math.floor(math.log(size, 1000)), 6)
    value = math.floor(size / 1000**exponent * 10 + 0.5) / 10
    unit = ("B", "kB", "MB", "GB", "TB", "PB", "EB")[exponent]
    return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"


def cmd_endpoint_health(args: argparse.Namespace, settings: Settings) -> int:
    """``endpoint health [--cluster]``: every endpoint asked at once, one line each
    (``URL is healthy: successfully committed proposal: took = 1.2ms`` or ``URL is
    unhealthy: REASON``); exit 1 if any is unhealthy."""
    import gevent

    out = settings.out
    with settings.connect() as conn:
        endpoints = _targets(conn, args, settings)
        checks = [gevent.spawn(_check, conn, e, settings.endpoints is None) for e in endpoints]
        gevent.joinall(checks, raise_error=True)
    unhealthy = 0
    for endpoint, check in zip(endpoints, checks, strict=True):
        took, error = check.get()
        data = {"endpoint": endpoint, "health": error is None, "took": round(took, 6)}
        if error is None:
            text = f"{endpoint} is healthy: successfully committed proposal: took = {_ms(took)}"
        else:
            unhealthy += 1
            text = f"{endpoint} is unhealthy: failed to commit proposal: {error}"
            data["error"] = error
        out.line(text, data)
    if unhealthy:
        raise CommandError(f"unhealthy cluster: {unhealthy} of {len(endpoints)} endpoints")
    return EXIT_OK


def _check(conn: Connector, endpoint: str, defaulted: bool) -> tuple[float, str | None]:
    """Ask ``endpoint``'s ``/health`` (a read through raft, and no alarm): the seconds
    it took and None, or the reason it is unhealthy."""
    from ..errors import EtcdError
    from .diagnose import explain

    started = time.monotonic()
    try:
        health = conn.health(endpoint)
    except EtcdError as exc:
        return time.monotonic() - started, explain(exc, defaulted)
    took = time.monotonic() - started
    return took, None if health.healthy else (health.reason or "/health says false")


def _ms(seconds: float) -> str:
    """A duration as Go prints a short one: ``1.234ms``."""
    return f"{seconds * 1000:.3f}ms"


def _no_action(args: argparse.Namespace, settings: Settings) -> int:  # pragma: no cover
    raise CommandError(f"{args.command} needs an action")


def register(commands: Any) -> None:
    """Add ``health``, ``member list`` and ``endpoint status|health``."""
    command = add_command(
        commands,
        "health",
        cmd_health,
        "check every member (exit 0 healthy, 3 degraded, 1 unhealthy)",
    )
    command.add_argument("--watch", action="store_true", help="print every change until Ctrl-C")
    add_seconds(
        command,
        "--interval",
        positive_float,
        "seconds between checks with --watch (default: 5)",
        default=5.0,
    )

    member = add_command(commands, "member", _no_action, "the cluster's members (as etcdctl's)")
    actions = member.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_command(
        actions, "list", cmd_member_list, "one line per member: ID, status, name, URLs, learner"
    )

    endpoint = add_command(
        commands, "endpoint", _no_action, "each endpoint's status or health (as etcdctl's)"
    )
    actions = endpoint.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, handler, summary in (
        ("status", cmd_endpoint_status, "version, db size, leader and raft position per endpoint"),
        ("health", cmd_endpoint_health, "per endpoint: healthy or why not (exit 1 if any is not)"),
    ):
        command = add_command(actions, name, handler, summary)
        command.add_argument(
            "--cluster",
            action="store_true",
            help="ask every member of the member list (its client URLs)",
        )

"""The cluster commands: ``health`` (every member, once or until Ctrl-C; the exit code
says how the cluster is)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .follow import follow
from .options import add_command, add_seconds, positive_float
from .settings import EXIT_DEGRADED, EXIT_FAILED, EXIT_OK, CommandError, Settings

if TYPE_CHECKING:
    from ..recipes.health import ClusterHealth


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


def register(commands: Any) -> None:
    """Add ``health``."""
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

"""The coordination commands: ``elect`` (campaign to lead a path until Ctrl-C
resigns)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .follow import follow
from .options import add_command, add_seconds, positive_int
from .output import Line
from .settings import EXIT_OK, Settings, probe

if TYPE_CHECKING:
    from ..recipes.election import ElectionEvent


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


def register(commands: Any) -> None:
    """Add ``elect``."""
    command = add_command(
        commands, "elect", cmd_elect, "campaign to lead PATH until Ctrl-C resigns"
    )
    command.add_argument("path", metavar="PATH")
    command.add_argument("identity", metavar="IDENTITY")
    add_seconds(
        command, "--ttl", positive_int, "lease TTL of the candidacy (default: 10)", default=10
    )

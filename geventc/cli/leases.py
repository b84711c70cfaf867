"""The lease commands, as etcdctl's: ``lease grant``, ``revoke``, ``keep-alive``
(until Ctrl-C, or ``--once``), ``list`` and ``timetolive``. Lease IDs are printed and
accepted in hex, as etcdctl prints and accepts them (``694d7e3a1b2c0a0b``)."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from .options import add_command, positive_int
from .output import text_field
from .settings import EXIT_OK, CommandError, Settings

if TYPE_CHECKING:
    from ..connector import Connector

#: etcd's lease IDs are positive int64s.
MAX_LEASE_ID = 2**63 - 1
#: the shortest pause between renewals (``keep-alive`` of a lease of 1 s)
MIN_RENEW_INTERVAL = 0.2
#: the pause before retrying a renewal that failed for another reason than the lease
RETRY_INTERVAL = 0.5


def lease_id(text: str) -> int:
    """A lease ID in hex, as etcdctl prints and accepts it (``0x`` may lead): 1 to
    2**63-1."""
    digits = text[2:] if text[:2].lower() == "0x" else text
    if digits and len(digits) <= 16 and all(c in "0123456789abcdefABCDEF" for c in digits):
        value = int(digits, 16)
        if 1 <= value <= MAX_LEASE_ID:
            return value
    raise argparse.ArgumentTypeError(
        f"must be a lease ID in hex (as 'lease grant' prints it), got {text!r}"
    )


def hex_id(value: int) -> str:
    """A lease ID as etcdctl prints it: 16 hex digits."""
    return f"{value:016x}"


def cmd_grant(args: argparse.Namespace, settings: Settings) -> int:
    """``lease grant TTL``: ``lease ID granted with TTL(Ns)``."""
    with settings.connect() as conn:
        lease = conn.grant(args.ttl)
    settings.out.line(
        f"lease {hex_id(lease.id)} granted with TTL({lease.ttl}s)",
        {"id": hex_id(lease.id), "ttl": lease.ttl},
    )
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace, settings: Settings) -> int:
    """``lease revoke ID``: the lease and every key attached to it are deleted."""
    with settings.connect() as conn:
        conn.revoke(args.id)
    settings.out.line(f"lease {hex_id(args.id)} revoked", {"id": hex_id(args.id), "revoked": True})
    return EXIT_OK


def cmd_keep_alive(args: argparse.Namespace, settings: Settings) -> int:
    """``lease keep-alive ID [--once]``: renew the lease every third of its TTL and
    print each renewal until Ctrl-C; a lease that expired or was revoked ends the
    command (exit 1)."""
    from ..errors import EtcdError

    with settings.connect() as conn:
        ttl = _renew(conn, args.id, settings)
        if args.once:
            return EXIT_OK
        renewed = time.monotonic()
        pause = max(MIN_RENEW_INTERVAL, ttl / 3)
        while True:
            time.sleep(pause)
            try:
                ttl = _renew(conn, args.id, settings)
            except EtcdError as exc:  # etcd unreachable for now: retry while it may live
                if time.monotonic() - renewed >= ttl:
                    raise CommandError(
                        f"lease {hex_id(args.id)} may have expired: not renewed for {ttl}s ({exc})"
                    ) from None
                pause = RETRY_INTERVAL
                continue
            renewed = time.monotonic()
            pause = max(MIN_RENEW_INTERVAL, ttl / 3)


def _renew(conn: Connector, lease: int, settings: Settings) -> int:
    """Renew ``lease`` once, print it as etcdctl does and return the new TTL."""
    from ..errors import LeaseNotFound

    try:
        ttl = conn.keepalive_once(lease)
    except LeaseNotFound:
        raise CommandError(f"lease {hex_id(lease)} expired or revoked") from None
    settings.out.line(
        f"lease {hex_id(lease)} keepalived with TTL({ttl})", {"id": hex_id(lease), "ttl": ttl}
    )
    return ttl


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    """``lease list``: ``found N leases`` then one ID a line (``--json``: one object
    per lease)."""
    with settings.connect() as conn:
        leases = conn.leases()
    out = settings.out
    if not out.json_output:
        out.line(f"found {len(leases)} leases", {})
    for lease in leases:
        out.line(hex_id(lease), {"id": hex_id(lease)})
    return EXIT_OK


def cmd_timetolive(args: argparse.Namespace, settings: Settings) -> int:
    """``lease timetolive ID [--keys]``: granted and remaining TTL (and the attached
    keys); a lease that expired or never existed is an error (exit 1)."""
    from ..errors import LeaseNotFound

    with settings.connect() as conn:
        try:
            info = conn.time_to_live(args.id, keys=args.keys)
        except LeaseNotFound:
            raise CommandError(f"lease {hex_id(args.id)} already expired") from None
    text = f"lease {hex_id(info.id)} granted with TTL({info.granted_ttl}s), remaining({info.ttl}s)"
    data: dict[str, Any] = {"id": hex_id(info.id), "granted_ttl": info.granted_ttl, "ttl": info.ttl}
    if args.keys:
        names = [key.decode("utf-8", "replace") for key in info.keys]
        text += f", attached keys([{' '.join(names)}])"
        data["keys"] = [text_field(key, "key") for key in info.keys]
    settings.out.line(text, data)
    return EXIT_OK


def _no_action(args: argparse.Namespace, settings: Settings) -> int:  # pragma: no cover
    raise CommandError("lease needs an action: grant, revoke, keep-alive, list or timetolive")


def register(commands: Any) -> None:
    """Add ``lease`` with its actions ``grant``, ``revoke``, ``keep-alive``, ``list``
    and ``timetolive``."""
    lease = add_command(
        commands, "lease", _no_action, "grant, revoke, keep alive and list leases (as etcdctl's)"
    )
    actions = lease.add_subparsers(dest="action", metavar="ACTION", required=True)

    command = add_command(
        actions, "grant", cmd_grant, "grant a lease of TTL seconds and print its ID (hex)"
    )
    command.add_argument("ttl", type=positive_int, metavar="TTL", help="seconds")

    command = add_command(
        actions, "revoke", cmd_revoke, "revoke a lease, deleting every key attached to it"
    )
    command.add_argument("id", type=lease_id, metavar="ID", help="the lease ID in hex")

    command = add_command(
        actions,
        "keep-alive",
        cmd_keep_alive,
        "renew a lease every third of its TTL until Ctrl-C (exit 1 once it expired)",
    )
    command.add_argument("id", type=lease_id, metavar="ID", help="the lease ID in hex")
    command.add_argument("--once", action="store_true", help="renew once and exit")

    command = add_command(actions, "list", cmd_list, "print the ID of every live lease")

    command = add_command(
        actions, "timetolive", cmd_timetolive, "print a lease's granted and remaining TTL"
    )
    command.add_argument("id", type=lease_id, metavar="ID", help="the lease ID in hex")
    command.add_argument("--keys", action="store_true", help="also the keys attached to it")

"""The key-value commands: ``get``, ``put`` (``--ttl``: an ephemeral key until Ctrl-C),
``del`` and ``watch``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .follow import follow
from .leases import lease_id
from .options import add_command, add_seconds, positive_int, revision
from .output import Line, Output, plural, text_field
from .settings import EXIT_OK, CommandError, Settings, UsageError, probe

if TYPE_CHECKING:
    from ..connector import Connector
    from ..recipes.ephemeral import EphemeralEvent
    from ..recipes.observer import WatchEvent
    from ..wire import KeyValue

PREFIX_HELP = "every key starting with KEY (as etcdctl's --prefix)"
WATCH_PREFIX_HELP = "every key under KEY/ (as the Observer recipe: not KEY itself, nor KEYx)"


def cmd_get(args: argparse.Namespace, settings: Settings) -> int:
    """``get KEY [--prefix]``: the value, or ``key = value`` lines under a prefix; a
    missing key, or nothing under the prefix, is an error (exit 1)."""
    out = settings.out
    with settings.connect() as conn:
        if args.prefix:
            kvs = conn.get_prefix(args.key).kvs
            if not kvs:  # a missing key, as for one key (exit 1)
                raise CommandError(f"no key under {args.key!r}")
        else:
            kv = conn.get(args.key)
            if kv is None:
                raise CommandError(f"key {args.key!r} not found")
            kvs = (kv,)
    for kv in kvs:
        text = f"{kv.key_str} = {kv.value_str}" if args.prefix else kv.value_str
        out.line(text, kv_data(kv))
    return EXIT_OK


def cmd_put(args: argparse.Namespace, settings: Settings) -> int:
    """``put KEY VALUE [--ttl N | --lease ID]``."""
    if args.ttl is not None and args.lease is not None:
        raise UsageError("--ttl and --lease go separately: --ttl makes its own lease")
    with settings.connect() as conn:
        if args.ttl is not None:
            return _put_ephemeral(conn, args, settings.out)
        revision = conn.put(args.key, args.value, lease=args.lease).header.revision
    settings.out.line(f"OK (revision {revision})", {"key": args.key, "revision": revision})
    return EXIT_OK


def _put_ephemeral(conn: Connector, args: argparse.Namespace, out: Output) -> int:
    """An ephemeral key kept alive until Ctrl-C, then deleted."""
    from ..recipes.ephemeral import EphemeralKey

    key = EphemeralKey(conn, args.key, overwrite=True)
    events = key.create(args.value, ttl=args.ttl)
    name = key.key.decode("utf-8", "replace")

    def show(event: EphemeralEvent) -> None:
        reason = f": {event.reason}" if event.reason else ""
        out.line(
            f"{event.status.value} {event.key}{reason}",
            {"event": event.status.value, "key": event.key, "reason": event.reason},
        )

    follow(
        out,
        lambda: events,
        show,
        release=key.delete,
        started=Line(
            f"OK: {name} lives while this runs (ttl {args.ttl}s); Ctrl-C deletes it",
            {"event": "CREATED", "key": name, "ttl": args.ttl},
        ),
        released=Line(f"deleted {name}", {"event": "DELETED", "key": name}),
    )
    return EXIT_OK


def cmd_del(args: argparse.Namespace, settings: Settings) -> int:
    """``del KEY [--prefix]``: how many keys were deleted."""
    with settings.connect() as conn:
        result = conn.delete_prefix(args.key) if args.prefix else conn.delete(args.key)
    settings.out.line(
        f"deleted {plural(result.deleted, 'key')}",
        {"deleted": result.deleted, "revision": result.header.revision},
    )
    return EXIT_OK


def _watched(args: argparse.Namespace) -> str:
    """What ``watch`` follows, in words."""
    return f"every key under {args.key.rstrip('/')}/" if args.prefix else str(args.key)


def cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    """``watch KEY [--prefix] [--rev N]``: every change until Ctrl-C."""
    out = settings.out
    with settings.connect() as conn:
        current = probe(conn, args.key)  # a clear error now rather than retries later
        start = args.rev or current + 1
        observer = conn.observer(args.key, prefix=args.prefix, start_revision=start)
        follow(
            out,
            observer.start,
            lambda event: out.show(_change(event)),
            release=observer.stop,
            started=Line(
                f"watching {_watched(args)} from revision {start}; Ctrl-C stops",
                {"event": "WATCHING", "key": args.key, "prefix": args.prefix, "revision": start},
            ),
        )
    return EXIT_OK


def _change(event: WatchEvent) -> Line:
    """``PUT key = value (revision N)`` or ``DELETE key (revision N)``."""
    from ..wire import EventType

    shown = f" = {event.value_str}" if event.type is EventType.PUT else ""
    data: dict[str, Any] = {"event": event.type.value, "key": event.key}
    data.update(text_field(event.value, "value"), revision=event.revision)
    if event.prev_value is not None:
        data.update(text_field(event.prev_value, "prev_value"))
    return Line(f"{event.type.value} {event.key}{shown} (revision {event.revision})", data)


def kv_data(kv: KeyValue) -> dict[str, Any]:
    """A key-value pair for ``--json``."""
    return {
        **text_field(kv.key, "key"),
        **text_field(kv.value, "value"),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "lease": kv.lease,
    }


def register(commands: Any) -> None:
    """Add ``get``, ``put``, ``del`` and ``watch``."""
    command = add_command(
        commands, "get", cmd_get, "print the value of a key (or of every key under a prefix)"
    )
    command.add_argument("key", metavar="KEY")
    command.add_argument("--prefix", action="store_true", help=PREFIX_HELP)

    command = add_command(
        commands, "put", cmd_put, "set a key; with --ttl keep it alive until Ctrl-C"
    )
    command.add_argument("key", metavar="KEY")
    command.add_argument("value", metavar="VALUE")
    add_seconds(
        command,
        "--ttl",
        positive_int,
        "an ephemeral key on a lease of SECONDS, kept alive until Ctrl-C deletes it",
    )
    command.add_argument(
        "--lease",
        type=lease_id,
        metavar="ID",
        help="attach the key to lease ID (hex, as 'lease grant' prints it)",
    )

    command = add_command(commands, "del", cmd_del, "delete a key (or every key under a prefix)")
    command.add_argument("key", metavar="KEY")
    command.add_argument("--prefix", action="store_true", help=PREFIX_HELP)

    command = add_command(commands, "watch", cmd_watch, "print every change of a key until Ctrl-C")
    command.add_argument("key", metavar="KEY")
    command.add_argument("--prefix", action="store_true", help=WATCH_PREFIX_HELP)
    command.add_argument(
        "--rev", type=revision, default=0, metavar="N", help="start at revision N (default: now)"
    )

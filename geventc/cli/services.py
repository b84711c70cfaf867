"""The service-discovery commands: ``register`` (an instance until Ctrl-C deregisters
it) and ``resolve`` (the instances of a service, or every change with ``--watch``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .follow import follow
from .options import add_command, add_seconds, integer, positive_int, tag
from .output import Line, Output, plural
from .settings import EXIT_OK, Settings, probe

if TYPE_CHECKING:
    from ..instances import Instance
    from ..recipes.ephemeral import EphemeralEvent
    from ..resolver import ServiceInstances


def _add_registry_options(command: argparse.ArgumentParser) -> None:
    """Where the services live and how their values read."""
    command.add_argument(
        "--registry-prefix",
        default="kitex/registry-etcd",
        metavar="PREFIX",
        help="where services live (default: kitex/registry-etcd)",
    )
    command.add_argument(
        "--format",
        choices=("kitex", "etcd-endpoints"),
        default="kitex",
        help="value format (default: kitex)",
    )


def cmd_register(args: argparse.Namespace, settings: Settings) -> int:
    """``register SERVICE ADDRESS``: registered until Ctrl-C deregisters it."""
    from ..instances import Instance
    from ..registry import Registry

    out = settings.out
    instance = Instance(args.service, args.address, weight=args.weight, tags=dict(args.tag))
    with settings.connect() as conn:
        registry = Registry(conn, prefix=args.registry_prefix, ttl=args.ttl, format=args.format)
        registered = registry.register(instance)
        data = {"service": registered.service, **_instance_data(registered)}
        where = f"{registered.service} at {registered.address}"

        def show(event: EphemeralEvent) -> None:
            reason = f": {event.reason}" if event.reason else ""
            out.line(
                f"{event.status.value} {where}{reason}",
                {"event": event.status.value, "reason": event.reason, **data},
            )

        follow(
            out,
            registry.events,
            show,
            release=registry.close,
            started=Line(
                f"registered {registered.service} at {_instance_text(registered)} "
                f"(ttl {registry.ttl}s); Ctrl-C deregisters it",
                {"event": "REGISTERED", "ttl": registry.ttl, **data},
            ),
            released=Line(f"deregistered {where}", {"event": "DEREGISTERED", **data}),
        )
    return EXIT_OK


def cmd_resolve(args: argparse.Namespace, settings: Settings) -> int:
    """``resolve SERVICE [--watch]``: the instances (exit 1 when there is none), or
    every snapshot until Ctrl-C."""
    from ..resolver import Resolver

    out = settings.out
    with (
        settings.connect() as conn,
        Resolver(conn, prefix=args.registry_prefix, format=args.format) as resolver,
    ):
        probe(conn, f"{resolver.prefix}/{args.service}/")  # a clear error, not a timeout
        if not args.watch:
            out.show(_instances(args.service, resolver.resolve(args.service), None))
            return EXIT_OK
        follow(out, lambda: resolver.watch(args.service), lambda s: _show_snapshot(out, s))
    return EXIT_OK


def _show_snapshot(out: Output, snapshot: ServiceInstances) -> None:
    """Print one snapshot of ``resolve --watch``."""
    out.show(_instances(snapshot.service, snapshot.instances, snapshot.revision))


def _instances(service: str, instances: Sequence[Instance], revision: int | None) -> Line:
    """One line (JSON) or a header and a line per instance (text)."""
    data: dict[str, Any] = {"service": service}
    if revision is not None:
        data["revision"] = revision
    data["instances"] = [_instance_data(i) for i in instances]
    at = f" at revision {revision}" if revision is not None else ""
    lines = [f"{service}{at}: {plural(len(instances), 'instance')}"]
    lines += [f"  {_instance_text(i)}" for i in instances]
    return Line("\n".join(lines), data)


def _instance_data(instance: Instance) -> dict[str, Any]:
    """An instance for ``--json``."""
    return {
        "address": instance.address,
        "network": instance.network,
        "weight": instance.weight,
        "tags": dict(instance.tags),
    }


def _instance_text(instance: Instance) -> str:
    """``address weight=N tags=k=v,...``."""
    tags = ",".join(f"{k}={v}" for k, v in sorted(instance.tags.items()))
    return f"{instance.address} weight={instance.weight}" + (f" tags={tags}" if tags else "")


def register(commands: Any) -> None:
    """Add ``register`` and ``resolve``."""
    command = add_command(
        commands,
        "register",
        cmd_register,
        "register a service instance until Ctrl-C deregisters it",
    )
    command.add_argument("service", metavar="SERVICE")
    command.add_argument("address", metavar="ADDRESS", help="host:port")
    command.add_argument("--weight", type=integer, default=10, help="default: 10")
    command.add_argument(
        "--tag",
        type=tag,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a tag of the instance (repeatable)",
    )
    add_seconds(
        command, "--ttl", positive_int, "lease TTL (default: $KITEX_ETCD_REGISTRY_LEASE_TTL or 60)"
    )
    _add_registry_options(command)

    command = add_command(commands, "resolve", cmd_resolve, "print the instances of a service")
    command.add_argument("service", metavar="SERVICE")
    command.add_argument("--watch", action="store_true", help="print every change until Ctrl-C")
    _add_registry_options(command)

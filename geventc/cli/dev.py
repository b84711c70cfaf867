"""The development commands: ``serve`` (a throw-away local etcd until Ctrl-C) and
``demo`` (a measured fleet of instances, trackers, an election and configuration)."""

from __future__ import annotations

import argparse
import signal
from typing import Any

from .options import add_command, positive_int
from .settings import ENV_ENDPOINTS, CommandError, Interrupted, Settings


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """``serve``: a throw-away local etcd until Ctrl-C (its data goes with it)."""
    from ..testing.server import EtcdNotFound, EtcdServer

    out = settings.out
    try:
        server = EtcdServer(fsync=args.fsync)
        server.start()
    except (EtcdNotFound, RuntimeError) as exc:
        raise CommandError(f"could not start etcd: {exc}") from None
    try:
        process = server.members[0].process
        assert process is not None
        out.line(
            f"etcd serves at {server.endpoint} (pid {process.pid}, data deleted when it stops)"
            f"; Ctrl-C stops it\n  export {ENV_ENDPOINTS}={server.endpoint}",
            {"event": "SERVING", "endpoint": server.endpoint, "pid": process.pid},
        )
        code = process.wait()
        if code in (-signal.SIGINT, -signal.SIGTERM):  # Ctrl-C in a terminal reaches etcd too
            raise Interrupted(-code)
        raise CommandError(f"etcd exited with code {code}: {server.members[0].log_tail(3)}")
    finally:
        server.stop()
        out.line("etcd stopped", {"event": "STOPPED"})


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """``demo``: :func:`geventc.demo.run_demo` (it starts its own etcd when no
    endpoint was given); the sizes not given are the demo's defaults."""
    from ..demo import run_demo

    sizes = {"instances": args.instances, "trackers": args.trackers}
    return run_demo(
        settings.endpoints,
        namespace=settings.namespace,
        client_options=settings.client_options(),
        json_output=settings.json_output,
        **{name: size for name, size in sizes.items() if size is not None},
    )


def register(commands: Any) -> None:
    """Add ``serve`` and ``demo``."""
    command = add_command(
        commands,
        "serve",
        cmd_serve,
        "run a throw-away local etcd for development until Ctrl-C",
        connects=False,
    )
    command.add_argument(
        "--no-fsync",
        dest="fsync",
        action="store_false",
        help="faster, not durable (etcd --unsafe-no-fsync)",
    )

    command = add_command(
        commands,
        "demo",
        cmd_demo,
        "a fleet of instances, trackers, an election and live configuration, measured "
        "(starts its own etcd without --endpoints)",
    )
    command.add_argument(
        "--instances", type=positive_int, metavar="N", help="service instances (demo default)"
    )
    command.add_argument(
        "--trackers", type=positive_int, metavar="M", help="trackers (demo default)"
    )

"""The development commands: ``serve`` (a throw-away local etcd until Ctrl-C) and
``demo`` (a measured fleet of instances, trackers, an election and configuration)."""

from __future__ import annotations

import argparse
import signal
import socket
from typing import Any

from .options import add_command, port_number, positive_int
from .settings import ENV_ENDPOINTS, CommandError, Interrupted, Settings, UsageError


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """``serve [--port N]``: a throw-away local etcd until Ctrl-C (its data goes with
    it); the connection options are refused (it connects to no etcd)."""
    from ..testing.server import EtcdNotFound, EtcdServer

    _refuse_connection_options(args)
    out = settings.out
    if args.port is not None:
        _check_port_free(args.port)
    try:
        server = EtcdServer(fsync=args.fsync)
    except EtcdNotFound as exc:
        raise CommandError(f"could not start etcd: {exc}") from None
    if args.port is not None:
        server.members[0].client_port = args.port
    try:
        server.start()
    except RuntimeError as exc:
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


#: the connection options ``serve`` refuses: it starts an etcd and connects to none
SERVE_REFUSES = {
    "endpoints": "--endpoints",
    "namespace": "--namespace",
    "user": "--user",
    "ca_file": "--cacert",
    "cert_file": "--cert",
    "key_file": "--key",
}


def _refuse_connection_options(args: argparse.Namespace) -> None:
    """A usage error for a connection option given to ``serve`` (not silently
    ignored: ``--endpoints`` says where an etcd is, and ``serve`` starts one)."""
    given = [flag for dest, flag in SERVE_REFUSES.items() if getattr(args, dest, None) is not None]
    if given:
        raise UsageError(
            f"serve starts its own etcd and connects to none, so it takes no {given[0]} "
            "(that is for the other commands); choose its client port with --port N"
        )


def _check_port_free(port: int) -> None:
    """Fail now, saying so, when 127.0.0.1:``port`` is taken (etcd would exit, and a
    health check could reach whatever listens there instead)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise CommandError(
                f"cannot serve on port {port}: {exc.strerror or exc} (is another etcd "
                "running there? without --port, serve picks a free port)"
            ) from None


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
    command.add_argument(
        "--port",
        type=port_number,
        metavar="N",
        help="serve clients at http://127.0.0.1:N (default: a free port)",
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

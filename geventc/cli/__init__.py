"""The ``geventc`` command: etcd keys, watches, elections, services and health from a
shell.

Every subcommand takes the connection options (``--endpoints``, ``--namespace``,
``--user``, ``--cacert/--cert/--key``, ``--timeout``) and ``--json``, which prints one
JSON object per line instead of text for people. Long-running subcommands (``put
--ttl``, ``watch``, ``elect``, ``lock``, ``register``, ``resolve --watch``, ``health
--watch``, ``lease keep-alive``, ``serve``) run until Ctrl-C, then clean up (delete the
key, resign, release, deregister, stop etcd) and exit with 130.

Exit codes: 0 success; 1 an etcd error, a key that does not exist, an unhealthy
cluster; 2 a usage error (bad option, argument or endpoint); 3 a degraded cluster
(``health``); 130 Ctrl-C (143 SIGTERM).

gevent must patch the process before any socket is made, so :func:`main` patches it
first thing; neither this package nor ``import geventc`` loads a network module at
import time (the commands import what they use when they run).

One module per group of commands, each adding its subcommands with ``register``:
:mod:`.keys` (get, put, del, watch), :mod:`.txn` (txn), :mod:`.leases` (lease ...),
:mod:`.coordination` (elect, lock), :mod:`.queue` (queue ...), :mod:`.services`
(register, resolve), :mod:`.cluster` (health, member list, endpoint status|health) and
:mod:`.dev` (serve, demo). Connection failures are explained by :mod:`.diagnose`. They
share :mod:`.settings` (options, connection, errors), :mod:`.output` (rendering),
:mod:`.options` (the parser's parts), :mod:`.process` (gevent, signals, logging) and
:mod:`.follow` (the loop of the long-running commands).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys

from . import cluster, coordination, dev, keys, leases, queue, services, txn
from .options import Parser, add_common_options
from .process import configure_logging, interruptible, patch_gevent, stderr
from .settings import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    CommandError,
    UsageError,
    resolve_settings,
)

__all__ = ["build_parser", "main"]

#: The command modules, in the order ``--help`` lists their subcommands.
COMMAND_GROUPS = (keys, txn, leases, coordination, queue, services, cluster, dev)


def main(argv: list[str] | None = None) -> int:
    """Run the ``geventc`` command with ``argv`` (default: ``sys.argv[1:]``); returns
    the exit code."""
    patch_gevent()
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    trailing = None
    if "--" in argv:  # lock NAME [options] -- COMMAND ARGS: the command is not parsed
        split = argv.index("--")
        argv, trailing = argv[:split], argv[split + 1 :]
    try:
        args = parser.parse_args(argv)
        if trailing is not None:
            if not hasattr(args, "exec_command"):
                parser.error(f"'--' is for 'lock NAME -- COMMAND', not for {args.command!r}")
            args.exec_command = [*args.exec_command, *trailing]
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    configure_logging(args.verbose)
    return _run(args)


def build_parser() -> argparse.ArgumentParser:
    """The ``geventc`` argument parser with every subcommand."""
    from .. import __version__

    parser = Parser(
        prog=PROG,
        description="etcd v3 from the shell, over etcd's JSON gateway (geventc).",
        epilog="Exit codes: 0 ok, 1 etcd error or not found, 2 usage error, "
        "3 degraded cluster (health), 130 Ctrl-C (143 SIGTERM).",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    add_common_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; every failure becomes one line on stderr and an exit
    code."""
    from ..errors import EtcdError, InvalidArgument
    from .diagnose import explain

    settings = None
    try:
        settings = resolve_settings(args)
        with interruptible():
            return int(args.handler(args, settings))
    except KeyboardInterrupt as exc:
        return 128 + getattr(exc, "signum", signal.SIGINT)
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (UsageError, InvalidArgument) as exc:
        stderr(f"error: {exc}")
        return EXIT_USAGE
    except EtcdError as exc:
        defaulted = settings is not None and settings.endpoints is None
        stderr(f"error: {explain(exc, defaulted)}")
        return EXIT_FAILED
    except (CommandError, OSError) as exc:
        stderr(f"error: {exc}")
        return EXIT_FAILED

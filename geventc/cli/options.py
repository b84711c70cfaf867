"""The argument parser's shared parts: the types of option values, a parser whose
errors are one line, the connection and output options every command takes, and
how a command module adds a subcommand."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from .process import stderr
from .settings import DEFAULT_ENDPOINT, ENV_ENDPOINTS, ENV_PASSWORD, EXIT_USAGE, endpoint_urls

if TYPE_CHECKING:
    from .settings import Settings

T = TypeVar("T")

#: What runs a subcommand: the parsed arguments and settings in, the exit code out.
Handler = Callable[[argparse.Namespace, "Settings"], int]


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``geventc: error: ...``."""

    def error(self, message: str) -> NoReturn:
        stderr(f"error: {message} (see '{self.prog} --help')")
        raise SystemExit(EXIT_USAGE)


def add_command(
    commands: Any, name: str, handler: Handler, summary: str, *, connects: bool = True
) -> argparse.ArgumentParser:
    """Add subcommand ``name``, run by ``handler``, with the common options."""
    command: argparse.ArgumentParser = commands.add_parser(name, help=summary, description=summary)
    command.set_defaults(handler=handler, connects=connects)
    add_common_options(command, top=False)
    return command


def add_common_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The connection and output options, accepted before and after the subcommand
    (the subcommand's copy must not reset what was given before it)."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("connection and output options")
    group.add_argument(
        "--endpoints",
        type=endpoint_urls,
        default=default(None),
        metavar="URLS",
        help=f"comma-separated etcd URLs (default: ${ENV_ENDPOINTS}, else {DEFAULT_ENDPOINT})",
    )
    group.add_argument(
        "--namespace", default=default(None), metavar="NAME", help="keep every key under /NAME"
    )
    group.add_argument(
        "--user",
        default=default(None),
        metavar="NAME",
        help=f"authenticate as NAME; the password comes from ${ENV_PASSWORD} or a prompt",
    )
    _add_tls_options(group, default)
    add_seconds(
        group,
        "--timeout",
        positive_float,
        "bound of every etcd call, retries included (default: 5)",
        default=default(5.0),
    )
    group.add_argument(
        "--json", action="store_true", default=default(False), help="one JSON object per line"
    )
    group.add_argument(
        "-v", "--verbose", action="count", default=default(0), help="log more (repeatable)"
    )


def add_seconds(
    command: Any, flag: str, kind: Callable[[str], Any], summary: str, default: Any = None
) -> None:
    """Add option ``flag``, a number of ``SECONDS`` of type ``kind``."""
    command.add_argument(flag, type=kind, default=default, metavar="SECONDS", help=summary)


def _add_tls_options(group: Any, default: Callable[[Any], Any]) -> None:
    """``--cacert``, ``--cert`` and ``--key``."""
    for flag, dest, summary in (
        ("--cacert", "ca_file", "verify the servers with this CA bundle (https endpoints)"),
        ("--cert", "cert_file", "client certificate for mutual TLS (with --key)"),
        ("--key", "key_file", "private key of the client certificate"),
    ):
        group.add_argument(flag, dest=dest, default=default(None), metavar="FILE", help=summary)


# --- the types of option values -------------------------------------------------------


def positive_int(text: str) -> int:
    """A whole number of 1 or more."""
    return _checked(text, int, lambda value: value >= 1, "a positive integer")


def port_number(text: str) -> int:
    """A TCP port: 1 to 65535."""
    return _checked(text, int, lambda value: 1 <= value <= 65535, "a port (1..65535)")


def revision(text: str) -> int:
    """A revision: 0 or more."""
    return _checked(text, int, lambda value: value >= 0, "a revision (0 or more)")


def positive_float(text: str) -> float:
    """A finite number of seconds above 0."""
    return _checked(
        text, float, lambda value: 0 < value < float("inf"), "a positive number of seconds"
    )


def integer(text: str) -> int:
    """Any whole number."""
    return _checked(text, int, lambda value: True, "an integer")


def tag(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` (the value may be empty)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE, got {text!r}")
    return name, value


def _checked(text: str, convert: Callable[[str], T], ok: Callable[[T], bool], wants: str) -> T:
    """``convert(text)`` if it is ``ok``, else an error saying what it ``wants``."""
    try:
        value = convert(text)
    except ValueError:
        pass
    else:
        if ok(value):
            return value
    raise argparse.ArgumentTypeError(f"must be {wants}, got {text!r}")

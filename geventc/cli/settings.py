"""What one invocation says: the connection options (from the arguments and the
environment), the output mode, the errors that end a command, and the connector they
make."""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .output import Output

if TYPE_CHECKING:
    from ..connector import Connector
    from ..transport import TLSConfig

PROG = "geventc"
DEFAULT_ENDPOINT = "http://127.0.0.1:2379"
ENV_ENDPOINTS = "GEVENTC_ENDPOINTS"
ENV_PASSWORD = "GEVENTC_PASSWORD"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DEGRADED = 0, 1, 2, 3


class UsageError(Exception):
    """A bad option or argument found after parsing (exit code 2)."""


class CommandError(Exception):
    """A command failed for a reason that is not an etcd error (exit code 1)."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: unwind, clean up and exit with 128 + ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class Settings:
    """The connection options and the output mode of one invocation."""

    endpoints: list[str] | None  # None: neither --endpoints nor $GEVENTC_ENDPOINTS
    namespace: str | None
    timeout: float
    json_output: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TLSConfig | None = None
    out: Output = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.out = Output(self.json_output)

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for :class:`geventc.Client`."""
        options: dict[str, Any] = {
            "timeout": self.timeout,
            "connect_timeout": min(2.0, self.timeout),
        }
        if self.username is not None:
            options.update(username=self.username, password=self.password)
        if self.tls is not None:
            options["tls"] = self.tls
        return options

    def connect(self) -> Connector:
        """A connector with these options (the default endpoint when none was given)."""
        from ..connector import connect

        endpoints = self.endpoints or [DEFAULT_ENDPOINT]
        return connect(endpoints, namespace=self.namespace, **self.client_options())


def resolve_settings(args: argparse.Namespace) -> Settings:
    """The :class:`Settings` of the parsed arguments and the environment."""
    endpoints = args.endpoints
    if endpoints is None and os.environ.get(ENV_ENDPOINTS, "").strip():
        try:
            endpoints = endpoint_urls(os.environ[ENV_ENDPOINTS])
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"${ENV_ENDPOINTS}: {exc}") from None
    settings = Settings(endpoints, args.namespace, args.timeout, args.json)
    if args.connects:
        settings.tls = _tls(args)
        if args.user is not None:
            settings.username, settings.password = args.user, _password(args.user)
    return settings


def endpoint_urls(text: str) -> list[str]:
    """``--endpoints`` (and ``$GEVENTC_ENDPOINTS``): comma-separated URLs, checked and
    normalised."""
    from ..endpoints import parse_endpoints
    from ..errors import InvalidArgument

    try:
        return parse_endpoints(text)
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def probe(conn: Connector, key: str) -> int:
    """Read (the count of) ``key``'s range: fails fast on a bad connection or
    credentials, and returns the current revision."""
    return conn.get_prefix(key, count_only=True).header.revision


def _tls(args: argparse.Namespace) -> TLSConfig | None:
    """The TLS settings of ``--cacert``, ``--cert`` and ``--key`` (None: none given)."""
    from ..transport import TLSConfig

    files = {"--cacert": args.ca_file, "--cert": args.cert_file, "--key": args.key_file}
    if all(path is None for path in files.values()):
        return None
    for flag, path in files.items():
        if path is not None and not os.path.isfile(path):
            raise UsageError(f"{flag} {path!r} is not a readable file")
    if (args.cert_file is None) != (args.key_file is None):
        raise UsageError("--cert and --key go together: a client certificate and its key")
    return TLSConfig(ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file)


def _password(user: str) -> str:
    """The password of ``user``: ``$GEVENTC_PASSWORD``, else asked for on the terminal."""
    from_env = os.environ.get(ENV_PASSWORD)
    if from_env is not None:
        return from_env
    if not sys.stdin.isatty():
        raise UsageError(
            f"--user {user} needs a password: set ${ENV_PASSWORD} "
            "(stdin is not a terminal to ask for it)"
        )
    try:
        return getpass.getpass(f"password for {user}: ")
    except EOFError:
        raise UsageError(f"no password was given for --user {user}") from None

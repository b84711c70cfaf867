"""The ``geventc`` command: etcd keys, watches, elections, services and health from a
shell.

Every subcommand takes the connection options (``--endpoints``, ``--namespace``,
``--user``, ``--cacert/--cert/--key``, ``--timeout``) and ``--json``, which prints one
JSON object per line instead of text for people. Long-running subcommands (``put
--ttl``, ``watch``, ``elect``, ``register``, ``resolve --watch``, ``health --watch``,
``serve``) run until Ctrl-C, then clean up (delete the key, resign, deregister, stop
etcd) and exit with 130.

Exit codes: 0 success; 1 an etcd error, a key that does not exist, an unhealthy
cluster; 2 a usage error (bad option, argument or endpoint); 3 a degraded cluster
(``health``); 130 Ctrl-C (143 SIGTERM).

gevent must patch the process before any socket is made, so :func:`main` patches it
first thing; neither this module nor ``import geventc`` loads a network module at
import time.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import getpass
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from .staleness import Staleness

if TYPE_CHECKING:
    from .connector import Connector
    from .instances import Instance
    from .recipes.base import RecipeError, Release
    from .recipes.election import ElectionEvent
    from .recipes.health import ClusterHealth
    from .transport import TLSConfig
    from .wire import KeyValue

PROG = "geventc"
DEFAULT_ENDPOINT = "http://127.0.0.1:2379"
ENV_ENDPOINTS = "GEVENTC_ENDPOINTS"
ENV_PASSWORD = "GEVENTC_PASSWORD"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DEGRADED = 0, 1, 2, 3

Handler = Callable[[argparse.Namespace, "Settings"], int]


class UsageError(Exception):
    """A bad option or argument found after parsing (exit code 2)."""


class CommandError(Exception):
    """A command failed for a reason that is not an etcd error (exit code 1)."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: unwind, clean up and exit with 128 + ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# --- gevent ---------------------------------------------------------------------------


def patch_gevent() -> None:
    """Monkey-patch the process for gevent, once, before any socket exists
    (``import geventc`` loads no network module, so this is early enough)."""
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        monkey.patch_all()


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """While inside, SIGINT and SIGTERM raise :class:`Interrupted` in this greenlet
    (wherever it waits); a second signal exits at once without cleaning up."""
    import gevent

    target = gevent.getcurrent()
    hub = gevent.get_hub()
    armed, received = True, 0

    def deliver(signum: int) -> None:
        if armed:  # not once the block was left
            target.throw(Interrupted(signum))

    def on_signal(signum: int) -> None:
        nonlocal received
        received += 1
        if received > 1:
            _stderr("interrupted again: exiting without cleaning up")
            os._exit(128 + signum)
        hub.loop.run_callback(deliver, signum)  # thrown from the hub, as gevent.Timeout

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    handlers = [gevent.signal_handler(s, on_signal, s) for s in previous]
    try:
        yield
    finally:
        armed = False
        for handler in handlers:
            handler.cancel()
        for signum, old in previous.items():  # libev left SIG_DFL behind
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(signum, old)


# --- settings and output ----------------------------------------------------------------


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
        from .connector import connect

        endpoints = self.endpoints or [DEFAULT_ENDPOINT]
        return connect(endpoints, namespace=self.namespace, **self.client_options())


class Output:
    """Prints one line per result: text for people, or one JSON object (``--json``)."""

    def __init__(self, json_output: bool) -> None:
        self.json_output = json_output

    def line(self, text: str, data: dict[str, Any]) -> None:
        """Print ``text``, or ``data`` as JSON, and flush."""
        print(json.dumps(data) if self.json_output else text, flush=True)


def _stderr(message: str) -> None:
    """One ``geventc: ...`` line on stderr."""
    print(f"{PROG}: {' / '.join(message.splitlines()) or message}", file=sys.stderr, flush=True)


def _resolve_settings(args: argparse.Namespace) -> Settings:
    """The :class:`Settings` of the parsed arguments and the environment."""
    endpoints = args.endpoints
    if endpoints is None and os.environ.get(ENV_ENDPOINTS, "").strip():
        try:
            endpoints = _endpoints(os.environ[ENV_ENDPOINTS])
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"${ENV_ENDPOINTS}: {exc}") from None
    settings = Settings(endpoints, args.namespace, args.timeout, args.json)
    if args.connects:
        settings.tls = _tls(args)
        if args.user is not None:
            settings.username, settings.password = args.user, _password(args.user)
    return settings


def _tls(args: argparse.Namespace) -> TLSConfig | None:
    """The TLS settings of ``--cacert``, ``--cert`` and ``--key`` (None: none given)."""
    from .transport import TLSConfig

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


def _configure_logging(verbose: int) -> None:
    """Send the ``geventc`` log to stderr: warnings, or more with ``-v``/``-vv``."""
    logger = logging.getLogger("geventc")
    if not any(getattr(h, "geventc_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_LogFormatter())
        handler.geventc_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel({0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG))


class _LogFormatter(logging.Formatter):
    """``geventc: warning: message``."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{PROG}: {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


# --- argument types ---------------------------------------------------------------------


def _endpoints(text: str) -> list[str]:
    """``--endpoints``: comma-separated URLs, checked and normalised."""
    from .endpoints import parse_endpoints
    from .errors import InvalidArgument

    try:
        return parse_endpoints(text)
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _revision(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a revision (0 or more), got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _tag(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE, got {text!r}")
    return name, value


# --- the parser ---------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``geventc: error: ...``."""

    def error(self, message: str) -> NoReturn:
        _stderr(f"error: {message} (see '{self.prog} --help')")
        raise SystemExit(EXIT_USAGE)


def _add_common_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The connection and output options, accepted before and after the subcommand
    (the subcommand's copy must not reset what was given before it)."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("connection and output options")
    group.add_argument(
        "--endpoints",
        type=_endpoints,
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
    group.add_argument(
        "--cacert",
        dest="ca_file",
        default=default(None),
        metavar="FILE",
        help="verify the servers with this CA bundle (https endpoints)",
    )
    group.add_argument(
        "--cert",
        dest="cert_file",
        default=default(None),
        metavar="FILE",
        help="client certificate for mutual TLS (with --key)",
    )
    group.add_argument(
        "--key",
        dest="key_file",
        default=default(None),
        metavar="FILE",
        help="private key of the client certificate",
    )
    group.add_argument(
        "--timeout",
        type=_positive_float,
        default=default(5.0),
        metavar="SECONDS",
        help="bound of every etcd call, retries included (default: 5)",
    )
    group.add_argument(
        "--json", action="store_true", default=default(False), help="one JSON object per line"
    )
    group.add_argument(
        "-v", "--verbose", action="count", default=default(0), help="log more (repeatable)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``geventc`` argument parser with every subcommand."""
    from . import __version__

    parser = _Parser(
        prog=PROG,
        description="etcd v3 from the shell, over etcd's JSON gateway (geventc).",
        epilog="Exit codes: 0 ok, 1 etcd error or not found, 2 usage error, "
        "3 degraded cluster (health), 130 Ctrl-C (143 SIGTERM).",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_common_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (
        _add_get,
        _add_put,
        _add_del,
        _add_watch,
        _add_elect,
        _add_register,
        _add_resolve,
        _add_health,
        _add_serve,
        _add_demo,
    ):
        add(commands)
    return parser


def _command(
    commands: Any, name: str, handler: Handler, summary: str, *, connects: bool = True
) -> argparse.ArgumentParser:
    command: argparse.ArgumentParser = commands.add_parser(name, help=summary, description=summary)
    command.set_defaults(handler=handler, connects=connects)
    _add_common_options(command, top=False)
    return command


def _add_get(commands: Any) -> None:
    command = _command(
        commands, "get", cmd_get, "print the value of a key (or of every key under a prefix)"
    )
    command.add_argument("key", metavar="KEY")
    command.add_argument("--prefix", action="store_true", help="every key starting with KEY")


def _add_put(commands: Any) -> None:
    command = _command(commands, "put", cmd_put, "set a key; with --ttl keep it alive until Ctrl-C")
    command.add_argument("key", metavar="KEY")
    command.add_argument("value", metavar="VALUE")
    command.add_argument(
        "--ttl",
        type=_positive_int,
        metavar="SECONDS",
        help="an ephemeral key on a lease of SECONDS, kept alive until Ctrl-C deletes it",
    )


def _add_del(commands: Any) -> None:
    command = _command(commands, "del", cmd_del, "delete a key (or every key under a prefix)")
    command.add_argument("key", metavar="KEY")
    command.add_argument("--prefix", action="store_true", help="every key starting with KEY")


def _add_watch(commands: Any) -> None:
    command = _command(commands, "watch", cmd_watch, "print every change of a key until Ctrl-C")
    command.add_argument("key", metavar="KEY")
    command.add_argument("--prefix", action="store_true", help="every key starting with KEY")
    command.add_argument(
        "--rev", type=_revision, default=0, metavar="N", help="start at revision N (default: now)"
    )


def _add_elect(commands: Any) -> None:
    command = _command(commands, "elect", cmd_elect, "campaign to lead PATH until Ctrl-C resigns")
    command.add_argument("path", metavar="PATH")
    command.add_argument("identity", metavar="IDENTITY")
    command.add_argument(
        "--ttl",
        type=_positive_int,
        default=10,
        metavar="SECONDS",
        help="lease TTL of the candidacy (default: 10)",
    )


def _add_registry_options(command: argparse.ArgumentParser) -> None:
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


def _add_register(commands: Any) -> None:
    command = _command(
        commands,
        "register",
        cmd_register,
        "register a service instance until Ctrl-C deregisters it",
    )
    command.add_argument("service", metavar="SERVICE")
    command.add_argument("address", metavar="ADDRESS", help="host:port")
    command.add_argument("--weight", type=_integer, default=10, help="default: 10")
    command.add_argument(
        "--tag",
        type=_tag,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a tag of the instance (repeatable)",
    )
    command.add_argument(
        "--ttl",
        type=_positive_int,
        metavar="SECONDS",
        help="lease TTL (default: $KITEX_ETCD_REGISTRY_LEASE_TTL or 60)",
    )
    _add_registry_options(command)


def _add_resolve(commands: Any) -> None:
    command = _command(commands, "resolve", cmd_resolve, "print the instances of a service")
    command.add_argument("service", metavar="SERVICE")
    command.add_argument("--watch", action="store_true", help="print every change until Ctrl-C")
    _add_registry_options(command)


def _add_health(commands: Any) -> None:
    command = _command(
        commands,
        "health",
        cmd_health,
        "check every member (exit 0 healthy, 3 degraded, 1 unhealthy)",
    )
    command.add_argument("--watch", action="store_true", help="print every change until Ctrl-C")
    command.add_argument(
        "--interval",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between checks with --watch (default: 5)",
    )


def _add_serve(commands: Any) -> None:
    command = _command(
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


def _add_demo(commands: Any) -> None:
    command = _command(
        commands,
        "demo",
        cmd_demo,
        "a fleet of instances, trackers, an election and live configuration, measured "
        "(starts its own etcd without --endpoints)",
    )
    command.add_argument(
        "--instances", type=_positive_int, metavar="N", help="service instances (demo default)"
    )
    command.add_argument(
        "--trackers", type=_positive_int, metavar="M", help="trackers (demo default)"
    )


# --- shared pieces of the commands ----------------------------------------------------------


def _probe(conn: Connector, key: str) -> int:
    """Read (the count of) ``key``'s range: fails fast on a bad connection or
    credentials, and returns the current revision."""
    return conn.get_prefix(key, count_only=True).header.revision


def _problem(event: RecipeError) -> None:
    """A recipe's report: fatal ones end the command (non-fatal ones were logged)."""
    if event.fatal:
        raise event.error


def _released(release: Release, out: Output, text: str, data: dict[str, Any]) -> None:
    """Say ``text`` when etcd confirmed the release; else fail the command (exit 1)
    saying what is left and when it expires."""
    if release.confirmed:
        out.line(text, data)
        return
    raise CommandError(release.detail)


def _print_staleness(out: Output, event: Staleness) -> None:
    """A line saying the data went stale, or is current again."""
    if event.stale:
        text = f"STALE: not confirmed current for {event.age:.1f}s (revision {event.revision})"
    else:
        text = f"CURRENT again (revision {event.revision})"
    state = "STALE" if event.stale else "CURRENT"
    out.line(text, {"event": state, "age": round(event.age, 3), "revision": event.revision})


def _text(data: bytes, name: str) -> dict[str, str]:
    """``{name: text}``; bytes that are not UTF-8 also as ``{name}_base64``."""
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {
            name: data.decode("utf-8", "replace"),
            f"{name}_base64": base64.b64encode(data).decode(),
        }


def _kv_data(kv: KeyValue) -> dict[str, Any]:
    return {
        **_text(kv.key, "key"),
        **_text(kv.value, "value"),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "lease": kv.lease,
    }


def _instance_data(instance: Instance) -> dict[str, Any]:
    return {
        "address": instance.address,
        "network": instance.network,
        "weight": instance.weight,
        "tags": dict(instance.tags),
    }


def _instance_text(instance: Instance) -> str:
    tags = ",".join(f"{k}={v}" for k, v in sorted(instance.tags.items()))
    return f"{instance.address} weight={instance.weight}" + (f" tags={tags}" if tags else "")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


# --- key-value commands ---------------------------------------------------------------------


def cmd_get(args: argparse.Namespace, settings: Settings) -> int:
    """``get KEY [--prefix]``: the value, or ``key = value`` lines under a prefix."""
    out = settings.out
    with settings.connect() as conn:
        if args.prefix:
            kvs = conn.get_prefix(args.key).kvs
        else:
            kv = conn.get(args.key)
            if kv is None:
                raise CommandError(f"key {args.key!r} not found")
            kvs = (kv,)
    for kv in kvs:
        text = f"{kv.key_str} = {kv.value_str}" if args.prefix else kv.value_str
        out.line(text, _kv_data(kv))
    return EXIT_OK


def cmd_put(args: argparse.Namespace, settings: Settings) -> int:
    """``put KEY VALUE [--ttl N]``."""
    with settings.connect() as conn:
        if args.ttl is not None:
            return _put_ephemeral(conn, args, settings.out)
        revision = conn.put(args.key, args.value).header.revision
    settings.out.line(f"OK (revision {revision})", {"key": args.key, "revision": revision})
    return EXIT_OK


def _put_ephemeral(conn: Connector, args: argparse.Namespace, out: Output) -> int:
    """An ephemeral key kept alive until Ctrl-C, then deleted."""
    from .recipes.ephemeral import EphemeralEvent, EphemeralKey

    key = EphemeralKey(conn, args.key, overwrite=True)
    events = key.create(args.value, ttl=args.ttl)
    name = key.key.decode("utf-8", "replace")
    try:
        out.line(
            f"OK: {name} lives while this runs (ttl {args.ttl}s); Ctrl-C deletes it",
            {"event": "CREATED", "key": name, "ttl": args.ttl},
        )
        for event in events:
            if isinstance(event, Staleness):
                _print_staleness(out, event)
            elif isinstance(event, EphemeralEvent):
                reason = f": {event.reason}" if event.reason else ""
                out.line(
                    f"{event.status.value} {event.key}{reason}",
                    {"event": event.status.value, "key": event.key, "reason": event.reason},
                )
            else:
                _problem(event)
    finally:
        _released(key.delete(), out, f"deleted {name}", {"event": "DELETED", "key": name})
    return EXIT_OK


def cmd_del(args: argparse.Namespace, settings: Settings) -> int:
    """``del KEY [--prefix]``: how many keys were deleted."""
    with settings.connect() as conn:
        result = conn.delete_prefix(args.key) if args.prefix else conn.delete(args.key)
    settings.out.line(
        f"deleted {_plural(result.deleted, 'key')}",
        {"deleted": result.deleted, "revision": result.header.revision},
    )
    return EXIT_OK


def cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    """``watch KEY [--prefix] [--rev N]``: every change until Ctrl-C."""
    from .recipes.observer import WatchEvent
    from .wire import EventType

    out = settings.out
    with settings.connect() as conn:
        current = _probe(conn, args.key)  # a clear error now rather than retries later
        start = args.rev or current + 1
        observer = conn.observer(args.key)
        try:
            changes = observer.start(start_revision=start, recursive=args.prefix)
            scope = " and every key under it" if args.prefix else ""
            out.line(
                f"watching {args.key}{scope} from revision {start}; Ctrl-C stops",
                {"event": "WATCHING", "key": args.key, "prefix": args.prefix, "revision": start},
            )
            for event in changes:
                if isinstance(event, Staleness):
                    _print_staleness(out, event)
                    continue
                if not isinstance(event, WatchEvent):
                    _problem(event)
                    continue
                shown = f" = {event.value_str}" if event.type is EventType.PUT else ""
                data: dict[str, Any] = {"event": event.type.value, "key": event.key}
                data.update(_text(event.value, "value"), revision=event.revision)
                if event.prev_value is not None:
                    data.update(_text(event.prev_value, "prev_value"))
                out.line(f"{event.type.value} {event.key}{shown} (revision {event.revision})", data)
        finally:
            observer.stop()
    return EXIT_OK


# --- coordination commands ------------------------------------------------------------------


def cmd_elect(args: argparse.Namespace, settings: Settings) -> int:
    """``elect PATH IDENTITY [--ttl N]``: each status change until Ctrl-C resigns."""
    from .recipes.election import ElectionEvent

    out = settings.out
    with settings.connect() as conn:
        elector = conn.leader_elector(args.path, args.identity, ttl=args.ttl)
        path = elector.path.decode("utf-8", "replace")
        _probe(conn, path + "/")
        try:
            for event in elector.start():
                if isinstance(event, ElectionEvent):
                    out.line(_election_text(event), _election_data(event, path))
                else:
                    _problem(event)
        finally:
            resigned = elector.stop()
            _released(resigned, out, f"resigned from {path}", {"event": "RESIGNED", "path": path})
    return EXIT_OK


def _election_text(event: ElectionEvent) -> str:
    status = event.status.value
    if status == "LEADER":
        return f"LEADER (fencing token {event.fencing_token})"
    text = f"{status} (leader: {event.leader or 'none'})" + (" STALE" if event.stale else "")
    return text + (f": {event.error}" if event.error else "")


def _election_data(event: ElectionEvent, path: str) -> dict[str, Any]:
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


def cmd_register(args: argparse.Namespace, settings: Settings) -> int:
    """``register SERVICE ADDRESS``: registered until Ctrl-C deregisters it."""
    from .instances import Instance
    from .recipes.ephemeral import EphemeralEvent
    from .registry import Registry

    out = settings.out
    instance = Instance(args.service, args.address, weight=args.weight, tags=dict(args.tag))
    with settings.connect() as conn:
        registry = Registry(conn, prefix=args.registry_prefix, ttl=args.ttl, format=args.format)
        registered = registry.register(instance)
        data = {"service": registered.service, **_instance_data(registered)}
        try:
            out.line(
                f"registered {registered.service} at {_instance_text(registered)} "
                f"(ttl {registry.ttl}s); Ctrl-C deregisters it",
                {"event": "REGISTERED", "ttl": registry.ttl, **data},
            )
            for event in registry.events():
                if isinstance(event, Staleness):
                    _print_staleness(out, event)
                elif isinstance(event, EphemeralEvent):
                    reason = f": {event.reason}" if event.reason else ""
                    out.line(
                        f"{event.status.value} {registered.service} at {registered.address}"
                        + reason,
                        {"event": event.status.value, "reason": event.reason, **data},
                    )
                else:
                    _problem(event)
        finally:
            _released(
                registry.close(),
                out,
                f"deregistered {registered.service} at {registered.address}",
                {"event": "DEREGISTERED", **data},
            )
    return EXIT_OK


def cmd_resolve(args: argparse.Namespace, settings: Settings) -> int:
    """``resolve SERVICE [--watch]``: the instances (exit 1 when there is none), or
    every snapshot until Ctrl-C."""
    from .resolver import Resolver

    out = settings.out
    with (
        settings.connect() as conn,
        Resolver(conn, prefix=args.registry_prefix, format=args.format) as resolver,
    ):
        _probe(conn, f"{resolver.prefix}/{args.service}/")  # a clear error, not a timeout
        if not args.watch:
            _print_instances(out, args.service, resolver.resolve(args.service), None)
            return EXIT_OK
        for snapshot in resolver.watch(args.service):
            _print_instances(out, snapshot.service, snapshot.instances, snapshot.revision)
    return EXIT_OK


def _print_instances(
    out: Output, service: str, instances: Sequence[Instance], revision: int | None
) -> None:
    """One line (JSON) or a header and a line per instance (text)."""
    data: dict[str, Any] = {"service": service}
    if revision is not None:
        data["revision"] = revision
    data["instances"] = [_instance_data(i) for i in instances]
    at = f" at revision {revision}" if revision is not None else ""
    lines = [f"{service}{at}: {_plural(len(instances), 'instance')}"]
    lines += [f"  {_instance_text(i)}" for i in instances]
    out.line("\n".join(lines), data)


def cmd_health(args: argparse.Namespace, settings: Settings) -> int:
    """``health [--watch]``: exit 0 HEALTHY, 3 DEGRADED, 1 UNHEALTHY."""
    from .recipes.health import ClusterHealth, ClusterStatus

    out = settings.out
    last: ClusterHealth | None = None
    with settings.connect() as conn:
        monitor = conn.health_monitor()
        try:
            for event in monitor.start(once=not args.watch, interval=args.interval):
                if isinstance(event, ClusterHealth):
                    last = event
                    out.line(_health_text(event), _health_data(event))
                else:
                    _problem(event)
        finally:
            monitor.stop()
    if last is None:
        raise CommandError("the health check gave no result")
    codes = {ClusterStatus.HEALTHY: EXIT_OK, ClusterStatus.DEGRADED: EXIT_DEGRADED}
    return codes.get(last.status, EXIT_FAILED)


def _health_text(health: ClusterHealth) -> str:
    lines = [health.status.value]
    for m in health.members:
        state = "healthy" if m.healthy else "unhealthy"
        role = ", leader" if m.leader else ""
        error = f": {m.error}" if m.error else ""
        lines.append(f"  {m.name} {m.endpoint or '-'} {state}{role}{error}")
    return "\n".join(lines)


def _health_data(health: ClusterHealth) -> dict[str, Any]:
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


# --- development commands -------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """``serve``: a throw-away local etcd until Ctrl-C (its data goes with it)."""
    from .testing.server import EtcdNotFound, EtcdServer

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
    from .demo import run_demo

    sizes = {"instances": args.instances, "trackers": args.trackers}
    return run_demo(
        settings.endpoints,
        namespace=settings.namespace,
        client_options=settings.client_options(),
        json_output=settings.json_output,
        **{name: size for name, size in sizes.items() if size is not None},
    )


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the ``geventc`` command with ``argv`` (default: ``sys.argv[1:]``); returns
    the exit code."""
    patch_gevent()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    _configure_logging(args.verbose)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; every failure becomes one line on stderr and an exit
    code."""
    from .errors import EtcdError, InvalidArgument

    try:
        settings = _resolve_settings(args)
        with interruptible():
            return int(args.handler(args, settings))
    except KeyboardInterrupt as exc:
        return 128 + getattr(exc, "signum", signal.SIGINT)
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (UsageError, InvalidArgument) as exc:
        _stderr(f"error: {exc}")
        return EXIT_USAGE
    except (EtcdError, CommandError, OSError) as exc:
        _stderr(f"error: {exc}")
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover - use python -m geventc
    sys.exit(main())

"""``txn``: one atomic transaction read from stdin in etcdctl's format, printed as
etcdctl prints it.

The input has three parts, each ended by a blank line (or the end of the input):
the comparisons, the requests run if every comparison holds, the requests run
otherwise::

    mod("key1") > "0"

    put key1 "overwrote-key1"

    put key1 "created-key1"
    put key2 "some extra key"

A comparison is ``TARGET("KEY") OP "VALUE"``: TARGET one of ``ver``/``version``,
``c``/``create``, ``m``/``mod``, ``val``/``value``, ``lease`` (an ID in hex); OP one
of ``=``, ``!=``, ``<``, ``>``; KEY and VALUE Go-quoted strings. A request is an
etcdctl command line: ``put KEY VALUE [--lease=ID] [--prev-kv]``, ``get KEY
[--prefix] [--limit N] [--rev N] [--keys-only] [--count-only] [--consistency=s]``,
``del KEY [--prefix] [--prev-kv]``; words are split as etcdctl splits them (double
quotes with Go escapes, single quotes verbatim).

The output is ``SUCCESS`` or ``FAILURE``, then for each request a blank line and its
result: ``OK`` for a put, the count for a delete, ``key`` and ``value`` lines for a get
(the previous key-values with ``--prev-kv``). ``--json``: one object.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NoReturn

from .keys import kv_data
from .leases import lease_id
from .options import add_command
from .settings import EXIT_OK, Settings, UsageError

if TYPE_CHECKING:
    from ..txn import Comparison, TxnOp
    from ..wire import TxnResult

#: etcdctl's word splitting (``Argify``): a double-quoted string with escapes, a
#: single-quoted one, or a bare word
WORDS = re.compile(r""""(?:[^"\\]|\\.)*"|'[^']*'|[^'"\s]\S*[^'"\s]?""")
COMPARE_TARGETS = {
    "ver": "version",
    "version": "version",
    "c": "create_revision",
    "create": "create_revision",
    "m": "mod_revision",
    "mod": "mod_revision",
    "val": "value",
    "value": "value",
    "lease": "lease",
}
COMPARE_OPS = ("=", "!=", "<", ">")
PROMPTS = ("compares:", "success requests (get, put, del):", "failure requests (get, put, del):")
_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
}


class TxnSyntaxError(ValueError):
    """A line of the transaction cannot be read."""


def cmd_txn(args: argparse.Namespace, settings: Settings) -> int:
    """``txn [-i]``: read the transaction from stdin, run it, print its outcome."""
    out = settings.out
    lines = read_lines(sys.stdin.fileno())
    number = 0
    parts: list[list[Any]] = []
    for prompt, parse in zip(PROMPTS, (parse_compare, parse_request, parse_request), strict=True):
        if args.interactive:
            print(prompt, file=sys.stderr if out.json_output else sys.stdout, flush=True)
        part: list[Any] = []
        for line in lines:  # up to a blank line or the end of the input
            number += 1
            if not line.strip():
                break
            try:
                part.append(parse(line.strip()))
            except TxnSyntaxError as exc:
                raise UsageError(f"txn line {number}: {exc}") from None
        parts.append(part)
    for line in lines:
        number += 1
        if line.strip():
            raise UsageError(f"txn line {number}: unexpected input after the failure requests")
    with settings.connect() as conn:
        result = conn.txn(*parts)
    show_result(result, settings)
    return EXIT_OK


def read_lines(fd: int) -> Iterator[str]:
    """The lines of ``fd`` as text, read cooperatively (a terminal waiting for input
    does not stop the hub, so Ctrl-C still interrupts)."""
    from gevent.socket import wait_read

    buffer = b""
    while True:
        while b"\n" not in buffer:
            with contextlib.suppress(OSError):  # an fd the loop cannot watch: read it
                wait_read(fd)
            chunk = os.read(fd, 65536)
            if not chunk:
                if buffer:
                    yield buffer.decode("utf-8", "surrogateescape")
                return
            buffer += chunk
        line, buffer = buffer.split(b"\n", 1)
        yield line.decode("utf-8", "surrogateescape")


# --- parsing --------------------------------------------------------------------------


def go_unquote(text: str) -> tuple[str, str]:
    """The Go-quoted string (``"..."`` with Go's escapes, or ```...``` raw) at the
    start of ``text``, and what follows it. Text holds bytes as this module reads them
    (UTF-8, other bytes as surrogates), so ``\\xff`` is the byte 0xff, as in Go."""
    if text.startswith("`"):
        end = text.find("`", 1)
        if end < 0:
            raise TxnSyntaxError(f"unterminated raw string: {text}")
        return text[1:end], text[end + 1 :]
    if not text.startswith('"'):
        raise TxnSyntaxError(f"expected a quoted string at {text!r}")
    out = bytearray()
    i = 1
    while i < len(text):
        c = text[i]
        if c == '"':
            return out.decode("utf-8", "surrogateescape"), text[i + 1 :]
        if c != "\\":
            out += c.encode("utf-8", "surrogateescape")
            i += 1
            continue
        escape = text[i + 1 : i + 2]
        if escape in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[escape].encode()
            i += 2
        elif escape in ("x", "u", "U"):
            width = {"x": 2, "u": 4, "U": 8}[escape]
            digits = text[i + 2 : i + 2 + width]
            if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise TxnSyntaxError(f"bad \\{escape} escape in {text!r}")
            code = int(digits, 16)
            if escape == "x":
                out.append(code)
            elif code > 0x10FFFF or 0xD800 <= code < 0xE000:
                raise TxnSyntaxError(f"bad \\{escape} escape in {text!r}")
            else:
                out += chr(code).encode()
            i += 2 + width
        elif escape and escape in "01234567":
            digits = text[i + 1 : i + 4]
            if len(digits) != 3 or not all(d in "01234567" for d in digits) or int(digits, 8) > 255:
                raise TxnSyntaxError(f"bad octal escape in {text!r}")
            out.append(int(digits, 8))
            i += 4
        else:
            raise TxnSyntaxError(f"bad escape \\{escape} in {text!r}")
    raise TxnSyntaxError(f"unterminated string: {text}")


def raw(text: str) -> bytes:
    """The bytes of a word or string as read (see :func:`go_unquote`)."""
    return text.encode("utf-8", "surrogateescape")


def split_words(line: str) -> list[str]:
    """``line`` split into words as etcdctl splits a request line."""
    words = []
    for word in WORDS.findall(line):
        if word.startswith("'"):
            words.append(word[1:-1])
        elif word.startswith('"'):
            value, rest = go_unquote(word)
            if rest:
                raise TxnSyntaxError(f"bad quoting in {word!r}")
            words.append(value)
        else:
            words.append(word)
    return words


def parse_compare(line: str) -> Comparison:
    """One comparison line: ``TARGET("KEY") OP "VALUE"``."""
    from ..errors import InvalidArgument
    from ..txn import Compare

    target, paren, rest = line.partition("(")
    if not paren or target.strip() not in COMPARE_TARGETS:
        known = ", ".join(sorted(set(COMPARE_TARGETS)))
        raise TxnSyntaxError(
            f'malformed comparison: {line} (a comparison is TARGET("KEY") OP "VALUE", '
            f"TARGET one of {known})"
        )
    key, rest = go_unquote(rest.lstrip())
    rest = rest.lstrip()
    if not rest.startswith(")"):
        raise TxnSyntaxError(f"malformed comparison: {line} (no ')' after the key)")
    op, _, rest = rest[1:].strip().partition(" ")
    if op not in COMPARE_OPS:
        raise TxnSyntaxError(f"malformed comparison: {line} (OP must be one of = != < >)")
    value, rest = go_unquote(rest.strip())
    if rest.strip():
        raise TxnSyntaxError(f"malformed comparison: {line} (unexpected {rest.strip()!r})")
    kind = COMPARE_TARGETS[target.strip()]
    operand: Any = raw(value)
    try:
        if kind == "lease":
            operand = lease_id(value) if value not in ("0", "") else 0
        elif kind != "value":
            operand = int(value, 10)
    except (ValueError, argparse.ArgumentTypeError):
        raise TxnSyntaxError(
            f"invalid txn compare request: {line} (bad number {value!r})"
        ) from None
    subject = getattr(Compare, kind)(raw(key))
    try:
        if op == "=":
            return subject == operand  # type: ignore[no-any-return]
        if op == "!=":
            return subject != operand  # type: ignore[no-any-return]
        return subject < operand if op == "<" else subject > operand  # type: ignore[no-any-return]
    except InvalidArgument as exc:
        raise TxnSyntaxError(f"invalid txn compare request: {line} ({exc})") from None


class _RequestParser(argparse.ArgumentParser):
    """The parser of one request line: its errors are :class:`TxnSyntaxError`."""

    def error(self, message: str) -> NoReturn:
        raise TxnSyntaxError(message)


def _request_parser() -> _RequestParser:
    """``put``, ``get`` and ``del`` with the options of etcdctl's that geventc runs."""
    parser = _RequestParser(prog="txn", add_help=False)
    requests = parser.add_subparsers(dest="request", required=True, parser_class=_RequestParser)
    put = requests.add_parser("put", add_help=False)
    put.add_argument("key")
    put.add_argument("value")
    put.add_argument("--lease", type=_lease_or_zero, default=0)
    put.add_argument("--prev-kv", action="store_true")
    get = requests.add_parser("get", add_help=False)
    get.add_argument("key")
    get.add_argument("--prefix", action="store_true")
    get.add_argument("--limit", type=int, default=0)
    get.add_argument("--rev", type=int, default=0)
    get.add_argument("--keys-only", action="store_true")
    get.add_argument("--count-only", action="store_true")
    get.add_argument("--consistency", choices=("l", "s"), default="l")
    delete = requests.add_parser("del", add_help=False)
    delete.add_argument("key")
    delete.add_argument("--prefix", action="store_true")
    delete.add_argument("--prev-kv", action="store_true")
    return parser


def _lease_or_zero(text: str) -> int:
    """``--lease``: a lease ID in hex, or 0 for none (etcdctl's default)."""
    return 0 if text == "0" else lease_id(text)


def parse_request(line: str) -> TxnOp:
    """One request line: ``put``, ``get`` or ``del`` as etcdctl's."""
    from ..errors import InvalidArgument
    from ..txn import Op

    words = split_words(line)
    if len(words) < 2:
        raise TxnSyntaxError(f"invalid txn request: {line} (put KEY VALUE, get KEY or del KEY)")
    try:
        parsed = _request_parser().parse_args(words)
    except TxnSyntaxError as exc:
        raise TxnSyntaxError(f"invalid txn request: {line} ({exc})") from None
    try:
        if parsed.request == "put":
            return Op.put(raw(parsed.key), raw(parsed.value), lease=parsed.lease or None,
                          prev_kv=parsed.prev_kv)  # fmt: skip
        if parsed.request == "del":
            return Op.delete(raw(parsed.key), prefix=parsed.prefix, prev_kv=parsed.prev_kv)
        if parsed.keys_only and parsed.count_only:
            raise TxnSyntaxError("--keys-only and --count-only cannot be set at the same time")
        return Op.get(
            raw(parsed.key),
            prefix=parsed.prefix,
            limit=parsed.limit,
            revision=parsed.rev,
            keys_only=parsed.keys_only,
            count_only=parsed.count_only,
            serializable=parsed.consistency == "s",
        )
    except InvalidArgument as exc:
        raise TxnSyntaxError(f"invalid txn request: {line} ({exc})") from None


# --- output ---------------------------------------------------------------------------


def show_result(result: TxnResult, settings: Settings) -> None:
    """``SUCCESS``/``FAILURE`` and each request's result, as etcdctl prints them."""
    from ..wire import DeleteResult, PutResult, RangeResult

    lines = ["SUCCESS" if result.succeeded else "FAILURE"]
    responses: list[dict[str, Any]] = []
    for response in result.responses:
        lines.append("")
        if isinstance(response, PutResult):
            lines.append("OK")
            prev = [] if response.prev_kv is None else [response.prev_kv]
            lines += _kv_lines(prev)
            responses.append({"op": "put", "revision": response.header.revision,
                              "prev_kvs": [kv_data(kv) for kv in prev]})  # fmt: skip
        elif isinstance(response, DeleteResult):
            lines.append(str(response.deleted))
            lines += _kv_lines(response.prev_kvs)
            responses.append({"op": "del", "deleted": response.deleted,
                              "prev_kvs": [kv_data(kv) for kv in response.prev_kvs]})  # fmt: skip
        elif isinstance(response, RangeResult):
            lines += _kv_lines(response.kvs)
            responses.append({"op": "get", "count": response.count, "more": response.more,
                              "kvs": [kv_data(kv) for kv in response.kvs]})  # fmt: skip
        else:  # pragma: no cover - the parser makes no nested transaction
            lines.append(f"unexpected response {response!r}")
    data = {
        "succeeded": result.succeeded,
        "revision": result.header.revision,
        "responses": responses,
    }
    settings.out.line("\n".join(lines), data)


def _kv_lines(kvs: Any) -> list[str]:
    """etcdctl's ``key`` then ``value`` lines."""
    return [text for kv in kvs for text in (kv.key_str, kv.value_str)]


def register(commands: Any) -> None:
    """Add ``txn``."""
    command = add_command(
        commands,
        "txn",
        cmd_txn,
        "run one transaction read from stdin, in etcdctl's format (see --help)",
    )
    command.epilog = (
        'stdin: comparisons such as mod("k") > "0", a blank line, the requests '
        "(put/get/del as etcdctl's) run if they all hold, a blank line, the requests run "
        "otherwise"
    )
    command.add_argument(
        "-i",
        "--interactive",
        action="store_true",
        help="prompt for each part (as etcdctl txn -i)",
    )

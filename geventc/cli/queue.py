"""The queue command: ``queue put``, ``queue take`` and ``queue claim`` on a Queue (or,
with ``--priority``/``--priority-queue``, a PriorityQueue) shared with Go's recipes.

- ``queue put PATH VALUE [--priority N]``: append an item (``--priority`` 0..65535:
  to a priority queue, 0 served first); prints ``OK KEY (revision N)``.
- ``queue take PATH [--wait S] [--priority-queue]``: remove the first item and print
  its value (at most once); waits for one up to ``--wait`` seconds (default: until
  there is one, or Ctrl-C); no item in time: exit 1.
- ``queue claim PATH [--wait S] [--priority-queue] [--ttl N] [--exec COMMAND]``: at
  least once. Without ``--exec`` it prints the item's value, then acks it (deletes
  it). With ``--exec`` it runs COMMAND with ``/bin/sh -c``, the value on its stdin
  (and ``GEVENTC_QUEUE_KEY``, ``GEVENTC_QUEUE_PATH`` in its environment), while the
  claim is held on a lease of ``--ttl`` seconds: exit status 0 acks the item; any
  other status gives the item back to the queue (it is served next) and becomes this
  command's exit status (128 + N for a signal). Ctrl-C stops COMMAND (SIGTERM, then
  SIGKILL after 5 s) and gives the item back (exit 130). A claim lost before the ack
  (its lease expired) fails with exit 1 and says what happened.

The common ``--timeout`` bounds each etcd call; ``--wait`` is how long to wait for an
item. ``--json`` prints one object per line: ``put``: ``{"key", "revision",
"priority"}``; ``take``: the item (``{"path", "key", "value", "revision",
"priority"}``); ``claim``: ``{"event": "CLAIMED", ...item}``, then ``{"event": "ACKED"}``
or ``{"event": "RELEASED", "exit_code": N}`` with the key (``"LOST"`` instead when the
claim had ended before it could be given back).
"""

from __future__ import annotations

import argparse
import os
import signal
from typing import TYPE_CHECKING, Any

from .options import add_command, add_seconds, positive_int
from .output import Output, text_field
from .settings import EXIT_OK, CommandError, Settings, probe

if TYPE_CHECKING:
    from ..connector import Connector
    from ..recipes.queue import ClaimedItem, PriorityQueue, Queue, QueueItem

#: How long a command that outlives its claim's end (Ctrl-C) gets after SIGTERM.
COMMAND_GRACE = 5.0


def cmd_put(args: argparse.Namespace, settings: Settings) -> int:
    """``queue put PATH VALUE [--priority N]``."""
    with settings.connect() as conn:
        if args.priority is None:
            item = conn.queue(args.path).put(args.value)
        else:
            item = conn.priority_queue(args.path).put(args.value, args.priority)
    settings.out.line(
        f"OK {item.key_str} (revision {item.revision})",
        {"key": item.key_str, "revision": item.revision, "priority": item.priority},
    )
    return EXIT_OK


def cmd_take(args: argparse.Namespace, settings: Settings) -> int:
    """``queue take PATH [--wait S]``: the first item's value, removed."""
    with settings.connect() as conn:
        queue = _queue(conn, args)
        path = _path(queue)
        probe(conn, path + "/")  # a clear error now rather than a wait on a dead watch
        try:
            item = queue.take(timeout=args.wait)
        finally:
            queue.stop()
    if item is None:
        raise CommandError(f"no item in {path} within {args.wait:g}s")
    settings.out.line(item.value_str, _item_data(item, path))
    return EXIT_OK


def cmd_claim(args: argparse.Namespace, settings: Settings) -> int:
    """``queue claim PATH [--wait S] [--exec COMMAND]``: print (or process with
    COMMAND) the first item, then ack it."""
    out = settings.out
    with settings.connect() as conn:
        queue = _queue(conn, args, ttl=args.ttl)
        path = _path(queue)
        probe(conn, path + "/")
        try:
            item = queue.claim(timeout=args.wait)
            if item is None:
                raise CommandError(f"no item in {path} within {args.wait:g}s")
            code = _process(item, path, args.run, out)
        finally:
            release = queue.stop()  # gives back a claim not acked (Ctrl-C, a failure)
        if not release.confirmed:
            raise CommandError(release.detail)
    return code


def _process(item: ClaimedItem, path: str, command: str | None, out: Output) -> int:
    """Print or run ``command`` on a claimed item; ack on success, else give it back."""
    data = _item_data(item.item, path)
    if not command:
        out.line(item.value_str, {"event": "CLAIMED", **data})
        item.ack()
        if out.json_output:
            out.line("", {"event": "ACKED", "path": path, "key": item.item.key_str})
        return EXIT_OK
    if out.json_output:
        out.line("", {"event": "CLAIMED", **data})
    code = _run(command, item, path)
    key = item.item.key_str
    if code == 0:
        item.ack()
        out.line(f"acked {key}", {"event": "ACKED", "path": path, "key": key})
        return EXIT_OK
    given_back = item.release()
    how = "released" if given_back else "could not release (the claim had ended)"
    out.line(
        f"{how} {key}: the command exited with {code}",
        {
            "event": "RELEASED" if given_back else "LOST",
            "path": path,
            "key": key,
            "exit_code": code,
        },
    )
    return code


def _run(command: str, item: ClaimedItem, path: str) -> int:
    """Run ``command`` (``/bin/sh -c``) with the item's value on stdin; its exit status
    (128 + N when a signal ended it). If this command is interrupted, the child gets
    SIGTERM (then SIGKILL after a grace) before the interruption goes on."""
    child = _start(command, {"GEVENTC_QUEUE_KEY": item.item.key_str, "GEVENTC_QUEUE_PATH": path})
    try:
        child.communicate(item.value)
    except BaseException:
        _end(child)
        raise
    code: int = child.returncode
    return code if code >= 0 else 128 - code


def _start(command: str, extra: dict[str, str]) -> Any:
    """``/bin/sh -c command`` with ``extra`` in its environment. Started in a greenlet
    of its own: a Ctrl-C that comes while it starts does not leave the child running
    unseen (it is waited for, then ended)."""
    import subprocess

    import gevent

    env = {**os.environ, **extra}
    starting = gevent.spawn(
        subprocess.Popen, ["/bin/sh", "-c", command], stdin=subprocess.PIPE, env=env
    )
    try:
        return starting.get()
    except OSError as exc:
        raise CommandError(f"cannot run /bin/sh: {exc.strerror or exc}") from None
    except BaseException:
        starting.join()
        if starting.successful():
            _end(starting.value)
        raise


def _end(child: Any) -> None:
    """SIGTERM ``child``, SIGKILL it after :data:`COMMAND_GRACE` seconds."""
    import subprocess

    if child.poll() is not None:
        return
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=COMMAND_GRACE)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _queue(conn: Connector, args: argparse.Namespace, ttl: int = 10) -> Queue | PriorityQueue:
    if args.priority_queue:
        return conn.priority_queue(args.path, ttl=ttl)
    return conn.queue(args.path, ttl=ttl)


def _path(queue: Queue | PriorityQueue) -> str:
    return queue.path.decode("utf-8", "replace")


def _item_data(item: QueueItem, path: str) -> dict[str, Any]:
    """An item for ``--json``."""
    return {
        "path": path,
        **text_field(item.key, "key"),
        **text_field(item.value, "value"),
        "revision": item.revision,
        "priority": item.priority,
    }


def priority(text: str) -> int:
    """A priority: 0 (served first) to 65535."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a priority from 0 to 65535, got {text!r}")
    return value


def wait_seconds(text: str) -> float:
    """A wait: 0 (only what is there now) or more seconds."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text!r}")
    return value


def _add_taking_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("path", metavar="PATH")
    add_seconds(
        command,
        "--wait",
        wait_seconds,
        "how long to wait for an item (default: until there is one; 0: only now)",
    )
    command.add_argument(
        "--priority-queue",
        action="store_true",
        help="PATH is a priority queue (lowest priority number first)",
    )


def _no_action(args: argparse.Namespace, settings: Settings) -> int:  # pragma: no cover
    raise CommandError("queue needs an action: put, take or claim")


def register(commands: Any) -> None:
    """Add ``queue`` with its actions ``put``, ``take`` and ``claim``."""
    queue = add_command(
        commands, "queue", _no_action, "put, take or claim the items of a queue (Go's recipes)"
    )
    actions = queue.add_subparsers(dest="action", metavar="ACTION", required=True)

    command = add_command(actions, "put", cmd_put, "append VALUE to the queue at PATH")
    command.add_argument("path", metavar="PATH")
    command.add_argument("value", metavar="VALUE")
    command.add_argument(
        "--priority",
        type=priority,
        metavar="N",
        help="put into the priority queue at PATH with priority N (0..65535, 0 first)",
    )

    command = add_command(
        actions, "take", cmd_take, "remove the first item of PATH and print its value"
    )
    _add_taking_options(command)

    command = add_command(
        actions,
        "claim",
        cmd_claim,
        "claim the first item of PATH, print it (or --exec a command on it), then ack it",
    )
    _add_taking_options(command)
    add_seconds(command, "--ttl", positive_int, "lease TTL of the claim (default: 10)", default=10)
    command.add_argument(
        "--exec",
        dest="run",
        metavar="COMMAND",
        help="run COMMAND (with /bin/sh -c) on the item, its value on stdin: exit status 0 "
        "acks the item, any other gives it back and is this command's exit status",
    )

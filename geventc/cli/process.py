"""What the command does to its own process: patch it for gevent, turn SIGINT and
SIGTERM into :class:`~geventc.cli.settings.Interrupted`, send the ``geventc`` log and
its own messages to stderr."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator

from .settings import PROG, Interrupted


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
            stderr("interrupted again: exiting without cleaning up")
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


def stderr(message: str) -> None:
    """One ``geventc: ...`` line on stderr."""
    print(f"{PROG}: {' / '.join(message.splitlines()) or message}", file=sys.stderr, flush=True)


def configure_logging(verbose: int) -> None:
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

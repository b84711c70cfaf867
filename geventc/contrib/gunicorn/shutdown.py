"""The master's shutdown flag: how the workers tell a shutdown from a restart.

One page of memory shared by the gunicorn master and every worker it forks (an
anonymous ``MAP_SHARED`` mapping, made when this module is imported, i.e. when the
master reads the config file). :meth:`ShutdownFlag.arm` runs in the master
(``when_ready``, ``on_reload``) and raises the flag as soon as the master receives a
signal after which gunicorn always stops its workers for good (SIGTERM, SIGINT,
SIGQUIT): gunicorn's own handler runs right after, so the flag is up before any worker
is signalled. A worker stopped for a restart (HUP reload, TTOU, ``max_requests``, a
timeout) sees it down.
"""

from __future__ import annotations

import mmap
import os
import signal
from types import FrameType
from typing import Any

#: The signals after which a gunicorn master stops its workers for good.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)

_ARMED, _STOPPING = 0, 1


class ShutdownFlag:
    """Whether the master was armed, and whether it began to stop for good."""

    def __init__(self) -> None:
        self._page = mmap.mmap(-1, 2)

    @property
    def armed(self) -> bool:
        """True once :meth:`arm` ran in the master."""
        return self._page[_ARMED] == 1

    @property
    def stopping(self) -> bool:
        """True once the master began to stop its workers for good."""
        return self._page[_STOPPING] == 1

    def arm(self) -> None:
        """In the master, after gunicorn installed its signal handlers: raise the flag
        when a stop signal arrives, then let gunicorn's handler run (idempotent)."""
        self._page[_ARMED] = 1
        for signum in STOP_SIGNALS:
            handler = signal.getsignal(signum)
            if callable(handler) and not isinstance(handler, _RaiseThen):
                signal.signal(signum, _RaiseThen(self, os.getpid(), handler))

    def set_stopping(self) -> None:
        """Mark the master stopping."""
        self._page[_STOPPING] = 1


class _RaiseThen:
    """A master's stop-signal handler: raise the flag, then call gunicorn's handler."""

    def __init__(self, flag: ShutdownFlag, master: int, handler: Any) -> None:
        self._flag = flag
        self._master = master
        self._handler = handler

    def __call__(self, signum: int, frame: FrameType | None) -> Any:
        if os.getpid() == self._master:  # not a worker that has not installed its own yet
            self._flag.set_stopping()
        return self._handler(signum, frame)


#: The flag of this master and its workers.
FLAG = ShutdownFlag()

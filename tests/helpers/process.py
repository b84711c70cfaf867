"""Recipes in a process of their own, for tests of a participant that dies: SIGKILL
leaves its lease to expire, as a crashed process would."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import gevent


@contextmanager
def python_process(source: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """``source`` run by a new Python interpreter with ``args`` as its
    ``sys.argv[1:]``, stdin and stdout piped as text; killed (if it still runs) and
    waited for when the block ends."""
    process = subprocess.Popen(
        [sys.executable, "-c", source, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def next_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The process's next stdout line, without its line end; fails after ``timeout``
    seconds."""
    assert process.stdout is not None
    with gevent.Timeout(timeout, AssertionError(f"no line from the process in {timeout}s")):
        return process.stdout.readline().rstrip("\n")

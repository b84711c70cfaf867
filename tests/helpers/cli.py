"""Running the ``geventc`` command in tests, as a real subprocess: to its end
(:func:`run`) or line by line (:class:`Running`), in an environment without the
caller's ``GEVENTC_*`` variables."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent

COMMAND = [sys.executable, "-m", "geventc"]


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without any GEVENTC_* variable (but the etcd builds
    ``GEVENTC_ETCD_PATH`` that ``ETCD_VERSION`` chooses from), plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GEVENTC_") or k == "GEVENTC_ETCD_PATH"
    }
    env.update(extra)
    return env


@dataclass
class Done:
    """A finished command."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> list[dict[str, Any]]:
        """Every stdout line as a JSON object."""
        return [json.loads(line) for line in self.stdout.splitlines()]


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``geventc ARGS`` with no stdin and piped text output (``env`` defaults to
    :func:`environment`)."""
    return subprocess.Popen(
        [*COMMAND, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or environment(),
    )


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 20.0) -> Done:
    """Run ``geventc ARGS`` to its end (at most ``timeout`` seconds)."""
    process = start(*args, env=env)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"geventc {' '.join(args)} ran for more than {timeout}s") from None
    return Done(process.returncode, stdout, stderr)


class Running:
    """A long-running ``geventc`` command whose output is read line by line."""

    def __init__(self, args: tuple[str, ...], env: dict[str, str] | None) -> None:
        self.args = args
        self.process = start(*args, env=env)

    def line(self, timeout: float = 10.0) -> str:
        """The next stdout line; fails after ``timeout`` seconds or when it exited."""
        assert self.process.stdout is not None
        failure = AssertionError(f"geventc {' '.join(self.args)}: no line within {timeout}s")
        with gevent.Timeout(timeout, failure):
            line = self.process.stdout.readline()
        if not line:
            done = self.finish()
            raise AssertionError(f"geventc exited with {done.code}: {done.stderr}")
        return line.rstrip("\n")

    def json(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next stdout line as a JSON object."""
        return json.loads(self.line(timeout))  # type: ignore[no-any-return]

    def json_until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> Any:
        """Read JSON lines until one satisfies ``predicate``; return it."""
        deadline = time.monotonic() + timeout
        while True:
            data = self.json(max(0.01, deadline - time.monotonic()))
            if predicate(data):
                return data

    def interrupt(self, signum: int = signal.SIGINT, timeout: float = 10.0) -> Done:
        """Send ``signum`` (Ctrl-C) and wait for the end."""
        self.process.send_signal(signum)
        return self.finish(timeout)

    def finish(self, timeout: float = 10.0) -> Done:
        """Wait for the end and return the rest of the output."""
        try:
            stdout, stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"geventc {' '.join(self.args)} did not stop") from None
        return Done(self.process.returncode, stdout, stderr)

    def kill(self) -> None:
        """SIGKILL the command if it still runs."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


def assert_error_line(stderr: str, *fragments: str) -> None:
    """stderr is one ``geventc: error: ...`` line containing every fragment."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("geventc: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], stderr

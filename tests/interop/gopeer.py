"""Building and driving the Go interop peer (``tests/interop/peer``).

The peer is one Go program using etcd's own ``client/v3`` and ``concurrency`` packages
at the versions pinned in ``tests/interop/go.mod``/``go.sum``. Each subcommand prints
JSON lines (``{"event": ..., "time": ..., ...}``) on stdout; :class:`GoPeer` runs one as
a subprocess and reads those lines with deadlines. Used by the interop tests and by
``measure_require_leader.py``; cooperative under gevent whether or not it is patched.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gevent
from gevent import subprocess
from gevent.event import Event

INTEROP = Path(__file__).resolve().parent
BINARY = INTEROP / "bin" / "peer"
BUILD_TIMEOUT = 900.0  # a first build downloads the pinned modules


class GoMissing(RuntimeError):
    """The ``go`` command is not on PATH and no up-to-date peer binary exists."""


class PeerError(AssertionError):
    """A Go peer did not print what was expected in time, exited, or reported an error."""


def sources() -> list[Path]:
    """The files the peer binary is built from."""
    return [INTEROP / "go.mod", INTEROP / "go.sum", *sorted((INTEROP / "peer").glob("*.go"))]


def is_fresh(binary: Path, built_from: Sequence[Path]) -> bool:
    """True when ``binary`` exists and is newer than every file of ``built_from``."""
    if not binary.exists():
        return False
    built = binary.stat().st_mtime
    return all(source.stat().st_mtime <= built for source in built_from)


def build_go_program(
    module: Path,
    package: str,
    binary: Path,
    built_from: Sequence[Path],
    timeout: float = BUILD_TIMEOUT,
) -> Path:
    """``binary``, built from ``package`` of the Go ``module`` with ``go build
    -mod=readonly`` unless it is newer than every file of ``built_from``.

    Raises :class:`GoMissing` when it must be built and ``go`` is not on PATH, and
    ``RuntimeError`` (with go's output) when the build fails. The binary is replaced
    atomically: a concurrent run never sees half of it.
    """
    if is_fresh(binary, built_from):
        return binary
    where = module.relative_to(INTEROP.parent.parent) / package
    go = shutil.which("go")
    if go is None:
        raise GoMissing(f"the `go` command is not on PATH (needed to build {where})")
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(f".{binary.name}.{os.getpid()}")
    result = subprocess.run(
        [go, "build", "-mod=readonly", "-o", str(partial), package],
        cwd=module,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise RuntimeError(f"go build of {where} failed:\n{result.stderr}")
    partial.replace(binary)
    return binary


def binary_is_fresh(binary: Path = BINARY) -> bool:
    """True when ``binary`` exists and is newer than every source file."""
    return is_fresh(binary, sources())


def build_peer(binary: Path = BINARY, timeout: float = BUILD_TIMEOUT) -> Path:
    """The peer binary (``tests/interop/peer``): :func:`build_go_program`."""
    return build_go_program(INTEROP, "./peer", binary, sources(), timeout)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGKILL the peer when the test process dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def peer_args(command: str, flags: Mapping[str, Any]) -> list[str]:
    """``[command, --flag, value, ...]``; a list of endpoints is joined with commas."""
    args = [command]
    for name, value in flags.items():
        if isinstance(value, list | tuple):
            value = ",".join(value)
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


class GoPeer:
    """One running Go peer subcommand and the JSON lines it has printed."""

    def __init__(self, binary: Path, command: str, **flags: Any) -> None:
        self.command = command
        self.args = peer_args(command, flags)
        self.lines: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._cursor: dict[str, int] = {}
        self._changed = Event()
        self.process = subprocess.Popen(
            [str(binary), *self.args],
            stdin=subprocess.PIPE,  # closing it (or our death) stops the peer
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        self._readers = [gevent.spawn(self._read_stdout), gevent.spawn(self._read_stderr)]

    def __repr__(self) -> str:
        return f"GoPeer({' '.join(self.args)!r}, pid={self.process.pid})"

    # --- reading -----------------------------------------------------------------------

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            text = raw.decode(errors="replace").strip()
            if not text:
                continue
            try:
                line = json.loads(text)
            except ValueError:
                line = {"event": "unparsed", "text": text}
            self.lines.append(line)
            self._changed.set()
        self._changed.set()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            self.stderr.append(raw.decode(errors="replace").rstrip())
            del self.stderr[:-50]

    @property
    def finished(self) -> bool:
        """True once the peer exited and all of its stdout was read."""
        return self.process.poll() is not None and self._readers[0].ready()

    def _describe(self) -> str:
        tail = "\n".join(self.stderr[-10:])
        return f"{self!r} printed {self.lines}; exit {self.process.poll()}; stderr:\n{tail}"

    def _take(self, event: str) -> dict[str, Any] | None:
        start = self._cursor.get(event, 0)
        for index in range(start, len(self.lines)):
            line = self.lines[index]
            if line.get("event") == "error" and event != "error":
                raise PeerError(
                    f"the Go peer reported an error: {line.get('error')}; {self._describe()}"
                )
            if line.get("event") == event:
                self._cursor[event] = index + 1
                return line
        return None

    def expect(self, event: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next line with this ``event`` (each event name is read in order on its
        own); :class:`PeerError` when it does not come within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._take(event)
            if line is not None:
                return line
            if self.finished:  # its last lines may have been read while it was checked
                line = self._take(event)
                if line is not None:
                    return line
                raise PeerError(f"the Go peer ended without printing {event!r}; {self._describe()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PeerError(
                    f"no {event!r} from the Go peer within {timeout} s; {self._describe()}"
                )
            self._changed.clear()  # no greenlet switch since _take: no lost wake-up
            self._changed.wait(remaining)

    def assert_quiet(self, event: str, seconds: float, reason: str = "") -> None:
        """Wait ``seconds`` (a bounded window) and fail at once if ``event`` is printed
        in it: for the things that must *not* happen, such as a second leader;
        ``reason`` says what it would mean."""
        deadline = time.monotonic() + seconds
        while True:
            line = self._take(event)
            if line is not None:
                raise PeerError(
                    f"{reason or 'unexpected'}: the Go peer printed {line} (it must not); "
                    f"{self._describe()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.finished:
                return
            self._changed.clear()
            self._changed.wait(remaining)

    # --- commands ----------------------------------------------------------------------

    def send(self, line: str) -> None:
        """Write one command line to the peer's stdin (``campaign-proclaim`` reads
        ``proclaim VALUE``); :class:`PeerError` when the peer has exited."""
        stdin = self.process.stdin
        if stdin is None or self.process.poll() is not None:
            raise PeerError(f"the Go peer is not running; {self._describe()}")
        try:
            stdin.write(line.encode() + b"\n")
            stdin.flush()
        except OSError as exc:
            raise PeerError(f"writing to the Go peer failed: {exc}; {self._describe()}") from exc

    # --- ending ------------------------------------------------------------------------

    def wait(self, timeout: float = 10.0) -> int:
        """The exit status once the peer has exited and its output is read."""
        code = self.process.wait(timeout=timeout)
        gevent.joinall(self._readers, timeout=timeout)
        return code

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (the peer resigns or unlocks and revokes its lease), then wait."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGKILL if still running, then reap; never raises."""
        with contextlib.suppress(OSError):
            if self.process.poll() is None:
                self.process.kill()
        with contextlib.suppress(Exception):
            self.process.wait(timeout=5)
        gevent.killall(self._readers, timeout=5)
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            with contextlib.suppress(Exception):
                if pipe is not None:
                    pipe.close()


class GoPeers:
    """Starts Go peers from one binary and ends every one of them in :meth:`close`."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary
        self._peers: list[GoPeer] = []

    def start(self, command: str, **flags: Any) -> GoPeer:
        """A running peer subcommand, e.g. ``start("campaign", endpoints=..., path=...)``."""
        peer = GoPeer(self.binary, command, **flags)
        self._peers.append(peer)
        return peer

    def run(self, command: str, timeout: float = 20.0, **flags: Any) -> list[dict[str, Any]]:
        """Run a one-shot subcommand (such as ``leader``) to its end; its JSON lines.
        :class:`PeerError` when it fails or does not end within ``timeout`` seconds."""
        peer = self.start(command, **flags)
        try:
            code = peer.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise PeerError(
                f"the Go peer did not end within {timeout} s; {peer._describe()}"
            ) from exc
        if code != 0:
            raise PeerError(f"the Go peer failed; {peer._describe()}")
        return peer.lines

    def close(self, grace: float = 5.0) -> None:
        """End every peer: SIGTERM (clean resign) with a grace period, then SIGKILL."""
        peers, self._peers = self._peers, []
        for peer in peers:
            with contextlib.suppress(OSError):
                if peer.process.poll() is None:
                    peer.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for peer in peers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                peer.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            peer.kill()


def only(lines: Sequence[dict[str, Any]], event: str) -> dict[str, Any]:
    """The single line with this ``event`` among ``lines``."""
    matches = [line for line in lines if line.get("event") == event]
    if len(matches) != 1:
        raise PeerError(f"expected one {event!r} line, got {list(lines)!r}")
    return matches[0]

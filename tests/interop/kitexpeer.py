"""Building the Kitex interop peer (``tests/interop/kitex``, binary ``bin/kitexpeer``).

The peer is a Go program using the real ``github.com/kitex-contrib/registry-etcd``
(registry and resolver) at the versions pinned in ``tests/interop/kitex/go.mod`` and
``go.sum``, a module of its own so that Kitex's dependencies never touch the etcd peer's
pins. It is driven with :class:`gopeer.GoPeers` like the etcd peer (JSON lines on
stdout). :func:`build_kitex_peer` is :func:`gopeer.build_peer` for this module (copied:
that one builds ``./peer`` of ``tests/interop`` only).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from gevent import subprocess
from gopeer import BUILD_TIMEOUT, INTEROP, GoMissing

MODULE = INTEROP / "kitex"
BINARY = INTEROP / "bin" / "kitexpeer"


def sources() -> list[Path]:
    """The files the Kitex peer binary is built from."""
    return [MODULE / "go.mod", MODULE / "go.sum", *sorted(MODULE.glob("*.go"))]


def binary_is_fresh(binary: Path = BINARY) -> bool:
    """True when ``binary`` exists and is newer than every source file."""
    if not binary.exists():
        return False
    built = binary.stat().st_mtime
    return all(source.stat().st_mtime <= built for source in sources())


def build_kitex_peer(binary: Path = BINARY, timeout: float = BUILD_TIMEOUT) -> Path:
    """The Kitex peer binary, built with ``go build -mod=readonly`` unless it is up to date.

    Raises :class:`gopeer.GoMissing` when it must be built and ``go`` is not on PATH, and
    ``RuntimeError`` (with go's output) when the build fails.
    """
    if binary_is_fresh(binary):
        return binary
    go = shutil.which("go")
    if go is None:
        raise GoMissing("the `go` command is not on PATH (needed to build tests/interop/kitex)")
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(f".{binary.name}.{os.getpid()}")
    result = subprocess.run(
        [go, "build", "-mod=readonly", "-o", str(partial), "."],
        cwd=MODULE,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise RuntimeError(f"go build of tests/interop/kitex failed:\n{result.stderr}")
    partial.replace(binary)  # atomic: a concurrent run never sees half a binary
    return binary

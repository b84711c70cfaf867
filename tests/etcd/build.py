"""Build (or fetch) the etcd releases of the test matrix into ``tests/etcd/bin``.

    python tests/etcd/build.py            # every release: 3.4 3.5 3.6 3.7 3.6-failpoints
    python tests/etcd/build.py 3.6 3.7    # some of them
    python tests/etcd/build.py 3.6-failpoints

- **3.5, 3.6, 3.7**: etcd's own server, ``go.etcd.io/etcd/server/v3/etcdmain``, built
  from the module proxy at the version pinned in ``v3.X/go.mod``/``go.sum``
  (``go build -mod=readonly``). etcd 3.4 predates that module layout.
- **3.6-failpoints**: the same etcd 3.6.16 with etcd's own failpoints compiled in
  (``failpoints/``, see :func:`build_failpoints`): installed as
  ``bin/etcd-3.6.16-failpoints``; ``ETCD_VERSION=3.6-failpoints`` chooses it, plain
  ``ETCD_VERSION=3.6`` never does (:mod:`geventc.testing.releases`).
- **3.4**: Debian's ``etcd-server`` package (``apt-get download`` + ``dpkg-deb -x``,
  nothing installed system-wide, so ``etcd`` on PATH stays the default release).

Binaries are cached in ``$XDG_CACHE_HOME/geventc/etcd`` (default ``~/.cache``), keyed
by the release and a hash of its sources, so a fresh clone copies them instead of
linking etcd again. Each result is checked with its own ``etcd --version``. Then
``ETCD_VERSION=3.6 pytest-gevent`` runs the suite on it (``tests/conftest.py`` offers
``tests/etcd/bin`` to :mod:`geventc.testing.releases`).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = HERE / "bin"
RELEASES = ("3.4", "3.5", "3.6", "3.7", "3.6-failpoints")
#: the failpoints tests/test_failpoints.py and the chaos harness trigger: the build
#: fails if the rewritten sources lack one of them
USED_FAILPOINTS = (
    "raftBeforeSave",
    "raftAfterSave",
    "beforeApplyOneEntryNormal",
    "beforeCommit",
    "afterCommit",
)
#: the comment gofail rewrites (``// gofail: var NAME TYPE``; labels too)
_GOFAIL_COMMENT = re.compile(rb"//\s*gofail:\s*var\s+(\w+)")
#: the file name suffix of a failpoint build (``geventc.testing.releases`` knows it)
FAILPOINTS_SUFFIX = "-failpoints"
#: the Debian package of the 3.4 line (bookworm's ``etcd-server``)
DEBIAN_PACKAGE = "etcd-server"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "geventc" / "etcd"


def reported_version(binary: Path) -> str:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True)
    match = re.search(r"etcd Version: (\S+)", out.stdout)
    if not match:
        raise SystemExit(f"{binary} printed no etcd version:\n{out.stdout}{out.stderr}")
    return match.group(1)


def pinned_version(module_dir: Path) -> str:
    text = (module_dir / "go.mod").read_text()
    match = re.search(r"go\.etcd\.io/etcd/server/v3 v(\S+)", text)
    if not match:
        raise SystemExit(f"{module_dir}/go.mod pins no go.etcd.io/etcd/server/v3")
    return match.group(1)


def install(source: Path, release: str, suffix: str = "") -> Path:
    """Copy ``source`` to ``bin/etcd-<release><suffix>`` (replacing an older build)."""
    BIN.mkdir(exist_ok=True)
    target = BIN / f"etcd-{release}{suffix}"
    tmp = target.with_suffix(".tmp")
    shutil.copy2(source, tmp)
    os.replace(tmp, target)
    return target


def build_go(minor: str) -> Path:
    module = HERE / f"v{minor}"
    version = pinned_version(module)
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((module / name).read_bytes())
    cached = cache_root() / f"{version}-{digest.hexdigest()[:12]}" / "etcd"
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".partial")
        env = {**os.environ, "CGO_ENABLED": "0"}
        print(f"building etcd {version} from the module proxy (v{minor}/go.mod) ...", flush=True)
        subprocess.run(
            ["go", "build", "-mod=readonly", "-trimpath", "-o", str(partial), "."],
            cwd=module,
            env=env,
            check=True,
        )
        os.replace(partial, cached)
    got = reported_version(cached)
    if got != version:
        raise SystemExit(f"etcd built from v{minor}/go.mod reports {got}, not {version}")
    return install(cached, version)


def _go_json(args: list[str], cwd: Path) -> dict[str, object]:
    out = subprocess.run(["go", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"go {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _gofail_directories(server: Path) -> tuple[list[Path], set[str]]:
    """The package directories of ``server`` holding ``// gofail:`` comments, and the
    failpoint names declared there."""
    directories: set[Path] = set()
    names: set[str] = set()
    for source in server.rglob("*.go"):
        if source.name.endswith("_test.go"):
            continue
        found = _GOFAIL_COMMENT.findall(source.read_bytes())
        if found:
            directories.add(source.parent)
            names.update(name.decode() for name in found)
    return sorted(directories), names


def build_failpoints() -> Path:
    """etcd at ``failpoints/go.mod``'s pin with etcd's own failpoints compiled in.

    In a temporary copy of ``failpoints/`` (``go.mod``, ``go.sum``, ``main.go``):

    1. build the pinned gofail (``go build -mod=readonly go.etcd.io/gofail``: the
       ``tool`` line of go.mod, its sum in go.sum);
    2. copy ``go.etcd.io/etcd/server/v3`` out of the module cache (``go mod download``,
       checked against go.sum) into ``server/`` and run ``gofail enable`` on every
       package directory holding a ``// gofail:`` comment: they become failpoints of
       gofail's runtime, which ``GOFAIL_HTTP`` and ``GOFAIL_FAILPOINTS`` drive;
    3. require gofail in the copy's go.mod, ``replace`` the server module with the copy
       and ``go build -mod=readonly -trimpath``: every other module is the one go.sum
       pins.

    The build fails unless the sources declare every name of :data:`USED_FAILPOINTS`,
    the binary reports the pinned version and ``go version -m`` shows the replacement.
    Cached like the others (key: the three files and this function's source).
    """
    module = HERE / "failpoints"
    version = pinned_version(module)
    gofail = re.search(r"go\.etcd\.io/gofail (v\S+)", (module / "go.mod").read_text())
    if not gofail:
        raise SystemExit(f"{module}/go.mod pins no go.etcd.io/gofail")
    digest = hashlib.sha256(inspect.getsource(build_failpoints).encode())
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((module / name).read_bytes())
    cached = cache_root() / f"{version}-failpoints-{digest.hexdigest()[:12]}" / "etcd"
    if not cached.exists():
        print(f"building etcd {version} with failpoints (gofail {gofail.group(1)}) ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="geventc-etcd-failpoints-") as tmp:
            work = Path(tmp)
            for name in ("go.mod", "go.sum", "main.go"):
                shutil.copy2(module / name, work / name)
            env = {**os.environ, "CGO_ENABLED": "0"}
            go = partial(subprocess.run, cwd=work, env=env, check=True)
            go(["go", "build", "-mod=readonly", "-o", str(work / "gofail"), "go.etcd.io/gofail"])
            info = _go_json(["mod", "download", "-json", "go.etcd.io/etcd/server/v3"], work)
            server = work / "server"
            shutil.copytree(str(info["Dir"]), server)
            for path in (server, *server.rglob("*")):
                path.chmod(path.stat().st_mode | 0o200)  # the module cache is read-only
            directories, names = _gofail_directories(server)
            missing = sorted(set(USED_FAILPOINTS) - names)
            if missing:
                raise SystemExit(f"go.etcd.io/etcd/server/v3@v{version} has no failpoint {missing}")
            go([str(work / "gofail"), "enable", *map(str, directories)])
            go(["go", "mod", "edit", f"-require=go.etcd.io/gofail@{gofail.group(1)}"], cwd=server)
            go(["go", "mod", "edit", "-replace=go.etcd.io/etcd/server/v3=./server"])
            partial_binary = work / "etcd"
            go(["go", "build", "-mod=readonly", "-trimpath", "-o", str(partial_binary), "."])
            deps = subprocess.run(
                ["go", "version", "-m", str(partial_binary)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            if not re.search(r"=>\s+\./server\s", deps):
                raise SystemExit(f"the failpoint build does not use the rewritten server:\n{deps}")
            cached.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(partial_binary, cached.with_suffix(".partial"))
            os.replace(cached.with_suffix(".partial"), cached)
    got = reported_version(cached)
    if got != version:
        raise SystemExit(f"etcd built from failpoints/go.mod reports {got}, not {version}")
    return install(cached, version, FAILPOINTS_SUFFIX)


def _apt_download(directory: str) -> None:
    command = ["apt-get", "download", "-q", DEBIAN_PACKAGE]
    if subprocess.run(command, cwd=directory, capture_output=True).returncode == 0:
        return
    update = ["apt-get", "update", "-qq"]
    if os.geteuid() != 0 and shutil.which("sudo"):
        update = ["sudo", "-n", *update]
    subprocess.run(update, check=True)
    subprocess.run(command, cwd=directory, check=True)


def fetch_debian() -> Path:
    with tempfile.TemporaryDirectory(prefix="geventc-etcd-deb-") as tmp:
        os.chmod(tmp, 0o777)  # apt's sandbox user writes the download here
        _apt_download(tmp)
        (deb,) = glob.glob(os.path.join(tmp, f"{DEBIAN_PACKAGE}_*.deb"))
        cached = cache_root() / Path(deb).stem / "etcd"
        if not cached.exists():
            unpacked = os.path.join(tmp, "root")
            subprocess.run(["dpkg-deb", "-x", deb, unpacked], check=True)
            cached.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.join(unpacked, "usr", "bin", "etcd"), cached)
    version = reported_version(cached)
    if not version.startswith("3.4."):
        raise SystemExit(f"Debian's {DEBIAN_PACKAGE} is etcd {version}, not a 3.4 release")
    return install(cached, version)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("releases", nargs="*", metavar="RELEASE", help=" ".join(RELEASES))
    args = parser.parse_args(argv)
    unknown = sorted(set(args.releases) - set(RELEASES))
    if unknown:
        parser.error(f"unknown release {', '.join(unknown)}: choose from {' '.join(RELEASES)}")
    for release in args.releases or RELEASES:
        if release == "3.4":
            binary = fetch_debian()
        elif release == "3.6-failpoints":
            binary = build_failpoints()
        else:
            binary = build_go(release)
        print(f"etcd {reported_version(binary)}: {binary}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

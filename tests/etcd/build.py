"""Build (or fetch) the etcd releases of the test matrix into ``tests/etcd/bin``.

    python tests/etcd/build.py            # every release: 3.4 3.5 3.6 3.7
    python tests/etcd/build.py 3.6 3.7    # some of them

- **3.5, 3.6, 3.7**: etcd's own server, ``go.etcd.io/etcd/server/v3/etcdmain``, built
  from the module proxy at the version pinned in ``v3.X/go.mod``/``go.sum``
  (``go build -mod=readonly``). etcd 3.4 predates that module layout.
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
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = HERE / "bin"
RELEASES = ("3.4", "3.5", "3.6", "3.7")
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


def install(source: Path, release: str) -> Path:
    """Copy ``source`` to ``bin/etcd-<release>`` (replacing an older build)."""
    BIN.mkdir(exist_ok=True)
    target = BIN / f"etcd-{release}"
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
        binary = fetch_debian() if release == "3.4" else build_go(release)
        print(f"etcd {reported_version(binary)}: {binary}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

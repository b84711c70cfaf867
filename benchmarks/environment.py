"""The facts needed to read the figures: machine, software versions, etcd set-up.

Not run on its own: ``python benchmarks/run.py`` calls :func:`describe`.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

DISTRIBUTIONS = (
    "geventc",
    "gevent",
    "greenlet",
    "urllib3",
    "etcd3gw",
    "requests",
    "etcd3",
    "grpcio",
    "protobuf",
)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float:
    """Total memory from /proc/meminfo, in GiB."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def filesystem(path: str) -> str:
    """The file system type and device holding ``path`` (from /proc/mounts)."""
    best = ("", "?", "?")
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                device, point, kind = line.split()[:3]
                inside = path == point or path.startswith(point.rstrip("/") + "/")
                if inside and len(point) > len(best[0]):
                    best = (point, kind, device)
    except OSError:
        pass
    return f"{best[1]} on {best[2]}"


def versions() -> dict[str, str]:
    """Installed versions of geventc, its peers and what they run on."""
    found = {}
    for name in DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def go_versions() -> str:
    """The Go toolchain and the etcd client module the Go columns are built with (from
    ``go env GOVERSION`` and ``benchmarks/go/go.mod``)."""
    import re
    import subprocess

    try:
        done = subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True)
        toolchain = done.stdout.strip() or "go: ?"
    except OSError:
        toolchain = "go not on PATH"
    module = "?"
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        with open(os.path.join(here, "go", "go.mod"), encoding="utf-8") as mod:
            found = re.search(r"go\.etcd\.io/etcd/client/v3 (v\S+)", mod.read())
            module = found.group(1) if found else "?"
    except OSError:
        pass
    return f"{toolchain}, go.etcd.io/etcd/client/v3 {module}"


def describe(server: Any, sizes: dict[str, Any], quick: bool) -> dict[str, Any]:
    """Machine, software and etcd facts for the report."""
    import json

    import urllib3

    answer = json.loads(urllib3.request("GET", server.endpoint + "/version", timeout=5).data)
    affinity = getattr(os, "sched_getaffinity", None)
    data_dir = server.members[0].data_dir
    return {
        "mode": "quick" if quick else "full",
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(affinity(0)) if affinity else None,
        "memory_gib": memory_gib(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": versions(),
        "go": go_versions(),
        "etcd": answer.get("etcdserver", "?"),
        "etcd_binary": server.binary,
        "etcd_data": f"{data_dir} ({filesystem(data_dir)}), fsync on, one member",
        "protobuf_impl": "python (PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION, for python-etcd3)",
        "sizes": sizes,
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "tree": source_tree(),
    }


def source_tree() -> str:
    """The commit measured, and whether geventc/ had uncommitted changes."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "geventc"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.splitlines()
    except OSError:
        return "unknown (no git)"
    if not head:
        return "unknown (not a git checkout)"
    return f"{head}" + (
        f" + uncommitted changes to {len(dirty)} files in geventc/" if dirty else ""
    )


class Interference:
    """How much CPU the rest of the machine used: everything but this runner, its
    workers (and their children) and etcd. On a shared machine this tells which
    figures were taken while something else was running."""

    def __init__(self, etcd_pid: int) -> None:
        self.etcd_pid = etcd_pid
        self.hz = os.sysconf("SC_CLK_TCK")

    def sample(self) -> tuple[float, float, float]:
        """(CPU seconds the machine was busy, CPU seconds that were ours, wall time)."""
        import resource
        import time

        with open("/proc/stat", encoding="ascii") as stat:
            user, nice, system, _idle, _iowait, irq, softirq = map(
                int, stat.readline().split()[1:8]
            )
        busy = (user + nice + system + irq + softirq) / self.hz
        ours = sum(
            usage.ru_utime + usage.ru_stime
            for usage in (
                resource.getrusage(resource.RUSAGE_SELF),
                resource.getrusage(resource.RUSAGE_CHILDREN),
            )
        )
        try:
            with open(f"/proc/{self.etcd_pid}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            ours += (int(fields[11]) + int(fields[12])) / self.hz  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
        return busy, ours, time.monotonic()

    @staticmethod
    def cores(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
        """Cores the rest of the machine used on average between two samples."""
        wall = after[2] - before[2]
        foreign = (after[0] - before[0]) - (after[1] - before[1])
        return max(0.0, foreign / wall) if wall > 0 else 0.0

    def wait_quiet(self, threshold: float, longest: float) -> float:
        """Wait (up to ``longest`` seconds) until the rest of the machine used less than
        ``threshold`` cores over one second; return the last such reading."""
        import sys
        import time

        deadline = time.monotonic() + longest
        told = False
        while True:
            before = self.sample()
            time.sleep(1.0)
            load = self.cores(before, self.sample())
            if load < threshold or time.monotonic() >= deadline:
                return load
            if not told:
                print(
                    f"        other processes use {load:.2f} cores; waiting up to "
                    f"{longest:.0f}s for quiet",
                    file=sys.stderr,
                    flush=True,
                )
                told = True

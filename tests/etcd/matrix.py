"""Run the test suite (without the chaos runs) on several etcd releases side by side.

    python tests/etcd/matrix.py 3.4 3.5.35 3.6 3.7            # all four at once
    python tests/etcd/matrix.py --jobs 2 3.6 3.7 -- -k lease  # two at a time, a subset

Each release gets its own ``ETCD_VERSION=<release> pytest-gevent -m "not chaos"``
process (the README's test command with the long cases, which ``setup.cfg`` leaves out
of the default command) with its log in
``tests/etcd/logs/<release>.log``. The suite mostly waits on etcd and timers (about a
tenth of a core per run), so releases run in parallel; members that lose a port to a
neighbour between choosing and binding it start again on new ports
(``geventc.testing.server``). Prints one summary line per release and the tail of each
failing log; exits 1 if any release failed. Build the binaries first:
``python tests/etcd/build.py``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
LOGS = HERE / "logs"


def summary(log: Path) -> str:
    """pytest's last line (``N passed, M failed in …``)."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip("= ") if lines else "(no output)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("releases", nargs="+", metavar="RELEASE", help="e.g. 3.4 3.6 3.7.3")
    parser.add_argument("--jobs", type=int, default=4, help="releases run at once (default 4)")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: to pytest")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    extra = [a for a in args.pytest_args if a != "--"]
    LOGS.mkdir(exist_ok=True)
    pending = list(args.releases)
    running: dict[str, tuple[subprocess.Popen[bytes], float]] = {}
    results: dict[str, tuple[int, float]] = {}
    while pending or running:
        while pending and len(running) < args.jobs:
            release = pending.pop(0)
            log = open(LOGS / f"{release}.log", "wb")  # noqa: SIM115 - the child owns it
            # the suite without the chaos runs: the long cases too (restarts with data)
            command = ["pytest-gevent", "-p", "no:cacheprovider", "-q", "-m", "not chaos", *extra]
            env = {**os.environ, "ETCD_VERSION": release}
            env.pop("ETCD_BIN", None)
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
            log.close()
            running[release] = (process, time.monotonic())
            print(f"etcd {release}: started", flush=True)
        time.sleep(1)
        for release, (process, started) in list(running.items()):
            if process.poll() is not None:
                del running[release]
                results[release] = (process.returncode, time.monotonic() - started)
                print(
                    f"etcd {release}: {summary(LOGS / f'{release}.log')} "
                    f"(exit {process.returncode}, {results[release][1]:.0f} s)",
                    flush=True,
                )
    failed = [release for release, (code, _) in results.items() if code != 0]
    for release in failed:
        tail = (LOGS / f"{release}.log").read_text(errors="replace").splitlines()[-60:]
        print(f"\n--- etcd {release}: last lines of {LOGS / f'{release}.log'}", flush=True)
        print("\n".join(tail), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

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
failing log. A release's failed tests are then run again alone: a test that fails again
fails the matrix (exit 1); one that passes alone is printed as ``FLAKY SIDE BY SIDE``
(it failed only while four suites shared the cores; the default run, alone, holds the
timing bounds) and does not. Build the binaries first:
``python tests/etcd/build.py``.
"""

from __future__ import annotations

import argparse
import os
import re
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
    argv = sys.argv[1:] if argv is None else list(argv)
    extra: list[str] = []
    if "--" in argv:  # what follows goes to pytest
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
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
    still = [release for release in failed if not rerun_alone(release, extra)]
    return 1 if still else 0


def failed_tests(log: Path) -> list[str]:
    """The node ids of pytest's ``FAILED``/``ERROR`` summary lines in ``log``."""
    ids = []
    for line in log.read_text(errors="replace").splitlines():
        match = re.match(r"(?:FAILED|ERROR) (\S+?::\S+?)(?: - |$)", line)
        if match:
            ids.append(match.group(1))
    return ids


def rerun_alone(release: str, extra: list[str]) -> bool:
    """Run a release's failed tests again, alone (nothing beside them): True when every
    one passes. A difference between releases fails again; a test that failed only
    while four suites shared two cores is named as such (``FLAKY SIDE BY SIDE``) and
    does not fail the matrix. No test id found (a crash, a collection error): False."""
    ids = failed_tests(LOGS / f"{release}.log")
    if not ids:
        return False
    log = LOGS / f"{release}-rerun.log"
    env = {**os.environ, "ETCD_VERSION": release}
    env.pop("ETCD_BIN", None)
    command = ["pytest-gevent", "-p", "no:cacheprovider", "-q", "-m", "not chaos", *ids]
    with open(log, "wb") as out:
        code = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=out).returncode
    verdict = "FLAKY SIDE BY SIDE (passed alone)" if code == 0 else "FAILED AGAIN ALONE"
    print(f"etcd {release}: re-ran {len(ids)} failed test(s) alone: {verdict}: {summary(log)}")
    for test in ids:
        print(f"  {verdict.split(' (')[0]}: {test}", flush=True)
    return code == 0


if __name__ == "__main__":
    sys.exit(main())

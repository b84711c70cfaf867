"""Run one scenario with one implementation in this process and print one JSON line.

    python -m benchmarks.worker IMPL SCENARIO 'JSON-PARAMS'    # from the repository root

IMPL is geventc, geventc-nc (coalescing off), raw, etcd3gw, etcd3, go or go-http;
SCENARIO one of kv-seq, kv-conc, ephemeral, trackers, election, election-holder,
registry, lock, many-locks, queue (go and go-http: kv-seq and kv-conc only). PARAMS
carries at least ``endpoint`` and a fresh key ``prefix`` (see the scenario modules).
The gateway implementations run in a gevent monkey-patched process; python-etcd3 runs
unpatched with ``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python``. For go and go-http
this process execs the Go program (``benchmarks/go/bin/kvbench IMPL SCENARIO PARAMS``,
see ``benchmarks/go/kvbench/main.go``), which runs the same workloads as
``benchmarks/kv.py`` and answers in the same shape; its CPU is its own.

With ``BENCH_PROFILE=/tmp/x.prof`` in the environment the scenario runs under cProfile
and the statistics are written there (``python -m pstats /tmp/x.prof``).

The last line printed is ``{"result": ...}``, ``{"skip": reason}`` when the peer cannot
be imported (or the Go program is not built), or ``{"error": ...}``.
``benchmarks/run.py`` starts one worker per implementation, scenario and repetition, so
patching, threads, CPU and RSS never mix.
"""

from __future__ import annotations

import cProfile
import importlib
import json
import os
import sys
import time
import traceback
from typing import Any

GREEN = ("geventc", "geventc-nc", "raw", "etcd3gw")
GO_IMPLS = ("go", "go-http")  # benchmarks.peers.GO_IMPLS, without importing it first
LIBRARIES = {"geventc-nc": "geventc", "raw": "urllib3"}
MODULES = {
    "kv-seq": "benchmarks.kv",
    "kv-conc": "benchmarks.kv",
    "ephemeral": "benchmarks.leases",
    "trackers": "benchmarks.watchers",
    "election": "benchmarks.recipes",
    "election-holder": "benchmarks.recipes",
    "registry": "benchmarks.recipes",
    "lock": "benchmarks.toolkit",
    "many-locks": "benchmarks.toolkit",
    "queue": "benchmarks.toolkit",
    "mass-create": "benchmarks.mass",
    "teardown": "benchmarks.churn",
    "churn": "benchmarks.churn",
    "at-rest": "benchmarks.churn",
}


def prepare(impl: str) -> str | None:
    """Patch (or not) for ``impl`` and import its library; the reason it cannot run."""
    if impl in GREEN:
        from gevent import monkey

        monkey.patch_all()
    else:
        os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
    try:
        importlib.import_module(LIBRARIES.get(impl, impl))
    except Exception as exc:
        return f"cannot import {LIBRARIES.get(impl, impl)}: {type(exc).__name__}: {exc}"
    return None


def exec_go(impl: str, scenario: str, params: dict[str, Any]) -> dict[str, Any]:
    """Become the Go program for ``impl``; the answer to print when that cannot be."""
    from benchmarks.peers import GO_BINARY, GO_SCENARIOS

    if scenario not in GO_SCENARIOS:
        return {"error": f"{impl} runs only {', '.join(GO_SCENARIOS)}, not {scenario}"}
    if not os.access(GO_BINARY, os.X_OK):
        return {"skip": f"{GO_BINARY} is not built (python benchmarks/run.py builds it)"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(GO_BINARY, [GO_BINARY, impl, scenario, json.dumps(params)])


def run(impl: str, scenario: str, params: dict[str, Any]) -> dict[str, Any]:
    """The JSON object this worker prints."""
    if impl in GO_IMPLS:
        return exec_go(impl, scenario, params)
    reason = prepare(impl)
    if reason:
        return {"skip": reason}
    from benchmarks import peers  # after the patching

    started = time.perf_counter()
    profile = os.environ.get("BENCH_PROFILE")
    profiler = cProfile.Profile() if profile else None
    try:
        module = importlib.import_module(MODULES[scenario])
        if profiler:
            profiler.enable()
        result = module.SCENARIOS[scenario](impl, params)
    except Exception as exc:
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}
    finally:
        if profiler and profile:
            profiler.disable()
            profiler.dump_stats(profile)
    return {
        "result": result,
        "version": peers.version(impl),
        "seconds": round(time.perf_counter() - started, 2),
    }


def main(argv: list[str]) -> None:
    """Parse the command line, run, print, and leave without waiting for stray threads."""
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        raise SystemExit(2)
    output = run(argv[1], argv[2], json.loads(argv[3]))
    print(json.dumps(output), flush=True)
    sys.stderr.flush()
    os._exit(0)  # python-etcd3's watch thread and gRPC would complain while exiting


if __name__ == "__main__":
    main(sys.argv)

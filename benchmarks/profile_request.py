"""The cost of one sequential request: client CPU µs/op and latency of ``put``/``get``.

Issue 14 target 2 ("half the cost of a request"). Starts its own etcd (unless
``--endpoint`` is given); then, ``--rounds`` times, runs in a fresh worker process for
``Client(coalesce=True)`` and ``coalesce=False`` ``--ops`` sequential puts and as many
gets of the keys just written, from one greenlet, and records the client CPU per
operation (``time.process_time`` of the worker: etcd runs apart; "of it sys" is the
kernel's share) and the latency percentiles. The table shows the median of the rounds,
so a machine busy with other work disturbs it less.

``--go`` also runs a tiny Go ``net/http`` client doing the same requests over the same
gateway (stdlib only, built with ``go build`` and no module download): the anchor of
the target. ``--compare DIR`` also runs every round with the geventc package found in
``DIR`` (a folder holding a ``geventc`` package: ``mkdir /tmp/before && cp -r geventc
/tmp/before/`` before editing, or ``git worktree add /tmp/before main``), interleaved,
for before/after figures from one run; ``--urllib3-engine`` also runs it with urllib3's
own responses (what geventc does when httptools is not installed).

``--profile py-spy`` records one more worker with py-spy (``pip install py-spy``) and
prints the functions that hold the most samples inside the measured loops, by own
samples and by inclusive samples. py-spy counts a running *or runnable* thread, so on
a busy machine the socket write that wakes etcd also collects the time the worker
waits to be scheduled again. ``--profile cprofile`` uses cProfile on CPU time instead
(greenlet switches blur its cumulative column). Profiled runs are never timed.

Run from the repository root::

    python benchmarks/profile_request.py --ops 5000 --rounds 3 --go
    python benchmarks/profile_request.py --ops 2000 --compare /tmp/before
    python benchmarks/profile_request.py --ops 3000 --modes off --profile py-spy

It measures and reports, never asserts.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

VALUE = bytes(range(256))  # 256 bytes, as benchmarks/kv.py
WARMUP = 200
HERE = os.path.abspath(__file__)

GO_PEER = r"""
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"syscall"
	"time"
)

func usage() (float64, float64) {
	var u syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &u)
	return float64(u.Utime.Nano()+u.Stime.Nano()) / 1e9, float64(u.Stime.Nano()) / 1e9
}

type header struct {
	Revision string `json:"revision"`
}

type kv struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

type answer struct {
	Header header `json:"header"`
	Kvs    []kv   `json:"kvs"`
}

func post(client *http.Client, url string, body any) answer {
	data, _ := json.Marshal(body)
	resp, err := client.Post(url, "application/json", bytes.NewReader(data))
	if err != nil {
		panic(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		panic(string(raw))
	}
	var out answer
	if err := json.Unmarshal(raw, &out); err != nil {
		panic(err)
	}
	return out
}

func phase(n int, op func(i int)) map[string]float64 {
	lat := make([]float64, n)
	c0, s0 := usage()
	w0 := time.Now()
	for i := 0; i < n; i++ {
		t := time.Now()
		op(i)
		lat[i] = time.Since(t).Seconds()
	}
	wall := time.Since(w0).Seconds()
	c1, s1 := usage()
	used := c1 - c0
	sort.Float64s(lat)
	return map[string]float64{
		"cpu_us_per_op": used * 1e6 / float64(n),
		"sys_us_per_op": (s1 - s0) * 1e6 / float64(n),
		"ops_per_s":     float64(n) / wall,
		"p50_ms":        lat[n/2] * 1000,
		"p99_ms":        lat[n*99/100] * 1000,
	}
}

func main() {
	endpoint, n := os.Args[1], 0
	n, _ = strconv.Atoi(os.Args[2])
	prefix := os.Args[3]
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	value := make([]byte, 256)
	for i := range value {
		value[i] = byte(i)
	}
	v64 := base64.StdEncoding.EncodeToString(value)
	key := func(i int) string {
		return base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf("%s%07d", prefix, i)))
	}
	put := func(i int) {
		post(client, endpoint+"/v3/kv/put", map[string]string{"key": key(i), "value": v64})
	}
	get := func(i int) {
		a := post(client, endpoint+"/v3/kv/range", map[string]string{"key": key(i)})
		if len(a.Kvs) != 1 {
			panic("missing key")
		}
	}
	for i := 0; i < 200; i++ {
		put(i)
		get(i)
	}
	out := map[string]any{"put": phase(n, put), "get": phase(n, get)}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def timed(ops: int, op: Callable[[int], object]) -> dict[str, float]:
    """Run ``op(0..ops-1)`` one after another: CPU per op and latency percentiles."""
    latencies = [0.0] * ops
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    clock = time.perf_counter
    for i in range(ops):
        start = clock()
        op(i)
        latencies[i] = clock() - start
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "cpu_us_per_op": cpu * 1e6 / ops,
        "sys_us_per_op": (usage.ru_stime - usage0.ru_stime) * 1e6 / ops,
        "ops_per_s": ops / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


def cprofiled(ops: int, op: Callable[[int], object], top: int) -> str:
    """Run ``op`` ``ops`` times under cProfile (CPU time); the top rows by own time."""
    import cProfile
    import io
    import pstats

    profile = cProfile.Profile(time.process_time)
    profile.enable()
    for i in range(ops):
        op(i)
    profile.disable()
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def measure_geventc(endpoint: str, coalesce: bool, ops: int, cprofile_top: int = 0) -> Any:
    """Sequential puts, then gets, from one greenlet on one client (this process must
    be gevent-patched)."""
    import geventc

    prefix = f"/profile/{'on' if coalesce else 'off'}/{os.getpid()}/"
    keys = [f"{prefix}{i:07d}".encode() for i in range(max(ops, WARMUP))]
    with geventc.Client(endpoint, coalesce=coalesce) as client:

        def put(i: int) -> object:
            return client.put(keys[i], VALUE)

        def get(i: int) -> object:
            found = client.get(keys[i])
            if found is None:
                raise LookupError(keys[i])
            return found

        for i in range(WARMUP):
            put(i)
            get(i)
        if cprofile_top:
            result: Any = {"put": cprofiled(ops, put, cprofile_top)}
            result["get"] = cprofiled(ops, get, cprofile_top)
        else:
            result = {"put": timed(ops, put), "get": timed(ops, get)}
        client.delete_prefix(prefix)
    return result


def worker(args: argparse.Namespace) -> int:
    """One measurement in this (fresh) process; prints its JSON."""
    from gevent import monkey

    monkey.patch_all()
    if args.urllib3_engine:
        import geventc.http

        geventc.http.ANSWER_PARSER = None  # the clients made below use urllib3's responses
    top = args.top if args.profile == "cprofile" else 0
    result = {
        mode: measure_geventc(args.endpoint, mode == "on", args.ops, top) for mode in args.modes
    }
    print(json.dumps(result))
    return 0


def spawn_worker(
    endpoint: str, ops: int, modes: list[str], path: str | None, extra: Sequence[str] = ()
) -> Any:
    """Run :func:`worker` in a new process (with geventc from ``path`` if given)."""
    env = dict(os.environ)
    if path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [path, env.get("PYTHONPATH")]))
    command = [sys.executable, HERE, "--worker", "--endpoint", endpoint, "--ops", str(ops)]
    command += ["--modes", ",".join(modes), *extra]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def build_go(folder: str) -> str | None:
    """Build the Go ``net/http`` peer (stdlib only) in ``folder``; None without Go."""
    go = shutil.which("go")
    if go is None:
        return None
    with open(os.path.join(folder, "main.go"), "w", encoding="utf-8") as source:
        source.write(GO_PEER)
    with open(os.path.join(folder, "go.mod"), "w", encoding="utf-8") as mod:
        mod.write("module peer\n\ngo 1.21\n")
    binary = os.path.join(folder, "peer")
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOPROXY": "off"}
    subprocess.run([go, "build", "-o", binary, "."], cwd=folder, env=env, check=True)
    return binary


def run_go(binary: str, endpoint: str, ops: int) -> Any:
    """One run of the Go peer."""
    prefix = f"/profile/go/{os.getpid()}/"
    done = subprocess.run(
        [binary, endpoint, str(ops), prefix], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def summarise_spy(path: str, top: int) -> str:
    """The top of a py-spy ``raw`` profile, counting only samples inside :func:`timed`."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path, encoding="utf-8") as raw:
        for line in raw:
            stack, _, count = line.rstrip().rpartition(" ")
            frames = [re.sub(r" \((.*?):\d+\)$", r" (\1)", f) for f in stack.split(";")]
            if not any(f.startswith("timed ") for f in frames):
                continue
            n = int(count)
            total += n
            own[frames[-1]] += n
            for frame in set(frames):
                inclusive[frame] += n
    lines = [f"{total} samples in the measured loops", "-- own samples"]
    lines += [f"{100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines.append("-- inclusive samples")
    lines += [f"{100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top * 2)]
    return "\n".join(lines)


def profile_spy(endpoint: str, ops: int, modes: list[str], top: int) -> str:
    """Record a worker with py-spy and summarise it."""
    spy = shutil.which("py-spy")
    if spy is None:
        return "py-spy is not installed (pip install py-spy)"
    with tempfile.TemporaryDirectory(prefix="geventc-spy-") as folder:
        out = os.path.join(folder, "raw.txt")
        command = [spy, "record", "-r", "1000", "-f", "raw", "-o", out, "--", sys.executable]
        command += [HERE, "--worker", "--endpoint", endpoint, "--ops", str(ops)]
        subprocess.run([*command, "--modes", ",".join(modes)], capture_output=True, check=True)
        return summarise_spy(out, top)


def median_of(runs: list[Any]) -> dict[str, float]:
    """Each figure's median over the rounds."""
    return {name: statistics.median(run[name] for run in runs) for name in runs[0]}


def table(results: dict[str, dict[str, list[Any]]]) -> str:
    """The results (median of the rounds) as a text table."""
    head = f"{'client':<36} {'op':<4} {'cpu µs/op':>9} {'of it sys':>9} {'ops/s':>8} "
    lines = [head + f"{'p50 ms':>7} {'p99 ms':>7}"]
    for name, phases in results.items():
        for op, runs in phases.items():
            r = median_of(runs)
            lines.append(
                f"{name:<36} {op:<4} {r['cpu_us_per_op']:>9.1f} {r['sys_us_per_op']:>9.1f} "
                f"{r['ops_per_s']:>8.0f} {r['p50_ms']:>7.3f} {r['p99_ms']:>7.3f}"
            )
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=5000, help="operations per phase")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (the median is shown)")
    parser.add_argument("--endpoint", help="use this etcd instead of starting one")
    parser.add_argument("--modes", default="on,off", help="coalescing modes: on,off")
    parser.add_argument("--go", action="store_true", help="also run Go net/http")
    parser.add_argument("--compare", metavar="DIR", help="also run geventc from DIR")
    parser.add_argument(
        "--urllib3-engine",
        action="store_true",
        help="also run geventc with urllib3's responses instead of httptools",
    )
    parser.add_argument("--no-fsync", action="store_true", help="start etcd without fsync")
    parser.add_argument("--profile", choices=("none", "py-spy", "cprofile"), default="none")
    parser.add_argument("--top", type=int, default=30, help="profile rows shown")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m in ("on", "off")]
    return args


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table (and the profile), exit 0."""
    args = parse(argv)
    if args.worker:
        return worker(args)
    from geventc.testing import EtcdServer

    server = None if args.endpoint else EtcdServer(fsync=not args.no_fsync).start()
    endpoint = args.endpoint or server.endpoint  # type: ignore[union-attr]
    variants: dict[str, tuple[str | None, list[str]]] = {"geventc": (None, [])}
    if args.urllib3_engine:
        variants["geventc urllib3 engine"] = (None, ["--urllib3-engine"])
    if args.compare:
        variants["geventc before"] = (args.compare, [])
    results: dict[str, dict[str, list[Any]]] = {}
    profile = ""
    try:
        with tempfile.TemporaryDirectory(prefix="geventc-go-peer-") as folder:
            go = build_go(folder) if args.go else None
            for _ in range(args.rounds):
                for label, (path, extra) in variants.items():
                    measured = spawn_worker(endpoint, args.ops, args.modes, path, extra)
                    for mode, phases in measured.items():
                        for op, figures in phases.items():
                            name = f"{label} coalesce={mode}"
                            results.setdefault(name, {}).setdefault(op, []).append(figures)
                if go is not None:
                    for op, figures in run_go(go, endpoint, args.ops).items():
                        results.setdefault("go net/http", {}).setdefault(op, []).append(figures)
        if args.profile == "py-spy":
            profile = profile_spy(endpoint, args.ops, args.modes, args.top)
        elif args.profile == "cprofile":
            extra = ["--profile", "cprofile", "--top", str(args.top)]
            cprofile = spawn_worker(endpoint, args.ops, args.modes, None, extra)
            profile = "\n".join(
                f"=== cProfile: coalesce={m} {op} ===\n{text}"
                for m, phases in cprofile.items()
                for op, text in phases.items()
            )
    finally:
        if server is not None:
            server.stop()
    if args.json:
        print(
            json.dumps({n: {op: median_of(r) for op, r in p.items()} for n, p in results.items()})
        )
    else:
        print(f"{args.ops} sequential ops per phase, median of {args.rounds} rounds, {endpoint}")
        print(table(results))
    if profile:
        print(f"\n{profile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

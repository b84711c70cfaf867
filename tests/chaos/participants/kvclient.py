"""KV participant for the linearizability runs: N greenlets issue random operations on a
few keys through one :class:`geventc.Client` and record each one.

Every operation is one ``op`` record (JSON line) written when it completes:

- ``g``: the greenlet (a sequential client of porcupine's), ``n``: its counter;
- ``call`` / ``ret``: ``time.monotonic_ns()`` just before the call and just after it
  returned or raised (one clock for every process of the machine);
- ``op`` and its input: ``get``/``delete`` (``key``), ``put`` (``key``, ``value``),
  ``cas`` (``key``, ``expect``: the value compared, None for "absent", ``value``: put
  if it holds; the failure branch reads the key), ``txn`` (``compare``: ``[key,
  expected or None]`` pairs, ``success``: ``[op, key, value]`` puts and deletes; the
  failure branch reads each compared key), ``range`` (``get_prefix`` of the prefix);
- ``status``: ``ok`` (the answer is in the record), ``unknown`` (a write that may or
  may not have been applied: IndeterminateWrite, a Timeout or ConnectionFailed, or its
  caller interrupted by ``gevent.Timeout``), ``fail`` (a write geventc says was not
  applied: any other EtcdError) or ``read-fail`` (a read that failed: no effect);
  ``error`` names the error;
- the answer: ``rev`` (the header revision), and per kind ``found``/``got``/``mod``
  (get, and a failed cas's read: the value read and its mod_revision; a ``get`` with
  ``via: get`` is ``Client.get``, which answers no header revision, ``via: prefix`` the
  same read as ``get_prefix`` of the key, with its header), ``deleted``,
  ``succeeded``, ``reads`` (a failed txn's reads: ``[found, value, mod]``), ``kvs``
  (range: ``{key: [value, mod]}``).

Values are unique (``<identity>.<greenlet>.<counter>``), so a read names the write it
saw. Commands: ``stop`` lets every greenlet finish its operation, flushes the records and
records ``done`` (with counts); the process then waits to be killed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from typing import Any

import gevent
from gevent.event import Event

import geventc
from geventc import Compare, Op
from geventc.errors import ConnectionFailed, EtcdError, IndeterminateWrite, Timeout

from . import common

#: errors of a write that leave its outcome unknown (it may have been applied)
UNKNOWN_ERRORS = (IndeterminateWrite, Timeout, ConnectionFailed)
WORKLOADS = ("single", "readers", "interrupt", "multi")


class Recorder:
    """Buffers ``op`` records and writes them every 50 ms (one syscall per batch of
    lines instead of one per operation)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.counts: Counter[str] = Counter()
        self._flusher = gevent.spawn(self._flush_forever)

    def add(self, record: dict[str, Any]) -> None:
        self.counts[record["status"]] += 1
        record["ev"] = "op"
        record["t"] = record["ret"] / 1e9
        self.lines.append(json.dumps(record, separators=(",", ":")))

    def flush(self) -> None:
        if self.lines:
            lines, self.lines = self.lines, []
            sys.stdout.write("\n".join(lines) + "\n")
            sys.stdout.flush()

    def _flush_forever(self) -> None:
        while True:
            gevent.sleep(0.05)
            self.flush()

    def close(self) -> None:
        self._flusher.kill()
        self.flush()


class Workload:
    """The random operations of one process (see the module's docstring)."""

    def __init__(self, args: argparse.Namespace, client: geventc.Client) -> None:
        self.args = args
        self.client = client
        self.rng = random.Random(f"{args.seed}:{args.identity}")
        self.prefix = args.prefix.rstrip("/") + "/"
        self.keys = [f"{self.prefix}k{i}" for i in range(args.keys)]
        #: the last value this process saw (or wrote) per key: what a cas compares
        self.seen: dict[str, str | None] = {}
        self.recorder = Recorder()
        self.stop = Event()

    # --- the operations --------------------------------------------------------------

    def choose(self, g: int, n: int) -> dict[str, Any]:
        """The next operation of greenlet ``g`` (its input fields)."""
        rng, kind = self.rng, self.args.workload
        value = f"{self.args.identity}.{g}.{n}"
        if kind == "readers":  # one key: most greenlets read, the first few write
            key = self.keys[0]
            if g >= self.args.writers:
                return self._get(key)
            return self._write(key, value, deletes=0.0)  # reads always find a value
        if kind == "multi":
            roll = rng.random()
            if roll < 0.45:
                picked = rng.sample(self.keys, min(3, len(self.keys)))
                compare = [[k, self._expect(k)] for k in picked]
                written = rng.sample(picked, rng.randint(1, len(picked)))
                success = [
                    ["delete", k, ""] if rng.random() < 0.1 else ["put", k, f"{value}.{i}"]
                    for i, k in enumerate(written)
                ]
                return {"op": "txn", "compare": compare, "success": success}
            if roll < 0.65:
                return {"op": "range"}
            key = rng.choice(self.keys)
            if roll < 0.8:
                return self._get(key)
            return self._write(key, value, deletes=0.1)
        key = rng.choice(self.keys)
        if rng.random() < 0.4:
            return self._get(key)
        # interrupted: no deletes (see test_linearizability: unknown deletes stay pending)
        return self._write(key, value, deletes=0.0 if kind == "interrupt" else 0.15)

    def _get(self, key: str) -> dict[str, Any]:
        """A read of ``key``: by ``get`` (no header revision) or as a range."""
        return {"op": "get", "key": key, "via": self.rng.choice(("get", "prefix"))}

    def _expect(self, key: str) -> str | None:
        return self.seen.get(key) if self.rng.random() < 0.85 else None

    def _write(self, key: str, value: str, deletes: float) -> dict[str, Any]:
        roll = self.rng.random()
        if roll < deletes:
            return {"op": "delete", "key": key}
        if roll < deletes + (1 - deletes) / 2:
            return {"op": "put", "key": key, "value": value}
        return {"op": "cas", "key": key, "expect": self._expect(key), "value": value}

    def perform(self, op: dict[str, Any]) -> dict[str, Any]:
        """Send ``op``; the fields of its answer."""
        client, kind = self.client, op["op"]
        if kind == "get" and op.get("via") == "prefix":
            # the same read as a range (the key is no other's prefix): with its header
            return {"rev": (got := client.get_prefix(op["key"])).header.revision, **_kv(got)}
        if kind == "get":
            kv = client.get(op["key"])  # answers no header revision
            if kv is None:
                return {"found": False}
            return {"found": True, "got": kv.value_str, "mod": kv.mod_revision}
        if kind == "put":
            return {"rev": client.put(op["key"], op["value"]).header.revision}
        if kind == "delete":
            deleted = client.delete(op["key"])
            return {"rev": deleted.header.revision, "deleted": deleted.deleted}
        if kind == "cas":
            key, expect = op["key"], op["expect"]
            held = self._holds(key, expect)
            result = client.txn([held], [Op.put(key, op["value"])], [Op.get(key)])
            answer: dict[str, Any] = {"rev": result.header.revision, "succeeded": result.succeeded}
            if not result.succeeded:
                answer.update(self._read_of(result.responses[0]))
            return answer
        if kind == "txn":
            compares = [self._holds(k, expect) for k, expect in op["compare"]]
            success = [
                Op.put(k, v) if what == "put" else Op.delete(k) for what, k, v in op["success"]
            ]
            failure = [Op.get(k) for k, _ in op["compare"]]
            result = client.txn(compares, success, failure)
            answer = {"rev": result.header.revision, "succeeded": result.succeeded}
            if not result.succeeded:
                reads = [self._read_of(r) for r in result.responses]
                answer["reads"] = [[r["found"], r.get("got"), r.get("mod", 0)] for r in reads]
            return answer
        if kind == "range":
            got = client.get_prefix(self.prefix)
            kvs = {kv.key_str: [kv.value_str, kv.mod_revision] for kv in got.kvs}
            return {"rev": got.header.revision, "kvs": kvs}
        raise ValueError(f"unknown operation {kind!r}")

    @staticmethod
    def _holds(key: str, expect: str | None) -> geventc.Comparison:
        if expect is None:
            return Compare.create_revision(key) == 0
        return Compare.value(key) == expect

    @staticmethod
    def _read_of(response: object) -> dict[str, Any]:
        assert isinstance(response, geventc.RangeResult)
        return _kv(response)

    def learn(self, op: dict[str, Any], answer: dict[str, Any]) -> None:
        """Remember what the operation showed of each key (what later cas compare)."""
        kind = op["op"]
        if kind == "get" or (kind == "cas" and not answer.get("succeeded")):
            self.seen[op["key"]] = answer.get("got") if answer.get("found") else None
        elif kind in ("put", "cas"):
            self.seen[op["key"]] = op["value"]
        elif kind == "delete":
            self.seen[op["key"]] = None
        elif kind == "txn" and answer.get("succeeded"):
            for what, k, v in op["success"]:
                self.seen[k] = v if what == "put" else None
        elif kind == "txn":
            for (k, _), (found, value, _mod) in zip(op["compare"], answer["reads"], strict=True):
                self.seen[k] = value if found else None
        elif kind == "range":
            for k in self.keys:
                kv = answer["kvs"].get(k)
                self.seen[k] = kv[0] if kv else None

    # --- the loop --------------------------------------------------------------------

    def greenlet(self, g: int) -> None:
        """Greenlet ``g``: one operation after the other until told to stop."""
        n = 0
        rng = random.Random(f"{self.args.seed}:{self.args.identity}:{g}")
        interrupt = self.args.interrupt
        while not self.stop.is_set():
            n += 1
            op = self.choose(g, n)
            record: dict[str, Any] = {"g": g, "n": n, **op}
            write = op["op"] not in ("get", "range")
            cut = rng.uniform(*self.args.interrupt_after) if rng.random() < interrupt else None
            record["call"] = time.monotonic_ns()
            try:
                if cut is None:
                    answer = self.perform(op)
                else:
                    with gevent.Timeout(cut):
                        answer = self.perform(op)
            except gevent.Timeout as exc:
                record["ret"] = time.monotonic_ns()
                record["status"] = "unknown" if write else "read-fail"
                record["error"] = f"interrupted after {cut:.3f}s ({exc!r})"
            except EtcdError as exc:
                record["ret"] = time.monotonic_ns()
                if not write:
                    record["status"] = "read-fail"
                else:
                    record["status"] = "unknown" if isinstance(exc, UNKNOWN_ERRORS) else "fail"
                record["error"] = f"{type(exc).__name__}: {exc}"
            else:
                record["ret"] = time.monotonic_ns()
                record["status"] = "ok"
                record.update(answer)
                self.learn(op, answer)
            self.recorder.add(record)
            if record["status"] != "ok":
                gevent.sleep(0.01)  # do not spin on a failing cluster

    def run(self) -> None:
        """Start the greenlets, record ``ready``; on ``stop``, let each finish its
        operation, flush, record ``done``."""
        stopped = common.stop_on_command()
        greenlets = [gevent.spawn(self.greenlet, g) for g in range(self.args.greenlets)]
        common.emit("ready", keys=self.keys, greenlets=len(greenlets))
        stopped.wait()
        self.stop.set()
        gevent.joinall(greenlets, timeout=60)
        self.recorder.close()
        stats = self.client.stats()
        common.emit(
            "done",
            counts=dict(self.recorder.counts),
            unfinished=sum(1 for g in greenlets if not g.dead),
            batches=stats.batches,
            failovers=stats.failovers,
            token_renewals=RENEWALS[0],
        )


#: tokens fetched again because etcd said the one in use expired (or was unknown)
RENEWALS = [0]


def count_renewals() -> None:
    """Count every new token ``TokenAuth.renew`` fetched (test instrumentation): how
    often the token expired under the workload."""
    from geventc.auth import TokenAuth

    original = TokenAuth.renew

    def renew(self: TokenAuth, stale: str | None, deadline: float) -> None:
        original(self, stale, deadline)
        if stale is not None and self._token != stale:  # not the first token
            RENEWALS[0] += 1

    TokenAuth.renew = renew  # type: ignore[method-assign]


def _kv(response: geventc.RangeResult) -> dict[str, Any]:
    """What a read of one key showed: ``found``, and its ``value`` and ``mod``."""
    if not response.kvs:
        return {"found": False}
    kv = response.kvs[0]
    return {"found": True, "got": kv.value_str, "mod": kv.mod_revision}


def main() -> None:
    parser = common.options(__doc__ or "")
    parser.add_argument("--identity", required=True, help="unique per process (values)")
    parser.add_argument("--prefix", required=True, help="the stored prefix of the keys")
    parser.add_argument("--workload", choices=WORKLOADS, default="single")
    parser.add_argument("--greenlets", type=int, default=16)
    parser.add_argument("--keys", type=int, default=6)
    parser.add_argument("--writers", type=int, default=3, help="readers: greenlets that write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-coalesce", action="store_true", help="Client(coalesce=False)")
    parser.add_argument(
        "--interrupt", type=float, default=0.0, help="share of calls under a gevent.Timeout"
    )
    parser.add_argument(
        "--interrupt-after", type=float, nargs=2, default=(0.001, 0.03), metavar=("MIN", "MAX")
    )
    parser.add_argument("--username")
    parser.add_argument("--password")
    args = parser.parse_args()
    count_renewals()
    client = geventc.Client(
        args.endpoints.split(","),
        timeout=args.timeout,
        connect_timeout=args.connect_timeout,
        coalesce=not args.no_coalesce,
        username=args.username,
        password=args.password,
    )
    Workload(args, client).run()
    common.sleep_forever()


if __name__ == "__main__":
    common.run(main)

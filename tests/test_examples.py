"""The programs of examples/ run as ``python examples/x.py`` against a real etcd
(``$GEVENTC_ENDPOINTS``, from the ``etcd`` fixture) and do what they say."""

from __future__ import annotations

import itertools
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

import geventc
from geventc import Instance
from geventc.testing.plugin import EtcdTestContext

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
_names = itertools.count()


@pytest.fixture
def env(etcd: EtcdTestContext) -> dict[str, str]:
    return {**os.environ, "GEVENTC_ENDPOINTS": ",".join(etcd.endpoints)}


@pytest.fixture
def namespace(etcd: EtcdTestContext) -> object:
    name = f"examples-{os.getpid()}-{next(_names)}"
    yield name
    with etcd.client() as client:
        client.delete_prefix(f"/{name}/")


def _run(env: dict[str, str], *args: str, timeout: float = 60) -> list[str]:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / args[0]), *args[1:]],
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(EXAMPLES / args[0]), *args[1:]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def _line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, process.stderr.read() if process.stderr else ""
    return line.rstrip("\n")


def _lines_until(process: subprocess.Popen[str], wanted: str, most: int = 10) -> list[str]:
    """The process's next lines up to and including ``wanted`` (at most ``most``)."""
    seen: list[str] = []
    while not seen or seen[-1] != wanted:
        assert len(seen) < most, seen
        seen.append(_line(process))
    return seen


def test_queue_worker_does_each_job_once_and_acks_it(env: dict[str, str], namespace: str) -> None:
    queued = _run(env, "queue_worker.py", "--namespace", namespace, "--put", "resize,encode")
    assert queued == ["queued resize", "queued encode"]
    done = _run(env, "queue_worker.py", "--namespace", namespace, "--max-items", "2")
    assert done == ["done resize -> RESIZE", "done encode -> ENCODE"]
    idle = _run(env, "queue_worker.py", "--namespace", namespace, "--wait", "0.2")
    assert idle == ["idle, stopping"]  # acked: nothing left to claim


def test_once_per_fleet_runs_the_job_once_among_concurrent_instances(
    env: dict[str, str], namespace: str
) -> None:
    args = ("once_per_fleet.py", "--namespace", namespace, "--run-id", "2026-12-01")
    fleet = [_start(env, *args) for _ in range(3)]
    outputs = []
    for process in fleet:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        outputs.append(out.strip())
    ran = [o for o in outputs if o.startswith("ran nightly-report 2026-12-01")]
    skipped = [o for o in outputs if o.startswith("skipped: 2026-12-01 already done by pid")]
    assert (len(ran), len(skipped)) == (1, 2), outputs


def test_partitioner_workers_split_the_shards(env: dict[str, str], namespace: str) -> None:
    base = ("partitioner.py", "--namespace", namespace)
    a = _start(env, *base, "--identity", "worker-a", "--run-for", "30")
    try:
        assert _line(a) == "worker-a owns shard-0 shard-1 shard-2 shard-3"
        b = _run(env, *base, "--identity", "worker-b", "--run-for", "2")
        assert b == ["worker-b owns shard-1 shard-3", "worker-b left"]
        assert _line(a) == "worker-a owns shard-0 shard-2"
        # b left: a takes its shards back (a rebalance may first report what a holds)
        back = _lines_until(a, "worker-a owns shard-0 shard-1 shard-2 shard-3")
        assert all(line.startswith("worker-a owns shard-0") for line in back), back
    finally:
        a.terminate()
        a.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_wsgi_service_registers_resolves_and_follows_its_configuration(
    etcd: EtcdTestContext, env: dict[str, str], namespace: str
) -> None:
    address = f"127.0.0.1:{_free_port()}"
    key = f"kitex/registry-etcd/api/{address}"
    with geventc.connect(etcd.endpoints, namespace=namespace) as conn:
        conn.put("/config/api/color", "blue")
        with conn.registry(ttl=10) as peers:
            peers.register(Instance("backend", "10.0.0.9:80"))
            service = _start(env, "wsgi_service.py", "--namespace", namespace,
                             "--bind", address, "--run-for", "30")  # fmt: skip
            try:
                assert _line(service) == f"serving api on {address}"
                assert _get(f"http://{address}/", "color blue") == (
                    "hello from api: backend at 10.0.0.9:80, color blue"
                )
                assert conn.get(key) is not None  # registered
                conn.put("/config/api/color", "green")  # followed live by every worker
                assert _get(f"http://{address}/", "green").endswith("color green")
            finally:
                service.terminate()  # a graceful shutdown: deregisters first
                service.wait(timeout=20)
        assert conn.get(key) is None


def _get(url: str, wanted: str, deadline: float = 15.0) -> str:
    """The body at ``url`` once it contains ``wanted`` (the workers boot, configs propagate)."""
    end = time.monotonic() + deadline
    body = ""
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                body = answer.read().decode().strip()
        except OSError:
            body = ""
        if wanted in body:
            return body
        time.sleep(0.05)
    raise AssertionError(f"{url} never answered {wanted!r}: {body!r}")

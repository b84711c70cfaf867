"""The ``geventc queue`` command, run as a real subprocess against a real etcd: put and
take in FIFO and priority order, waiting for an item, claims that ack on success and
give the item back on failure or Ctrl-C, and usage errors."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
from helpers.cli import Done, assert_error_line, run, start
from helpers.waiting import wait_until

import geventc
from geventc.testing.plugin import EtcdTestContext


class Queue:
    """Runs ``geventc queue ...`` in the test's namespace, and reads the keys."""

    def __init__(self, etcd: EtcdTestContext, conn: geventc.Connector) -> None:
        self.options = ["--endpoints", ",".join(etcd.endpoints)]
        self.options += ["--namespace", etcd.prefix.strip("/")]
        self.conn = conn

    def start(self, *args: str) -> subprocess.Popen[str]:
        return start("queue", *args, *self.options)

    def run(self, *args: str, timeout: float = 20.0) -> Done:
        return run("queue", *args, *self.options, timeout=timeout)

    def values(self, path: str) -> list[bytes]:
        return [kv.value for kv in self.conn.get_prefix(path + "/").kvs]

    def markers(self) -> list[bytes]:
        return [kv.key for kv in self.conn.get_prefix("/__claims/").kvs]


@pytest.fixture
def queue(etcd: EtcdTestContext, conn: geventc.Connector) -> Iterator[Queue]:
    yield Queue(etcd, conn)


def test_put_and_take_first_in_first_out(queue: Queue) -> None:
    put = queue.run("put", "/jobs", "a")
    assert put.code == 0 and put.stdout.startswith("OK /jobs/") and put.stderr == ""
    (written,) = queue.run("put", "/jobs", "b", "--json").json()
    assert written["key"].startswith("/jobs/") and written["priority"] is None
    assert queue.values("/jobs") == [b"a", b"b"]
    assert queue.run("take", "/jobs").stdout == "a\n"
    (taken,) = queue.run("--json", "take", "/jobs").json()
    assert (taken["value"], taken["key"], taken["path"]) == ("b", written["key"], "/jobs")
    assert taken["revision"] == written["revision"]
    empty = queue.run("take", "/jobs", "--wait", "0.2")
    assert empty.code == 1 and empty.stdout == ""
    assert_error_line(empty.stderr, "no item in /jobs within 0.2s")


def test_priority_queue(queue: Queue) -> None:
    (put,) = queue.run("--json", "put", "/pq", "later", "--priority", "9").json()
    assert (put["key"], put["priority"]) == ("/pq/00009/0000000000000000", 9)
    producer = queue.conn.priority_queue("/pq")
    producer.put("first", 0)
    producer.put("soon", 3)
    taken = [queue.run("take", "/pq", "--priority-queue").stdout for _ in range(3)]
    assert taken == ["first\n", "soon\n", "later\n"]


def test_take_waits_for_an_item(queue: Queue) -> None:
    process = queue.start("take", "/wait", "--json")
    gevent.sleep(1.0)  # started and waiting on the watch
    assert process.poll() is None
    queue.conn.queue("/wait").put("arrived")
    stdout, _ = process.communicate(timeout=10)
    assert process.returncode == 0 and json.loads(stdout)["value"] == "arrived"


def test_claim_prints_then_acks(queue: Queue) -> None:
    queue.conn.queue("/c").put("job")
    done = queue.run("claim", "/c", "--json")
    assert done.code == 0, done.stderr
    claimed, acked = done.json()
    assert (claimed["event"], claimed["value"], acked["event"]) == ("CLAIMED", "job", "ACKED")
    assert acked["key"] == claimed["key"]
    assert queue.values("/c") == [] and queue.markers() == []
    queue.conn.queue("/c").put("text")
    assert queue.run("claim", "/c").stdout == "text\n"


def test_claim_exec_acks_on_success_and_gives_back_on_failure(queue: Queue, tmp_path: Path) -> None:
    producer = queue.conn.queue("/x")
    producer.put("payload")
    out = tmp_path / "seen"
    script = f'cat > {out}; echo "$GEVENTC_QUEUE_KEY $GEVENTC_QUEUE_PATH" >> {out}'
    ok = queue.run("claim", "/x", "--exec", script)
    assert ok.code == 0, ok.stderr
    assert ok.stdout.startswith("acked /x/")
    key = ok.stdout.split()[1]
    assert out.read_text() == f"payload{key} /x\n"
    assert queue.values("/x") == [] and queue.markers() == []
    producer.put("retry-me")
    failed = queue.run("--json", "claim", "/x", "--exec", "cat >/dev/null; exit 3")
    assert failed.code == 3, failed.stderr
    claimed, released = failed.json()
    assert claimed["event"] == "CLAIMED" and released == {
        "event": "RELEASED",
        "path": "/x",
        "key": claimed["key"],
        "exit_code": 3,
    }
    assert queue.values("/x") == [b"retry-me"] and queue.markers() == []  # given back


def test_interrupted_claim_gives_the_item_back(queue: Queue) -> None:
    queue.conn.queue("/i").put("long job")
    process = queue.start("claim", "/i", "--exec", "exec sleep 30")
    wait_until(lambda: queue.markers(), 10, "the claim marker")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 130, stderr
    assert queue.values("/i") == [b"long job"] and queue.markers() == []


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["queue"], "ACTION"),
        (["queue", "take"], "PATH"),
        (["queue", "take", "/q", "--wait", "-1"], "0 or more seconds"),
        (["queue", "put", "/q", "v", "--priority", "65536"], "priority from 0 to 65535"),
        (["queue", "claim", "/q", "--ttl", "0"], "positive integer"),
    ],
)
def test_usage_errors(args: list[str], fragment: str) -> None:
    done = run(*args)
    assert done.code == 2, done.stderr
    assert fragment in done.stderr and "Traceback" not in done.stderr

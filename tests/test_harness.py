"""The real-etcd test harness: fault controls do what they say."""

from __future__ import annotations

import gevent
import pytest

from geventc import Client
from geventc.errors import Compacted, ConnectionFailed, Timeout
from geventc.testing import EtcdServer, find_etcd_binary
from geventc.testing.releases import binary_release


def test_binary_is_found() -> None:
    assert binary_release(find_etcd_binary()) is not None


def test_members_do_not_read_the_test_process_etcd_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """etcd takes ``ETCD_<FLAG>`` variables as flags: a member must not inherit them
    (``ETCD_VERSION=3.4`` made etcd 3.4 exit with "invalid value for ETCD_VERSION")."""
    binary = find_etcd_binary()
    release = binary_release(binary)
    assert release is not None
    monkeypatch.setenv("ETCD_NAME", "not-the-member-name")
    monkeypatch.setenv("ETCD_VERSION", release.name)
    monkeypatch.setenv("ETCD_BIN", binary)
    with EtcdServer(fsync=False) as server, Client(server.endpoints) as client:
        assert [member.name for member in client.members()] == ["m0"]


def test_kill_restart_keeps_data_pause_resume_compact() -> None:
    with EtcdServer(fsync=False) as server:
        client = Client(server.endpoints, timeout=1.0)
        first = client.put("/h/k", "1").header.revision
        client.put("/h/k", "2")
        server.kill(0)
        assert not server.members[0].running
        with pytest.raises(ConnectionFailed):
            client.get("/h/k")
        server.restart(0)
        kv = client.get("/h/k")
        assert kv is not None and kv.value == b"2"
        server.pause(0)
        with pytest.raises(Timeout):
            client.get("/h/k")
        server.resume(0)
        assert client.get("/h/k") is not None
        server.compact(kv.mod_revision)
        with pytest.raises(Compacted):
            client.get("/h/k", revision=first)
        client.close()
    assert not server.members[0].running


def test_cluster_fixture_heals_between_tests(etcd_cluster: object) -> None:
    from geventc.testing.plugin import EtcdTestContext

    assert isinstance(etcd_cluster, EtcdTestContext)
    cluster = etcd_cluster.cluster
    assert all(m.running and not m.paused for m in cluster.members)
    cluster.kill(cluster.followers()[0])  # the fixture must bring it back
    client = etcd_cluster.client()
    with gevent.Timeout(5):
        client.put(etcd_cluster.key("k"), "v")


def _etcd_left_behind_by(script: str, *, kill_parent: bool) -> bool:
    """Run ``script`` (which prints its etcd's pid) in a child Python; end that child
    by SIGKILL or a normal exit and report whether its etcd is still alive after 10 s."""
    import os
    import signal
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    etcd_pid = int(child.stdout.readline())
    if kill_parent:
        child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(etcd_pid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.05)
    return True


SPAWN = """
import sys, time
from geventc.testing import EtcdServer
server = EtcdServer(fsync=False).start()
print(server.members[0].process.pid, flush=True)
{tail}
"""


def test_no_etcd_survives_an_exit_without_stop() -> None:
    assert not _etcd_left_behind_by(SPAWN.format(tail="sys.exit(0)"), kill_parent=False)


def test_no_etcd_survives_a_killed_test_process() -> None:
    assert not _etcd_left_behind_by(SPAWN.format(tail="time.sleep(60)"), kill_parent=True)


def test_a_member_whose_port_another_process_took_starts_on_new_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Suites of several etcd releases run side by side: a port found free can be bound
    by another process before etcd binds it; the cluster then starts on new ports."""
    import socket

    from geventc.testing import server as harness

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    real_free_port = harness.free_port
    ports = iter([taken.getsockname()[1]])
    monkeypatch.setattr(harness, "free_port", lambda: next(ports, None) or real_free_port())
    try:
        with EtcdServer(fsync=False) as server, Client(server.endpoints) as client:
            assert server.members[0].client_port != taken.getsockname()[1]
            client.put("k", "v")
            assert client.get("k").value == b"v"
    finally:
        taken.close()

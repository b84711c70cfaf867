"""Bounded, truthful shutdown: stop(), delete(), deregister() and close() return within
the connector's stop_timeout when etcd refuses or does not answer, and say whether etcd
confirmed the release."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

import geventc
from geventc import Instance, Registry
from geventc.recipes.base import Release
from geventc.testing import EtcdServer

STOP_TIMEOUT = 1.0
MARGIN = 0.75  # scheduling on a loaded 2-core machine


def _timed(call: object) -> tuple[Release, float]:
    started = time.monotonic()
    result = call()  # type: ignore[operator]
    return result, time.monotonic() - started


@pytest.mark.parametrize("fault", ["killed", "paused"])
def test_stop_delete_deregister_and_close_are_bounded_and_truthful(
    private_server: EtcdServer, fault: str
) -> None:
    conn = geventc.connect(private_server.endpoints, namespace="/shut", stop_timeout=STOP_TIMEOUT)
    try:
        elector = conn.leader_elector("/election", "me", ttl=5)
        assert elector.start().get(timeout=10).status.name == "LEADER"  # type: ignore[union-attr]
        key = conn.ephemeral_key("/eph/k")
        key.create("v", ttl=5)
        other = conn.ephemeral_key("/eph/other")  # keeps the shared lease held on close
        other.create("v", ttl=5)
        registry = Registry(conn, ttl=5)
        instance = registry.register(Instance("svc", "10.0.0.1:80"))
        trackers = [conn.service_tracker(f"/t{i}") for i in range(20)]
        for tracker in trackers:
            tracker.start()
        if fault == "killed":
            private_server.kill(0)  # connections refused
        else:
            private_server.pause(0)  # nothing answers
        for release, took in (
            _timed(elector.stop),
            _timed(key.delete),
            _timed(lambda: registry.deregister(instance)),
            _timed(conn.close),
        ):
            assert took < STOP_TIMEOUT + MARGIN, f"took {took:.2f}s: {release}"
            assert not release and not release.confirmed
            assert "could not" in release.detail
        assert not elector.running and not key.running
    finally:
        private_server.resume(0)
        conn.close()


def test_a_failed_delete_says_when_the_key_expires(private_server: EtcdServer) -> None:
    with geventc.connect(private_server.endpoints, namespace="/exp", stop_timeout=0.5) as conn:
        key = conn.ephemeral_key("/k")
        key.create("v", ttl=7)
        private_server.kill(0)
        release = key.delete()
        assert not release
        assert release.expires_in is not None and 0 < release.expires_in <= 7
        assert "could not delete /k" in release.detail and "expires in about" in release.detail


def test_releases_are_confirmed_when_etcd_answers(private_server: EtcdServer) -> None:
    conn = geventc.connect(private_server.endpoints, namespace="/ok")
    elector = conn.leader_elector("/election", "me", ttl=5)
    elector.start().get(timeout=10)
    key = conn.ephemeral_key("/eph/k")
    key.create("v", ttl=5)
    registry = Registry(conn, ttl=5)
    instance = registry.register(Instance("svc", "10.0.0.1:80"))
    tracker = conn.service_tracker("/t")
    tracker.start()
    assert elector.stop() and key.delete() and registry.deregister(instance)
    assert tracker.stop()
    assert conn.get_prefix("/").kvs == ()
    closed = conn.close()
    assert closed and closed.confirmed and closed.detail == ""
    assert conn.close()  # idempotent


def test_stop_timeout_is_validated(private_server: EtcdServer) -> None:
    for bad in (0, -1, "1", None):
        with pytest.raises(geventc.InvalidArgument, match="stop_timeout"):
            geventc.connect(private_server.endpoints, stop_timeout=bad)


@pytest.mark.parametrize(
    ("command", "said", "left"),
    [
        (["put", "/ephz", "v", "--ttl", "6"], "deleted /ephz", "could not delete /ephz"),
        (["register", "svcy", "10.0.0.9:80", "--ttl", "6"], "deregistered svcy", "could not"),
        (["elect", "/elx", "node", "--ttl", "6"], "resigned from /elx", "could not resign"),
    ],
    ids=["put-ttl", "register", "elect"],
)
def test_the_command_says_when_it_could_not_release(
    private_server: EtcdServer, command: list[str], said: str, left: str
) -> None:
    # etcd killed, then Ctrl-C: no "deleted"/"deregistered"/"resigned" line, a message
    # saying what is left and when it expires, and a failing exit code
    process = subprocess.Popen(
        [sys.executable, "-m", "geventc", "--endpoints", private_server.endpoint, *command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first, process.stderr.read() if process.stderr else ""
        if command[0] == "elect":
            while not first.startswith("LEADER"):
                first = process.stdout.readline()
                assert first
        private_server.kill(0)
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=15)
        took = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
    assert said not in stdout, stdout
    assert left in stderr and "expires in about" in stderr, stderr
    assert process.returncode not in (0, 130), (process.returncode, stderr)
    assert took < 2 * STOP_TIMEOUT + 3, f"took {took:.1f}s"


def test_close_is_not_confirmed_while_a_let_go_lease_was_not_revoked(
    private_server: EtcdServer,
) -> None:
    # every key's delete failed and its lease's revocation went to the background: the
    # keys stay until the lease expires, so closing must not say all was released
    conn = geventc.connect(private_server.endpoints, namespace="/left", stop_timeout=STOP_TIMEOUT)
    key = conn.ephemeral_key("/k")
    key.create("v", ttl=9)
    private_server.kill(0)
    assert not key.delete()
    closed, took = _timed(conn.close)
    assert not closed and "expire" in closed.detail and took < STOP_TIMEOUT + MARGIN
    assert closed.expires_in is not None and 0 < closed.expires_in <= 9

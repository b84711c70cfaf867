"""The fault harness of geventc.testing against real etcd: FaultProxy (freeze, reset,
delay, one-way cut) and member network namespaces (isolate, partition, replace)."""

from __future__ import annotations

import base64
import json
import os
import select
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import urllib3
from helpers.waiting import wait_until

from geventc import Client
from geventc.testing import (
    EtcdCluster,
    EtcdMember,
    EtcdServer,
    FaultHarnessUnavailable,
    FaultProxy,
)
from geventc.testing import netns as netns_module
from geventc.testing.plugin import EtcdTestContext
from geventc.testing.releases import binary_release

DEADLINE = 15.0
#: how often a wait asks again (each check is a request to etcd)
POLL = 0.05


def _wait(condition: Callable[[], object], what: str) -> None:
    """:func:`wait_until` with this file's deadline and pace."""
    wait_until(condition, DEADLINE, what, interval=POLL)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def pool() -> Iterator[urllib3.PoolManager]:
    manager = urllib3.PoolManager(retries=False)
    yield manager
    manager.clear()


def _post(
    pool: urllib3.PoolManager, endpoint: str, path: str, body: dict[str, Any], timeout: float
) -> Any:
    response = pool.request(
        "POST", endpoint + path, body=json.dumps(body).encode(), timeout=timeout
    )
    return json.loads(response.data)


def _serializable_value(cluster: EtcdCluster, member: EtcdMember, key: str) -> bytes | None:
    """The key's value as ``member`` alone knows it (no consensus round)."""
    try:
        answer = cluster.admin(
            "/v3/kv/range", {"key": _b64(key), "serializable": True}, endpoint=member.client_url
        )
    except (RuntimeError, OSError, urllib3.exceptions.HTTPError):
        return None
    kvs = answer.get("kvs") or []
    return base64.b64decode(kvs[0]["value"]) if kvs else None


def _health(cluster: EtcdCluster, member: EtcdMember) -> dict[str, Any]:
    """The member's ``/health`` answer (``{}`` when none came within 2 s)."""
    try:
        response = cluster._pool().request(
            "GET", member.client_url + "/health", timeout=2.0, retries=False
        )
    except urllib3.exceptions.HTTPError:
        return {}
    return dict(json.loads(response.data))


def _has_leader(cluster: EtcdCluster, member: EtcdMember, not_: EtcdMember) -> bool:
    """``member`` sees a leader, and it is not ``not_``."""
    try:
        with_ids = cluster.admin("/v3/cluster/member/list", {}, endpoint=member.client_url)
        status = cluster.admin("/v3/maintenance/status", {}, endpoint=member.client_url)
    except (RuntimeError, OSError, urllib3.exceptions.HTTPError):
        return False
    excluded = {m["ID"] for m in with_ids["members"] if m.get("name") == not_.name}
    return status.get("leader", "0") not in ("0", *excluded)


def _reports_no_leader(health: dict[str, Any]) -> bool:
    """A member's ``/health`` says it has no leader: ``RAFT NO LEADER`` from etcd 3.5 on;
    etcd 3.4 answers ``{"health": "false"}`` without a reason."""
    return health in ({"health": "false", "reason": "RAFT NO LEADER"}, {"health": "false"})


def _leader_seen(cluster: EtcdCluster, member: EtcdMember, not_: EtcdMember) -> Callable[[], bool]:
    return lambda: _has_leader(cluster, member, not_)


def _put_until_accepted(cluster: EtcdCluster, member: EtcdMember, key: str, value: str) -> None:
    def attempt() -> bool:
        try:
            cluster.admin(
                "/v3/kv/put", {"key": _b64(key), "value": _b64(value)}, endpoint=member.client_url
            )
        except (RuntimeError, OSError, urllib3.exceptions.HTTPError):
            return False
        return True

    _wait(attempt, f"a put through {member.name} is accepted")


class _RawHTTP:
    """One raw TCP connection, to see exactly which bytes get through."""

    def __init__(self, endpoint: str) -> None:
        url = urllib.parse.urlsplit(endpoint)
        self.host = f"{url.hostname}:{url.port}"
        address = (url.hostname or "127.0.0.1", url.port or 80)
        self.sock = socket.create_connection(address, timeout=5.0)
        self.received = b""

    def send_post(self, path: str, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        self.sock.sendall(head.encode() + payload)

    def quiet_for(self, seconds: float) -> bool:
        """True when no byte arrives within ``seconds``."""
        readable, _, _ = select.select([self.sock], [], [], seconds)
        return not readable

    def read_until(self, marker: bytes, timeout: float = DEADLINE) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.received:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{marker!r} not received; got {self.received!r}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed before {marker!r}: {self.received!r}")
            self.received += chunk
        return self.received

    def close(self) -> None:
        self.sock.close()


# --- bad input ----------------------------------------------------------------------------


def test_fault_proxy_rejects_bad_input() -> None:
    for url in ("127.0.0.1:2379", "ftp://127.0.0.1:21", "http://127.0.0.1", "http://:80"):
        with pytest.raises(ValueError, match=r"http\(s\)://host:port"):
            FaultProxy(url)
    with FaultProxy("http://127.0.0.1:9") as proxy:
        with pytest.raises(ValueError, match="'to_server' or 'to_client'"):
            proxy.cut("up")
        for bad in (-1, float("nan"), "1", True):
            with pytest.raises(ValueError, match="a number >= 0"):
                proxy.delay(bad)  # type: ignore[arg-type]
        assert proxy.mode == "normal"
    assert proxy.mode == "closed"
    with pytest.raises(RuntimeError, match="closed"):
        proxy.freeze()


def test_fault_methods_say_which_option_they_need() -> None:
    cluster = EtcdCluster(1)
    try:
        with pytest.raises(RuntimeError, match=r"proxied=True"):
            cluster.blackhole(0)
        with pytest.raises(RuntimeError, match=r"netns=True"):
            cluster.isolate(0)
        with pytest.raises(RuntimeError, match=r"netns=True"):
            cluster.partition([[0]])
        with pytest.raises(ValueError, match=r"index 0\.\.0"):
            cluster.member(3)
    finally:
        cluster.stop()


def test_missing_prerequisites_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda _name: None)
    monkeypatch.setattr("os.access", lambda _path, _mode: False)
    with pytest.raises(FaultHarnessUnavailable, match="iproute2"):
        netns_module.check_available()
    monkeypatch.undo()
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(FaultHarnessUnavailable, match="need root"):
        netns_module.check_available()


@pytest.mark.cluster
def test_partition_groups_must_cover_every_member_once(
    etcd_fault_cluster: EtcdTestContext,
) -> None:
    cluster = etcd_fault_cluster.cluster
    with pytest.raises(ValueError, match="exactly one partition group: m2 in none"):
        cluster.partition([[0], [1]])
    with pytest.raises(ValueError, match="m1 is in more than one"):
        cluster.partition([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match=r"index 0\.\.2"):
        cluster.partition([[0], [1, 2, 7]])
    with pytest.raises(ValueError, match="list of lists"):
        cluster.partition("012")  # type: ignore[arg-type]
    assert cluster.network is not None and not cluster.network.cuts


# --- the proxy ----------------------------------------------------------------------------


@pytest.mark.cluster
def test_cluster_endpoints_go_through_proxies_members_stay_direct(
    etcd_fault_cluster: EtcdTestContext,
) -> None:
    cluster = etcd_fault_cluster.cluster
    assert etcd_fault_cluster.endpoints == [p.endpoint for p in cluster.proxies]
    assert all(e.startswith("http://127.0.0.1:") for e in etcd_fault_cluster.endpoints)
    assert all(not m.client_url.startswith("http://127.") for m in cluster.members)
    client = etcd_fault_cluster.client()
    client.put(etcd_fault_cluster.key("a"), "1")
    got = client.get(etcd_fault_cluster.key("a"))
    assert got is not None and got.value == b"1"
    for member in cluster.members:  # the process is etcd itself, in its own namespace
        assert member.process is not None
        running = binary_release(os.readlink(f"/proc/{member.process.pid}/exe"))
        assert running is not None and cluster.release is not None
        assert running.version == cluster.release.version
        assert os.readlink(f"/proc/{member.process.pid}/ns/net") != os.readlink("/proc/self/ns/net")


@pytest.mark.cluster
def test_freeze_blackholes_the_proxy_not_the_member_and_heal_resumes(
    etcd_fault_cluster: EtcdTestContext, pool: urllib3.PoolManager
) -> None:
    cluster = etcd_fault_cluster.cluster
    member, proxy = cluster.members[0], cluster.proxy(0)
    key = etcd_fault_cluster.key("frozen")
    held = _RawHTTP(proxy.endpoint)
    held.send_post("/v3/kv/range", {"key": _b64(key)})
    held.read_until(b"revision")  # the connection works
    cluster.blackhole(member)
    assert proxy.mode == "frozen"
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):  # a new connection: silence
        _post(pool, proxy.endpoint, "/v3/kv/range", {"key": _b64(key)}, timeout=1.0)
    held.received = b""
    held.send_post("/v3/kv/put", {"key": _b64(key), "value": _b64("v")})
    assert held.quiet_for(0.5)  # an open connection: silence too
    assert _serializable_value(cluster, member, key) is None  # nothing reached the member
    direct = _post(pool, member.client_url, "/v3/kv/range", {"key": _b64(key)}, timeout=5.0)
    assert "header" in direct  # the member itself answers
    cluster.heal()
    assert proxy.mode == "normal"
    held.read_until(b"revision")  # the held put is delivered and answered
    assert _serializable_value(cluster, member, key) == b"v"
    answer = _post(pool, proxy.endpoint, "/v3/kv/range", {"key": _b64(key)}, timeout=5.0)
    assert answer["kvs"][0]["value"] == _b64("v")
    held.close()


@pytest.mark.cluster
def test_reset_aborts_an_open_watch_stream(etcd_fault_cluster: EtcdTestContext) -> None:
    proxy = etcd_fault_cluster.cluster.proxy(1)
    watches = urllib3.PoolManager(retries=False)
    response = watches.request(
        "POST",
        proxy.endpoint + "/v3/watch",
        body=json.dumps({"create_request": {"key": _b64(etcd_fault_cluster.key("w"))}}),
        preload_content=False,
        timeout=urllib3.Timeout(connect=5.0, read=DEADLINE),
    )
    assert b"created" in response.read1()
    _wait(lambda: proxy.connections >= 1, "the watch connection is open")
    proxy.reset()
    with pytest.raises((urllib3.exceptions.ProtocolError, OSError)) as raised:
        response.read1()
    assert "reset" in repr(raised.value).lower()
    assert proxy.mode == "normal"
    pool = urllib3.PoolManager(retries=False)  # and it keeps accepting
    answer = _post(pool, proxy.endpoint, "/v3/kv/range", {"key": _b64("x")}, timeout=5.0)
    assert "header" in answer


@pytest.mark.cluster
def test_delay_adds_latency_each_way(
    etcd_fault_cluster: EtcdTestContext, pool: urllib3.PoolManager
) -> None:
    proxy = etcd_fault_cluster.cluster.proxy(2)
    body = {"key": _b64(etcd_fault_cluster.key("d"))}
    _post(pool, proxy.endpoint, "/v3/kv/range", body, timeout=5.0)
    proxy.delay(0.3)
    assert proxy.mode == "delayed" and proxy.latency == 0.3
    started = time.monotonic()
    _post(pool, proxy.endpoint, "/v3/kv/range", body, timeout=10.0)
    elapsed = time.monotonic() - started
    assert 0.55 <= elapsed < 8.0  # 0.3 s to the server and 0.3 s back
    proxy.heal()
    assert proxy.mode == "normal"


@pytest.mark.cluster
def test_cut_to_client_lets_requests_reach_the_server(
    etcd_fault_cluster: EtcdTestContext,
) -> None:
    cluster = etcd_fault_cluster.cluster
    member, proxy = cluster.members[0], cluster.proxy(0)
    key = etcd_fault_cluster.key("cut-to-client")
    raw = _RawHTTP(proxy.endpoint)
    proxy.cut("to_client")
    assert proxy.mode == "cut_to_client"
    raw.send_post("/v3/kv/put", {"key": _b64(key), "value": _b64("1")})
    _wait(lambda: _serializable_value(cluster, member, key) == b"1", "the put reached etcd")
    assert raw.quiet_for(0.3)  # but its answer is held
    proxy.heal()
    raw.read_until(b"revision")
    raw.close()


@pytest.mark.cluster
def test_cut_to_server_lets_answers_reach_the_client(
    etcd_fault_cluster: EtcdTestContext,
) -> None:
    cluster = etcd_fault_cluster.cluster
    member, proxy = cluster.members[1], cluster.proxy(1)
    watched, written = etcd_fault_cluster.key("watched"), etcd_fault_cluster.key("written")
    watch = _RawHTTP(proxy.endpoint)
    watch.send_post("/v3/watch", {"create_request": {"key": _b64(watched)}})
    watch.read_until(b"created")
    raw = _RawHTTP(proxy.endpoint)
    proxy.cut("to_server")
    assert proxy.mode == "cut_to_server"
    raw.send_post("/v3/kv/put", {"key": _b64(written), "value": _b64("1")})
    cluster.admin("/v3/kv/put", {"key": _b64(watched), "value": _b64("w")}, member.client_url)
    watch.read_until(_b64("w").encode())  # server to client flows: the watch event arrives
    assert _serializable_value(cluster, member, written) is None  # the put is held
    assert raw.quiet_for(0.2)
    proxy.heal()
    raw.read_until(b"revision")
    assert _serializable_value(cluster, member, written) == b"1"
    raw.close()
    watch.close()


@pytest.mark.cluster
def test_a_frozen_proxy_holds_hundreds_of_connections(
    etcd_fault_cluster: EtcdTestContext,
) -> None:
    proxy = etcd_fault_cluster.cluster.proxy(2)
    proxy.freeze()
    raws = [_RawHTTP(proxy.endpoint) for _ in range(300)]
    for raw in raws:
        raw.send_post("/v3/kv/range", {"key": _b64("many")})
    _wait(lambda: proxy.connections == 300, "300 connections are held")
    proxy.heal()
    for raw in raws:
        raw.read_until(b"revision")
        raw.close()


def test_tls_passes_through_the_proxy_untouched() -> None:
    with EtcdServer(fsync=False, tls=True, proxied=True) as server:
        assert server.endpoint.startswith("https://127.0.0.1:")
        assert server.endpoint != server.members[0].client_url
        with Client(server.endpoints, **server.client_options()) as client:
            client.put("/tls", "1")
            got = client.get("/tls")
            assert got is not None and got.value == b"1"
        assert server.proxy(0).connections >= 0


# --- members in network namespaces --------------------------------------------------------


@pytest.mark.cluster
def test_isolate_cuts_a_member_from_its_peers_not_from_clients(
    etcd_fault_cluster: EtcdTestContext,
) -> None:
    cluster = etcd_fault_cluster.cluster
    isolated = cluster.leader()
    others = [m for m in cluster.members if m is not isolated]
    key = etcd_fault_cluster.key("while-isolated")
    cluster.isolate(isolated)
    _wait(
        lambda: _reports_no_leader(_health(cluster, isolated)),
        f"{isolated.name} reports no leader",
    )
    for member in others:
        _wait(_leader_seen(cluster, member, isolated), f"{member.name} has a leader")
    _put_until_accepted(cluster, others[0], key, "v")
    assert _serializable_value(cluster, isolated, key) is None
    cluster.heal()
    assert all(_health(cluster, m)["health"] == "true" for m in cluster.members)
    _wait(lambda: _serializable_value(cluster, isolated, key) == b"v", "the put is replicated")


@pytest.mark.cluster
def test_partition_splits_the_cluster_into_groups(etcd_fault_cluster: EtcdTestContext) -> None:
    cluster = etcd_fault_cluster.cluster
    alone, pair = cluster.members[0], cluster.members[1:]
    key = etcd_fault_cluster.key("while-partitioned")
    cluster.partition([[0], [cluster.members[1], 2]])
    assert cluster.network is not None and cluster.network.cuts == {
        frozenset((0, 1)),
        frozenset((0, 2)),
    }
    _wait(
        lambda: _reports_no_leader(_health(cluster, alone)),
        "the lone member reports no leader",
    )
    for member in pair:
        _wait(_leader_seen(cluster, member, alone), f"{member.name} has a leader")
    _put_until_accepted(cluster, pair[1], key, "v")
    assert _serializable_value(cluster, alone, key) is None
    cluster.heal()
    assert cluster.network.cuts == set()
    _wait(lambda: _serializable_value(cluster, alone, key) == b"v", "the put is replicated")


@pytest.mark.cluster
def test_replace_wipes_a_member_and_adds_it_back(etcd_fault_cluster: EtcdTestContext) -> None:
    cluster = etcd_fault_cluster.cluster
    member = cluster.members[2]
    key = etcd_fault_cluster.key("before-replace")
    cluster.admin("/v3/kv/put", {"key": _b64(key), "value": _b64("kept")})
    before = cluster.admin("/v3/cluster/member/list", {})["members"]
    cluster.replace(member)
    after = cluster.admin("/v3/cluster/member/list", {})["members"]
    assert sorted(m["name"] for m in after) == ["m0", "m1", "m2"]
    old_id = {m["name"]: m["ID"] for m in before}["m2"]
    new = {m["name"]: m for m in after}["m2"]
    assert new["ID"] != old_id and new["peerURLs"] == [member.peer_url]
    assert all(_health(cluster, m)["health"] == "true" for m in cluster.members)
    _wait(lambda: _serializable_value(cluster, member, key) == b"kept", "the data came back")


# --- namespaces come and go ---------------------------------------------------------------


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


@pytest.mark.cluster
def test_a_second_cluster_gets_its_own_network_and_removes_it(
    etcd_fault_cluster: EtcdTestContext,
) -> None:
    first = etcd_fault_cluster.cluster
    assert first.network is not None
    with EtcdCluster(1, fsync=False, netns=True) as second:
        assert second.network is not None and second.network.slot != first.network.slot
        names = {second.network.hub, second.network.namespace(0)}
        assert names <= _namespaces()
        second.admin("/v3/kv/put", {"key": _b64("second"), "value": _b64("1")})
    assert not names & _namespaces()
    assert {first.network.hub, first.network.namespace(0)} <= _namespaces()


def test_leftovers_of_a_dead_run_are_removed(etcd_fault_cluster_server: EtcdCluster) -> None:
    assert etcd_fault_cluster_server.network is not None  # namespaces work here
    slot = next(
        s
        for s in range(netns_module.SLOTS - 1, 0, -1)
        if not os.path.exists(os.path.join(netns_module.CLAIMS, str(s)))
    )
    with open(os.path.join(netns_module.CLAIMS, str(slot)), "w") as handle:
        handle.write("1:0")  # pid 1 with another start time: a dead owner
    subprocess.run(["ip", "netns", "add", f"gvc{slot}h"], check=True)
    network = netns_module.TestNetwork(1)
    try:
        assert f"gvc{slot}h" not in _namespaces()
        assert not os.path.exists(os.path.join(netns_module.CLAIMS, str(slot))) or (
            network.slot == slot
        )
    finally:
        network.destroy()

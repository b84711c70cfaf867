"""The ``geventc`` commands etcdctl users reach for, run as real subprocesses against a
real etcd and checked against etcdctl's output formats (``ctlv3/command`` of etcdctl
v3.6.16): ``lease ...``, ``member list``, ``endpoint status|health``, ``txn`` from
stdin, ``serve --port``, and the errors that say what to do when nothing answers or
the endpoint's scheme is wrong."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from helpers.cli import COMMAND, Done, Running, assert_error_line, environment, run

import geventc
from geventc.testing import EtcdServer, free_port
from geventc.testing.plugin import EtcdTestContext

GRANTED = re.compile(r"^lease ([0-9a-f]{16}) granted with TTL\((\d+)s\)$")


def at(etcd: EtcdTestContext) -> list[str]:
    return ["--endpoints", ",".join(etcd.endpoints)]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Done]:
    """Run ``geventc ARGS`` in this process (``main``; no interpreter start-up), with
    ``stdin`` as its input; the ``geventc`` logger is left as it was."""
    from geventc.cli import main

    def call(*args: str, stdin: str = "") -> Done:
        logger = logging.getLogger("geventc")
        saved = (list(logger.handlers), logger.level, logger.propagate)
        read, write = os.pipe()
        os.write(write, stdin.encode())
        os.close(write)
        capsys.readouterr()
        try:
            with open(read, encoding="utf-8") as source:
                monkeypatch.setattr(sys, "stdin", source)
                for name in [n for n in os.environ if n.startswith("GEVENTC_")]:
                    monkeypatch.delenv(name)
                code = main(list(args))
        finally:
            logger.handlers[:], logger.level, logger.propagate = saved
        out, err = capsys.readouterr()
        return Done(code, out, err)

    return call


def txn(*args: str, stdin: str) -> Done:
    """``geventc txn ARGS`` with ``stdin`` as its input, as a subprocess."""
    done = subprocess.run(
        [*COMMAND, "txn", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environment(),
        timeout=20,
    )
    return Done(done.returncode, done.stdout, done.stderr)


# --- lease --------------------------------------------------------------------------------


def test_lease_grant_timetolive_keep_alive_list_revoke(
    etcd: EtcdTestContext, cli: Callable[..., Done]
) -> None:
    client = etcd.client()
    granted = cli(*at(etcd), "lease", "grant", "60")
    match = GRANTED.match(granted.stdout.strip())
    assert granted.code == 0 and match and match.group(2) == "60", granted
    lease = int(match.group(1), 16)
    assert client.time_to_live(lease).granted_ttl == 60
    key = etcd.key("leased")
    put = cli(*at(etcd), "put", key, "v", "--lease", match.group(1))  # as etcdctl put --lease
    assert put.code == 0 and client.get(key).lease == lease, put

    (info,) = cli(*at(etcd), "--json", "lease", "timetolive", match.group(1), "--keys").json()
    assert info["id"] == match.group(1) and info["granted_ttl"] == 60 and 0 < info["ttl"] <= 60
    assert info["keys"] == [{"key": key}]
    people = cli(*at(etcd), "lease", "timetolive", match.group(1), "--keys").stdout
    assert re.fullmatch(
        rf"lease {match.group(1)} granted with TTL\(60s\), remaining\(\d+s\), "
        rf"attached keys\(\[{re.escape(key)}\]\)\n",
        people,
    )
    once = cli(*at(etcd), "lease", "keep-alive", "--once", match.group(1))
    assert once.code == 0 and once.stdout == f"lease {match.group(1)} keepalived with TTL(60)\n"

    listed = cli(*at(etcd), "lease", "list")
    lines = listed.stdout.splitlines()
    assert re.fullmatch(r"found \d+ leases", lines[0]) and match.group(1) in lines[1:]
    assert int(lines[0].split()[1]) == len(lines) - 1
    assert {"id": match.group(1)} in cli(*at(etcd), "--json", "lease", "list").json()

    revoked = cli(*at(etcd), "lease", "revoke", match.group(1))
    assert revoked.code == 0 and revoked.stdout == f"lease {match.group(1)} revoked\n"
    assert client.get(key) is None  # its keys went with it
    again = cli(*at(etcd), "lease", "revoke", match.group(1))
    assert again.code == 1
    assert_error_line(again.stderr, "lease not found")
    gone = cli(*at(etcd), "lease", "timetolive", match.group(1))
    assert gone.code == 1
    assert_error_line(gone.stderr, f"lease {match.group(1)} already expired")
    late = cli(*at(etcd), "lease", "keep-alive", match.group(1), "--once")
    assert late.code == 1
    assert_error_line(late.stderr, f"lease {match.group(1)} expired or revoked")
    (made,) = cli(*at(etcd), "--json", "lease", "grant", "5").json()
    assert client.time_to_live(int(made["id"], 16)).granted_ttl == made["ttl"] == 5
    client.revoke(int(made["id"], 16))


def test_lease_keep_alive_renews_until_interrupted_or_revoked(
    etcd: EtcdTestContext, spawn: Callable[..., Running]
) -> None:
    client = etcd.client()
    lease = client.grant(3)
    hex_id = f"{lease.id:016x}"
    renewing = spawn(*at(etcd), "lease", "keep-alive", hex_id)
    for _ in range(3):  # the first at once, then every TTL/3
        assert renewing.line() == f"lease {hex_id} keepalived with TTL(3)"
    done = renewing.interrupt()
    assert done.code == 130, done.stderr
    assert client.time_to_live(lease).ttl > 0  # Ctrl-C leaves the lease to its TTL

    watched = spawn(*at(etcd), "--json", "lease", "keep-alive", hex_id)
    assert watched.json() == {"id": hex_id, "ttl": 3}
    client.revoke(lease)
    ended = watched.finish()
    assert ended.code == 1
    assert_error_line(ended.stderr, f"lease {hex_id} expired or revoked")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["lease", "revoke", "xyz"], "must be a lease ID in hex"),
        (["lease", "revoke", "0"], "must be a lease ID in hex"),
        (["lease", "timetolive", "-5"], "ID"),
        (["lease", "keep-alive", "1" * 17], "must be a lease ID in hex"),
        (["lease", "revoke", "8000000000000000"], "must be a lease ID in hex"),
        (["lease", "grant", "0"], "TTL: must be a positive integer"),
        (["put", "k", "v", "--lease", "g"], "--lease: must be a lease ID in hex"),
        (["put", "k", "v", "--lease", "1", "--ttl", "5"], "--ttl and --lease"),
        (["lease", "grant", "soon"], "TTL"),
        (["lease"], "required: ACTION"),
        (["member"], "required: ACTION"),
        (["endpoint", "frob"], "invalid choice: 'frob'"),
        (["serve", "--port", "0"], "--port: must be a port"),
        (["serve", "--port", "70000"], "--port: must be a port"),
        (["serve", "--endpoints", "http://127.0.0.1:2379"], "takes no --endpoints"),
        (["--endpoints", "http://127.0.0.1:2379", "serve"], "choose its client port with --port"),
        (["serve", "--namespace", "x"], "takes no --namespace"),
    ],
)
def test_usage_errors(args: list[str], fragment: str, cli: Callable[..., Done]) -> None:
    done = cli(*args)
    assert done.code == 2 and done.stdout == ""
    assert_error_line(done.stderr, fragment)


def test_lease_ids_are_accepted_as_etcdctl_prints_them(
    etcd: EtcdTestContext, cli: Callable[..., Done]
) -> None:
    client = etcd.client()
    lease = client.grant(30)
    for spelling in (f"{lease.id:x}", f"{lease.id:016X}", f"0x{lease.id:x}"):
        done = cli(*at(etcd), "lease", "timetolive", spelling)
        assert done.code == 0 and done.stdout.startswith(f"lease {lease.id:016x} granted")
    client.revoke(lease)


# --- member list, endpoint status and health ----------------------------------------------


def test_member_list_and_endpoint_status_of_a_cluster(
    etcd_cluster: EtcdTestContext, cli: Callable[..., Done]
) -> None:
    client = etcd_cluster.client()
    members = client.members()
    one = ["--endpoints", etcd_cluster.endpoints[0]]
    rows = cli(*one, "member", "list").stdout.splitlines()
    expected = [
        f"{m.id:x}, started, {m.name}, {','.join(m.peer_urls)}, {','.join(m.client_urls)}, false"
        for m in members
    ]
    assert rows == expected
    listed = cli(*one, "--json", "member", "list").json()
    assert [(d["id"], d["name"], d["client_urls"]) for d in listed] == [
        (f"{m.id:x}", m.name, list(m.client_urls)) for m in members
    ]

    status = cli(*one, "--json", "endpoint", "status", "--cluster")
    assert status.code == 0, status.stderr
    urls = [url for m in members for url in m.client_urls]
    assert [s["endpoint"] for s in status.json()] == urls
    assert sum(s["is_leader"] for s in status.json()) == 1
    assert {s["id"] for s in status.json()} == {f"{m.id:x}" for m in members}
    (text,) = cli(*one, "endpoint", "status").stdout.splitlines()
    fields = text.split(", ")
    truth = client.status(etcd_cluster.endpoints[0])
    assert fields[:3] == [etcd_cluster.endpoints[0], f"{truth.member_id:x}", truth.version]
    assert re.fullmatch(r"\d+(\.\d)? [kMG]?B", fields[3])  # go-humanize's SI sizes
    assert fields[4] == str(truth.is_leader).lower() and fields[5] == "false"

    health = cli(*one, "endpoint", "health", "--cluster")
    assert health.code == 0, health.stderr
    assert [line.split(" is ")[0] for line in health.stdout.splitlines()] == urls
    assert all(
        re.search(r" is healthy: successfully committed proposal: took = [\d.]+ms$", line)
        for line in health.stdout.splitlines()
    )


def test_endpoint_health_and_status_fail_when_one_endpoint_is_down(
    etcd: EtcdTestContext,
    cli: Callable[..., Done],
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    options = ["--endpoints", f"{etcd.endpoint},{dead}", "--timeout", "2"]
    health = cli(*options, "--json", "endpoint", "health")
    assert health.code == 1
    assert [(h["endpoint"], h["health"]) for h in health.json()] == [
        (etcd.endpoint, True),
        (dead, False),
    ]
    assert "connection refused" in health.json()[1]["error"]
    assert_error_line(health.stderr, "unhealthy cluster: 1 of 2 endpoints")
    status = cli(*options, "endpoint", "status")
    assert status.code == 1 and status.stdout.startswith(f"{etcd.endpoint}, ")
    assert_error_line(status.stderr, f"no status from {dead}")


# --- txn ----------------------------------------------------------------------------------


def test_txn_reads_etcdctls_format(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    k1, k2 = etcd.key("key1"), etcd.key("key2")
    # etcdctl's own example (etcdctl txn --help), against a missing key1: FAILURE
    example = (
        f'mod("{k1}") > "0"\n\nput {k1} "overwrote-key1"\n\n'
        f'put {k1} "created-key1"\nput {k2} "some extra key"\n\n'
    )
    failed = txn(*at(etcd), stdin=example)
    assert failed.code == 0 and failed.stdout == "FAILURE\n\nOK\n\nOK\n", failed.stderr
    assert client.get(k1).value == b"created-key1"
    # the same again succeeds; no trailing blank line needed; --prev-kv and get print
    # key and value lines as etcdctl does
    again = txn(
        *at(etcd),
        stdin=f'mod("{k1}") > "0"\n\nput {k1} "overwrote-key1" --prev-kv\n'
        f"get {etcd.key('key')} --prefix\n\nput {k1} never",
    )
    assert again.stdout.splitlines() == [
        "SUCCESS", "", "OK", k1, "created-key1", "", k1, "overwrote-key1", k2, "some extra key",
    ]  # fmt: skip
    # --json, value and version comparisons, a prefix delete with its previous values
    (result,) = txn(
        *at(etcd),
        "--json",
        stdin=f'val("{k1}") = "overwrote-key1"\nver("{k2}") = "1"\n\n'
        f"del {etcd.key('key')} --prefix --prev-kv\n\n",
    ).json()
    assert result["succeeded"] is True
    (deleted,) = result["responses"]
    assert deleted["op"] == "del" and deleted["deleted"] == 2
    assert [kv["key"] for kv in deleted["prev_kvs"]] == [k1, k2]
    assert client.get_prefix(etcd.key("key")).kvs == ()


def test_txn_quoting_leases_namespace_and_interactive(
    etcd: EtcdTestContext, cli: Callable[..., Done]
) -> None:
    client = etcd.client()
    lease = client.grant(30)
    namespace = ["--namespace", etcd.prefix.strip("/")]
    done = cli(
        "txn", *at(etcd), *namespace, "-i",
        stdin=f'c("/q") = "0"\n\nput /q "a \\"b\\"\\x00\\xff" --lease={lease.id:x}\n'
        f"put '/r s' 'single quoted'\n\n\n",
    )  # fmt: skip
    prompts = [
        "compares:",
        "success requests (get, put, del):",
        "failure requests (get, put, del):",
    ]
    assert done.stdout.splitlines() == [*prompts, "SUCCESS", "", "OK", "", "OK"], done.stderr
    stored = client.get(etcd.prefix + "q")
    assert stored.value == b'a "b"\x00\xff' and stored.lease == lease.id
    assert client.get(etcd.prefix + "r s").value == b"single quoted"
    leased = cli(
        "txn", *at(etcd), *namespace, "--json", stdin=f'lease("/q") = "{lease.id:x}"\n\n\n'
    )
    assert leased.json()[0]["succeeded"] is True
    client.revoke(lease)


@pytest.mark.parametrize(
    ("stdin", "fragment"),
    [
        ('bad("k") = "1"\n', "txn line 1: malformed comparison"),
        ('mod("k") ~ "1"\n', "OP must be one of"),
        ('mod("k") > "x"\n', "bad number 'x'"),
        ('mod(k) > "1"\n', "expected a quoted string"),
        ('lease("k") = "zz"\n', "bad number 'zz'"),
        ("\nput k\n", "txn line 2: invalid txn request: put k"),
        ("\n\nfrobnicate k\n", "txn line 3: invalid txn request"),
        ('\n\nput k "\\q"\n', "bad escape"),
        ("\n\nget k --rev=-1\n", "revision"),
        ("\n\n\nput k v\n", "txn line 4: unexpected input"),
    ],
)
def test_txn_input_errors_name_the_line(
    stdin: str, fragment: str, cli: Callable[..., Done]
) -> None:
    done = cli("txn", "--endpoints", f"http://127.0.0.1:{free_port()}", stdin=stdin)
    assert done.code == 2 and done.stdout == ""  # refused before connecting
    assert_error_line(done.stderr, fragment)


# --- serve --port -------------------------------------------------------------------------


def test_serve_on_a_chosen_port(spawn: Callable[..., Running]) -> None:
    port = free_port()
    command = spawn("--json", "serve", "--no-fsync", "--port", str(port))
    serving = command.json(timeout=30)
    assert serving["endpoint"] == f"http://127.0.0.1:{port}"
    with geventc.Client(serving["endpoint"]) as client:
        assert client.version().server
    taken = run("serve", "--port", str(port))  # a second server on it
    assert taken.code == 1
    assert_error_line(taken.stderr, f"cannot serve on port {port}", "in use")
    assert command.interrupt(timeout=15).code == 130


# --- what a connection failure means ------------------------------------------------------


def test_nothing_at_the_default_endpoint_says_how_to_start_or_name_one(
    cli: Callable[..., Done],
) -> None:
    with socket.socket() as probe:  # the hint is for a default endpoint nobody serves
        assert probe.connect_ex(("127.0.0.1", 2379)) != 0, "something serves 127.0.0.1:2379"
    for args in (["get", "k"], ["lease", "grant", "5"], ["member", "list"]):
        done = cli("--timeout", "2", *args)
        assert done.code == 1, done
        assert_error_line(done.stderr, "geventc serve", "--endpoints", "$GEVENTC_ENDPOINTS")
    health = cli("--timeout", "2", "health")
    assert health.code == 1 and "geventc serve" in health.stderr
    given = cli("--endpoints", f"http://127.0.0.1:{free_port()}", "--timeout", "2", "get", "k")
    assert given.code == 1 and "geventc serve" not in given.stderr  # an endpoint was named


@pytest.fixture(scope="module")
def tls_server() -> Iterator[EtcdServer]:
    with EtcdServer(tls=True, fsync=False) as server:
        yield server


def test_the_wrong_scheme_is_named(
    etcd: EtcdTestContext, tls_server: EtcdServer, cli: Callable[..., Done]
) -> None:
    plain = etcd.endpoint.replace("http://", "https://")
    for args in (["get", "k"], ["put", etcd.key("k"), "v"]):
        done = cli("--endpoints", plain, "--timeout", "2", *args)
        assert done.code == 1
        assert_error_line(
            done.stderr,
            "this member speaks plain http; use " + etcd.endpoint.replace("https", "http"),
        )
    tls = tls_server.endpoint.replace("https://", "http://")
    read = cli("--endpoints", tls, "--timeout", "2", "get", "k")
    assert read.code == 1
    assert_error_line(read.stderr, f"this member speaks https (TLS); use {tls_server.endpoint}")
    write = cli("--endpoints", tls, "--timeout", "2", "put", "k", "v")
    assert write.code == 1
    assert_error_line(write.stderr, "speaks https", "nothing was written")
    health = cli("--endpoints", tls, "--timeout", "2", "endpoint", "health")
    assert health.code == 1 and "speaks https" in health.stdout


def test_interrupted_txn_prompt_exits_130(etcd: EtcdTestContext) -> None:
    """``txn -i`` waiting at its prompt for a line still stops on Ctrl-C."""
    process = subprocess.Popen(
        [*COMMAND, *at(etcd), "txn", "-i"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "compares:\n"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 130, stderr

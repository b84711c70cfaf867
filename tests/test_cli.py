"""The ``geventc`` command, run as a real subprocess against a real etcd: key-value
commands, long-running commands stopped by SIGINT (with their cleanup), usage and
connection errors, auth with TLS, and the development server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import gevent
import pytest
from helpers.cli import Running, assert_error_line, environment, run

import geventc
from geventc.errors import EtcdError
from geventc.instances import Instance, encode
from geventc.testing import ROOT_PASSWORD, EtcdServer, free_port
from geventc.testing.plugin import EtcdTestContext

SCRIPT = os.path.join(os.path.dirname(sys.executable), "geventc")


def endpoint_args(etcd: EtcdTestContext) -> list[str]:
    return ["--endpoints", ",".join(etcd.endpoints)]


def namespaced(etcd: EtcdTestContext) -> list[str]:
    """Connection options keeping every key under the test's prefix."""
    return [*endpoint_args(etcd), "--namespace", etcd.prefix.strip("/")]


# --- key-value commands -------------------------------------------------------------------


def test_put_get_del(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    a, b = etcd.key("a"), etcd.key("a", "b")
    put = run(*endpoint_args(etcd), "put", a, "1")
    assert put.code == 0 and put.stdout.startswith("OK (revision ") and put.stderr == ""
    (written,) = run(*endpoint_args(etcd), "--json", "put", b, "two").json()
    assert written["key"] == b and written["revision"] == client.get(b).mod_revision
    assert run(*endpoint_args(etcd), "get", a).stdout == "1\n"
    listed = run(*endpoint_args(etcd), "get", "--json", "--prefix", etcd.key("a"))
    assert [(d["key"], d["value"], d["version"]) for d in listed.json()] == [
        (a, "1", 1),
        (b, "two", 1),
    ]
    people = run(*endpoint_args(etcd), "get", "--prefix", etcd.key("a"))
    assert people.stdout.splitlines() == [f"{a} = 1", f"{b} = two"]
    missing = run(*endpoint_args(etcd), "get", etcd.key("nope"))
    assert missing.code == 1 and missing.stdout == ""
    assert_error_line(missing.stderr, "not found")
    # nothing under a prefix is a missing key too (exit 1, as README's table says)
    empty = run(*endpoint_args(etcd), "get", "--prefix", etcd.key("nope"))
    assert empty.code == 1 and empty.stdout == ""
    assert_error_line(empty.stderr, "no key under")
    one = run(*endpoint_args(etcd), "del", b)
    assert one.code == 0 and one.stdout == "deleted 1 key\n"
    (deleted,) = run(*endpoint_args(etcd), "--json", "del", etcd.key(""), "--prefix").json()
    assert deleted["deleted"] == 1
    assert client.get_prefix(etcd.prefix).kvs == ()


def test_endpoints_from_environment_namespace_and_options_anywhere(etcd: EtcdTestContext) -> None:
    env = environment(GEVENTC_ENDPOINTS=",".join(etcd.endpoints))
    namespace = etcd.prefix.strip("/")
    assert run("put", "/color", "blue", "--namespace", namespace, env=env).code == 0
    assert etcd.client().get(etcd.prefix + "color").value == b"blue"
    (got,) = run("--namespace", namespace, "--json", "get", "color", env=env).json()
    assert got["key"] == "/color" and got["value"] == "blue"


# --- long-running commands ------------------------------------------------------------------


def test_put_with_ttl_lives_until_interrupted(
    etcd: EtcdTestContext, spawn: Callable[..., Running]
) -> None:
    client = etcd.client()
    key = etcd.key("ephemeral")
    client.put(key, "old")
    command = spawn(*endpoint_args(etcd), "--json", "put", key, "new", "--ttl", "5")
    assert command.json() == {"event": "CREATED", "key": key, "ttl": 5}
    kv = client.get(key)
    assert kv is not None and kv.value == b"new" and kv.lease  # overwritten, on a lease
    assert client.time_to_live(kv.lease).granted_ttl == 5
    done = command.interrupt()
    assert done.code == 130, done.stderr
    assert done.json() == [{"event": "DELETED", "key": key}]
    assert client.get(key) is None


def test_watch_prints_changes_until_interrupted(
    etcd: EtcdTestContext, spawn: Callable[..., Running]
) -> None:
    client = etcd.client()
    prefix, key = etcd.key("watched/"), etcd.key("watched/x")
    command = spawn(*endpoint_args(etcd), "--json", "watch", prefix, "--prefix")
    ready = command.json()
    assert ready["event"] == "WATCHING" and ready["key"] == prefix and ready["prefix"] is True
    client.put(key, "1")
    client.put(key, "2")
    last = client.delete(key).header.revision
    events = [command.json() for _ in range(3)]
    assert [(e["event"], e["key"], e["value"]) for e in events] == [
        ("PUT", key, "1"),
        ("PUT", key, "2"),
        ("DELETE", key, ""),
    ]
    assert events[1]["prev_value"] == "1" and events[2]["revision"] == last
    done = command.interrupt()
    assert done.code == 130 and done.stdout == "", done.stderr


def test_watch_from_a_revision(etcd: EtcdTestContext, spawn: Callable[..., Running]) -> None:
    client = etcd.client()
    key = etcd.key("history")
    first = client.put(key, "old").header.revision
    client.put(key, "new")
    command = spawn(*endpoint_args(etcd), "watch", key, "--rev", str(first))
    assert command.line() == f"watching {key} from revision {first}; Ctrl-C stops"
    assert command.line() == f"PUT {key} = old (revision {first})"
    assert command.line() == f"PUT {key} = new (revision {first + 1})"
    assert command.interrupt().code == 130


def test_elect_leads_hands_over_and_resigns(
    etcd: EtcdTestContext, spawn: Callable[..., Running]
) -> None:
    client = etcd.client()
    path = etcd.key("election")
    a = spawn(*endpoint_args(etcd), "--json", "elect", path, "node-a", "--ttl", "5")
    led = a.json_until(lambda e: e["event"] == "LEADER")
    assert led["leader"] == "node-a" and led["fencing_token"] > 0
    (kv,) = client.get_prefix(path + "/").kvs
    assert kv.value == b"node-a" and kv.create_revision == led["fencing_token"]
    b = spawn(*endpoint_args(etcd), "elect", path, "node-b", "--ttl", "5")
    assert b.line() == "FOLLOWER (leader: node-a)"
    done = a.interrupt()
    assert done.code == 130, done.stderr
    assert done.json()[-1] == {"event": "RESIGNED", "path": path}
    assert b.line().startswith("LEADER (fencing token ")  # resigning handed over at once
    assert [kv.value for kv in client.get_prefix(path + "/").kvs] == [b"node-b"]
    done = b.interrupt(signal.SIGTERM)
    assert done.code == 143 and done.stdout == f"resigned from {path}\n", done.stderr
    assert client.get_prefix(path + "/").kvs == ()


def test_lock_holds_while_the_command_runs_and_passes_its_exit_code(
    etcd: EtcdTestContext, spawn: Callable[..., Running]
) -> None:
    client = etcd.client()
    name = etcd.key("nightly")
    done = run(*endpoint_args(etcd), "lock", name, "--", "sh", "-c",
               'echo "$ETCD_LOCK_KEY $ETCD_LOCK_REV"; exit 7')  # fmt: skip
    assert done.code == 7, done.stderr
    key, shown, rev = done.stdout.split()
    assert key == shown and key.startswith(name + "/") and int(rev) > 0
    assert client.get_prefix(name + "/").kvs == ()  # released after the command
    holder = spawn(*endpoint_args(etcd), "--json", "lock", name, "--ttl", "5")
    held = holder.json()
    assert held["event"] == "ACQUIRED" and held["key"].startswith(name + "/")
    refused = run(*endpoint_args(etcd), "lock", name, "--wait", "0.5", "--", "true")
    assert refused.code == 1 and "not acquired within 0.5s" in refused.stderr
    assert [kv.key.decode() for kv in client.get_prefix(name + "/").kvs] == [held["key"]]
    waiting = spawn(*endpoint_args(etcd), "lock", name, "--", "echo", "mine")
    gevent.sleep(0.5)
    assert waiting.process.poll() is None  # waits for the holder
    released = holder.interrupt()
    assert released.code == 130 and released.json()[-1]["event"] == "RELEASED"
    finished = waiting.finish(10)
    assert finished.code == 0 and finished.stdout.splitlines()[-1] == "mine"
    misused = run(*endpoint_args(etcd), "get", name, "--", "x")
    assert misused.code == 2 and "'--' is for 'lock" in misused.stderr


def test_register_and_resolve(etcd: EtcdTestContext, spawn: Callable[..., Running]) -> None:
    options = namespaced(etcd)
    server = spawn(*options, "--json", "register", "echo", "127.0.0.1:8888", "--weight", "66",
                   "--tag", "hello=world", "--ttl", "5")  # fmt: skip
    registered = server.json()
    assert registered["event"] == "REGISTERED" and registered["ttl"] == 5
    stored = etcd.client().get(etcd.prefix + "kitex/registry-etcd/echo/127.0.0.1:8888")
    echo = Instance("echo", "127.0.0.1:8888", weight=66, tags={"hello": "world"})
    assert stored is not None and stored.value == encode(echo) and stored.lease
    expected = [{"address": "127.0.0.1:8888", "network": "tcp", "weight": 66,
                 "tags": {"hello": "world"}}]  # fmt: skip
    resolved = run(*options, "--json", "resolve", "echo")
    assert resolved.code == 0 and resolved.json() == [{"service": "echo", "instances": expected}]
    people = run(*options, "resolve", "echo").stdout.splitlines()
    assert people == ["echo: 1 instance", "  127.0.0.1:8888 weight=66 tags=hello=world"]
    watcher = spawn(*options, "--json", "resolve", "echo", "--watch")
    assert watcher.json()["instances"] == expected
    done = server.interrupt()
    assert done.code == 130 and done.json()[-1]["event"] == "DEREGISTERED", done.stderr
    assert watcher.json()["instances"] == []
    assert watcher.interrupt().code == 130
    gone = run(*options, "resolve", "echo")
    assert gone.code == 1
    assert_error_line(gone.stderr, "no instance of service 'echo'")


def test_health_once_and_watch(etcd: EtcdTestContext, spawn: Callable[..., Running]) -> None:
    once = run(*endpoint_args(etcd), "health")
    assert once.code == 0 and once.stdout.splitlines()[0] == "HEALTHY"
    (health,) = run(*endpoint_args(etcd), "--json", "health").json()
    assert health["status"] == "HEALTHY"
    assert [(m["healthy"], m["leader"]) for m in health["members"]] == [(True, True)]
    watching = spawn(*endpoint_args(etcd), "--json", "health", "--watch", "--interval", "0.2")
    assert watching.json()["status"] == "HEALTHY"
    assert watching.interrupt().code == 130
    dead = run("--endpoints", f"http://127.0.0.1:{free_port()}", "--timeout", "1", "health")
    assert dead.code == 1 and dead.stdout.splitlines()[0] == "UNHEALTHY"


def test_serve_runs_etcd_until_interrupted(spawn: Callable[..., Running]) -> None:
    command = spawn("--json", "serve", "--no-fsync")
    serving = command.json(timeout=30)
    assert serving["event"] == "SERVING"
    with geventc.Client(serving["endpoint"]) as client:
        assert client.version().server
        client.put("/k", "v")
    done = command.interrupt(timeout=15)
    assert done.code == 130 and done.json() == [{"event": "STOPPED"}], done.stderr
    assert not os.path.exists(f"/proc/{serving['pid']}")  # the etcd process is gone
    with geventc.Client(serving["endpoint"], timeout=0.5) as client, pytest.raises(EtcdError):
        client.version()


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--endpoints", "ftp://127.0.0.1:2379", "get", "k"], "scheme 'ftp'"),
        (["get", "k", "--endpoints", "http://127.0.0.1:99999"], "bad port"),
        (["put", "k", "v", "--ttl", "0"], "--ttl: must be a positive integer"),
        (["put", "k", "v", "--ttl", "soon"], "--ttl"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "required: COMMAND"),
        (["get"], "required: KEY"),
        (["elect", "/path"], "required: IDENTITY"),
        (["get", ""], "key must not be empty"),
        (["register", "echo", "no-port"], "host:port"),
        (["register", "echo", "h:1", "--tag", "novalue"], "KEY=VALUE"),
        (["health", "--interval", "-1"], "--interval"),
        (["--cacert", "/nonexistent/ca.pem", "get", "k"], "--cacert"),
        (["--user", "root", "get", "k"], "GEVENTC_PASSWORD"),  # no tty to ask on
    ],
)
def test_usage_errors_are_one_line(args: list[str], fragment: str) -> None:
    done = run(*args)
    assert done.code == 2 and done.stdout == ""
    assert_error_line(done.stderr, fragment)


def test_bad_endpoint_in_the_environment() -> None:
    done = run("get", "k", env=environment(GEVENTC_ENDPOINTS="ftp://x"))
    assert done.code == 2
    assert_error_line(done.stderr, "$GEVENTC_ENDPOINTS", "scheme 'ftp'")


def test_connection_failures_are_one_line() -> None:
    dead = ["--endpoints", f"http://127.0.0.1:{free_port()}", "--timeout", "1"]
    commands = [
        ["get", "k"],
        ["put", "k", "v"],
        ["put", "k", "v", "--ttl", "5"],
        ["del", "k", "--prefix"],
        ["watch", "k"],
        ["elect", "/path", "me"],
        ["register", "svc", "127.0.0.1:1"],
        ["resolve", "svc"],
    ]
    started = time.monotonic()
    runs = [gevent.spawn(run, *dead, *command) for command in commands]
    gevent.joinall(runs, raise_error=True)
    for command, done in zip(commands, (r.value for r in runs), strict=True):
        assert done.code == 1, (command, done)
        # refused until the 1 s deadline; on a loaded machine the deadline may strike
        # first, which is reported as such (still one line)
        reason = "cannot connect" if "cannot connect" in done.stderr else "deadline"
        assert_error_line(done.stderr, reason)
    assert time.monotonic() - started < 10


# --- auth and TLS ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secure_server() -> Iterator[EtcdServer]:
    """An etcd with auth enabled (user root) and mutual TLS."""
    with EtcdServer(auth=True, tls=True, fsync=False) as server:
        yield server


def secure_args(server: EtcdServer) -> list[str]:
    files = server.tls_files
    assert files is not None
    return ["--endpoints", server.endpoint, "--cacert", files.ca_file, "--cert",
            files.client_cert, "--key", files.client_key, "--user", "root"]  # fmt: skip


def test_user_password_and_tls(secure_server: EtcdServer, spawn: Callable[..., Running]) -> None:
    options = secure_args(secure_server)
    env = environment(GEVENTC_PASSWORD=ROOT_PASSWORD)
    outputs: list[str] = []
    put = run(*options, "put", "/cli/secret", "s3", env=env)
    assert put.code == 0, put.stderr
    got = run(*options, "-vv", "--json", "get", "/cli/secret", env=env)  # with debug logs
    assert got.code == 0 and got.json()[0]["value"] == "s3", got.stderr
    watch = spawn(*options, "watch", "/cli/secret", env=env)  # a TLS watch, interrupted
    assert watch.line().startswith("watching /cli/secret")
    outputs.append(run(*options, "put", "/cli/secret", "s4", env=env).stdout)
    assert watch.line().startswith("PUT /cli/secret = s4")
    started = time.monotonic()
    stopped = watch.interrupt()
    assert stopped.code == 130 and time.monotonic() - started < 5
    wrong = run(*options, "get", "/cli/secret", env=environment(GEVENTC_PASSWORD="not-it-pw"))
    assert wrong.code == 1
    assert_error_line(wrong.stderr, "credentials")
    for done in (put, got, stopped, wrong):
        outputs += [done.stdout, done.stderr]
    assert not any(ROOT_PASSWORD in text or "not-it-pw" in text for text in outputs)
    no_tls = run("--endpoints", secure_server.endpoint, "get", "k", "--timeout", "2")
    assert no_tls.code == 1
    assert_error_line(no_tls.stderr, "TLS")


# --- the command itself ---------------------------------------------------------------------


def test_console_script_help_and_version() -> None:
    done = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0
    for command in ("get", "put", "del", "watch", "elect", "register", "resolve", "health",
                    "serve", "demo", "--endpoints", "--json"):  # fmt: skip
        assert command in done.stdout
    version = subprocess.run([SCRIPT, "--version"], capture_output=True, text=True, timeout=20)
    assert version.stdout.strip() == f"geventc {geventc.__version__}"


def test_demo_help() -> None:
    done = run("demo", "--help")
    assert done.code == 0 and "--instances" in done.stdout and "--trackers" in done.stdout


def test_main_returns_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    from geventc.cli import main

    assert main(["get"]) == 2
    assert capsys.readouterr().err.startswith("geventc: error: ")
    assert main(["put", "--help"]) == 0
    assert "--ttl" in capsys.readouterr().out

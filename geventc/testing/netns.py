"""Network namespaces as test hosts, so etcd members can be partitioned for real.

A :class:`TestNetwork` of ``hosts`` hosts in slot ``s`` is made of:

- a hub namespace ``gvc<s>h`` holding two bridges, ``peer`` and ``client``;
- per host ``i`` a namespace ``gvc<s>m<i>`` with ``lo`` up and two interfaces: ``peer0``
  on the peer bridge and ``client0`` on the client bridge (an isolated bridge port:
  hosts never reach each other over the client network);
- in the root namespace a veth ``gvc<s>r`` on the client bridge, so this process reaches
  every host's client address directly.

Addresses come from 10.208.0.0/12 (a /23 per slot: client /24, then peer /24); a
``prohibit`` route for that range stays in the root namespace so no harness address is
ever routed off the machine. Slots are claimed with a file under ``/run/geventc-netns``
(pid and process start time), so two networks in one process, other processes and
leftovers of a crashed run never collide; leftovers are removed on the next claim, and
:meth:`TestNetwork.destroy` runs at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import itertools
import os
import re
import shutil
import subprocess
import sys
import weakref
from collections.abc import Iterable, Iterator

from .faults import FaultHarnessUnavailable

PREFIX = "gvc"
SUPERNET = ipaddress.IPv4Network("10.208.0.0/12")
SLOTS = SUPERNET.num_addresses // 512
CLAIMS = "/run/geventc-netns"
_SAFETY_METRIC = "4242"
_NAME = re.compile(rf"{PREFIX}(\d+)(?:h|r|m\d+)")
_counter = itertools.count()
_LIVE: weakref.WeakSet[TestNetwork] = weakref.WeakSet()


def ip_binary() -> str:
    """The ``ip`` command (iproute2), or :class:`FaultHarnessUnavailable`."""
    found = shutil.which("ip")
    for candidate in (found, "/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FaultHarnessUnavailable(
        "network namespaces need the ip command of iproute2, which is not installed "
        "(Debian/Ubuntu: apt-get install iproute2)"
    )


def check_available() -> str:
    """Raise :class:`FaultHarnessUnavailable` naming what is missing (Linux, iproute2,
    root) unless namespaces can be made here; return the ``ip`` command."""
    if not sys.platform.startswith("linux"):
        raise FaultHarnessUnavailable(f"network namespaces need Linux, not {sys.platform}")
    binary = ip_binary()
    if os.geteuid() != 0:
        raise FaultHarnessUnavailable(
            f"network namespaces need root (this process runs as uid {os.geteuid()})"
        )
    return binary


class TestNetwork:
    """Namespaces, veth pairs and two bridges for ``hosts`` test hosts (see the module).

    Construction claims a slot (no namespace yet); :meth:`create` builds it,
    :meth:`cut` / :meth:`set_cuts` / :meth:`restore` block or allow peer traffic between
    hosts, :meth:`destroy` removes everything and releases the slot (idempotent).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, hosts: int) -> None:
        if not 1 <= hosts <= 250:
            raise ValueError(f"a test network has 1 to 250 hosts, not {hosts!r}")
        self.ip = check_available()
        self.hosts = hosts
        self.slot = _claim_slot()
        base = SUPERNET.network_address + 512 * self.slot
        self._client_base = base
        self._peer_base = base + 256
        self.cuts: set[frozenset[int]] = set()
        self.created = False
        _LIVE.add(self)

    def __repr__(self) -> str:
        cuts = sorted(sorted(pair) for pair in self.cuts)
        return f"TestNetwork(slot={self.slot}, hosts={self.hosts}, cuts={cuts})"

    # --- names and addresses ------------------------------------------------------------

    @property
    def hub(self) -> str:
        """The namespace holding the bridges."""
        return f"{PREFIX}{self.slot}h"

    @property
    def root_link(self) -> str:
        """The root namespace's interface on the client bridge."""
        return f"{PREFIX}{self.slot}r"

    def namespace(self, host: int) -> str:
        """The network namespace of ``host``."""
        return f"{PREFIX}{self.slot}m{host}"

    def client_ip(self, host: int) -> str:
        """``host``'s address on the client network (reachable from this process)."""
        return str(self._client_base + 1 + host)

    def peer_ip(self, host: int) -> str:
        """``host``'s address on the peer network (reachable only from other hosts)."""
        return str(self._peer_base + 1 + host)

    @property
    def root_ip(self) -> str:
        """The root namespace's address on the client network."""
        return str(self._client_base + 254)

    # --- lifecycle ----------------------------------------------------------------------

    def create(self) -> None:
        """Build the namespaces, bridges and veth pairs; raise
        :class:`FaultHarnessUnavailable` (after cleaning up) if the kernel refuses."""
        if self.created:
            return
        self.created = True
        try:
            self._build()
        except RuntimeError as exc:
            self.destroy()
            raise FaultHarnessUnavailable(f"could not set up network namespaces: {exc}") from exc

    def _build(self) -> None:
        names = [self.hub, *(self.namespace(i) for i in range(self.hosts))]
        self._batch(None, [f"route replace prohibit {SUPERNET} metric {_SAFETY_METRIC}"])
        self._batch(None, [f"netns add {name}" for name in names])
        hub = ["link set lo up"]
        for bridge in ("peer", "client"):
            hub += [f"link add {bridge} type bridge", f"link set {bridge} up"]
        self._batch(self.hub, hub)
        self._batch(
            None,
            [
                f"link add {self.root_link} type veth peer name root netns {self.hub}",
                f"addr add {self.root_ip}/24 dev {self.root_link}",
                f"link set {self.root_link} up",
            ],
        )
        ports = ["link set root master client", "link set root up"]
        for i in range(self.hosts):
            self._batch(self.namespace(i), self._host_commands(i))
            ports += [f"link set p{i} master peer", f"link set p{i} up"]
            ports += [f"link set c{i} master client", f"link set c{i} up"]
        self._batch(self.hub, ports)
        isolated = [f"link set dev c{i} type bridge_slave isolated on" for i in range(self.hosts)]
        self._batch(self.hub, isolated, check=False)  # older kernels: hosts share a LAN

    def _host_commands(self, host: int) -> list[str]:
        return [
            "link set lo up",
            f"link add peer0 type veth peer name p{host} netns {self.hub}",
            f"link add client0 type veth peer name c{host} netns {self.hub}",
            f"addr add {self.peer_ip(host)}/24 dev peer0",
            f"addr add {self.client_ip(host)}/24 dev client0",
            "link set peer0 up",
            "link set client0 up",
        ]

    def destroy(self) -> None:
        """Remove every namespace, veth and bridge of this network, release the slot."""
        _LIVE.discard(self)
        if self.slot < 0:
            return
        _remove_slot(self.ip, self.slot, self.hosts)
        _release_slot(self.slot)
        self.slot = -1
        self.created = False

    # --- faults -------------------------------------------------------------------------

    def cut(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Block peer traffic between each pair of hosts, both ways (adds to the cuts)."""
        self.set_cuts(self.cuts | {frozenset(p) for p in pairs})

    def restore(self) -> None:
        """Remove every cut."""
        self.set_cuts(set())

    def set_cuts(self, cuts: set[frozenset[int]]) -> None:
        """Make exactly ``cuts`` (pairs of host indexes) blocked: each host gets a
        blackhole route for the peer address of every host it is cut from."""
        for pair in cuts:
            if len(pair) != 2 or not all(0 <= h < self.hosts for h in pair):
                raise ValueError(f"a cut is two distinct host indexes 0..{self.hosts - 1}")
        added, removed = cuts - self.cuts, self.cuts - cuts
        for host in range(self.hosts):
            for verb, changes in (("del", removed), ("replace", added)):
                self._batch(
                    self.namespace(host),
                    [
                        f"route {verb} blackhole {self.peer_ip(other)}/32"
                        for other in _partners(host, changes)
                    ],
                    check=verb == "replace",
                )
        self.cuts = set(cuts)

    def exec_prefix(self, host: int) -> list[str]:
        """The argv prefix that runs a command inside ``host``'s namespace (it execs, so
        the command keeps the pid)."""
        return [self.ip, "netns", "exec", self.namespace(host)]

    def _batch(self, namespace: str | None, commands: list[str], *, check: bool = True) -> None:
        _ip_batch(self.ip, namespace, commands, check=check)


def _partners(host: int, pairs: set[frozenset[int]]) -> Iterator[int]:
    for pair in pairs:
        if host in pair:
            yield from (other for other in pair if other != host)


def _ip_batch(ip: str, namespace: str | None, commands: list[str], *, check: bool) -> None:
    """Run ``ip -batch`` (in ``namespace`` when given); raise RuntimeError on failure."""
    if not commands:
        return
    argv = [ip, *(["-n", namespace] if namespace else []), "-force", "-batch", "-"]
    result = subprocess.run(
        argv, input="\n".join(commands) + "\n", capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        where = f" in namespace {namespace}" if namespace else ""
        raise RuntimeError(f"ip{where} failed: {result.stderr.strip() or result.stdout.strip()}")


# --- slots: who owns which addresses ------------------------------------------------------


@contextlib.contextmanager
def _claims_lock() -> Iterator[None]:
    os.makedirs(CLAIMS, exist_ok=True)
    with open(os.path.join(CLAIMS, ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _identity(pid: int) -> str:
    """``pid:start-time``, which names one process even after pid reuse or a reboot."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            start = handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""
    return f"{pid}:{start}"


def _owner_alive(slot: int) -> bool:
    try:
        with open(os.path.join(CLAIMS, str(slot))) as handle:
            owner = handle.read().strip()
    except OSError:
        return False
    pid = owner.split(":", 1)[0]
    return pid.isdigit() and _identity(int(pid)) == owner


def _claim_slot() -> int:
    """Claim a free slot (removing leftovers of dead owners first)."""
    me = _identity(os.getpid())
    start = (os.getpid() * 7919 + next(_counter) * 131) % SLOTS
    with _claims_lock():
        ip = ip_binary()
        _remove_stale(ip)
        in_use = {_slot_of(name) for name in _namespaces(ip) + _root_links(ip)}
        for offset in range(SLOTS):
            slot = (start + offset) % SLOTS
            path = os.path.join(CLAIMS, str(slot))
            if slot in in_use or os.path.exists(path):
                continue
            with open(path, "w") as handle:
                handle.write(me)
            return slot
    raise FaultHarnessUnavailable(f"all {SLOTS} test-network slots are in use")


def _release_slot(slot: int) -> None:
    with _claims_lock(), contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(CLAIMS, str(slot)))


def _slot_of(name: str) -> int | None:
    match = _NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def _namespaces(ip: str) -> list[str]:
    """This harness's network namespaces (of every process)."""
    out = subprocess.run([ip, "netns", "list"], capture_output=True, text=True, check=False)
    names = (line.split()[0] for line in out.stdout.splitlines() if line.strip())
    return [name for name in names if _slot_of(name) is not None]


def _root_links(ip: str) -> list[str]:
    """This harness's interfaces in the root namespace (of every process)."""
    out = subprocess.run([ip, "-o", "link", "show"], capture_output=True, text=True, check=False)
    names = (line.split()[1].rstrip(":").split("@")[0] for line in out.stdout.splitlines())
    return [name for name in names if _slot_of(name) is not None]


def _remove_stale(ip: str) -> None:
    """Delete namespaces, links and claims whose owner process is gone (claims lock held)."""
    slots = {_slot_of(name) for name in _namespaces(ip) + _root_links(ip)}
    with contextlib.suppress(OSError):
        slots |= {int(name) for name in os.listdir(CLAIMS) if name.isdigit()}
    for slot in slots:
        if slot is not None and not _owner_alive(slot):
            _remove_slot(ip, slot, None)
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(CLAIMS, str(slot)))


def _remove_slot(ip: str, slot: int, hosts: int | None) -> None:
    """Delete the root link and the namespaces of ``slot`` (deleting a namespace also
    deletes the veths and bridges in it)."""
    if hosts is None:
        namespaces = [name for name in _namespaces(ip) if _slot_of(name) == slot]
    else:
        namespaces = [f"{PREFIX}{slot}h", *(f"{PREFIX}{slot}m{i}" for i in range(hosts))]
    commands = [f"link del {PREFIX}{slot}r"] + [f"netns del {n}" for n in namespaces]
    _ip_batch(ip, None, commands, check=False)


@atexit.register
def _destroy_everything() -> None:
    for network in list(_LIVE):
        network.destroy()


__all__ = ["CLAIMS", "SUPERNET", "TestNetwork", "check_available"]

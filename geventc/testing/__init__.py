"""Real etcd servers for tests, yours and ours.

``EtcdServer()`` / ``EtcdCluster(size=3)`` start real etcd processes on loopback with
fault controls (kill, restart, pause, resume, compact), optional auth and TLS.
Network faults: :class:`FaultProxy` (freeze, reset, delay, one-way cut of client
connections) and ``EtcdCluster(netns=True, proxied=True)`` (``isolate``,
``partition``, ``blackhole``, ``replace``). The pytest plugin (loaded automatically once
geventc is installed) provides the ``etcd``, ``etcd_cluster`` and ``etcd_fault_cluster``
fixtures; see :mod:`geventc.testing.plugin`.
"""

from .certs import TLSFiles, make_tls_files
from .faults import FaultHarnessUnavailable, FaultProxy
from .server import (
    ROOT_PASSWORD,
    EtcdCluster,
    EtcdMember,
    EtcdNotFound,
    EtcdServer,
    find_etcd_binary,
    free_port,
)

__all__ = [
    "ROOT_PASSWORD",
    "EtcdCluster",
    "EtcdMember",
    "EtcdNotFound",
    "EtcdServer",
    "FaultHarnessUnavailable",
    "FaultProxy",
    "TLSFiles",
    "find_etcd_binary",
    "free_port",
    "make_tls_files",
]

"""Real etcd servers for tests, yours and ours.

``EtcdServer()`` / ``EtcdCluster(size=3)`` start real etcd processes on loopback with
fault controls (kill, restart, pause, resume, compact), optional auth and TLS. The
pytest plugin (loaded automatically once geventc is installed) provides the ``etcd``
and ``etcd_cluster`` fixtures; see :mod:`geventc.testing.plugin`.
"""

from .certs import TLSFiles, make_tls_files
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
    "TLSFiles",
    "find_etcd_binary",
    "free_port",
    "make_tls_files",
]

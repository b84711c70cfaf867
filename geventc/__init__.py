"""geventc: gevent-native etcd v3 coordination recipes over the JSON gateway.

Start with :class:`Client` for the raw etcd API; every error is a
:class:`geventc.errors.EtcdError`.

Names are imported lazily (PEP 562), so ``import geventc`` loads neither urllib3 nor
ssl: a program may import it before ``gevent.monkey.patch_all()``.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

from . import errors

#: urllib3 was loaded before geventc (by the program or another library): NotPatched
#: then names that import, not geventc's own
URLLIB3_LOADED_BEFORE = "urllib3" in sys.modules

if TYPE_CHECKING:
    from . import errors
    from .channel import Channel
    from .client import Client
    from .connector import Connector, connect, prepare_endpoint_list
    from .errors import EtcdError, InvalidArgument
    from .instances import Instance
    from .lease import LeaseState
    from .recipes.base import RecipeError
    from .recipes.config import ConfigChange, ConfigWatcher
    from .recipes.election import ElectionEvent, ElectionStatus, LeaderElector
    from .recipes.ephemeral import EphemeralEvent, EphemeralKey, EphemeralStatus
    from .recipes.health import ClusterHealth, ClusterStatus, HealthMonitor, MemberHealth
    from .recipes.observer import Observer, WatchEvent
    from .recipes.tracker import ServiceSnapshot, ServiceTracker
    from .registry import Registry
    from .resolver import Resolver, ServiceInstances
    from .retry import RetryPolicy
    from .staleness import Staleness
    from .transport import TLSConfig
    from .txn import Compare, Comparison, Op, TxnOp
    from .watchstream import WatchStream
    from .wire import (
        DeleteResult,
        Event,
        EventType,
        Header,
        Health,
        KeyValue,
        Lease,
        LeaseTimeToLive,
        Member,
        PutResult,
        RangeResult,
        Status,
        TxnResult,
        Version,
        WatchResponse,
    )

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "Channel": "channel",
    "Client": "client",
    "ClusterHealth": "recipes.health",
    "ClusterStatus": "recipes.health",
    "Compare": "txn",
    "Comparison": "txn",
    "ConfigChange": "recipes.config",
    "ConfigWatcher": "recipes.config",
    "Connector": "connector",
    "DeleteResult": "wire",
    "ElectionEvent": "recipes.election",
    "ElectionStatus": "recipes.election",
    "EphemeralEvent": "recipes.ephemeral",
    "EphemeralKey": "recipes.ephemeral",
    "EphemeralStatus": "recipes.ephemeral",
    "EtcdError": "errors",
    "Event": "wire",
    "EventType": "wire",
    "Header": "wire",
    "Health": "wire",
    "HealthMonitor": "recipes.health",
    "Instance": "instances",
    "InvalidArgument": "errors",
    "KeyValue": "wire",
    "LeaderElector": "recipes.election",
    "Lease": "wire",
    "LeaseState": "lease",
    "LeaseTimeToLive": "wire",
    "Member": "wire",
    "MemberHealth": "recipes.health",
    "Observer": "recipes.observer",
    "Op": "txn",
    "PutResult": "wire",
    "RangeResult": "wire",
    "RecipeError": "recipes.base",
    "Registry": "registry",
    "Resolver": "resolver",
    "RetryPolicy": "retry",
    "ServiceInstances": "resolver",
    "ServiceSnapshot": "recipes.tracker",
    "ServiceTracker": "recipes.tracker",
    "Staleness": "staleness",
    "Status": "wire",
    "TLSConfig": "transport",
    "TxnOp": "txn",
    "TxnResult": "wire",
    "Version": "wire",
    "WatchEvent": "recipes.observer",
    "WatchResponse": "wire",
    "WatchStream": "watchstream",
    "connect": "connector",
    "errors": "",
    "prepare_endpoint_list": "connector",
}


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'geventc' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "Channel",
    "Client",
    "ClusterHealth",
    "ClusterStatus",
    "Compare",
    "Comparison",
    "ConfigChange",
    "ConfigWatcher",
    "Connector",
    "DeleteResult",
    "ElectionEvent",
    "ElectionStatus",
    "EphemeralEvent",
    "EphemeralKey",
    "EphemeralStatus",
    "EtcdError",
    "Event",
    "EventType",
    "Header",
    "Health",
    "HealthMonitor",
    "Instance",
    "InvalidArgument",
    "KeyValue",
    "LeaderElector",
    "Lease",
    "LeaseState",
    "LeaseTimeToLive",
    "Member",
    "MemberHealth",
    "Observer",
    "Op",
    "PutResult",
    "RangeResult",
    "RecipeError",
    "Registry",
    "Resolver",
    "RetryPolicy",
    "ServiceInstances",
    "ServiceSnapshot",
    "ServiceTracker",
    "Staleness",
    "Status",
    "TLSConfig",
    "TxnOp",
    "TxnResult",
    "Version",
    "WatchEvent",
    "WatchResponse",
    "WatchStream",
    "connect",
    "errors",
    "prepare_endpoint_list",
]

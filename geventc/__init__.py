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
    from .recipes.barrier import Barrier, DoubleBarrier, DoubleBarrierEvent, DoubleBarrierStatus
    from .recipes.base import RecipeError
    from .recipes.config import ConfigChange, ConfigWatcher
    from .recipes.contender import LockEvent, LockStatus
    from .recipes.counter import Counter
    from .recipes.election import ElectionEvent, ElectionStatus, LeaderElector
    from .recipes.ephemeral import EphemeralEvent, EphemeralKey, EphemeralStatus
    from .recipes.group import GroupEvent, GroupEventKind, GroupMember
    from .recipes.health import ClusterHealth, ClusterStatus, HealthMonitor, MemberHealth
    from .recipes.lock import Lock
    from .recipes.observer import Observer, WatchEvent
    from .recipes.partitioner import Partitioner, PartitionEvent, PartitionState
    from .recipes.queue import ClaimedItem, ClaimEvent, ClaimStatus, PriorityQueue, Queue, QueueItem
    from .recipes.rwlock import ReadLock, RWLock, WriteLock
    from .recipes.semaphore import Semaphore
    from .recipes.tracker import ServiceSnapshot, ServiceTracker
    from .registry import Registry
    from .resolver import Resolver, ServiceInstances
    from .retry import RetryPolicy
    from .staleness import Staleness
    from .stats import Stats
    from .stm import STM, Isolation
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
    "Barrier": "recipes.barrier",
    "Channel": "channel",
    "Stats": "stats",
    "ClaimEvent": "recipes.queue",
    "ClaimStatus": "recipes.queue",
    "ClaimedItem": "recipes.queue",
    "Client": "client",
    "ClusterHealth": "recipes.health",
    "ClusterStatus": "recipes.health",
    "Compare": "txn",
    "Comparison": "txn",
    "ConfigChange": "recipes.config",
    "ConfigWatcher": "recipes.config",
    "Connector": "connector",
    "Counter": "recipes.counter",
    "DeleteResult": "wire",
    "DoubleBarrier": "recipes.barrier",
    "DoubleBarrierEvent": "recipes.barrier",
    "DoubleBarrierStatus": "recipes.barrier",
    "ElectionEvent": "recipes.election",
    "ElectionStatus": "recipes.election",
    "EphemeralEvent": "recipes.ephemeral",
    "EphemeralKey": "recipes.ephemeral",
    "EphemeralStatus": "recipes.ephemeral",
    "EtcdError": "errors",
    "Event": "wire",
    "EventType": "wire",
    "GroupEvent": "recipes.group",
    "GroupEventKind": "recipes.group",
    "GroupMember": "recipes.group",
    "Header": "wire",
    "Health": "wire",
    "HealthMonitor": "recipes.health",
    "Instance": "instances",
    "InvalidArgument": "errors",
    "Isolation": "stm",
    "KeyValue": "wire",
    "LeaderElector": "recipes.election",
    "Lease": "wire",
    "LeaseState": "lease",
    "LeaseTimeToLive": "wire",
    "Lock": "recipes.lock",
    "LockEvent": "recipes.contender",
    "LockStatus": "recipes.contender",
    "Member": "wire",
    "MemberHealth": "recipes.health",
    "Observer": "recipes.observer",
    "Op": "txn",
    "PartitionEvent": "recipes.partitioner",
    "PartitionState": "recipes.partitioner",
    "Partitioner": "recipes.partitioner",
    "PriorityQueue": "recipes.queue",
    "PutResult": "wire",
    "Queue": "recipes.queue",
    "QueueItem": "recipes.queue",
    "RWLock": "recipes.rwlock",
    "RangeResult": "wire",
    "ReadLock": "recipes.rwlock",
    "RecipeError": "recipes.base",
    "Registry": "registry",
    "Resolver": "resolver",
    "RetryPolicy": "retry",
    "STM": "stm",
    "Semaphore": "recipes.semaphore",
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
    "WriteLock": "recipes.rwlock",
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
    "STM",
    "Barrier",
    "Channel",
    "ClaimEvent",
    "ClaimStatus",
    "ClaimedItem",
    "Client",
    "ClusterHealth",
    "ClusterStatus",
    "Compare",
    "Comparison",
    "ConfigChange",
    "ConfigWatcher",
    "Connector",
    "Counter",
    "DeleteResult",
    "DoubleBarrier",
    "DoubleBarrierEvent",
    "DoubleBarrierStatus",
    "ElectionEvent",
    "ElectionStatus",
    "EphemeralEvent",
    "EphemeralKey",
    "EphemeralStatus",
    "EtcdError",
    "Event",
    "EventType",
    "GroupEvent",
    "GroupEventKind",
    "GroupMember",
    "Header",
    "Health",
    "HealthMonitor",
    "Instance",
    "InvalidArgument",
    "Isolation",
    "KeyValue",
    "LeaderElector",
    "Lease",
    "LeaseState",
    "LeaseTimeToLive",
    "Lock",
    "LockEvent",
    "LockStatus",
    "Member",
    "MemberHealth",
    "Observer",
    "Op",
    "PartitionEvent",
    "PartitionState",
    "Partitioner",
    "PriorityQueue",
    "PutResult",
    "Queue",
    "QueueItem",
    "RWLock",
    "RangeResult",
    "ReadLock",
    "RecipeError",
    "Registry",
    "Resolver",
    "RetryPolicy",
    "Semaphore",
    "ServiceInstances",
    "ServiceSnapshot",
    "ServiceTracker",
    "Staleness",
    "Stats",
    "Status",
    "TLSConfig",
    "TxnOp",
    "TxnResult",
    "Version",
    "WatchEvent",
    "WatchResponse",
    "WatchStream",
    "WriteLock",
    "connect",
    "errors",
    "prepare_endpoint_list",
]

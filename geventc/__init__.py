"""geventc: gevent-native etcd v3 coordination recipes over the JSON gateway.

Start with :class:`Client` for the raw etcd API; every error is a
:class:`geventc.errors.EtcdError`.
"""

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

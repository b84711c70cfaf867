"""geventc: gevent-native etcd v3 coordination recipes over the JSON gateway.

Start with :class:`Client` for the raw etcd API; every error is a
:class:`geventc.errors.EtcdError`.
"""

from . import errors
from .client import Client
from .errors import EtcdError, InvalidArgument
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
    "Client",
    "Compare",
    "Comparison",
    "DeleteResult",
    "EtcdError",
    "Event",
    "EventType",
    "Header",
    "Health",
    "InvalidArgument",
    "KeyValue",
    "Lease",
    "LeaseTimeToLive",
    "Member",
    "Op",
    "PutResult",
    "RangeResult",
    "Status",
    "TLSConfig",
    "TxnOp",
    "TxnResult",
    "Version",
    "WatchResponse",
    "WatchStream",
    "errors",
]

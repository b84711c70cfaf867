"""``RecipeHost``: what a recipe needs from the connector that made it.

Recipes depend on this protocol, never on :class:`~geventc.connector.Connector`
itself (which implements it), so ``recipes/`` and ``connector.py`` do not import each
other: a namespace, the shared watch hub and lease keeper, the greenlet group, the
liveness checker, the request and stop timeouts, the namespaced KV calls and the
cluster calls a recipe makes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .errors import InvalidArgument

if TYPE_CHECKING:
    from gevent.pool import Group

    from .coalesce import Flight
    from .lease import LeaseKeeper
    from .liveness import Liveness
    from .namespace import Namespace
    from .txn import Comparison, TxnOp
    from .watch import WatchHub
    from .watchstream import WatchStream
    from .wire import Health, KeyValue, Lease, Member, PutResult, RangeResult, Status, TxnResult


@runtime_checkable
class RecipeHost(Protocol):
    """The connector as recipes see it (see the module docstring)."""

    namespace: Namespace
    hub: WatchHub
    lease_keeper: LeaseKeeper
    group: Group
    stop_timeout: float
    closing: bool

    @property
    def closed(self) -> bool:
        """True once the host was closed."""
        ...

    @property
    def request_timeout(self) -> float:
        """How long one call (with its retries) may take."""
        ...

    @property
    def liveness(self) -> Liveness:
        """The stall detector of the host's client."""
        ...

    @property
    def endpoints(self) -> list[str]:
        """The endpoints the host's client uses."""
        ...

    @property
    def written_revision(self) -> int:
        """The highest revision the host's own writes produced."""
        ...

    def register(self, recipe: Any) -> None:
        """Track a started recipe, so closing the host stops it."""

    def unregister(self, recipe: Any) -> None:
        """Forget a stopped recipe."""

    def get(
        self, key: str | bytes, *, revision: int | None = ..., serializable: bool = ...
    ) -> KeyValue | None:
        """A key's value, or None."""
        ...

    def get_prefix(self, prefix: str | bytes, **options: Any) -> RangeResult:
        """Every key under a prefix."""
        ...

    def put(
        self,
        key: str | bytes,
        value: str | bytes,
        *,
        lease: int | Lease | None = ...,
        prev_kv: bool = ...,
        flight: Flight | None = ...,
    ) -> PutResult:
        """Set a key (``flight``: see :class:`~geventc.coalesce.Flight`)."""
        ...

    def txn(
        self,
        compare: Iterable[Comparison] = ...,
        success: Iterable[TxnOp] = ...,
        failure: Iterable[TxnOp] = ...,
        *,
        flight: Flight | None = ...,
    ) -> TxnResult:
        """An atomic transaction (``flight``: see :class:`~geventc.coalesce.Flight`)."""
        ...

    def watch(
        self,
        key: str | bytes,
        *,
        prefix: bool = ...,
        start_revision: int | None = ...,
        prev_kv: bool = ...,
        filters: Iterable[str] = ...,
        progress_notify: bool = ...,
    ) -> WatchStream:
        """A resumable watch."""
        ...

    def grant(self, ttl: int, lease_id: int = ...) -> Lease:
        """A new lease of ``ttl`` seconds."""
        ...

    def revoke(self, lease: int | Lease) -> None:
        """Revoke a lease (and delete its keys)."""

    def members(self) -> list[Member]:
        """The cluster's members."""
        ...

    def health(self, endpoint: str | None = ...) -> Health:
        """One member's ``/health``."""
        ...

    def status(self, endpoint: str | None = ...) -> Status:
        """One member's status."""
        ...


_HOST_TYPES: dict[type, bool] = {}  # which types passed the RecipeHost check


def require_host(conn: object, who: str) -> RecipeHost:
    """``conn`` if it is a connector, else :class:`InvalidArgument` saying what ``who``
    needs (a common slip: an endpoint string or a bare ``Client``)."""
    kind = type(conn)
    verdict = _HOST_TYPES.get(kind)
    if verdict is None:  # a runtime Protocol check costs ~40 µs: once per type
        verdict = _HOST_TYPES[kind] = isinstance(conn, RecipeHost)
    if verdict:
        return conn  # type: ignore[return-value]
    hint = ""
    if isinstance(conn, str | list | tuple):
        hint = f"; for endpoints, use {who}(geventc.connect({conn!r}), ...)"
    elif type(conn).__name__ == "Client":
        hint = f"; wrap the client: {who}(geventc.Connector(client), ...)"
    raise InvalidArgument(
        f"{who} needs a geventc Connector (from geventc.connect(...)), "
        f"not {type(conn).__name__}{hint}"
    )

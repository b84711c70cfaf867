"""Request coalescing: concurrent single-key reads and writes sent as one txn.

When many greenlets call ``get``/``put``/``delete`` at the same moment, the first of
them opens a batch and yields once to the event loop; every call made before it runs
again joins that batch. A batch of one is sent as the plain request by its own caller.
A larger batch becomes one ``/v3/kv/txn`` (no compares, only ``success`` operations)
sent by a short-lived greenlet, and each caller gets its own operation's result with
the txn's header.

Rules that keep each caller's view unchanged:

* reads and writes never share a batch (a read-only txn is a linearizable read, a
  write txn is one raft entry);
* at most ``max_ops`` operations (etcd's ``--max-txn-ops``, 128 by default) and at
  most ``max_bytes`` of keys and values per batch, and no key twice in one batch;
* only the client's own single operations are coalesced, never a caller's txn;
* a batch the server refuses as a whole (e.g. one put's lease is gone) is not an
  answer: every caller then sends its own request and gets exactly its own result or
  error. A batch that failed in transit (timeout, lost connection, no leader) gives
  every caller that same error, as its own request would have.
"""

from __future__ import annotations

import copy
from typing import Any

import gevent
import gevent.event
from gevent.pool import Group

from . import errors
from .transport import Transport
from .wire import JSON, as_list, as_object

TXN_MAX_OPS = 128  # etcd's default --max-txn-ops

# Errors that describe the trip, not the batch's content: each caller's own request
# would have met them too, so they are handed to every caller instead of a retry.
SHARED_ERRORS: tuple[type[errors.EtcdError], ...] = (
    errors.Timeout,
    errors.ConnectionFailed,
    errors.IndeterminateWrite,
    errors.ClientClosed,
    errors.Unavailable,
    errors.AuthenticationFailed,
    errors.ForkedProcess,
)

# Which txn request/response field carries each coalesced operation.
RESPONSE_FIELDS = {
    "request_put": "response_put",
    "request_range": "response_range",
    "request_delete_range": "response_delete_range",
}


class _Slot:
    """One caller's operation in a batch and, once sent, its outcome."""

    __slots__ = ("answer", "done", "error", "op", "retry_alone")

    def __init__(self, op: JSON) -> None:
        self.op = op
        self.done = gevent.event.Event()
        self.answer: JSON | None = None
        self.error: BaseException | None = None
        self.retry_alone = False


class _Batch:
    """Operations gathered during one turn of the event loop."""

    __slots__ = ("keys", "sent", "size", "slots", "write")

    def __init__(self, write: bool) -> None:
        self.write = write
        self.slots: list[_Slot] = []
        self.keys: set[tuple[bytes, bytes]] = set()
        self.size = 0
        self.sent = False


class Coalescer:
    """Sends the single operations of concurrent callers as shared txns.

    ``max_ops`` caps the operations per txn (keep it ≤ the server's
    ``--max-txn-ops``); ``max_bytes`` caps the keys and values per txn (keep it under
    the server's ``--max-request-bytes``). ``batches`` and ``coalesced`` count the
    txns sent and the operations they carried.
    """

    def __init__(
        self, transport: Transport, *, max_ops: int, max_bytes: int, group: Group | None = None
    ) -> None:
        self.transport = transport
        self._group = group if group is not None else Group()
        self.max_ops = max_ops
        self.max_bytes = max_bytes
        self._open: dict[bool, _Batch | None] = {False: None, True: None}
        self.batches = 0
        self.coalesced = 0

    def call(
        self, field: str, op: JSON, key: tuple[bytes, bytes], size: int, *, write: bool
    ) -> JSON | None:
        """Run ``op`` (the body of a txn ``field`` such as ``request_put``) in a batch.

        Returns the operation's response object (with the txn's header), or None when
        the caller must send its own request: it was alone, or the batch was refused.
        Raises the error the batch met in transit.
        """
        batch = self._open[write]
        leader = batch is None or not self._fits(batch, key, size)
        if leader:
            batch = self._open[write] = _Batch(write)
        assert batch is not None
        slot = _Slot({field: op})
        batch.slots.append(slot)
        batch.keys.add(key)
        batch.size += size
        if len(batch.slots) >= self.max_ops and self._open[write] is batch:
            self._open[write] = None
        if leader:
            return self._lead(batch, slot)
        return self._follow(batch, slot)

    def _fits(self, batch: _Batch, key: tuple[bytes, bytes], size: int) -> bool:
        return (
            key not in batch.keys
            and len(batch.slots) < self.max_ops
            and batch.size + size <= self.max_bytes
        )

    def _lead(self, batch: _Batch, slot: _Slot) -> JSON | None:
        try:
            gevent.sleep(0)  # every greenlet ready to run now may join the batch
        except BaseException:
            batch.slots.remove(slot)  # interrupted before sending: never applied
            self._dispatch(batch)
            raise
        self._dispatch(batch)
        return self._follow(batch, slot)

    def _dispatch(self, batch: _Batch) -> None:
        """Close ``batch`` and send it, or tell a lone caller to send its own request."""
        if self._open[batch.write] is batch:
            self._open[batch.write] = None
        if len(batch.slots) > 1:
            self._group.spawn(self._send, batch)
        elif batch.slots:
            batch.slots[0].retry_alone = True
            batch.slots[0].done.set()

    def _follow(self, batch: _Batch, slot: _Slot) -> JSON | None:
        try:
            slot.done.wait()
        except BaseException:
            if not batch.sent and slot in batch.slots:
                batch.slots.remove(slot)  # interrupted before sending: never applied
            raise
        if slot.error is not None:
            raise copy.copy(slot.error)
        if slot.retry_alone:
            return None
        return slot.answer

    def _send(self, batch: _Batch) -> None:
        slots = list(batch.slots)
        batch.sent = True
        if not slots:
            return
        self.batches += 1
        self.coalesced += len(slots)
        try:
            answer = self.transport.call(
                "/v3/kv/txn", {"success": [slot.op for slot in slots]}, write=batch.write
            )
            self._hand_out(slots, answer)
        except SHARED_ERRORS as exc:
            for slot in slots:
                slot.error = exc
        except errors.EtcdError:
            for slot in slots:
                slot.retry_alone = True
        except BaseException:
            failure = (
                errors.IndeterminateWrite("the write's batch was interrupted after it was sent")
                if batch.write
                else None
            )
            for slot in slots:
                slot.error = failure
                slot.retry_alone = failure is None
            raise
        finally:
            for slot in slots:
                slot.done.set()

    @staticmethod
    def _hand_out(slots: list[_Slot], answer: JSON) -> None:
        try:
            header = answer.get("header")
            responses = as_list(answer.get("responses"))
            if len(responses) != len(slots):
                raise ValueError(f"{len(responses)} responses for {len(slots)} operations")
            for slot, response in zip(slots, responses, strict=True):
                (field,) = slot.op
                result: dict[str, Any] = dict(
                    as_object(as_object(response)[RESPONSE_FIELDS[field]])
                )
                result["header"] = header
                slot.answer = result
        except (KeyError, TypeError, ValueError, errors.ProtocolError) as exc:
            error = errors.ProtocolError(f"malformed coalesced txn response from etcd: {exc!r}")
            for slot in slots:
                slot.error = error

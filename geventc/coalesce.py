"""Request coalescing: concurrent single operations and txns sent as shared txns.

A call made while nothing of its kind (reads, writes) is on its way is sent at once as
the plain request by its own caller. When many greenlets call ``get``/``put``/
``delete``/``txn`` while one is, the first of them opens a batch and yields once to
the event loop; every call made before it runs again joins that batch. A batch of one
is sent as the plain request by its own caller. A larger batch becomes one
``/v3/kv/txn`` (no compares, only ``success`` operations; a caller's txn rides in it as
a nested txn with its own compares) sent by a short-lived greenlet, and each caller gets
its own operation's result with the txn's header.

Pipelining: up to ``max_inflight`` batches of each kind (reads, writes) are on their way
at once, so the client builds and decodes batches while etcd applies others. A batch
closed while that many are in flight waits (and keeps gathering callers, up to its
limits) until one of them is answered. A batch big enough is split into up to as many
txns as there are free places, each of at least ``MIN_SPLIT`` operations: callers that
were answered together would otherwise call again together, and one batch would be in
flight at a time however many callers there are.

Rules that keep each caller's view unchanged:

* reads and writes never share a batch (a read-only txn is a linearizable read, a
  write txn is one raft entry);
* at most ``max_ops`` operations (etcd's ``--max-txn-ops``, 128 by default) and at
  most ``max_bytes`` of keys and values per batch;
* in a write batch, no key (or key range) that one operation writes is touched by
  another operation of the same batch — neither written, read nor compared — so the
  batch is equivalent to its operations applied one after the other, in any order
  (etcd evaluates every nested compare before it applies any operation, so a txn
  comparing a key another batched operation writes could not be ordered; such
  operations go to different batches);
* a caller's txn that itself holds nested txns is sent on its own;
* a batch the server refuses as a whole (e.g. one put's lease is gone) is not an
  answer: every caller then sends its own request and gets exactly its own result or
  error. A batch that failed in transit (timeout, lost connection, no leader) gives
  every caller that same error, as its own request would have.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import copy
from collections.abc import Iterable, Iterator
from typing import Any

import gevent
import gevent.event
from gevent.hub import Waiter, get_hub
from gevent.pool import Group

from . import errors, validate
from .stats import BATCH_BUCKETS, batch_bucket
from .transport import Transport
from .wire import JSON, as_list, as_object, unb64
from .wire import header as wire_header

TXN_MAX_OPS = 128  # etcd's default --max-txn-ops
MAX_INFLIGHT = 2  # batches of each kind on their way at once
MIN_SPLIT = 32  # the fewest operations a split-off txn carries

#: a key range ``[start, end)`` as etcd reads ``key``/``range_end`` (``end`` b"" means
#: the key alone, b"\0" every key from ``start`` on)
Span = tuple[bytes, bytes]

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
    "request_txn": "response_txn",
}


def txn_spans(body: JSON) -> list[Span] | None:
    """Every key range a txn body compares, reads or writes; None when the txn holds a
    nested txn (it is then sent on its own)."""
    spans: list[Span] = []
    for comparison in body.get("compare", ()):
        spans.append(_span(comparison))
    for branch in ("success", "failure"):
        for op in body.get(branch, ()):
            ((kind, request),) = op.items()
            if kind == "request_txn":
                return None
            spans.append(_span(request))
    return spans


def _span(request: JSON) -> Span:
    return unb64(request.get("key", "")), unb64(request.get("range_end", ""))


class _Footprint:
    """The keys a write batch touches, as a union of disjoint key ranges: whether a new
    range overlaps it costs O(log n), however many operations the batch holds.

    Ends are ``(0, key)`` for a bounded range and ``(1, b"")`` for "every key from the
    start on" (etcd's ``range_end`` ``\\0``), so that they compare as etcd orders keys."""

    __slots__ = ("ends", "starts")

    def __init__(self) -> None:
        self.starts: list[bytes] = []
        self.ends: list[tuple[int, bytes]] = []

    @staticmethod
    def _end(span: Span) -> tuple[int, bytes]:
        if not span[1]:
            return (0, span[0] + b"\0")
        return (1, b"") if span[1] == b"\0" else (0, span[1])

    def overlaps(self, span: Span) -> bool:
        """Whether ``span`` shares a key with what the batch touches."""
        start, end = span[0], self._end(span)
        i = bisect.bisect_right(self.starts, start) - 1
        if i >= 0 and self.ends[i] > (0, start):
            return True
        return i + 1 < len(self.starts) and (0, self.starts[i + 1]) < end

    def add(self, span: Span) -> None:
        """Add ``span``, merging it with the ranges it overlaps or touches."""
        start, end = span[0], self._end(span)
        lo = bisect.bisect_left(self.starts, start)
        if lo > 0 and self.ends[lo - 1] >= (0, start):
            lo -= 1
            start = self.starts[lo]
        hi = lo
        while hi < len(self.starts) and (0, self.starts[hi]) <= end:
            end = max(end, self.ends[hi])
            hi += 1
        self.starts[lo:hi] = [start]
        self.ends[lo:hi] = [end]


class Flight:
    """A write on its way, whose end others may wait for (:meth:`join`) even when its
    caller was interrupted: it ends once etcd answered it, or once it surely was never
    sent or never will be (its caller was interrupted before it was sent, or its
    request failed). A deletion sent after :meth:`join` returned is applied after the
    write, if the write was applied at all.

    Made by the caller and handed to :meth:`Client.put`/:meth:`Client.txn`
    (``flight=``); a coalesced write costs no greenlet of its own."""

    __slots__ = ("_ended", "_event")

    def __init__(self) -> None:
        self._ended = False
        self._event: gevent.event.Event | None = None

    @property
    def ended(self) -> bool:
        """True once the write is no longer on its way."""
        return self._ended

    def end(self) -> None:
        """Say the write is no longer on its way (wakes every :meth:`join`)."""
        self._ended = True
        if self._event is not None:
            self._event.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the write ended (at most ``timeout`` seconds); True once it has."""
        seconds = validate.timeout(timeout)
        if self._ended:
            return True
        if self._event is None:
            self._event = gevent.event.Event()
        return self._event.wait(seconds)


def checked_flight(flight: Any) -> Flight | None:
    """``flight`` when it is None or a :class:`Flight`; else :class:`InvalidArgument`."""
    if flight is None or isinstance(flight, Flight):
        return flight
    raise errors.InvalidArgument(f"flight must be a Flight or None, not {type(flight).__name__}")


class _Slot:
    """One caller's operation in a batch and, once sent, its outcome."""

    __slots__ = (
        "answer",
        "error",
        "finished",
        "flight",
        "op",
        "orphaned",
        "retry_alone",
        "sent",
        "waiter",
        "withdrawn",
    )

    def __init__(self, op: JSON, flight: Flight | None = None) -> None:
        self.op = op
        self.flight = flight  # told when the write ends, if its caller stopped waiting
        self.orphaned = False  # its caller was interrupted after it was sent
        self.waiter: Waiter[Any] = Waiter()  # its caller waits here for the outcome
        self.finished = False  # the outcome is known
        self.answer: JSON | None = None
        self.error: BaseException | None = None
        self.retry_alone = False
        self.sent = False  # on its way: its caller can no longer take it back
        self.withdrawn = False  # its caller was interrupted before it was sent

    def wait(self) -> None:
        """Block until the outcome is known (:func:`_wake` switches back here)."""
        if not self.finished:
            self.waiter.get()


def resume_soon(waiters: Iterable[Waiter[Any]]) -> None:
    """Resume the greenlets waiting in ``waiters`` (each in ``Waiter.get()``) at the
    event loop's next turn (a zero timer): ahead of greenlets that are merely ready to
    run (a process that just spawned thousands of them would otherwise let the answered
    ones wait behind all of them, past their deadlines), and without a loop callback
    each. A waiter whose greenlet stopped waiting meanwhile (interrupted) is skipped."""
    loop = get_hub().loop
    timer = loop.timer(0)

    def resume() -> None:
        timer.close()
        for waiter in waiters:
            if waiter.greenlet is not None:
                waiter.switch(None)

    timer.start(resume)


def _wake(slots: list[_Slot]) -> None:
    """Resume the callers of ``slots``, whose outcomes are known (:func:`resume_soon`)."""
    for slot in slots:
        slot.finished = True
        if slot.orphaned:
            slot.flight.end()  # type: ignore[union-attr]
    resume_soon([slot.waiter for slot in slots])


class _Batch:
    """Operations gathered during one turn of the event loop."""

    __slots__ = ("depth", "dispatched", "footprint", "queued", "size", "slots", "write")

    def __init__(self, write: bool) -> None:
        self.write = write
        self.dispatched = False  # handed to senders (or to its lone caller)
        self.queued = False  # in the waiting deque
        self.slots: list[_Slot] = []
        self.footprint = _Footprint()  # the keys touched (write batches only)
        self.size = 0
        # the most entries of one nested txn's compare, success or failure list: etcd
        # counts them against --max-txn-ops together with the batch's own operations
        self.depth = 0

    def conflicts(self, spans: Iterable[Span]) -> bool:
        """Whether an operation touching ``spans`` must not join this write batch."""
        return any(self.footprint.overlaps(span) for span in spans)

    def touch(self, spans: Iterable[Span]) -> None:
        for span in spans:
            self.footprint.add(span)


class Coalescer:
    """Sends the single operations and txns of concurrent callers as shared txns.

    ``max_ops`` caps the operations per txn (keep it ≤ the server's
    ``--max-txn-ops``); ``max_bytes`` caps the keys and values per txn (keep it under
    the server's ``--max-request-bytes``); ``max_inflight`` caps the batches of each
    kind on their way at once. ``batches`` and ``coalesced`` count the txns sent and
    the operations they carried, ``batch_sizes`` the txns per size bucket
    (:data:`~geventc.stats.BATCH_BUCKETS`).
    """

    def __init__(
        self,
        transport: Transport,
        *,
        max_ops: int,
        max_bytes: int,
        max_inflight: int | None = None,
        group: Group | None = None,
    ) -> None:
        self.transport = transport
        self._group = group if group is not None else Group()
        self.max_ops = max_ops
        self.max_bytes = max_bytes
        self.max_inflight = MAX_INFLIGHT if max_inflight is None else max_inflight
        self._open: dict[bool, _Batch | None] = {False: None, True: None}
        self._inflight = {False: 0, True: 0}
        self._alone = {False: 0, True: 0}  # callers sending their own request now
        self._waiting: dict[bool, collections.deque[_Batch]] = {
            False: collections.deque(),
            True: collections.deque(),
        }
        self.batches = 0
        self.coalesced = 0
        self.batch_sizes = [0] * (len(BATCH_BUCKETS) + 1)

    def call(
        self,
        field: str,
        op: JSON,
        key: Span,
        size: int,
        *,
        write: bool,
        flight: Flight | None = None,
    ) -> JSON | None:
        """Run ``op`` (the body of a txn ``field`` such as ``request_put``) in a batch.

        Returns the operation's response object (with the txn's header), or None when
        the caller must send its own request: it was alone, or the batch was refused.
        Raises the error the batch met in transit. A ``flight`` is ended here when this
        raises (at once, or when etcd answered, if the caller was interrupted after its
        operation was sent); otherwise its caller ends it.
        """
        return self._join({field: op}, (key,), size, write, 0, flight)

    def call_txn(
        self,
        body: JSON,
        size: int,
        spans: list[Span] | None = None,
        depth: int | None = None,
        flight: Flight | None = None,
    ) -> JSON | None:
        """Run the txn ``body`` as a nested txn of a write batch.

        Returns its ``response_txn`` object (with the batch's header), or None when the
        caller must send it on its own (alone, refused, or it holds nested txns).
        ``spans`` (every key range it touches) and ``depth`` (its longest list) are
        read from ``body`` unless the caller knows them; ``flight`` as in :meth:`call`."""
        if spans is None:
            spans = txn_spans(body)
        if depth is None:
            depth = max(len(body.get(part, ())) for part in ("compare", "success", "failure"))
        if spans is None or depth + 1 >= self.max_ops:
            return None
        return self._join({"request_txn": body}, spans, size, True, depth, flight)

    def _join(
        self,
        op: JSON,
        spans: Iterable[Span],
        size: int,
        write: bool,
        depth: int,
        flight: Flight | None = None,
    ) -> JSON | None:
        batch = self._open[write]
        if batch is None and not self._inflight[write] and not self._alone[write]:
            return None  # nothing of its kind on its way: no one to wait for, send it now
        leader = batch is None or not self._fits(batch, spans, size, depth)
        if leader:
            batch = self._open[write] = _Batch(write)
        assert batch is not None
        slot = _Slot(op, flight)
        batch.slots.append(slot)
        if write:
            batch.touch(spans)
        batch.size += size
        batch.depth = max(batch.depth, depth)
        if len(batch.slots) + batch.depth >= self.max_ops and self._open[write] is batch:
            self._open[write] = None  # full: sent now, not when its leader runs again
            if not leader:
                self._dispatch(batch, soon=True)
        if leader:
            return self._lead(batch, slot)
        return self._follow(batch, slot)

    @contextlib.contextmanager
    def alone(self, write: bool) -> Iterator[None]:
        """Mark a caller's own request (one :meth:`call` told to send) as on its way,
        so that the callers coming meanwhile gather in a batch instead of each sending
        its own."""
        self._alone[write] += 1
        try:
            yield
        finally:
            self._alone[write] -= 1

    def begin_alone(self, write: bool) -> None:
        """:meth:`alone` for a request sent from another greenlet: counted from now
        until :meth:`end_alone`."""
        self._alone[write] += 1

    def end_alone(self, write: bool) -> None:
        """The request :meth:`begin_alone` counted was answered (or given up)."""
        self._alone[write] -= 1

    def _fits(self, batch: _Batch, spans: Iterable[Span], size: int, depth: int) -> bool:
        return (
            len(batch.slots) + max(batch.depth, depth) < self.max_ops
            and batch.size + size <= self.max_bytes
            and not (batch.write and batch.conflicts(spans))
        )

    def _lead(self, batch: _Batch, slot: _Slot) -> JSON | None:
        try:
            gevent.sleep(0)  # every greenlet ready to run now may join the batch
        except BaseException:
            self._abandon(batch, slot)
            self._dispatch(batch)
            raise
        self._dispatch(batch)
        return self._follow(batch, slot)

    def _dispatch(self, batch: _Batch, *, soon: bool = False) -> None:
        """Close ``batch`` and send it, or tell a lone caller to send its own request;
        a batch that finds ``max_inflight`` batches on their way waits for one (and
        keeps gathering meanwhile). Idempotent: a batch is handed over once.

        ``soon``: the batch filled up while its leader waits for its turn, maybe behind
        thousands of greenlets ready to run; its senders start at the loop's next turn
        (a timer) instead of behind all of them, so etcd works while they run."""
        if batch.dispatched:
            return
        write = batch.write
        if len(batch.slots) > 1 and self._inflight[write] >= self.max_inflight:
            if not batch.queued:
                batch.queued = True
                self._waiting[write].append(batch)
            return
        batch.dispatched = True
        if self._open[write] is batch:
            self._open[write] = None
        if len(batch.slots) > 1:
            slots = batch.slots
            free = self.max_inflight - self._inflight[write]
            parts = max(1, min(free, (len(slots) + MIN_SPLIT // 2) // MIN_SPLIT))
            step = -(-len(slots) // parts)
            for start in range(0, len(slots), step):
                self._inflight[write] += 1
                if soon:
                    sender: gevent.Greenlet[..., Any] = gevent.Greenlet(
                        self._send, slots[start : start + step], write
                    )
                    self._group.add(sender)
                    sender.start_later(0)
                else:
                    self._group.spawn(self._send, slots[start : start + step], write)
        elif batch.slots:
            batch.slots[0].retry_alone = True
            _wake(batch.slots)

    def _withdraw(self, batch: _Batch, slot: _Slot) -> None:
        """Take back the operation of a caller interrupted before it was sent (it is
        then never applied); once sent, it stays on its way."""
        if slot.sent:
            return
        slot.withdrawn = True
        if not batch.dispatched and slot in batch.slots:
            batch.slots.remove(slot)
        if not batch.slots and batch.queued and batch in self._waiting[batch.write]:
            self._waiting[batch.write].remove(batch)
            batch.dispatched = True  # nothing left to send
            if self._open[batch.write] is batch:
                self._open[batch.write] = None

    def _abandon(self, batch: _Batch, slot: _Slot) -> None:
        """Its caller was interrupted: withdraw the operation if it was not sent (it
        is then never applied), and end its flight now, or once etcd answered."""
        self._withdraw(batch, slot)
        if slot.flight is not None:
            if slot.sent and not slot.finished:
                slot.orphaned = True  # ended by _wake
            else:
                slot.flight.end()

    def _follow(self, batch: _Batch, slot: _Slot) -> JSON | None:
        try:
            slot.wait()
        except BaseException:
            self._abandon(batch, slot)  # interrupted before sending: never applied
            raise
        if slot.error is not None:
            if slot.flight is not None:
                slot.flight.end()
            raise copy.copy(slot.error)
        if slot.retry_alone:
            return None
        return slot.answer

    def _send(self, chosen: list[_Slot], write: bool) -> None:
        slots = [slot for slot in chosen if not slot.withdrawn]
        for slot in slots:
            slot.sent = True
        try:
            if not slots:
                return
            self.batches += 1
            self.coalesced += len(slots)
            self.batch_sizes[batch_bucket(len(slots))] += 1
            answer = self.transport.call(
                "/v3/kv/txn",
                {"success": [slot.op for slot in slots]},
                write=write,
                batch=len(slots),
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
                if write
                else None
            )
            for slot in slots:
                slot.error = failure
                slot.retry_alone = failure is None
            raise
        finally:
            self._inflight[write] -= 1
            waiting = self._waiting[write]
            while waiting and self._inflight[write] < self.max_inflight:
                self._dispatch(waiting.popleft())  # its sender runs before the wake-ups
            _wake(slots)

    @staticmethod
    def _hand_out(slots: list[_Slot], answer: JSON) -> None:
        try:
            header = wire_header(answer)  # decoded once for every caller of the batch
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

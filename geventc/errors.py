"""The geventc exception hierarchy.

Every error geventc raises derives from :class:`EtcdError`. Errors reported by the
server keep the gRPC ``code`` and the server's ``message``; transport failures name
the endpoint they happened on. Nothing from urllib3 or json reaches the caller untyped.
"""

from __future__ import annotations


class EtcdError(Exception):
    """Root of every geventc error.

    ``code`` is the gRPC status code the server answered with (None for client-side
    errors), ``endpoint`` the endpoint the failure happened on, if any.
    """

    def __init__(
        self, message: str, *, code: int | None = None, endpoint: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.endpoint = endpoint

    def __str__(self) -> str:
        if self.endpoint:
            return f"{self.message} (endpoint {self.endpoint})"
        return self.message


class InvalidArgument(EtcdError, ValueError):
    """A call was given an argument it cannot accept; raised before any request."""


class NotPatched(EtcdError, RuntimeError):
    """The process's sockets are not gevent-patched."""


class ClientClosed(EtcdError):
    """The client (or connector) was closed and cannot make requests any more."""


class ConnectionFailed(EtcdError):
    """No endpoint could be reached (refused, reset, DNS or TLS failure)."""


class Timeout(EtcdError):
    """A request did not complete within its deadline."""


class ChannelTimeout(Timeout):
    """``Channel.get(timeout=...)`` found no event within its timeout. A
    :class:`Timeout` (so an ``Exception``, unlike ``gevent.Timeout``): the channel is
    still open and can be read again."""


class IndeterminateWrite(EtcdError):
    """A write failed after it was sent: it may or may not have been applied."""


class Unavailable(EtcdError):
    """The server is up but cannot serve the request now (gRPC UNAVAILABLE)."""


class NoLeader(Unavailable):
    """The member has no raft leader."""


class AuthenticationFailed(EtcdError):
    """The username/password were rejected, or auth is required and none was given."""


class PermissionDenied(EtcdError):
    """The authenticated user may not perform this operation on this key."""


class LeaseNotFound(EtcdError):
    """The lease does not exist (never granted, revoked or expired)."""


class Compacted(EtcdError):
    """The requested revision was compacted away.

    ``compact_revision`` is the server's compaction point when it is known: a watch
    can be re-established from there, after re-reading the current state.
    """

    def __init__(
        self,
        message: str,
        *,
        compact_revision: int | None = None,
        code: int | None = None,
        endpoint: str | None = None,
    ) -> None:
        super().__init__(message, code=code, endpoint=endpoint)
        self.compact_revision = compact_revision


class FutureRevision(EtcdError):
    """The requested revision is newer than the server's current revision."""


class RequestTooLarge(EtcdError):
    """The request exceeds the server's request size limit (1.5 MiB by default)."""


class TooManyRequests(EtcdError):
    """The server is overloaded; back off and retry."""


class NoSpace(EtcdError):
    """The server's storage quota is exhausted (alarm NOSPACE)."""


class KeyExists(EtcdError):
    """A key that was to be created already exists."""


class NotLeader(EtcdError):
    """A fenced write was refused because the writer no longer leads."""


class ServerError(EtcdError):
    """Any other error the server reported; ``code`` and ``message`` say which."""


class ProtocolError(EtcdError):
    """The server's answer could not be understood (malformed or unexpected body)."""


class ChannelClosed(EtcdError):
    """A recipe's channel was closed and every pending event was read."""


class RecipeStateError(EtcdError, RuntimeError):
    """A recipe call does not fit the recipe's state (started twice, used after stop)."""


class RetriesExhausted(EtcdError):
    """A recipe gave up restoring something after its retry policy's attempts."""


class NoInstances(EtcdError):
    """A service has no registered instance."""


class ForkedProcess(EtcdError, RuntimeError):
    """A client or connector made before ``fork()`` was used in the child process."""


class TokenExpired(AuthenticationFailed):
    """The auth token is no longer valid; the transport re-authenticates and retries
    once (it reaches callers only when that fails too)."""


class ConfigDecodeError(EtcdError):
    """The value of ``key`` written at ``revision`` could not be decoded; the mapping
    keeps the key's previous value. The decoder's exception is ``__cause__`` (it is not
    quoted in the message, which may be logged: values can be secrets)."""

    def __init__(self, key: str, revision: int, cause: Exception) -> None:
        super().__init__(
            f"the value of config key {key!r} at revision {revision} could not be decoded "
            f"({type(cause).__name__}); keeping its previous value"
        )
        self.key = key
        self.revision = revision
        self.__cause__ = cause


class NotConfigured(RecipeStateError):
    """An integration helper was used before (or without) the setting it needs."""


class NotLockHolder(EtcdError):
    """A lock-guarded write, or a release, by a holder that does not hold the lock (or
    semaphore slot) now: never acquired, released, suspended or lost."""


class NotAcquired(EtcdError):
    """A lock or semaphore could not be acquired within the caller's timeout; nothing of
    the attempt is left on the server (the ``with`` block is not entered)."""


class TooManyParticipants(EtcdError):
    """A double barrier already has its ``count`` participants (Go's
    ``ErrTooManyClients``)."""


class ClaimLost(EtcdError):
    """A queue item's claim is no longer held (its lease was lost, or the item was
    taken or acked elsewhere), so it cannot be acked: another consumer may have it."""


class MemberExists(KeyExists):
    """A group already has a live member with this identity."""

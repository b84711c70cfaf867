"""Gateway error bodies -> geventc exceptions.

etcd 3.4/3.5 answer ``{"error": msg, "code": grpcCode, "message": msg}``; etcd 3.6
answers ``{"code": grpcCode, "message": msg}``; inside a stream the error is nested
as ``{"error": {"grpc_code"|"code": .., "message": ..}}``. All map to one hierarchy.
"""

from __future__ import annotations

import json
from typing import Any

from . import errors

# gRPC status codes used below.
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
UNAVAILABLE = 14
UNAUTHENTICATED = 16

# Messages that ask the client to fetch a fresh auth token and retry once.
TOKEN_EXPIRED_MESSAGES = (
    "invalid auth token",
    "revision of auth store is old",
    "user name is empty",
)


TokenExpired = errors.TokenExpired  # kept importable here; defined with every error


# Message fragments (of etcd's rpctypes) checked before the gRPC code.
_BY_MESSAGE: tuple[tuple[str, type[errors.EtcdError]], ...] = (
    *((m, TokenExpired) for m in TOKEN_EXPIRED_MESSAGES),
    ("requested lease not found", errors.LeaseNotFound),
    ("required revision has been compacted", errors.Compacted),
    ("required revision is a future revision", errors.FutureRevision),
    ("authentication failed", errors.AuthenticationFailed),
    ("authentication is not enabled", errors.AuthenticationFailed),
    ("permission denied", errors.PermissionDenied),
    ("request is too large", errors.RequestTooLarge),
    ("message larger than max", errors.RequestTooLarge),
    ("too many requests", errors.TooManyRequests),
    ("database space exceeded", errors.NoSpace),
    ("no leader", errors.NoLeader),
)

_BY_CODE: dict[int, type[errors.EtcdError]] = {
    INVALID_ARGUMENT: errors.InvalidArgument,
    DEADLINE_EXCEEDED: errors.Timeout,
    PERMISSION_DENIED: errors.PermissionDenied,
    RESOURCE_EXHAUSTED: errors.TooManyRequests,
    UNAVAILABLE: errors.Unavailable,
    UNAUTHENTICATED: errors.AuthenticationFailed,
}


def error_from_fields(code: Any, message: Any, endpoint: str | None) -> errors.EtcdError:
    """The exception for a gRPC ``code`` and server ``message``."""
    grpc_code = code if isinstance(code, int) and not isinstance(code, bool) else None
    text = message if isinstance(message, str) and message else f"etcd error code {code!r}"
    kind: type[errors.EtcdError] = errors.ServerError
    for fragment, candidate in _BY_MESSAGE:
        if fragment in text:
            kind = candidate
            break
    else:
        if grpc_code in _BY_CODE:
            kind = _BY_CODE[grpc_code]
    return kind(text, code=grpc_code, endpoint=endpoint)


def error_from_object(body: Any, endpoint: str | None) -> errors.EtcdError | None:
    """The exception described by a decoded error object, or None if it is none."""
    if not isinstance(body, dict):
        return None
    nested = body.get("error")
    if isinstance(nested, dict):  # in-stream error
        code = nested.get("grpc_code", nested.get("code"))
        return error_from_fields(code, nested.get("message"), endpoint)
    if "code" in body and ("message" in body or "error" in body):
        return error_from_fields(body.get("code"), body.get("message") or nested, endpoint)
    return None


def error_from_response(status: int, data: bytes, endpoint: str) -> errors.EtcdError:
    """The exception for a non-200 gateway answer with body ``data``."""
    try:
        decoded = json.loads(data) if data else None
    except (ValueError, RecursionError):
        decoded = None
    error = error_from_object(decoded, endpoint)
    if error is not None:
        return error
    text = data[:200].decode("utf-8", "replace").strip()
    if "HTTP request to an HTTPS server" in text:
        return errors.ConnectionFailed(
            "the endpoint serves TLS only; use an https:// endpoint and a TLSConfig",
            endpoint=endpoint,
        )
    if status == 404:
        return errors.ProtocolError(
            "the endpoint does not serve the etcd v3 JSON gateway (HTTP 404); "
            "geventc needs etcd 3.4 or later",
            endpoint=endpoint,
        )
    return errors.ProtocolError(f"unexpected HTTP {status} from etcd: {text!r}", endpoint=endpoint)

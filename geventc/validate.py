"""Argument checks shared by every public call.

Each helper returns the normalised value or raises :class:`InvalidArgument` naming the
argument and what is allowed, before any request is made.
"""

from __future__ import annotations

from typing import Any

from .errors import InvalidArgument, RequestTooLarge
from .wire import Lease

#: etcd's maximum lease TTL in seconds (``MaxLeaseTTL`` in server/lease).
MAX_LEASE_TTL = 9_000_000_000
#: etcd's default ``--max-request-bytes``.
DEFAULT_MAX_REQUEST_BYTES = 1_572_864
#: etcd's default ``--max-txn-ops``.
MAX_TXN_OPS = 128
#: Largest signed 64-bit integer: the bound of every etcd revision and ID.
INT64_MAX = 2**63 - 1


def _type_name(value: object) -> str:
    return type(value).__name__


def to_bytes(value: Any, name: str, *, allow_empty: bool = False) -> bytes:
    """``value`` as bytes: ``str`` is UTF-8 encoded, ``bytes``/``bytearray`` copied."""
    if isinstance(value, str):
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate has no UTF-8 form
            raise InvalidArgument(f"{name} has a lone surrogate: it is not valid text") from None
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    else:
        raise InvalidArgument(f"{name} must be str or bytes, not {_type_name(value)}")
    if not data and not allow_empty:
        raise InvalidArgument(f"{name} must not be empty")
    return data


def key(value: Any, name: str = "key") -> bytes:
    """A non-empty key as bytes."""
    return to_bytes(value, name)


def prefix(value: Any, name: str = "prefix", *, allow_empty: bool = True) -> bytes:
    """A key prefix as bytes; the empty prefix means every key where allowed."""
    return to_bytes(value, name, allow_empty=allow_empty)


def value(data: Any, name: str = "value") -> bytes:
    """A value as bytes; the empty value is allowed."""
    return to_bytes(data, name, allow_empty=True)


def integer(value: Any, name: str, *, minimum: int = 0, maximum: int = INT64_MAX) -> int:
    """An ``int`` (never a bool) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an int, not {_type_name(value)}")
    if not minimum <= value <= maximum:
        raise InvalidArgument(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def ttl(value: Any, name: str = "ttl") -> int:
    """A lease TTL: a positive int of seconds no larger than etcd's maximum."""
    return integer(value, name, minimum=1, maximum=MAX_LEASE_TTL)


def revision(value: Any, name: str = "revision") -> int:
    """A revision: a non-negative int (0 means 'current')."""
    return integer(value, name, minimum=0)


def optional_revision(value: Any, name: str = "revision") -> int:
    """A revision or None (None and 0 both mean 'current')."""
    return 0 if value is None else revision(value, name)


def lease_id(value: Any, name: str = "lease") -> int:
    """A lease ID (0 means 'no lease')."""
    return integer(value, name, minimum=0)


def lease_ref(lease: Any, *, required: bool = False, name: str = "lease") -> int:
    """A lease given as a :class:`~geventc.Lease` or its ID; None means no lease
    unless ``required``."""
    if lease is None and not required:
        return 0
    if isinstance(lease, Lease):  # its id is checked too: a Lease can be built by hand
        return integer(lease.id, f"{name}.id", minimum=1 if required else 0)
    return integer(lease, name, minimum=1 if required else 0)


def positive_number(value: Any, name: str) -> float:
    """A positive int or float (bool rejected), such as a timeout in seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{name} must be a positive number, not {_type_name(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        number = float("inf")
    if not 0 < number < float("inf"):  # nan compares false too
        raise InvalidArgument(f"{name} must be a positive finite number, got {value!r}")
    return number


def timeout(value: Any, name: str = "timeout") -> float | None:
    """None (wait as long as it takes) or a finite number of seconds >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(
            f"{name} must be None or a number of seconds >= 0, not {_type_name(value)}"
        )
    number = float(value) if abs(value) < 1e300 else float("inf")
    if not 0 <= number < float("inf"):
        raise InvalidArgument(f"{name} must be None or a finite number >= 0, got {value!r}")
    return number


def boolean(value: Any, name: str) -> bool:
    """A real bool."""
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name} must be True or False, not {_type_name(value)}")
    return value


def choice(value: Any, name: str, allowed: tuple[str, ...]) -> str:
    """One of ``allowed`` (case-insensitive, returned upper-case)."""
    text = getattr(value, "value", value)
    if isinstance(text, str) and text.upper() in allowed:
        return text.upper()
    raise InvalidArgument(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def request_size(size: int, limit: int, what: str) -> None:
    """Refuse a request whose payload alone exceeds the server's request limit."""
    if size > limit:
        raise RequestTooLarge(
            f"{what} is {size} bytes, more than the server's request limit of {limit} bytes "
            "(etcd --max-request-bytes)"
        )

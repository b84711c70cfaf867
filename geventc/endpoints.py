"""Endpoint URLs: parsing, validation and normalisation.

An endpoint is ``http://host:port`` or ``https://host:port``; a bare ``host:port``
means ``http://host:port`` (as etcdctl reads it) and a missing port means 2379.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from .errors import InvalidArgument

DEFAULT_PORT = 2379
SCHEMES = ("http", "https")


def parse_endpoint(text: Any) -> str:
    """Return the normalised ``scheme://host:port`` of one endpoint."""
    if not isinstance(text, str):
        raise InvalidArgument(f"an endpoint must be a str URL, not {type(text).__name__}")
    raw = text.strip()
    if not raw:
        raise InvalidArgument("an endpoint must not be empty")
    if "://" not in raw:
        raw = "http://" + raw
    if any(c.isspace() for c in raw):
        raise InvalidArgument(f"endpoint {text!r} must not contain white space")
    try:
        parts = urlsplit(raw)
        parts.hostname  # noqa: B018 - parsing the host validates brackets
    except ValueError as exc:
        raise InvalidArgument(f"endpoint {text!r} is not a valid URL: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise InvalidArgument(
            f"endpoint {text!r} has scheme {parts.scheme!r}; allowed are http and https"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise InvalidArgument(
            f"endpoint {text!r} must be scheme://host:port with no path, query or user"
        )
    try:
        port = parts.port
    except ValueError:
        raise InvalidArgument(
            f"endpoint {text!r} has a bad port; a port is an integer from 1 to 65535"
        ) from None
    host = parts.hostname
    if not host:
        raise InvalidArgument(f"endpoint {text!r} has no host")
    if port == 0:
        raise InvalidArgument(f"endpoint {text!r} has port 0; allowed are 1 to 65535")
    shown = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{shown}:{port or DEFAULT_PORT}"


def parse_endpoints(endpoints: Any) -> list[str]:
    """Validate an endpoint list (or one comma-separated string) and normalise it.

    The list must be non-empty, all-http or all-https, without duplicates.
    """
    if isinstance(endpoints, str):
        items: Iterable[Any] = [e for e in endpoints.split(",") if e.strip()]
    elif isinstance(endpoints, list | tuple):
        items = endpoints
    else:
        raise InvalidArgument(
            "endpoints must be a list of URLs or a comma-separated str, "
            f"not {type(endpoints).__name__}"
        )
    parsed = list(dict.fromkeys(parse_endpoint(e) for e in items))
    if not parsed:
        raise InvalidArgument("endpoints must name at least one etcd endpoint")
    schemes = {e.split("://", 1)[0] for e in parsed}
    if len(schemes) > 1:
        raise InvalidArgument(
            "endpoints mix http and https; use https:// for every endpoint of a TLS cluster"
        )
    return parsed

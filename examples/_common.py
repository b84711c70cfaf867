"""What the examples share: the endpoints from ``$GEVENTC_ENDPOINTS``."""

from __future__ import annotations

import os


def endpoints() -> list[str]:
    """The etcd endpoints of ``$GEVENTC_ENDPOINTS`` (``geventc serve`` prints it)."""
    value = os.environ.get("GEVENTC_ENDPOINTS", "http://127.0.0.1:2379")
    return [part for part in value.split(",") if part]

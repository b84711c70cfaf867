"""Service instances and their wire formats.

Two formats are spoken, byte for byte:

- ``kitex``: Kitex ``registry-etcd``. Key ``{prefix}/{service}/{address}``, value the JSON
  Go's ``encoding/json`` writes for ``{"network","address","weight","tags"}``.
- ``etcd-endpoints``: etcd's ``client/v3/naming/endpoints``. Key
  ``{prefix}/{service}/{address}`` (the target is ``{prefix}/{service}``), value
  ``{"Op":0,"Addr":..,"Metadata":{"network","weight","tags"}}`` (Go's ``internal.Update``).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import InvalidArgument, ProtocolError

FORMATS = ("kitex", "etcd-endpoints")
DEFAULT_WEIGHT = 10
UNSPECIFIED_HOSTS = ("", "0.0.0.0", "::")
ENV_IP = "KITEX_IP_TO_REGISTRY"
ENV_PORT = "KITEX_PORT_TO_REGISTRY"
GO_INT_MIN, GO_INT_MAX = -(2**63), 2**63 - 1


def split_address(address: Any) -> tuple[str, int]:
    """``(host, port)`` of ``host:port`` (IPv6 in brackets); refuses anything else."""
    if not isinstance(address, str):
        raise InvalidArgument(f"address must be a 'host:port' str, not {type(address).__name__}")
    host, sep, port_text = address.rpartition(":")
    digits = port_text.isascii() and port_text.isdigit() and len(port_text) <= 5  # not '²'
    if not sep or not digits or not 0 < int(port_text) < 65536:
        raise InvalidArgument(f"address {address!r} must be host:port with a port from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidArgument(f"address {address!r} has a malformed IPv6 host") from None
    elif ":" in host:
        raise InvalidArgument(f"address {address!r}: an IPv6 host must be in brackets")
    if any(c.isspace() or c in "/[]" for c in host):
        raise InvalidArgument(f"address {address!r} has a malformed host")
    return host, int(port_text)


def bracket_bare_ipv6(address: object) -> object:
    """Kitex's registry-etcd writes an IPv6 address unbracketed (``::1:80``: Go's
    ``fmt.Sprintf("%s:%d")``); this gives the dialable ``[::1]:80`` for it and returns
    anything else unchanged (to be checked by :func:`split_address`)."""
    if not isinstance(address, str) or address.startswith("[") or address.count(":") < 2:
        return address
    host, _, port = address.rpartition(":")
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return address
    return f"[{host}]:{port}"


def join_address(host: str, port: int) -> str:
    """``host:port``, bracketing an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def first_ipv4() -> str:
    """The machine's first non-loopback IPv4 address (what Kitex registers for an
    unspecified host)."""
    candidates: list[str] = []
    with contextlib.suppress(OSError):
        candidates += [
            str(a[4][0]) for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
        ]
    candidates += _interface_ipv4s()
    for address in candidates:
        if not ipaddress.IPv4Address(address).is_loopback:
            return str(address)
    raise InvalidArgument(
        f"this machine has no non-loopback IPv4 address; give a host or set {ENV_IP}"
    )


def _interface_ipv4s() -> list[str]:
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            with contextlib.suppress(OSError):
                request = struct.pack("256s", name.encode()[:15])
                answer = fcntl.ioctl(sock.fileno(), 0x8915, request)  # SIOCGIFADDR
                found.append(socket.inet_ntoa(answer[20:24]))
    return found


@dataclass(frozen=True)
class Instance:
    """One instance of a service: where it listens, its weight and its tags."""

    service: str
    address: str
    network: str = "tcp"
    weight: int = DEFAULT_WEIGHT
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.service, str) or not self.service or "/" in self.service:
            raise InvalidArgument(f"service {self.service!r} must be a non-empty str without '/'")
        split_address(self.address)
        if not isinstance(self.network, str) or not self.network:
            raise InvalidArgument("network must be a non-empty str such as 'tcp'")
        if isinstance(self.weight, bool) or not isinstance(self.weight, int):
            raise InvalidArgument(f"weight must be an int, not {type(self.weight).__name__}")
        if not GO_INT_MIN <= self.weight <= GO_INT_MAX:  # Kitex's Go int: int64
            raise InvalidArgument(
                f"weight {self.weight} does not fit Go's int (from {GO_INT_MIN} to {GO_INT_MAX}); "
                "Go clients could not read it"
            )
        if not isinstance(self.tags, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.tags.items()
        ):
            raise InvalidArgument("tags must be a mapping of str to str")
        try:  # it must have a UTF-8 form to be stored
            "".join(
                (self.service, self.address, self.network, *self.tags, *self.tags.values())
            ).encode()
        except UnicodeEncodeError:
            raise InvalidArgument("an instance's texts must not hold lone surrogates") from None
        object.__setattr__(self, "tags", MappingProxyType(dict(self.tags)))

    def __hash__(self) -> int:
        return hash(
            (
                self.service,
                self.address,
                self.network,
                self.weight,
                tuple(sorted(self.tags.items())),
            )
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Instance):
            return NotImplemented
        return (self.service, self.address, self.network, self.weight, dict(self.tags)) == (
            other.service,
            other.address,
            other.network,
            other.weight,
            dict(other.tags),
        )

    @property
    def host(self) -> str:
        """The host part of the address."""
        return split_address(self.address)[0]

    @property
    def port(self) -> int:
        """The port part of the address."""
        return split_address(self.address)[1]

    def for_registration(self) -> Instance:
        """The instance as Kitex registers it: ``KITEX_IP_TO_REGISTRY`` and
        ``KITEX_PORT_TO_REGISTRY`` override host and port, and an unspecified host
        becomes the first non-loopback IPv4 address."""
        host, port = split_address(self.address)
        env_host, env_port = os.environ.get(ENV_IP, ""), os.environ.get(ENV_PORT, "")
        if env_host:
            host = env_host
        elif host in UNSPECIFIED_HOSTS:
            host = first_ipv4()
        if env_port:
            if not (env_port.isascii() and env_port.isdigit() and len(env_port) <= 5):
                raise InvalidArgument(f"{ENV_PORT}={env_port!r} is not a port number")
            port = int(env_port)
        address = join_address(host, port)
        split_address(address)
        return Instance(self.service, address, self.network, self.weight, self.tags)


# --- Go encoding/json --------------------------------------------------------------------

_GO_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t",
               "<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
               "\u2028": "\\u2028", "\u2029": "\\u2029"}  # fmt: skip


def go_string(text: str) -> str:
    """A JSON string exactly as Go's ``encoding/json`` writes it (HTML-safe escapes,
    UTF-8 kept, other control characters as ``\\u00XX``)."""
    out = []
    for char in text:
        escaped = _GO_ESCAPES.get(char)
        if escaped is not None:
            out.append(escaped)
        elif ord(char) < 0x20:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def go_string_map(tags: Mapping[str, str]) -> str:
    """A ``map[string]string`` as Go writes it: keys sorted."""
    return "{" + ",".join(f"{go_string(k)}:{go_string(v)}" for k, v in sorted(tags.items())) + "}"


def encode(instance: Instance, fmt: str = "kitex") -> bytes:
    """The stored value of ``instance`` in format ``fmt``."""
    if not isinstance(instance, Instance):
        raise InvalidArgument(f"encode() takes a geventc.Instance, not {type(instance).__name__}")
    check_format(fmt)
    fields = (
        f'"network":{go_string(instance.network)},"address":{go_string(instance.address)},'
        f'"weight":{instance.weight},"tags":{go_string_map(instance.tags)}'
    )
    if fmt == "kitex":
        return ("{" + fields + "}").encode()
    meta = (
        f'{{"network":{go_string(instance.network)},"weight":{instance.weight},'
        f'"tags":{go_string_map(instance.tags)}}}'
    )
    # as Go's endpoints.Manager writes an internal.Update: Op (Add = 0), Addr, Metadata
    return f'{{"Op":0,"Addr":{go_string(instance.address)},"Metadata":{meta}}}'.encode()


def decode(
    service: str, value: bytes, fmt: str = "kitex", default_weight: int = DEFAULT_WEIGHT
) -> Instance:
    """The instance a stored value describes; ``weight <= 0`` becomes ``default_weight``.
    Raises :class:`ProtocolError` for a malformed value."""
    if not isinstance(value, bytes | bytearray | str):
        raise InvalidArgument(f"value must be bytes, not {type(value).__name__}")
    check_format(fmt)
    if type(default_weight) is not int or default_weight < 1:  # bool is not a weight
        raise InvalidArgument("default_weight must be a positive int")
    try:
        data = json.loads(value)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if fmt == "etcd-endpoints":
            meta = data.get("Metadata") or {}
            address, details = data["Addr"], meta if isinstance(meta, dict) else {}
        else:
            address, details = bracket_bare_ipv6(data["address"]), data
        weight = details.get("weight") or 0
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise ValueError("weight is not an integer")
        return Instance(
            service=service,
            address=address,
            network=details.get("network") or "tcp",
            weight=weight if weight > 0 else default_weight,
            tags=details.get("tags") or {},
        )
    except (ValueError, KeyError, TypeError, RecursionError, InvalidArgument) as exc:
        raise ProtocolError(f"malformed {fmt} instance value {value[:100]!r}: {exc}") from None


#: Where Kitex's registry-etcd keeps instances by default.
DEFAULT_PREFIX = "kitex/registry-etcd"


def check_prefix(prefix: object) -> str:
    """A registry prefix: a non-empty str, used without a trailing '/'."""
    if not isinstance(prefix, str) or not prefix.strip("/"):
        raise InvalidArgument("prefix must be a non-empty str such as 'kitex/registry-etcd'")
    return prefix.rstrip("/")


def check_format(fmt: object) -> str:
    """One of the supported value formats."""
    if fmt not in FORMATS:
        raise InvalidArgument(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return str(fmt)

"""What a connection failure most likely means, said the way a person can act on it:
nothing answers at the default endpoint (start one with ``geventc serve``, or point
``--endpoints``/``$GEVENTC_ENDPOINTS`` at yours), or the endpoint's scheme does not
match what the member speaks (``https://`` to a plain-http member, ``http://`` to a
TLS one), found by one small probe of that member after the failure."""

from __future__ import annotations

import contextlib
import socket
import ssl
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .settings import DEFAULT_ENDPOINT, ENV_ENDPOINTS

if TYPE_CHECKING:
    from ..errors import EtcdError

#: seconds one probe may take (a member that answered the failed request at all
#: answers a probe at once)
PROBE_TIMEOUT = 1.0

START_HINT = (
    f"nothing answers at {DEFAULT_ENDPOINT} (the default endpoint): start a local etcd "
    f"with 'geventc serve', or point to yours with --endpoints URLS or ${ENV_ENDPOINTS}"
)


def explain(error: EtcdError, defaulted: bool) -> str:
    """``error`` as one line for people: a connection failure that comes from a
    scheme mismatch says so; one at the default endpoint (``defaulted``: no endpoint
    was given) says how to start or name one; anything else is ``str(error)``."""
    from ..errors import ConnectionFailed, IndeterminateWrite

    if not isinstance(error, ConnectionFailed | IndeterminateWrite) or not error.endpoint:
        return str(error)
    mismatch = scheme_mismatch(error.endpoint, wrote=isinstance(error, IndeterminateWrite))
    if mismatch is not None:
        return mismatch
    if defaulted and isinstance(error, ConnectionFailed) and _unreachable(error.message):
        return f"{START_HINT} ({error.message})"
    return str(error)


def _unreachable(message: str) -> bool:
    """True when the failure says nothing listens (refused, or no connection in time),
    not that a member answered wrongly."""
    return any(words in message for words in ("cannot connect", "refused", "timed out"))


def scheme_mismatch(endpoint: str, *, wrote: bool = False) -> str | None:
    """What is wrong when ``endpoint``'s member speaks the other scheme (None: it
    does not, or cannot be told); ``wrote``: the failed request was a write (which a
    TLS member never read as one)."""
    parts = urlsplit(endpoint)
    if parts.hostname is None or parts.port is None:
        return None
    address = (parts.hostname, parts.port)
    if parts.scheme == "https" and speaks_plain_http(address):
        return (
            f"this member speaks plain http; use http://{parts.netloc} "
            f"(endpoint {endpoint} failed its TLS handshake)"
        )
    if parts.scheme == "http" and speaks_tls(address):
        written = "; it never read the request, so nothing was written" if wrote else ""
        return (
            f"this member speaks https (TLS); use https://{parts.netloc} with --cacert "
            f"(and --cert/--key if it asks for a client certificate){written} "
            f"(endpoint {endpoint})"
        )
    return None


def speaks_plain_http(address: tuple[str, int]) -> bool:
    """True when the server at ``address`` answers a plain HTTP request with HTTP (a
    TLS server does not, or answers that it wanted https)."""
    request = f"GET /version HTTP/1.1\r\nHost: {address[0]}\r\nConnection: close\r\n\r\n"
    try:
        with socket.create_connection(address, timeout=PROBE_TIMEOUT) as sock:
            sock.sendall(request.encode("ascii"))
            answer = sock.recv(512)
    except OSError:
        return False
    return answer.startswith(b"HTTP/1.") and b"HTTPS server" not in answer


def speaks_tls(address: tuple[str, int]) -> bool:
    """True when the server at ``address`` takes part in a TLS handshake: it
    completes, or the server ends it with an alert (e.g. it wants a client
    certificate). Nothing is verified: this only tells what the server speaks."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection(address, timeout=PROBE_TIMEOUT) as raw,
            context.wrap_socket(raw) as tls,
        ):
            with contextlib.suppress(OSError):
                tls.unwrap()
            return True
    except ssl.SSLError as exc:
        return "ALERT" in (exc.reason or "").upper()
    except OSError:
        return False

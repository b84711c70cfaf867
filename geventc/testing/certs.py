"""Throw-away certificates for TLS tests: a CA, a server certificate for loopback and
a client certificate, written as PEM files (needs the ``trustme`` test extra)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..transport import TLSConfig


@dataclass(frozen=True)
class TLSFiles:
    """Paths of a generated CA, server key pair and client key pair."""

    directory: str
    ca_file: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str

    def client_config(self, *, with_client_cert: bool = True) -> TLSConfig:
        """A :class:`TLSConfig` trusting this CA (and presenting the client cert)."""
        if not with_client_cert:
            return TLSConfig(ca_file=self.ca_file)
        return TLSConfig(self.ca_file, self.client_cert, self.client_key)


def make_tls_files(
    directory: str, hostnames: tuple[str, ...] = ("127.0.0.1", "localhost")
) -> TLSFiles:
    """Generate a CA plus server and client certificates into ``directory``."""
    try:
        import trustme
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "TLS test servers need the trustme package: pip install 'geventc[test]'"
        ) from exc
    os.makedirs(directory, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert(*hostnames)
    client = ca.issue_cert("geventc-client")

    def path(name: str) -> str:
        return os.path.join(directory, name)

    ca.cert_pem.write_to_path(path("ca.pem"))
    server.cert_chain_pems[0].write_to_path(path("server.pem"))
    server.private_key_pem.write_to_path(path("server-key.pem"))
    client.cert_chain_pems[0].write_to_path(path("client.pem"))
    client.private_key_pem.write_to_path(path("client-key.pem"))
    return TLSFiles(
        directory=directory,
        ca_file=path("ca.pem"),
        server_cert=path("server.pem"),
        server_key=path("server-key.pem"),
        client_cert=path("client.pem"),
        client_key=path("client-key.pem"),
    )

"""Mutual TLS against a real etcd serving https with generated certificates."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from geventc import Client, TLSConfig
from geventc.errors import ConnectionFailed, InvalidArgument
from geventc.testing import EtcdServer, make_tls_files


@pytest.fixture(scope="module")
def tls_server() -> Iterator[EtcdServer]:
    with EtcdServer(tls=True, fsync=False) as server:
        yield server


def test_mutual_tls_round_trip(tls_server: EtcdServer) -> None:
    assert tls_server.endpoint.startswith("https://")
    client = Client(tls_server.endpoints, tls=tls_server.client_tls())
    client.put("/tls/a", "secure")
    kv = client.get("/tls/a")
    assert kv is not None and kv.value == b"secure"
    stream = client.watch("/tls/a")
    client.put("/tls/a", "again")
    assert next(stream).events[0].kv.value == b"again"
    stream.cancel()
    assert client.health().healthy
    client.close()


def test_wrong_ca_fails_clearly(tls_server: EtcdServer, tmp_path: object) -> None:
    other = make_tls_files(os.path.join(str(tmp_path), "other"))
    assert tls_server.tls_files is not None
    tls = TLSConfig(
        other.ca_file, tls_server.tls_files.client_cert, tls_server.tls_files.client_key
    )
    client = Client(tls_server.endpoints, tls=tls, timeout=2)
    with pytest.raises(ConnectionFailed, match="TLS verification"):
        client.get("/tls/a")


def test_hostname_mismatch_fails_clearly(tls_server: EtcdServer) -> None:
    files = tls_server.tls_files
    assert files is not None
    tls = TLSConfig(
        files.ca_file, files.client_cert, files.client_key, server_hostname="etcd.example"
    )
    with pytest.raises(ConnectionFailed, match="TLS"):
        Client(tls_server.endpoints, tls=tls, timeout=2).get("/tls/a")


def test_missing_client_certificate_is_refused(tls_server: EtcdServer) -> None:
    client = Client(
        tls_server.endpoints, tls=tls_server.client_tls(with_client_cert=False), timeout=2
    )
    with pytest.raises(ConnectionFailed):
        client.get("/tls/a")


def test_plain_http_to_a_tls_server_fails_clearly(tls_server: EtcdServer) -> None:
    plain = tls_server.endpoint.replace("https://", "http://")
    with pytest.raises(ConnectionFailed, match="https"):
        Client([plain], timeout=2).get("/tls/a")


def test_tls_config_validation(tls_server: EtcdServer) -> None:
    with pytest.raises(InvalidArgument, match="not a readable file"):
        TLSConfig(ca_file="/nonexistent/ca.pem")
    files = tls_server.tls_files
    assert files is not None
    with pytest.raises(InvalidArgument, match="both cert_file and key_file"):
        TLSConfig(files.ca_file, cert_file=files.client_cert)
    with pytest.raises(InvalidArgument, match="https"):
        Client(["http://127.0.0.1:2379"], tls=TLSConfig(files.ca_file))


@pytest.mark.cluster
def test_tls_only_cluster_with_client_certificates_fails_over() -> None:
    """A 3-member cluster serving TLS only (peers too): client certificates work,
    recipes work, a killed member is left for the others over TLS, and plain http to
    any member fails with a message that says to use https."""
    import geventc
    from geventc.testing import EtcdCluster

    with EtcdCluster(size=3, tls=True, fsync=False) as cluster:
        assert all(e.startswith("https://") for e in cluster.endpoints)
        with geventc.connect(cluster.endpoints, "/tls", tls=cluster.client_tls()) as conn:
            key = conn.ephemeral_key("/svc/a")
            key.create("up", ttl=5)
            first = conn.client.transport.current_endpoint
            killed = cluster.kill(cluster.endpoints.index(first))
            kv = conn.get("/svc/a")
            assert kv is not None and kv.value == b"up"
            assert conn.client.transport.current_endpoint != first
            key.stop()
        for endpoint in cluster.endpoints:
            if endpoint == killed.client_url:
                continue
            plain = endpoint.replace("https://", "http://")
            with pytest.raises(ConnectionFailed, match="https"):
                Client([plain], timeout=2).get("/tls/x")

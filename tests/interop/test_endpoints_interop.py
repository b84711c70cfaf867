"""geventc's ``etcd-endpoints`` format against Go's ``client/v3/naming/endpoints``.

Go's ``endpoints.Manager`` writes each endpoint as its ``internal.Update`` JSON:
``{"Op":0,"Addr":...,"Metadata":...}``. A Go peer writes an endpoint and lists them;
geventc must write the same bytes for the same instance, list Go's endpoint through
its resolver, and be listed by Go.
"""

from __future__ import annotations

from gopeer import GoPeers, only

import geventc
from geventc import Instance, Registry, Resolver
from geventc.instances import encode
from geventc.testing.plugin import EtcdTestContext


def test_same_bytes_as_go_and_each_lists_the_other(
    etcd: EtcdTestContext, go_peers: GoPeers
) -> None:
    target = etcd.key("services/grpc-svc")
    go_key = f"{target}/10.0.0.7:50051"
    lines = go_peers.run(
        "endpoints-add",
        endpoints=",".join(etcd.endpoints),
        path=target,
        key=go_key,
        identity="10.0.0.7:50051",
        weight=7,
    )
    only(lines, "added")
    client = etcd.client()
    written = client.get(go_key)
    assert written is not None
    # the bytes Go wrote are exactly what geventc writes for the same instance
    same = Instance("grpc-svc", "10.0.0.7:50051", weight=7)
    assert written.value == encode(same, "etcd-endpoints")

    with geventc.connect(etcd.endpoints) as conn:
        prefix = etcd.key("services")
        with Registry(conn, prefix=prefix, format="etcd-endpoints", ttl=10) as registry:
            registry.register(Instance("grpc-svc", "10.0.0.8:50051", weight=3))
            resolver = Resolver(conn, prefix=prefix, format="etcd-endpoints")
            found = {(i.address, i.weight) for i in resolver.resolve("grpc-svc")}
            assert found == {("10.0.0.7:50051", 7), ("10.0.0.8:50051", 3)}
            listed = only(
                go_peers.run("endpoints-list", endpoints=",".join(etcd.endpoints), path=target),
                "endpoints",
            )["endpoints"]
            assert listed[f"{target}/10.0.0.8:50051"] == {
                "addr": "10.0.0.8:50051",
                "metadata": {"network": "tcp", "weight": 3, "tags": {}},
            }
            resolver.close()

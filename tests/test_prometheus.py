"""``geventc.contrib.prometheus.GeventcCollector``: scraped from a registry
(``generate_latest``) and over HTTP (``start_http_server`` on a free port), the
exposition parsed, and its counters moved by real operations against a real etcd."""

from __future__ import annotations

from collections.abc import Iterator

import gevent
import pytest
import urllib3
from helpers.waiting import wait_until
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

import geventc
from geventc.contrib.prometheus import GeventcCollector
from geventc.errors import InvalidArgument, LeaseNotFound

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _parse(text: str) -> Samples:
    """Every sample of an exposition text: (name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _scrape(registry: CollectorRegistry) -> Samples:
    return _parse(generate_latest(registry).decode())


@pytest.fixture
def registry(conn: geventc.Connector) -> CollectorRegistry:
    """A registry holding a collector of ``conn``, labelled ``connector="test"``."""
    registry = CollectorRegistry()
    registry.register(GeventcCollector(conn, labels={"connector": "test"}))
    return registry


def test_a_scrape_shows_what_the_connector_did(
    conn: geventc.Connector, registry: CollectorRegistry
) -> None:
    before = _scrape(registry)
    assert before[("geventc_leases_kept", (("connector", "test"),))] == 0

    conn.put("a", "1")
    with pytest.raises(LeaseNotFound):
        conn.revoke(0xBAD)
    gevent.joinall([gevent.spawn(conn.put, f"b/{i}", "v") for i in range(30)], raise_error=True)
    key = conn.ephemeral_key("e")
    key.create("v", ttl=5)
    tracker = conn.service_tracker("/svc")
    tracker.start()
    wait_until(lambda: conn.stats().watch_streams_open == 2, 5, "the recipes' watches confirmed")

    after = _scrape(registry)
    stats = conn.stats()

    def value(name: str, **labels: str) -> float:
        return after[(name, tuple(sorted({"connector": "test", **labels}.items())))]

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted({"connector": "test", **labels}.items())))
        return after[key] - before.get(key, 0.0)

    assert moved("geventc_requests_total", path="/v3/kv/put") >= 1
    assert moved("geventc_requests_total", path="/v3/lease/revoke") == 1
    assert moved("geventc_requests_total", path="/v3/lease/grant") == 1
    assert value("geventc_errors_total", kind="LeaseNotFound") == 1
    assert value("geventc_lease_grants_total") == 1
    assert value("geventc_leases_kept") == 1
    assert value("geventc_recipes", kind="EphemeralKey") == 1
    assert value("geventc_recipes", kind="ServiceTracker") == 1
    assert value("geventc_prefix_watches") == stats.prefix_watches == 2
    assert value("geventc_watch_streams_opened_total") == 2
    assert value("geventc_watch_streams_open") == 2
    assert value("geventc_endpoint_info", endpoint=conn.endpoints[0]) == 1
    # the batch-size histogram: cumulative buckets, count = batches, sum = operations
    assert value("geventc_coalesced_batch_size_count") == stats.batches >= 1
    assert value("geventc_coalesced_batch_size_sum") == stats.batched_ops
    assert value("geventc_coalesced_batch_size_bucket", le="+Inf") == stats.batches
    assert value("geventc_coalesced_batch_size_bucket", le="1.0") == 0
    buckets = [v for (name, _), v in after.items() if name == "geventc_coalesced_batch_size_bucket"]
    assert buckets == sorted(buckets)  # cumulative


@pytest.fixture
def metrics_url(registry: CollectorRegistry) -> Iterator[str]:
    """The registry served over HTTP by prometheus_client on a free loopback port."""
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_scraped_over_http_the_counters_move(conn: geventc.Connector, metrics_url: str) -> None:
    http = urllib3.PoolManager()

    def scrape() -> Samples:
        response = http.request("GET", metrics_url, timeout=5.0)
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return _parse(response.data.decode())

    mine = (("connector", "test"),)
    put = ("geventc_requests_total", (("connector", "test"), ("path", "/v3/kv/put")))
    first = scrape()
    for i in range(5):
        conn.put(f"http/{i}", "v")
    watch = conn.watch("http/0")
    second = scrape()
    assert second[put] - first.get(put, 0.0) == 5
    assert second[("geventc_watch_streams_open", mine)] == 1
    watch.cancel()
    assert scrape()[("geventc_watch_streams_open", mine)] == 0
    http.clear()


def test_bad_arguments_are_refused(conn: geventc.Connector) -> None:
    with pytest.raises(InvalidArgument, match=r"Connector or geventc\.Client"):
        GeventcCollector(object())
    with pytest.raises(InvalidArgument, match="namespace"):
        GeventcCollector(conn, namespace="bad-name")
    with pytest.raises(InvalidArgument, match="label name"):
        GeventcCollector(conn, labels={"bad-label": "x"})
    with pytest.raises(InvalidArgument, match="used by geventc"):
        GeventcCollector(conn, labels={"path": "x"})
    with pytest.raises(InvalidArgument, match="str value"):
        GeventcCollector(conn, labels={"connector": 1})  # type: ignore[dict-item]
    with pytest.raises(InvalidArgument, match="mapping"):
        GeventcCollector(conn, labels=[("a", "b")])  # type: ignore[arg-type]
    # two collectors of one registry need their own namespaces
    registry = CollectorRegistry()
    registry.register(GeventcCollector(conn))
    registry.register(GeventcCollector(conn.client, namespace="other"))
    samples = _scrape(registry)
    assert ("other_requests_total", (("path", "/v3/kv/put"),)) not in samples
    assert ("other_leases_kept", ()) in samples and ("geventc_leases_kept", ()) in samples

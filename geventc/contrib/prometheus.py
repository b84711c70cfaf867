"""Prometheus metrics of a connector or client: :class:`GeventcCollector`.

Install the extra (``pip install 'geventc[prometheus]'``) and register one collector per
connector on a registry; every scrape takes one :meth:`~geventc.Connector.stats`
snapshot (no request to etcd)::

    from prometheus_client import REGISTRY, start_http_server
    from geventc.contrib.prometheus import GeventcCollector

    REGISTRY.register(GeventcCollector(conn))
    start_http_server(9100)

Metrics (``geventc_`` is the ``namespace``; counters end in ``_total``):

========================================  =========  ==================================
name                                      type       meaning (see :class:`Stats`)
========================================  =========  ==================================
``geventc_requests_total{path}``          counter    HTTP requests sent, by path
``geventc_errors_total{kind}``            counter    failed calls, by error class
``geventc_retries_total``                 counter    attempts repeated
``geventc_failovers_total``               counter    endpoints left for the next one
``geventc_liveness_probes_total``         counter    liveness probes sent
``geventc_stalls_total``                  counter    endpoints left as stalled
``geventc_watch_streams_opened_total``    counter    watches confirmed by etcd
``geventc_watch_restarts_total``          counter    watches re-established
``geventc_watch_compactions_total``       counter    watches ended by compaction
``geventc_lease_grants_total``            counter    kept leases granted
``geventc_lease_renewals_total``          counter    kept leases renewed
``geventc_lease_suspensions_total``       counter    kept leases turned SUSPENDED
``geventc_lease_losses_total``            counter    kept leases turned LOST
``geventc_coalesced_batch_size``          histogram  operations per coalesced txn
``geventc_watch_streams_open``            gauge      confirmed watch streams now
``geventc_leases_kept``                   gauge      leases renewed now
``geventc_prefix_watches``                gauge      shared prefix watches now
``geventc_stale_watches``                 gauge      prefix watches stale now
``geventc_recipes{kind}``                 gauge      live recipes, by class name
``geventc_endpoint_info{endpoint}``       gauge      1 for the endpoint in use
========================================  =========  ==================================

``labels`` adds constant labels to every sample (e.g. ``{"connector": "main"}``);
two collectors on one registry need different ``namespace``\\ s (Prometheus refuses
duplicate names), or use one registry each.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import InvalidArgument
from ..stats import Stats

try:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError(
        "geventc.contrib.prometheus needs prometheus_client: pip install 'geventc[prometheus]'"
    ) from exc

__all__ = ["GeventcCollector"]

_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_RESERVED_LABELS = frozenset({"path", "kind", "endpoint", "le"})

#: (stats field, metric name, help) of the plain counters
_COUNTERS = (
    ("retries", "retries", "Request attempts repeated on another endpoint or after a backoff."),
    ("failovers", "failovers", "Times the client left its current etcd endpoint."),
    ("probes", "liveness_probes", "Liveness probes sent to endpoints carrying watches."),
    ("stalls", "stalls", "Endpoints left because a liveness probe found them stalled."),
    ("watch_streams_opened", "watch_streams_opened", "Watch streams etcd confirmed."),
    ("watch_restarts", "watch_restarts", "Watch streams re-established after a break."),
    ("watch_compactions", "watch_compactions", "Watches ended by compaction."),
    ("lease_grants", "lease_grants", "Kept leases granted."),
    ("lease_renewals", "lease_renewals", "Kept lease renewals that succeeded."),
    ("lease_suspensions", "lease_suspensions", "Kept leases turned SUSPENDED."),
    ("lease_losses", "lease_losses", "Kept leases turned LOST."),
)
#: (stats field, metric name, help) of the plain gauges
_GAUGES = (
    ("watch_streams_open", "watch_streams_open", "Confirmed watch streams connected now."),
    ("leases_kept", "leases_kept", "Leases renewed by this client now."),
    ("prefix_watches", "prefix_watches", "Shared prefix watches open now."),
    ("stale_watches", "stale_watches", "Prefix watches not confirmed current now."),
)


class GeventcCollector(Collector):
    """A Prometheus collector of one connector's (or client's) :class:`Stats`.

    ``source`` is a :class:`~geventc.Connector` or :class:`~geventc.Client` (anything
    whose ``stats()`` returns :class:`~geventc.stats.Stats`); ``namespace`` prefixes
    every metric name; ``labels`` are constant labels added to every sample. A scrape
    sends no request to etcd and works after the connector was closed (its counters
    then stop moving)."""

    def __init__(
        self,
        source: Any,
        *,
        namespace: str = "geventc",
        labels: Mapping[str, str] | None = None,
    ) -> None:
        stats = getattr(source, "stats", None)
        if not callable(stats):
            raise InvalidArgument("GeventcCollector needs a geventc.Connector or geventc.Client")
        if not isinstance(namespace, str) or not _NAME.match(namespace):
            raise InvalidArgument(
                f"namespace must be a Prometheus name ([a-zA-Z_][a-zA-Z0-9_]*), not {namespace!r}"
            )
        if labels is not None and not isinstance(labels, Mapping):
            raise InvalidArgument("labels must be a mapping of label names to str values")
        constant = dict(labels or {})
        for name, value in constant.items():
            if not isinstance(name, str) or not _NAME.match(name) or name.startswith("__"):
                raise InvalidArgument(f"label name {name!r} is not a Prometheus label name")
            if name in _RESERVED_LABELS:
                raise InvalidArgument(f"label name {name!r} is used by geventc's metrics")
            if not isinstance(value, str):
                raise InvalidArgument(f"label {name!r} must have a str value, not {value!r}")
        self._stats = stats
        self._namespace = namespace
        self._label_names = list(constant)
        self._label_values = list(constant.values())

    def collect(self) -> Iterator[Metric]:
        """The metrics of one snapshot (see the module docstring)."""
        stats: Stats = self._stats()
        names, values = self._label_names, self._label_values
        yield self._by(
            "requests", "HTTP requests sent to etcd, by path.", "path", stats.requests_by_path
        )
        yield self._by("errors", "Failed etcd calls, by error class.", "kind", stats.errors)
        for field, name, text in _COUNTERS:
            counter = CounterMetricFamily(self._name(name), text, labels=names)
            counter.add_metric(values, getattr(stats, field))
            yield counter
        yield self._batches(stats)
        for field, name, text in _GAUGES:
            gauge = GaugeMetricFamily(self._name(name), text, labels=names)
            gauge.add_metric(values, getattr(stats, field))
            yield gauge
        recipes = GaugeMetricFamily(
            self._name("recipes"), "Started recipes, by class name.", labels=[*names, "kind"]
        )
        for kind, count in sorted(stats.recipes.items()):
            recipes.add_metric([*values, kind], count)
        yield recipes
        endpoint = GaugeMetricFamily(
            self._name("endpoint_info"),
            "The etcd endpoint in use (1).",
            labels=[*names, "endpoint"],
        )
        endpoint.add_metric([*values, stats.endpoint], 1)
        yield endpoint

    def _name(self, name: str) -> str:
        return f"{self._namespace}_{name}"

    def _by(self, name: str, text: str, label: str, counts: Mapping[str, int]) -> Metric:
        family = CounterMetricFamily(self._name(name), text, labels=[*self._label_names, label])
        for key, count in sorted(counts.items()):
            family.add_metric([*self._label_values, key], count)
        return family

    def _batches(self, stats: Stats) -> Metric:
        family = HistogramMetricFamily(
            self._name("coalesced_batch_size"),
            "Operations carried by each coalesced txn.",
            labels=self._label_names,
        )
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in stats.batch_sizes:
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
        family.add_metric(self._label_values, buckets, sum_value=stats.batched_ops)
        return family

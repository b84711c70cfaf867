"""The implementations under test behind one small interface.

* ``geventc`` / ``geventc-nc``: ``geventc.Client(endpoints)`` with request coalescing
  on (the default) or off (``coalesce=False``); the scale scenarios use the connector's
  recipes instead of this interface;
* ``raw``: a ``urllib3`` connection pool (``maxsize=64, block=False``) posting JSON to
  the gateway and decoding the answer with ``json.loads``: the least any gateway client
  must do;
* ``etcd3gw``: the requests-based gateway client, with a 64-connection session (its
  default keeps 10) so every gateway client has the same pool;
* ``etcd3``: python-etcd3 over gRPC (pure-Python protobuf, which its generated code
  needs on current protobuf); it is not gevent-friendly, so its process is not
  monkey-patched and its concurrent callers are OS threads;
* ``go`` and ``go-http`` (S1/S2 and S3 only): the anchor, a Go program
  (``benchmarks/go/kvbench``, pinned ``go.mod``) that runs ``benchmarks/kv.py``'s
  workloads with etcd's own ``client/v3`` (gRPC, one client shared by every caller) or
  with one ``net/http`` client posting the same JSON to the gateway (``POOL_SIZE`` idle
  connections kept); its callers are goroutines. The worker execs it (:data:`GO_BINARY`,
  built by ``benchmarks/run.py`` with :data:`GO_BUILD`), so nothing here wraps it.

Not run on its own: ``python benchmarks/run.py`` drives it through ``benchmarks.worker``.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from importlib import metadata
from typing import Any, Protocol
from urllib.parse import urlsplit

from benchmarks.common import JSON_HEADERS, b64, background, range_end

IMPLS = ("geventc", "geventc-nc", "raw", "etcd3gw", "etcd3", "go", "go-http")
GREEN = ("geventc", "geventc-nc", "raw", "etcd3gw")  # run in a monkey-patched process
GO_IMPLS = ("go", "go-http")  # run by the Go program, key-value scenarios only
GO_SCENARIOS = ("kv-seq", "kv-conc")
LABELS = {
    "geventc": "geventc",
    "geventc-nc": "geventc (no coalescing)",
    "raw": "raw urllib3",
    "etcd3gw": "etcd3gw",
    "etcd3": "python-etcd3",
    "go": "Go clientv3",
    "go-http": "Go net/http (gateway)",
}
#: the Go program's module, binary, and the command that builds it (run in GO_DIR)
GO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "go")
GO_BINARY = os.path.join(GO_DIR, "bin", "kvbench")
GO_BUILD = ("go", "build", "-mod=readonly", "-o", "bin/kvbench", "./kvbench")
DISTRIBUTIONS = {
    "geventc": "geventc",
    "geventc-nc": "geventc",
    "raw": "urllib3",
    "etcd3gw": "etcd3gw",
    "etcd3": "etcd3",
}
POOL_SIZE = 64  # geventc.Client's default; every gateway client gets the same

WatchEvent = tuple[bool, str, str]  # (is a put, key, value)
OnEvents = Callable[[list[WatchEvent]], None]


class KV(Protocol):
    """What the key-value scenarios need."""

    def put(self, key: str, value: str) -> None: ...

    def get(self, key: str) -> str | None: ...

    def close(self) -> None: ...


class Peer(KV, Protocol):
    """What the lease and watch scenarios need from a peer."""

    def grant(self, ttl: int) -> Any: ...

    def put_leased(self, key: str, value: str, lease: Any) -> None: ...

    def refresh(self, lease: Any) -> None: ...

    def revoke(self, lease: Any) -> None: ...

    def get_prefix(self, prefix: str) -> dict[str, str]: ...

    def watch_prefix(self, prefix: str, on_events: OnEvents) -> Callable[[], None]: ...


def version(impl: str) -> str:
    """The installed version of the implementation's distribution."""
    return metadata.version(DISTRIBUTIONS[impl])


class GeventcKV:
    """``geventc.Client`` with coalescing on or off."""

    def __init__(self, endpoint: str, coalesce: bool) -> None:
        import geventc

        self.client = geventc.Client([endpoint], coalesce=coalesce)

    def put(self, key: str, value: str) -> None:
        self.client.put(key, value)

    def get(self, key: str) -> str | None:
        kv = self.client.get(key)
        return None if kv is None else kv.value_str

    def coalesced(self) -> tuple[int, int]:
        """Txns sent by the coalescer and the operations they carried."""
        coalescer = self.client.coalescer
        return (coalescer.batches, coalescer.coalesced) if coalescer else (0, 0)

    def close(self) -> None:
        self.client.close()


class RawPeer:
    """JSON over urllib3, nothing else."""

    def __init__(self, endpoint: str) -> None:
        import urllib3

        self.pool = urllib3.connection_from_url(endpoint, maxsize=POOL_SIZE, block=False)

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        response = self.pool.urlopen(
            "POST", path, body=json.dumps(body).encode(), headers=JSON_HEADERS, retries=False
        )
        answer = json.loads(response.data)
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {answer}")
        return answer

    def put(self, key: str, value: str) -> None:
        self._post("/v3/kv/put", {"key": b64(key), "value": b64(value)})

    def get(self, key: str) -> str | None:
        kvs = self._post("/v3/kv/range", {"key": b64(key)}).get("kvs")
        return base64.b64decode(kvs[0].get("value", "")).decode() if kvs else None

    def grant(self, ttl: int) -> Any:
        return int(self._post("/v3/lease/grant", {"TTL": ttl})["ID"])

    def put_leased(self, key: str, value: str, lease: Any) -> None:
        self._post("/v3/kv/put", {"key": b64(key), "value": b64(value), "lease": str(lease)})

    def refresh(self, lease: Any) -> None:
        self._post("/v3/lease/keepalive", {"ID": str(lease)})

    def revoke(self, lease: Any) -> None:
        self._post("/v3/lease/revoke", {"ID": str(lease)})

    def get_prefix(self, prefix: str) -> dict[str, str]:
        answer = self._post("/v3/kv/range", {"key": b64(prefix), "range_end": range_end(prefix)})
        return {_text(kv["key"]): _text(kv.get("value", "")) for kv in answer.get("kvs", [])}

    def watch_prefix(self, prefix: str, on_events: OnEvents) -> Callable[[], None]:
        request = {"create_request": {"key": b64(prefix), "range_end": range_end(prefix)}}
        response = self.pool.urlopen(
            "POST",
            "/v3/watch",
            body=json.dumps(request).encode(),
            headers=JSON_HEADERS,
            retries=False,
            preload_content=False,
        )
        lines = _lines(response)
        next(lines)  # the "created" message: the watch is established

        def follow() -> None:
            try:
                for message in lines:
                    events = message.get("result", {}).get("events", [])
                    if events:
                        on_events([_raw_event(e) for e in events])
            except Exception:  # the stream was cancelled
                return

        background(follow)
        return response.shutdown

    def close(self) -> None:
        self.pool.close()


def _lines(response: Any) -> Any:
    """The JSON messages of a gateway stream, one per line."""
    buffer = b""
    while True:
        while b"\n" not in buffer:
            chunk = response.read1(65536)
            if not chunk:
                return
            buffer += chunk
        line, buffer = buffer.split(b"\n", 1)
        if line.strip():
            yield json.loads(line)


def _text(data: str) -> str:
    return base64.b64decode(data).decode()


def _raw_event(event: dict[str, Any]) -> WatchEvent:
    kv = event["kv"]
    return event.get("type") != "DELETE", _text(kv["key"]), _text(kv.get("value", ""))


class Etcd3gwPeer:
    """etcd3gw's ``Etcd3Client`` (requests)."""

    def __init__(self, endpoint: str) -> None:
        import etcd3gw
        import requests
        from requests.adapters import HTTPAdapter

        session = requests.Session()
        session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=POOL_SIZE))
        url = urlsplit(endpoint)
        self.client = etcd3gw.Etcd3Client(
            host=url.hostname or "127.0.0.1",
            port=url.port or 2379,
            api_path="/v3/",
            session=session,
        )

    def put(self, key: str, value: str) -> None:
        self.client.put(key, value)

    def get(self, key: str) -> str | None:
        values = self.client.get(key)
        return values[0].decode() if values else None

    def grant(self, ttl: int) -> Any:
        return self.client.lease(ttl)

    def put_leased(self, key: str, value: str, lease: Any) -> None:
        self.client.put(key, value, lease=lease)

    def refresh(self, lease: Any) -> None:
        lease.refresh()

    def revoke(self, lease: Any) -> None:
        lease.revoke()

    def get_prefix(self, prefix: str) -> dict[str, str]:
        return {meta["key"].decode(): v.decode() for v, meta in self.client.get_prefix(prefix)}

    def watch_prefix(self, prefix: str, on_events: OnEvents) -> Callable[[], None]:
        events, cancel = self.client.watch_prefix(prefix)

        def follow() -> None:
            for event in events:
                kv = event["kv"]
                value = kv.get("value", b"")
                on_events([(event.get("type") != "DELETE", kv["key"].decode(), value.decode())])

        background(follow)
        return cancel

    def close(self) -> None:
        self.client.session.close()


class Etcd3Peer:
    """python-etcd3's client (gRPC, every watch multiplexed on one stream)."""

    def __init__(self, endpoint: str) -> None:
        import etcd3  # type: ignore[import-untyped]

        url = urlsplit(endpoint)
        self.events = etcd3.events
        self.client = etcd3.client(host=url.hostname or "127.0.0.1", port=url.port or 2379)

    def put(self, key: str, value: str) -> None:
        self.client.put(key, value)

    def get(self, key: str) -> str | None:
        value, _ = self.client.get(key)
        return None if value is None else value.decode()

    def grant(self, ttl: int) -> Any:
        return self.client.lease(ttl)

    def put_leased(self, key: str, value: str, lease: Any) -> None:
        self.client.put(key, value, lease=lease)

    def refresh(self, lease: Any) -> None:
        lease.refresh()

    def revoke(self, lease: Any) -> None:
        lease.revoke()

    def get_prefix(self, prefix: str) -> dict[str, str]:
        return {meta.key.decode(): v.decode() for v, meta in self.client.get_prefix(prefix)}

    def watch_prefix(self, prefix: str, on_events: OnEvents) -> Callable[[], None]:
        put_event = self.events.PutEvent

        def callback(response: Any) -> None:
            if isinstance(response, Exception):
                return
            on_events(
                [
                    (isinstance(e, put_event), e.key.decode(), e.value.decode())
                    for e in response.events
                ]
            )

        watch_id = self.client.add_watch_prefix_callback(prefix, callback)
        return lambda: self.client.cancel_watch(watch_id)

    def close(self) -> None:
        self.client.close()


def make_kv(impl: str, endpoint: str) -> KV:
    """The key-value interface of ``impl``."""
    if impl in ("geventc", "geventc-nc"):
        return GeventcKV(endpoint, coalesce=impl == "geventc")
    return make_peer(impl, endpoint)


def make_peer(impl: str, endpoint: str) -> Peer:
    """A peer (not geventc) by name."""
    peers: dict[str, Callable[[str], Peer]] = {
        "raw": RawPeer,
        "etcd3gw": Etcd3gwPeer,
        "etcd3": Etcd3Peer,
    }
    return peers[impl](endpoint)

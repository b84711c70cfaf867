"""Pure unit tests of the gateway codec, the txn DSL, endpoints and error mapping."""

from __future__ import annotations

import pytest

from geventc import Compare, Op, errors, status, wire
from geventc.endpoints import parse_endpoint, parse_endpoints
from geventc.txn import txn_body


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        (b"/a/", b"/a0"),
        (b"a", b"b"),
        (b"a\xff", b"b"),
        (b"\xff\xff", b"\0"),
        (b"", b"\0"),
    ],
)
def test_prefix_range_end(prefix: bytes, end: bytes) -> None:
    assert wire.prefix_range_end(prefix) == end


def test_absent_fields_decode_as_zero() -> None:
    event = wire.event({"kv": {"key": "L2E=", "mod_revision": "7"}})
    assert event.type is wire.EventType.PUT
    assert event.kv.key == b"/a" and event.kv.value == b"" and event.revision == 7
    txn = wire.txn_result({"header": {"revision": "9"}})
    assert txn.succeeded is False and txn.header.revision == 9
    empty = wire.range_result({"header": {}})
    assert empty.kvs == () and empty.count == 0


def test_ids_beyond_float_precision_survive() -> None:
    lease = wire.lease({"ID": "7587869563428493319", "TTL": "10"})
    assert lease.id == 7587869563428493319


def test_malformed_answer_is_a_protocol_error() -> None:
    with pytest.raises(errors.ProtocolError):
        wire.decode("range", wire.range_result, {"kvs": [{"key": 5}]})
    with pytest.raises(errors.ProtocolError):
        wire.decode("range", wire.range_result, {"count": "many"})
    with pytest.raises(errors.ProtocolError):
        wire.decode("range", wire.range_result, ["not", "an", "object"])


@pytest.mark.parametrize(
    "kv",
    [
        {"key": "L2E=", "value": 5},
        {"key": "L2E", "value": ""},  # padding missing
        {"key": "L2E=L2E=", "value": ""},  # data after the padding
        {"key": "L2E*", "value": ""},  # outside the alphabet
        {"key": "L2E=", "create_revision": True},
        {"key": "L2E=", "version": 1.5},
        {"key": "L2E=", "lease": "x"},
    ],
)
def test_malformed_key_values_are_protocol_errors(kv: dict[str, object]) -> None:
    """The inlined fast path of the key decoder checks what the general one checks."""
    with pytest.raises(errors.ProtocolError):
        wire.decode("range", wire.range_result, {"kvs": [kv]})
    with pytest.raises(errors.ProtocolError):
        wire.decode("watch", wire.watch_response, {"events": [{"kv": kv}]})


def test_decoded_results_equal_their_dataclasses_built_by_keyword() -> None:
    """The decoders build results without the frozen ``__init__``: the objects must be
    the same dataclasses, equal to (and hashing as) ones built the ordinary way."""
    header = wire.Header(cluster_id=1, member_id=2, revision=9, raft_term=3)
    raw_header = {"cluster_id": "1", "member_id": "2", "revision": "9", "raft_term": "3"}
    raw_kv = {
        "key": "L2E=",
        "value": "dg==",
        "create_revision": "4",
        "mod_revision": "9",
        "version": "2",
        "lease": "77",
    }
    kv = wire.KeyValue(b"/a", b"v", create_revision=4, mod_revision=9, version=2, lease=77)
    got = wire.range_result({"header": raw_header, "kvs": [raw_kv], "count": "1"})
    assert got == wire.RangeResult(header=header, kvs=(kv,), count=1, more=False)
    assert type(got) is wire.RangeResult and type(got.kvs[0]) is wire.KeyValue
    assert hash(got.kvs[0]) == hash(kv) and got.kvs[0].value_str == "v"
    with pytest.raises(AttributeError):  # still frozen
        got.kvs[0].value = b"w"  # type: ignore[misc]
    txn = wire.txn_result(
        {
            "header": raw_header,
            "succeeded": True,
            "responses": [
                {"response_put": {"header": raw_header, "prev_kv": raw_kv}},
                {"response_delete_range": {"header": raw_header, "deleted": "1"}},
                {"response_txn": {"header": raw_header, "responses": []}},
            ],
        }
    )
    assert txn == wire.TxnResult(
        header=header,
        succeeded=True,
        responses=(
            wire.PutResult(header=header, prev_kv=kv),
            wire.DeleteResult(header=header, deleted=1),
            wire.TxnResult(header=header),
        ),
    )
    watch = wire.watch_response(
        {"header": raw_header, "events": [{"type": "DELETE", "kv": raw_kv, "prev_kv": raw_kv}]}
    )
    assert watch.events == (wire.Event(type=wire.EventType.DELETE, kv=kv, prev_kv=kv),)
    with pytest.raises(errors.ProtocolError):
        wire.decode("txn", wire.txn_result, {"responses": [{"response_other": {}}]})


def test_progress_notify_detection() -> None:
    note = wire.watch_response({"header": {"revision": "12"}})
    assert note.is_progress_notify
    created = wire.watch_response({"header": {"revision": "12"}, "created": True})
    assert not created.is_progress_notify


def test_txn_body_encodes_compares_and_ops() -> None:
    body, size = txn_body(
        [Compare.create_revision("/k") == 0, Compare.value("/k") != b"x"],
        [Op.put("/k", "v", lease=5)],
        [Op.get("/k"), Op.delete("/p/", prefix=True)],
    )
    assert body["compare"][0] == {
        "key": "L2s=",
        "target": "CREATE",
        "result": "EQUAL",
        "create_revision": "0",
    }
    assert body["compare"][1]["value"] == "eA==" and body["compare"][1]["result"] == "NOT_EQUAL"
    assert body["success"] == [{"request_put": {"key": "L2s=", "value": "dg==", "lease": "5"}}]
    assert body["failure"][1] == {"request_delete_range": {"key": "L3Av", "range_end": "L3Aw"}}
    assert size == 2 + 2 + 2 + 1 + 2 + 3


def test_compare_operators() -> None:
    assert (Compare.version("k") > 2).result == "GREATER"
    assert (Compare.mod_revision("k") < 2).body()["mod_revision"] == "2"
    assert (Compare.lease("k") == 7).body()["lease"] == "7"


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("127.0.0.1:2379", "http://127.0.0.1:2379"),
        ("http://localhost:1234/", "http://localhost:1234"),
        ("https://etcd.example", "https://etcd.example:2379"),
        ("[::1]:2380", "http://[::1]:2380"),
    ],
)
def test_endpoint_normalisation(text: str, normal: str) -> None:
    assert parse_endpoint(text) == normal


@pytest.mark.parametrize(
    "bad",
    ["ftp://h:1", "http://h:99999", "http://h:port", "http://h:1/path", "", "http://:1", 5],
)
def test_bad_endpoint(bad: object) -> None:
    with pytest.raises(errors.InvalidArgument):
        parse_endpoint(bad)


def test_endpoint_list_rules() -> None:
    assert parse_endpoints("a:1, b:2") == ["http://a:1", "http://b:2"]
    with pytest.raises(errors.InvalidArgument, match="at least one"):
        parse_endpoints([])
    with pytest.raises(errors.InvalidArgument, match="mix http and https"):
        parse_endpoints(["http://a:1", "https://b:2"])


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (  # etcd 3.4/3.5 unary shape
            {
                "error": "etcdserver: requested lease not found",
                "code": 5,
                "message": "etcdserver: requested lease not found",
            },
            errors.LeaseNotFound,
        ),
        (  # etcd 3.6 unary shape
            {"code": 11, "message": "etcdserver: mvcc: required revision has been compacted"},
            errors.Compacted,
        ),
        ({"code": 7, "message": "etcdserver: permission denied"}, errors.PermissionDenied),
        ({"code": 14, "message": "etcdserver: no leader"}, errors.NoLeader),
        ({"code": 14, "message": "etcdserver: request timed out"}, errors.Unavailable),
        ({"code": 8, "message": "etcdserver: too many requests"}, errors.TooManyRequests),
        ({"code": 3, "message": "etcdserver: request is too large"}, errors.RequestTooLarge),
        ({"code": 16, "message": "etcdserver: invalid auth token"}, status.TokenExpired),
        (  # in-stream, gateway v1
            {"error": {"grpc_code": 14, "http_code": 503, "message": "etcdserver: no leader"}},
            errors.NoLeader,
        ),
        (
            {"error": {"code": 7, "message": "etcdserver: permission denied"}},
            errors.PermissionDenied,
        ),
        ({"code": 2, "message": "something new"}, errors.ServerError),
    ],
)
def test_error_bodies_map_to_the_hierarchy(body: dict[str, object], kind: type) -> None:
    error = status.error_from_object(body, "http://h:1")
    assert type(error) is kind
    assert error is not None and error.endpoint == "http://h:1"


def test_non_json_error_bodies() -> None:
    tls = status.error_from_response(400, b"Client sent an HTTP request to an HTTPS server.\n", "e")
    assert isinstance(tls, errors.ConnectionFailed) and "https" in str(tls)
    html = status.error_from_response(502, b"<html>bad gateway</html>", "e")
    assert isinstance(html, errors.ProtocolError)

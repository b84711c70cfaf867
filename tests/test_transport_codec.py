"""The transport's JSON of requests and answers reads and writes as the stdlib's
``json`` does: the same bodies written, the same answers accepted and refused (its
fast paths skip ``json.loads``' and ``JSONEncoder.encode``'s wrappers)."""

from __future__ import annotations

import json

import pytest

from geventc import errors
from geventc.transport import _decode_answer, _encode

HEADER = '{"header":{"cluster_id":"1","member_id":"2","revision":"7","raft_term":"3"}'


@pytest.mark.parametrize(
    "body",
    [
        {"key": "L2s=", "value": "dg=="},
        {"key": 'a\u00e9\n"\\', "lease": "0", "prev_kv": True},
        {"compare": [{"target": "MOD", "key": "L2s=", "mod_revision": "3"}], "success": []},
        {"n": [1, 2.5, -0.0, None, False], "o": {}},
        {},
    ],
)
def test_request_bodies_are_written_as_compact_json(body: dict[str, object]) -> None:
    assert _encode(body) == json.dumps(body, separators=(",", ":")).encode()


def test_a_body_json_cannot_write_is_refused_as_json_refuses_it() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        _encode({"key": object()})


@pytest.mark.parametrize(
    "text",
    [
        HEADER + "}",
        HEADER + ',"kvs":[{"key":"L2s=","value":"dg=="}],"count":"1"}',
        HEADER + "}\r\n \t",
        "  " + HEADER + "}\n",
        '{"result":' + HEADER + "}}\n" + '{"result":' + HEADER + "}}\n",
        '{"header":{}, "error":"x", "code":2}',
    ],
)
def test_answers_json_accepts_are_read_alike(text: str) -> None:
    try:
        decoded = _decode_answer(text.encode(), "http://e")
    except errors.EtcdError as exc:
        assert not isinstance(exc, errors.ProtocolError)  # etcd's error, read as such
        return
    expected = json.loads(text.split("\n")[0] if '"result"' in text else text)
    assert decoded == expected.get("result", expected)


@pytest.mark.parametrize(
    "text",
    [
        HEADER + "}}",
        HEADER + "} x",
        HEADER + "}\u00a0",  # json.loads allows no whitespace beyond its own four
        HEADER,
        HEADER + "}" + HEADER + "}",
        "[1]",
        "\ufeff" + HEADER + "}",
    ],
)
def test_answers_json_refuses_are_refused(text: str) -> None:
    with pytest.raises(errors.ProtocolError):
        _decode_answer(text.encode(), "http://e")


def test_an_empty_answer_is_an_empty_object() -> None:
    assert _decode_answer(b"", "http://e") == {}

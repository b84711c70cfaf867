"""ConfigWatcher against a real etcd: the live mapping, changes, callbacks, wait_for,
decoding, rapid concurrent updates, restarts, compaction and the life cycle."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

import gevent
import pytest
from gevent.event import Event
from helpers.channels import next_of
from helpers.gate import Gate
from helpers.waiting import wait_until

import geventc
from geventc import Channel, Client, Connector, RecipeError
from geventc.errors import EtcdError, InvalidArgument, RecipeStateError, Timeout
from geventc.recipes.config import ConfigChange, ConfigDecodeError, ConfigWatcher
from geventc.testing import EtcdServer, free_port
from geventc.testing.plugin import EtcdTestContext

Changes = Channel[ConfigChange | RecipeError]


def caught_up(cfg: ConfigWatcher, revision: int, timeout: float = 10.0) -> None:
    """Wait until the watcher has handled every change up to ``revision``."""
    wait_until(
        lambda: cfg.revision >= revision, timeout, f"the watcher to reach revision {revision}"
    )


def drain(channel: Changes) -> tuple[list[ConfigChange], list[RecipeError]]:
    """Every event pending on ``channel`` now, changes and reports apart."""
    changes: list[ConfigChange] = []
    reports: list[RecipeError] = []
    while (item := channel.get_nowait()) is not None:
        if isinstance(item, ConfigChange):
            changes.append(item)
        else:
            reports.append(item)
    return changes, reports


def read_changes(channel: Changes, count: int, timeout: float = 10.0) -> list[ConfigChange]:
    """The next ``count`` changes (reports in between are skipped)."""
    deadline = time.monotonic() + timeout
    return [
        next_of(channel, ConfigChange, max(0.01, deadline - time.monotonic())) for _ in range(count)
    ]


def server_state(conn: Connector, path: str) -> dict[str, str]:
    """What etcd holds under ``path``, by name relative to it."""
    cut = len(path) + 1
    return {kv.key_str[cut:]: kv.value_str for kv in conn.get_prefix(path + "/").kvs}


# --- loading and following ---------------------------------------------------------------


def test_start_loads_the_current_state_as_a_mapping(conn: Connector) -> None:
    conn.put("/app/config/color", "blue")
    conn.put("/app/config/db/password", "ilovemrsclaus")
    written = conn.put("/app/config/size", "L").header.revision
    conn.put("/app/config", "the path itself: not under it")
    conn.put("/app/configx/y", "a sibling with a longer name")
    conn.put("/app/other", "outside")
    cfg = conn.config("/app/config/")  # a trailing slash names the same path
    assert conn.hub.streams == 0  # no I/O before start
    with pytest.raises(RecipeStateError, match="not started"):  # not an empty mapping
        len(cfg)
    for read in (lambda: cfg["color"], lambda: cfg.get("color"), lambda: dict(cfg)):
        with pytest.raises(RecipeStateError):
            read()
    channel = cfg.start()
    expected = {"color": "blue", "db/password": "ilovemrsclaus", "size": "L"}
    assert dict(cfg) == expected  # usable as soon as start() returns
    assert cfg.prefix == "/app/config" and cfg.revision >= written
    assert cfg["color"] == "blue" and cfg.get("absent") is None and cfg.get("x", 1) == 1
    assert "size" in cfg and "absent" not in cfg and len(cfg) == 3
    assert sorted(cfg) == sorted(expected) and dict(cfg.items()) == expected
    assert sorted(cfg.keys()) == sorted(expected) and sorted(cfg.values()) == sorted(
        expected.values()
    )
    with pytest.raises(KeyError):
        cfg["absent"]
    with pytest.raises(TypeError):
        cfg["color"] = "red"  # type: ignore[index]
    assert channel.get_nowait() is None  # the first state is the mapping, not changes
    assert cfg.changes() is channel
    assert "ilovemrsclaus" not in repr(cfg)  # values can be secrets
    snapshot = cfg.snapshot()
    conn.put("/app/config/color", "red")
    assert next_of(channel, ConfigChange).new == "red"
    assert cfg["color"] == "red" and snapshot["color"] == "blue"  # a snapshot stays put
    cfg.stop()


def test_an_empty_path_loads_an_empty_mapping(conn: Connector) -> None:
    with conn.config("/nothing/here") as cfg:
        assert dict(cfg) == {} and cfg.revision > 0


def test_changes_update_the_mapping_and_the_channel(conn: Connector) -> None:
    conn.put("/cfg/a", "1")
    cfg = conn.config("/cfg")
    channel = cfg.start()
    added = conn.put("/cfg/b", "2").header.revision
    assert next_of(channel, ConfigChange) == ConfigChange("b", None, "2", added)
    assert dict(cfg) == {"a": "1", "b": "2"}
    changed = conn.put("/cfg/a", "one").header.revision
    assert next_of(channel, ConfigChange) == ConfigChange("a", "1", "one", changed)
    assert cfg["a"] == "one"
    removed = conn.delete("/cfg/b").header.revision
    assert next_of(channel, ConfigChange) == ConfigChange("b", "2", None, removed)
    assert dict(cfg) == {"a": "one"}
    nested = conn.put("/cfg/deep/er/key", "x").header.revision
    assert next_of(channel, ConfigChange) == ConfigChange("deep/er/key", None, "x", nested)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ConfigChange("k", None, "v", 1).key = "other"  # type: ignore[misc]

    # a re-put of the same value, deleting an absent key and writing outside the path
    # change nothing: no event
    conn.put("/cfg/a", "one")
    conn.delete("/cfg/absent")
    conn.put("/cfgx", "outside")
    conn.put("/cfg", "the path itself")
    marker = conn.put("/cfg/marker", "m").header.revision
    assert next_of(channel, ConfigChange) == ConfigChange("marker", None, "m", marker)
    assert channel.get_nowait() is None
    expected = {"a": "one", "deep/er/key": "x", "marker": "m"}
    assert dict(cfg) == server_state(conn, "/cfg") == expected
    cfg.stop()


def test_credentials_rotated_while_a_watcher_follows(conn: Connector) -> None:
    conn.put("/config/db/user", "saintnick")
    conn.put("/config/db/password", "ilovemrsclaus")
    creds = conn.config("/config/db")
    channel = creds.start()
    assert dict(creds) == {"user": "saintnick", "password": "ilovemrsclaus"}
    passwords = [f"rotation-{i}" for i in range(50)]
    revisions = [conn.put("/config/db/password", pw).header.revision for pw in passwords]
    seen = read_changes(channel, 50)
    assert [c.key for c in seen] == ["password"] * 50
    assert [c.new for c in seen] == passwords  # every rotation, in order
    assert [c.old for c in seen] == ["ilovemrsclaus", *passwords[:-1]]
    assert [c.revision for c in seen] == revisions
    assert creds["password"] == passwords[-1] and creds["user"] == "saintnick"
    assert channel.get_nowait() is None
    creds.stop()


def test_follows_1000_rapid_concurrent_updates_and_ends_equal_to_the_server(
    conn: Connector,
) -> None:
    keys, per_key = 20, 50

    def writer(k: int) -> list[int]:
        """Puts (and a delete every 10th write) of one key, in order."""
        revisions = []
        for i in range(per_key):
            if i % 10 == 4:
                revisions.append(conn.delete(f"/rapid/k{k}").header.revision)
            else:
                revisions.append(conn.put(f"/rapid/k{k}", f"{k}-{i}").header.revision)
        return revisions

    conn.put("/rapid/seed", "present before the start")
    cfg = conn.config("/rapid")
    called: list[ConfigChange] = []
    cfg.on_change(called.append)
    channel = cfg.start()
    writers = [gevent.spawn(writer, k) for k in range(keys)]
    gevent.joinall(writers, timeout=30, raise_error=True)
    written = sorted(r for w in writers for r in w.get())
    assert len(written) == keys * per_key == 1000
    caught_up(cfg, written[-1], timeout=20)
    assert dict(cfg) == server_state(conn, "/rapid")
    assert dict(cfg) == {"seed": "present before the start"} | {
        f"k{k}": f"{k}-{per_key - 1}" for k in range(keys)
    }
    changes, reports = drain(channel)
    assert reports == []
    assert [c.revision for c in changes] == written  # each write once, in revision order
    for k in range(keys):
        mine = [c for c in changes if c.key == f"k{k}"]
        expected = [None if i % 10 == 4 else f"{k}-{i}" for i in range(per_key)]
        assert [c.new for c in mine] == expected
        assert [c.old for c in mine] == [None, *expected[:-1]]
    wait_until(lambda: len(called) == 1000, 10, "every callback")
    assert sorted(c.revision for c in called) == written
    cfg.stop()


# --- decoding ----------------------------------------------------------------------------


def test_json_values_and_a_malformed_value_keeps_the_previous_one(
    conn: Connector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="geventc")
    conn.put("/svc/limits", json.dumps({"rps": 100, "burst": 10}))
    conn.put("/svc/broken", '{"password": "s3cret"')  # malformed from the start
    cfg = conn.config("/svc", decode=json.loads)
    channel = cfg.start()
    assert dict(cfg) == {"limits": {"rps": 100, "burst": 10}}
    report = next_of(channel, RecipeError)  # the bad value is reported, not held
    assert isinstance(report.error, ConfigDecodeError) and not report.fatal
    assert report.error.key == "broken"
    assert isinstance(report.error.__cause__, json.JSONDecodeError)

    bad = conn.put("/svc/limits", '{"rps": ').header.revision
    report = next_of(channel, RecipeError)
    assert isinstance(report.error, ConfigDecodeError)
    assert (report.error.key, report.error.revision) == ("limits", bad)
    assert cfg["limits"] == {"rps": 100, "burst": 10}  # the previous good value is kept
    assert any("limits" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert "s3cret" not in caplog.text and "s3cret" not in str(report.error)

    good = conn.put("/svc/limits", '{"rps": 200}').header.revision
    change = next_of(channel, ConfigChange)
    assert change == ConfigChange("limits", {"rps": 100, "burst": 10}, {"rps": 200}, good)
    fixed = conn.put("/svc/broken", '{"password": "s3cret"}').header.revision
    assert next_of(channel, ConfigChange) == ConfigChange(
        "broken", None, {"password": "s3cret"}, fixed
    )
    conn.put("/svc/limits", "not json either")
    conn.put("/svc/limits", '{"rps": 200}')  # back to the bytes held: nothing changed
    marker = conn.put("/svc/marker", "[1, 2]").header.revision
    caught_up(cfg, marker)
    changes, reports = drain(channel)
    assert [r.error.key for r in reports] == ["limits"]  # type: ignore[attr-defined]
    assert changes == [ConfigChange("marker", None, [1, 2], marker)]
    assert dict(cfg) == {"limits": {"rps": 200}, "broken": {"password": "s3cret"}, "marker": [1, 2]}
    cfg.stop()


def test_default_values_are_utf8_text_and_other_bytes_are_reported(conn: Connector) -> None:
    cfg = conn.config("/text")
    channel = cfg.start()
    conn.put("/text/greeting", "grüß dich".encode())
    assert next_of(channel, ConfigChange).new == "grüß dich"
    conn.put("/text/binary", b"\xff\xfe\x00")
    report = next_of(channel, RecipeError)
    assert isinstance(report.error, ConfigDecodeError) and report.error.key == "binary"
    assert isinstance(report.error.__cause__, UnicodeDecodeError)
    assert dict(cfg) == {"greeting": "grüß dich"}
    cfg.stop()


def test_a_decoder_raising_anything_is_reported_and_the_watch_goes_on(conn: Connector) -> None:
    def decode(value: bytes) -> int:
        if value == b"boom":
            raise RuntimeError("decoder bug")
        return int(value)

    cfg = conn.config("/num", decode=decode)
    channel = cfg.start()
    conn.put("/num/a", "1")
    conn.put("/num/a", "boom")
    conn.put("/num/a", "x")  # int() refuses it: a ValueError
    last = conn.put("/num/a", "3").header.revision
    caught_up(cfg, last)
    changes, reports = drain(channel)
    assert [(c.old, c.new) for c in changes] == [(None, 1), (1, 3)]
    assert [type(r.error.__cause__) for r in reports] == [RuntimeError, ValueError]
    assert cfg["a"] == 3
    cfg.stop()


# --- callbacks and wait_for --------------------------------------------------------------


def test_callbacks_run_in_their_own_greenlets_and_a_slow_one_delays_nobody(
    conn: Connector, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = conn.config("/cb")
    release = Event()
    slow_calls: list[ConfigChange] = []
    fast_calls: list[tuple[ConfigChange, object]] = []

    def slow(change: ConfigChange) -> None:
        slow_calls.append(change)
        release.wait()  # blocks until the end of the test

    @cfg.on_change
    def fast(change: ConfigChange) -> None:
        fast_calls.append((change, gevent.getcurrent()))

    def broken(change: ConfigChange) -> None:
        raise RuntimeError("a callback bug")

    cfg.on_change(slow)
    cfg.on_change(broken)
    channel = cfg.start()
    revisions = [conn.put(f"/cb/k{i}", str(i)).header.revision for i in range(5)]
    assert [c.revision for c in read_changes(channel, 5)] == revisions  # not held up
    wait_until(lambda: len(fast_calls) == 5, 10, "the fast callback")
    assert [c.revision for c, _ in fast_calls] == revisions  # started in revision order
    greenlets = {g for _, g in fast_calls}
    assert len(greenlets) == 5 and gevent.getcurrent() not in greenlets
    # each slow call in its own greenlet
    wait_until(lambda: len(slow_calls) == 5, 10, "every slow call to start")
    assert not release.is_set()

    def logged_bugs() -> int:
        return sum(
            r.levelno == logging.ERROR and r.exc_info is not None and "bug" in str(r.exc_info[1])
            for r in caplog.records
        )

    wait_until(lambda: logged_bugs() == 5, 10, "the callback errors to be logged")
    assert cfg.running and dict(cfg) == {f"k{i}": str(i) for i in range(5)}
    started = time.monotonic()
    cfg.stop()  # the blocked callbacks do not hold the stop up
    assert time.monotonic() - started < 3.0
    release.set()


def test_a_callback_may_stop_its_own_watcher(conn: Connector) -> None:
    cfg = conn.config("/selfstop")
    finished: list[bool] = []

    @cfg.on_change
    def stop_on_first(change: ConfigChange) -> None:
        cfg.stop()
        finished.append(cfg.running)  # the call runs on after the stop

    channel = cfg.start()
    written = conn.put("/selfstop/a", "1").header.revision
    reader = gevent.spawn(list, channel)
    assert reader.get(timeout=5) == [ConfigChange("a", None, "1", written)]
    wait_until(lambda: finished == [False], 10, "the callback to finish")
    assert conn.hub.streams == 0


def test_wait_for(conn: Connector) -> None:
    conn.put("/wf/mode", "starting")
    cfg = conn.config("/wf")
    cfg.start()
    started = time.monotonic()
    assert cfg.wait_for("mode", lambda v: v == "starting", timeout=5) == "starting"  # already
    assert cfg.wait_for("absent", lambda v: v is None, timeout=5) is None
    assert time.monotonic() - started < 1.0

    def flip() -> None:
        conn.put("/wf/other", "unrelated")
        conn.put("/wf/mode", "warming")
        conn.put("/wf/mode", "ready")

    gevent.spawn_later(0.1, flip)
    assert cfg.wait_for("mode", lambda v: v == "ready", timeout=10) == "ready"
    gevent.spawn_later(0.1, conn.put, "/wf/late", "here")
    assert cfg.wait_for("late", lambda v: v is not None, timeout=10) == "here"

    started = time.monotonic()
    with pytest.raises(Timeout):
        cfg.wait_for("mode", lambda v: v == "never", timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 2.0
    with pytest.raises(ZeroDivisionError):  # the predicate's own error reaches the caller
        cfg.wait_for("mode", lambda v: 1 / 0 > 0, timeout=1)

    waiter = gevent.spawn(cfg.wait_for, "mode", lambda v: False, 30)
    gevent.idle()  # the waiter is waiting
    cfg.stop()
    with pytest.raises(RecipeStateError):
        waiter.get(timeout=5)
    with pytest.raises(RecipeStateError):
        cfg.wait_for("mode", lambda v: True, timeout=1)


# --- faults ------------------------------------------------------------------------------


def test_rides_out_a_server_restart(private_server: EtcdServer) -> None:
    with geventc.connect(private_server.endpoints, namespace="app", timeout=2.0) as conn:
        conn.put("/cfg/a", "1")
        conn.put("/cfg/b", "2")
        cfg = conn.config("/cfg")
        channel = cfg.start()
        live = conn.put("/cfg/a", "live").header.revision  # seen only once the watch is up
        assert next_of(channel, ConfigChange) == ConfigChange("a", "1", "live", live)
        private_server.kill(0)
        outage = next_of(channel, RecipeError, timeout=15)
        assert isinstance(outage.error, EtcdError) and not outage.fatal
        assert dict(cfg) == {"a": "live", "b": "2"}  # the last state is kept meanwhile
        private_server.restart(0)
        conn.put("/cfg/c", "3")
        conn.delete("/cfg/b")
        last = conn.put("/cfg/a", "after").header.revision
        caught_up(cfg, last, timeout=20)
        assert dict(cfg) == server_state(conn, "/cfg") == {"a": "after", "c": "3"}
        changes, _ = drain(channel)
        assert [(c.key, c.old, c.new) for c in changes] == [
            ("c", None, "3"),
            ("b", "2", None),
            ("a", "live", "after"),
        ]
        assert changes[-1].revision == last
        cfg.stop()


def test_compaction_while_disconnected_reports_the_difference(
    private_server: EtcdServer,
) -> None:
    gate = Gate(private_server.endpoint)
    admin = Client(private_server.endpoints, timeout=10)
    try:
        with geventc.connect([gate.endpoint], namespace="app", timeout=2.0) as conn:
            for name, value in [("keep", "k"), ("gone", "g"), ("changed", "old")]:
                admin.put(f"/app/cfg/{name}", value)
            cfg = conn.config("/cfg")
            channel = cfg.start()
            before = cfg.revision
            assert dict(cfg) == {"keep": "k", "gone": "g", "changed": "old"}
            gate.close()  # the watcher is cut off from here on
            assert next_of(channel, RecipeError, timeout=15).error is not None
            admin.delete("/app/cfg/gone")
            admin.put("/app/cfg/new", "n")
            admin.put("/app/cfg/changed", "new")
            admin.put("/app/cfg/flapped", "briefly")
            admin.delete("/app/cfg/flapped")
            newest = admin.put("/app/other/x", "outside").header.revision
            admin.compact(newest)  # the watcher's next revision is history now
            assert before + 1 < newest
            gate.open()
            caught_up(cfg, newest, timeout=20)
            expected = {"keep": "k", "changed": "new", "new": "n"}
            assert dict(cfg) == server_state(conn, "/cfg") == expected
            changes, _ = drain(channel)  # exactly the difference, in revision order
            assert sorted((c.key, c.old, c.new) for c in changes) == [
                ("changed", "old", "new"),
                ("gone", "g", None),
                ("new", None, "n"),
            ]
            assert [c.revision for c in changes] == sorted(c.revision for c in changes)
            assert all(before < c.revision <= newest for c in changes)
            again = admin.put("/app/cfg/later", "l").header.revision  # live again
            assert next_of(channel, ConfigChange) == ConfigChange("later", None, "l", again)
            cfg.stop()
    finally:
        admin.close()
        gate.close()


def test_start_raises_when_the_state_cannot_be_loaded() -> None:
    with geventc.connect([f"http://127.0.0.1:{free_port()}"], timeout=0.5) as conn:
        cfg = conn.config("/cfg")
        started = time.monotonic()
        with pytest.raises(EtcdError):
            cfg.start()
        assert time.monotonic() - started < 3.0
        assert not cfg.running and cfg.channel.closed and conn.hub.streams == 0
        with pytest.raises(RecipeStateError):
            cfg.start()


# --- life cycle and bad input ------------------------------------------------------------


def test_stop_unsubscribes_ends_the_channel_and_keeps_the_last_state(conn: Connector) -> None:
    conn.put("/life/a", "1")
    cfg = conn.config("/life")
    channel = cfg.start()
    tracker = conn.service_tracker("/life")
    tracker.start()
    assert conn.hub.streams == 1  # one watch stream shared with other recipes
    tracker.stop()
    assert conn.hub.streams == 1 and cfg.running
    consumer = gevent.spawn(list, channel)
    changed = conn.put("/life/a", "2").header.revision
    caught_up(cfg, changed)
    started = time.monotonic()
    cfg.stop()
    assert time.monotonic() - started < 3.0
    assert consumer.get(timeout=5) == [ConfigChange("a", "1", "2", changed)]
    assert channel.closed and not cfg.running and conn.hub.streams == 0
    cfg.stop()  # idempotent
    conn.put("/life/a", "3")
    assert dict(cfg) == {"a": "2"}  # the last state stays readable
    with pytest.raises(RecipeStateError, match="already started"):
        cfg.start()


def test_second_start_raises_and_context_manager(conn: Connector) -> None:
    conn.put("/ctx/a", "1")
    cfg = conn.config("/ctx")
    channel = cfg.start()
    with pytest.raises(RecipeStateError):
        cfg.start()
    assert cfg.running and cfg.channel is channel
    cfg.stop()
    with conn.config("/ctx") as inside:
        assert isinstance(inside, ConfigWatcher) and inside.running
        assert inside["a"] == "1"
    assert not inside.running and inside.channel.closed and list(inside.channel) == []


def test_watchers_with_equal_contents_are_distinct_recipes(etcd: EtcdTestContext) -> None:
    conn = geventc.connect(etcd.endpoints, namespace=etcd.prefix.strip("/"))
    conn.put("/same/a", "1")
    first, second = conn.config("/same"), conn.config("/same")
    first.start()
    second.start()
    assert dict(first) == dict(second) and first != second and first == first
    assert len({first, second}) == 2
    second.stop()  # must not make the connector forget the first
    conn.close()
    assert not first.running and first.channel.closed


def test_bad_arguments_are_refused(conn: Connector) -> None:
    for prefix in ["", "/", "//", 123, None]:
        with pytest.raises(InvalidArgument):
            conn.config(prefix)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="decode"):
        conn.config("/cfg", decode="json")  # type: ignore[arg-type]
    cfg = conn.config("/cfg")
    with pytest.raises(InvalidArgument):
        cfg.on_change(42)  # type: ignore[type-var]
    with pytest.raises(RecipeStateError):
        cfg.changes()  # not started
    with pytest.raises(RecipeStateError):
        cfg.wait_for("a", lambda v: True, timeout=1)  # not started
    cfg.start()
    bad_calls: list[tuple[Any, Any, Any]] = [
        ("", lambda v: True, 1),
        (b"a", lambda v: True, 1),
        (None, lambda v: True, 1),
        ("a", "not callable", 1),
        ("a", lambda v: True, 0),
        ("a", lambda v: True, -1),
        ("a", lambda v: True, "1"),
        ("a", lambda v: True, True),
        ("a", lambda v: True, float("nan")),
        ("a", lambda v: True, None),
    ]
    for key, predicate, timeout in bad_calls:
        with pytest.raises(InvalidArgument):
            cfg.wait_for(key, predicate, timeout)
    cfg.stop()

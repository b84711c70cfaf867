"""A client made before fork() refuses to be used in the child."""

from __future__ import annotations

import os
import pathlib

from geventc.testing.plugin import EtcdTestContext


def test_client_refuses_use_after_fork(etcd: EtcdTestContext, tmp_path: pathlib.Path) -> None:
    client = etcd.client()
    client.put(etcd.key("k"), "v")
    report = tmp_path / "child.txt"
    pid = os.fork()
    if pid == 0:  # the child: write down what happened, then leave at once
        try:
            client.get(etcd.key("k"))
            outcome = "used"
        except Exception as exc:  # the parent checks the exact type
            outcome = f"{type(exc).__name__}: {exc}"
        report.write_text(outcome)
        os._exit(0)
    os.waitpid(pid, 0)
    outcome = report.read_text()
    assert outcome.startswith("ForkedProcess:"), outcome
    assert "post_fork" in outcome
    assert client.get(etcd.key("k")) is not None  # the parent's client still works

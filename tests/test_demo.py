"""The demo runs end to end with a small fleet and prints its measured summary."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

from geventc.demo import run_demo
from geventc.testing.plugin import EtcdTestContext


def test_demo_against_a_given_cluster(etcd: EtcdTestContext) -> None:
    out = io.StringIO()
    namespace = etcd.prefix.strip("/") + "/demo"
    code = run_demo(
        etcd.endpoints, instances=50, trackers=20, namespace=namespace, json_output=True, out=out
    )
    assert code == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    summary = lines[-1]["summary"]
    assert summary["instances"] == 50 and summary["trackers"] == 20
    assert summary["shared_leases"] == 1 and summary["watch_streams"] >= 1
    assert summary["handover_ms"] > 0 and summary["requests_per_second_at_rest"] < 5
    client = etcd.client()
    assert client.get_prefix(etcd.prefix + "demo/").count == 0  # it cleaned up


def test_geventc_demo_command_with_its_own_etcd_prints_a_table() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "geventc", "demo", "--instances", "20", "--trackers", "10"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "GEVENTC_ENDPOINTS"},
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "started a throw-away etcd" in text and "summary" in text and "handover_ms" in text

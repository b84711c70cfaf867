"""Choosing the etcd release the fixtures run (``geventc.testing.releases``).

Version discovery is tested with small stand-in executables that print what
``etcd --version`` prints (no etcd behaviour is involved); the last test checks, on the
real session server, that the release the fixtures report is the one etcd serves.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from geventc.testing.plugin import EtcdTestContext
from geventc.testing.releases import (
    EtcdNotFound,
    binary_release,
    find_etcd_binary,
    find_release,
    parse_release_name,
)


def fake_etcd(directory: Path, name: str, version: str) -> Path:
    path = directory / name
    path.write_text(f"#!/bin/sh\necho 'etcd Version: {version}'\necho 'Go Version: go1.26'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A build directory with 3.4.23, 3.6.1 and 3.6.16 (named so that the file name
    would mislead), offered through ``GEVENTC_ETCD_PATH`` alone."""
    fake_etcd(tmp_path, "etcd-3.4.23", "3.4.23")
    fake_etcd(tmp_path, "etcd-new", "3.6.16")
    (tmp_path / "old").mkdir()
    fake_etcd(tmp_path / "old", "etcd", "3.6.1")
    monkeypatch.setenv("GEVENTC_ETCD_PATH", str(tmp_path))
    monkeypatch.delenv("ETCD_BIN", raising=False)
    monkeypatch.delenv("ETCD_VERSION", raising=False)
    return tmp_path


def test_a_release_name_picks_the_newest_binary_that_reports_it(builds: Path) -> None:
    assert find_release("3.6").binary == str(builds / "etcd-new")
    assert find_release("3.6.1").binary == str(builds / "old" / "etcd")
    assert find_release("3.4").name == "3.4.23"
    assert find_release("v3").version == (3, 6, 16)


def test_etcd_version_selects_the_binary_the_fixtures_run(
    builds: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ETCD_VERSION", "3.4")
    assert find_etcd_binary() == str(builds / "etcd-3.4.23")


def test_without_etcd_version_the_build_directory_does_not_change_the_default(
    builds: Path,
) -> None:
    default = find_etcd_binary()
    assert Path(default).parent != builds
    assert binary_release(default) is not None


def test_a_release_that_is_not_there_says_which_ones_are(builds: Path) -> None:
    with pytest.raises(EtcdNotFound, match=r"no etcd 3\.7 binary: found .*3\.4\.23.*3\.6\.16"):
        find_release("3.7")


@pytest.mark.parametrize("name", ["", "latest", "3.x", "3.6.16.1", "3..6"])
def test_a_malformed_release_name_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not a release name"):
        parse_release_name(name)


def test_etcd_bin_of_another_release_than_etcd_version_is_refused(
    builds: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ETCD_BIN", str(builds / "etcd-3.4.23"))
    monkeypatch.setenv("ETCD_VERSION", "3.6")
    with pytest.raises(EtcdNotFound, match=r"is 3\.4\.23, not ETCD_VERSION=3\.6"):
        find_etcd_binary()
    monkeypatch.setenv("ETCD_VERSION", "3.4.23")
    assert find_etcd_binary() == str(builds / "etcd-3.4.23")


def test_a_file_that_is_not_etcd_has_no_release(tmp_path: Path) -> None:
    script = tmp_path / "etcd"
    script.write_text("#!/bin/sh\necho hello\n")
    script.chmod(0o755)
    assert binary_release(str(script)) is None
    assert binary_release(str(tmp_path / "missing")) is None


def test_the_session_server_serves_the_release_its_binary_reports(etcd: EtcdTestContext) -> None:
    release = etcd.cluster.release
    assert release is not None
    wanted = os.environ.get("ETCD_VERSION")
    if wanted:
        assert release.version[: len(parse_release_name(wanted))] == parse_release_name(wanted)
    assert etcd.client().version().server == release.name

"""Every Python example on the documentation site (docs/**/*.md) runs and prints what its
``print(...)  # output`` comments promise.

A block fenced ```` ```python ```` runs, in this process (already gevent-patched by
pytest-gevent), with ``$GEVENTC_ENDPOINTS`` pointing at the session's real etcd (the
``etcd`` fixture); a fragment that is not a program (a gunicorn config, a pytest test
body, a migration table's other client) is fenced ```` ```python no-run ```` and is only
compiled. Each runnable block uses a namespace of its own (``namespace="docs-..."``),
deleted after it ran.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import re

import pytest

from geventc.testing.plugin import EtcdTestContext

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.S | re.M)


def _blocks() -> list[tuple[str, int, str, bool]]:
    """(page, line, code, runnable) for every Python block of the docs."""
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        if "_build" in page.parts:
            continue
        text = page.read_text()
        for match in FENCE.finditer(text):
            info = match.group(1).split()
            assert info in ([], ["no-run"]), f"{page}: unknown fence info {info}"
            line = text.count("\n", 0, match.start()) + 1
            name = str(page.relative_to(DOCS))
            found.append((name, line, match.group(2), not info))
    return found


BLOCKS = _blocks()
RUNNABLE = [b for b in BLOCKS if b[3]]


def _expected(code: str) -> list[str]:
    """The outputs promised by ``print(...)  # output`` comments, in order."""
    return [
        line.split("  # ", 1)[1]
        for line in code.splitlines()
        if "print(" in line and "  # " in line
    ]


def _namespace(code: str) -> str | None:
    found = set(re.findall(r'namespace="([^"]+)"', code))
    assert len(found) <= 1, found
    return next(iter(found), None)


def test_the_docs_have_runnable_examples_and_few_fragments() -> None:
    assert len(RUNNABLE) >= 20
    assert len(BLOCKS) - len(RUNNABLE) <= 12, "keep the no-run fragments few"
    spaces = [_namespace(code) for _, _, code, _ in RUNNABLE]
    named = [s for s in spaces if s]
    assert len(named) == len(set(named)), "each example has a namespace of its own"


@pytest.mark.parametrize(
    ("page", "line", "code"), [(p, n, c) for p, n, c, r in BLOCKS if not r], ids=str
)
def test_fragments_compile(page: str, line: int, code: str) -> None:
    compile(code, f"{page}:{line}", "exec")


@pytest.mark.parametrize(
    ("page", "line", "code"),
    [(p, n, c) for p, n, c, _ in RUNNABLE],
    ids=[f"{p}:{n}" for p, n, _, _ in RUNNABLE],
)
def test_examples_run_and_print_what_they_promise(
    page: str, line: int, code: str, etcd: EtcdTestContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _expected(code)
    assert expected, f"{page}:{line}: each example promises its output in comments"
    monkeypatch.setenv("GEVENTC_ENDPOINTS", ",".join(etcd.endpoints))
    assert os.environ["GEVENTC_ENDPOINTS"]
    namespace = _namespace(code)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"{page}:{line}", "exec"), {"__name__": "__main__"})
    finally:
        if namespace:
            with etcd.client() as client:
                client.delete_prefix(f"/{namespace}/")
    assert out.getvalue().splitlines()[: len(expected)] == expected

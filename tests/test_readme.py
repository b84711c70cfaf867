"""The README's examples run as pasted and print what their comments promise."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _blocks(section: str) -> list[str]:
    text = README.read_text().split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", text, re.S)


def _expected(code: str) -> list[str]:
    """The outputs promised by ``print(...)  # output`` comments, in order."""
    return [
        line.split("  # ", 1)[1]
        for line in code.splitlines()
        if "print(" in line and "  # " in line
    ]


def _run(code: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_quickstart_runs_as_pasted() -> None:
    (code,) = _blocks("Quickstart")
    assert len(code.strip().splitlines()) <= 22
    assert _run(code) == ["blue", "leader: True", "PUT /config/color green"]


EXAMPLES = [
    (section, index)
    for section in ("Recipes", "Coordination toolkit")
    for index in range(len(_blocks(section)))
]


@pytest.mark.parametrize(("section", "index"), EXAMPLES)
def test_recipe_examples_run_as_pasted(section: str, index: int) -> None:
    code = _blocks(section)[index]
    expected = _expected(code)
    assert expected, "each example promises its output in comments"
    assert _run(code)[: len(expected)] == expected

"""The README's quickstart runs as pasted and prints what its comments promise."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _quickstart() -> str:
    text = README.read_text()
    section = text.split("## Quickstart", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README has no quickstart code block"
    return match.group(1)


def test_quickstart_runs_as_pasted() -> None:
    code = _quickstart()
    assert len(code.strip().splitlines()) <= 22
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["blue", "leader: True", "PUT /config/color green"]

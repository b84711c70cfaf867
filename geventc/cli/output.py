"""How the commands print: one line (or one block) per result, text for people or one
JSON object per line (``--json``), and the renderers more than one command shares."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..staleness import Staleness


@dataclass(frozen=True, slots=True)
class Line:
    """One result: ``text`` for people, ``data`` for ``--json``."""

    text: str
    data: dict[str, Any]


class Output:
    """Prints one line per result: text for people, or one JSON object (``--json``)."""

    def __init__(self, json_output: bool) -> None:
        self.json_output = json_output

    def line(self, text: str, data: dict[str, Any]) -> None:
        """Print ``text``, or ``data`` as JSON, and flush."""
        print(json.dumps(data) if self.json_output else text, flush=True)

    def show(self, line: Line) -> None:
        """Print a :class:`Line`."""
        self.line(line.text, line.data)


def print_staleness(out: Output, event: Staleness) -> None:
    """A line saying the data went stale, or is current again."""
    if event.stale:
        text = f"STALE: not confirmed current for {event.age:.1f}s (revision {event.revision})"
    else:
        text = f"CURRENT again (revision {event.revision})"
    state = "STALE" if event.stale else "CURRENT"
    out.line(text, {"event": state, "age": round(event.age, 3), "revision": event.revision})


def text_field(data: bytes, name: str) -> dict[str, str]:
    """``{name: text}``; bytes that are not UTF-8 also as ``{name}_base64``."""
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {
            name: data.decode("utf-8", "replace"),
            f"{name}_base64": base64.b64encode(data).decode(),
        }


def plural(count: int, noun: str) -> str:
    """``1 key``, ``2 keys``."""
    return f"{count} {noun}" + ("" if count == 1 else "s")

"""The history of a chaos run: every line every process printed, and every action of the
harness, as JSON lines in one file (and in memory for the checks).

Each record is a JSON object with ``src`` (``harness`` or a process name such as
``e2.1``: slot ``e2``, generation 1), ``t`` (``time.monotonic()``, which on Linux is
one clock for every process of the machine) and ``ev`` (what happened).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import gevent

Record = dict[str, Any]


class History:
    """Collects records from the harness and from participants' stdout pipes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.records: list[Record] = []
        self._file: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._readers: list[gevent.Greenlet[Any, Any]] = []

    def record(self, src: str, ev: str, **fields: Any) -> Record:
        """Add a record (timestamped now unless ``t`` is given)."""
        entry: Record = {"src": src, "ev": ev, "t": fields.pop("t", time.monotonic()), **fields}
        self._add(entry)
        return entry

    def _add(self, entry: Record) -> None:
        self.records.append(entry)
        if not self._file.closed:
            self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")

    def follow(self, src: str, stream: IO[bytes]) -> None:
        """Read JSON lines from a process's stdout until it closes, in a greenlet (which
        then closes the pipe: a long run starts hundreds of processes)."""
        self._readers = [reader for reader in self._readers if not reader.dead]
        self._readers.append(gevent.spawn(self._read, src, stream))

    def _read(self, src: str, stream: IO[bytes]) -> None:
        try:
            for raw in iter(stream.readline, b""):
                try:
                    entry = json.loads(raw)
                    if not isinstance(entry, dict):
                        raise ValueError("not an object")
                except ValueError:
                    self.record(src, "garbage", line=raw.decode("utf-8", "replace")[:500])
                    continue
                entry.setdefault("t", time.monotonic())
                entry["src"] = src
                self._add(entry)
        finally:
            stream.close()
        self.record(src, "eof")

    def wait_for(self, predicate: Callable[[], bool], timeout: float, poll: float = 0.2) -> bool:
        """Wait until ``predicate()`` holds (checked every ``poll`` seconds); False
        after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            gevent.sleep(min(left, poll))
        return True

    def of(self, src: str | None = None, ev: str | None = None) -> Iterator[Record]:
        """The records of a source and/or kind, in order."""
        for entry in self.records:
            if (src is None or entry["src"] == src) and (ev is None or entry["ev"] == ev):
                yield entry

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        """Stop reading (after the processes ended) and close the file."""
        gevent.joinall(self._readers, timeout=5)
        gevent.killall(self._readers, timeout=2)
        self._file.close()


def load(path: str) -> list[Record]:
    """The records of a saved history file."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def by_source(records: Iterable[Record]) -> dict[str, list[Record]]:
    """Records grouped by ``src``, each group in order."""
    groups: dict[str, list[Record]] = {}
    for entry in records:
        groups.setdefault(entry["src"], []).append(entry)
    return groups

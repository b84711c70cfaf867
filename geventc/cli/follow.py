"""The one consumer loop of the long-running commands (``put --ttl``, ``watch``,
``elect``, ``register``, ``resolve --watch``, ``health``).

It reads a recipe's channel until the channel ends or Ctrl-C, prints every event,
ends the command on a fatal problem, and always gives back what the recipe holds,
telling the truth about it: the "released" line only when etcd confirmed the release,
else an error saying what is left and when it expires (exit code 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

from ..staleness import Staleness
from .output import Line, Output, print_staleness
from .settings import CommandError

if TYPE_CHECKING:
    from ..recipes.base import RecipeError, Release

E = TypeVar("E")


def follow(
    out: Output,
    events: Callable[[], Iterable[E | Staleness | RecipeError]],
    render: Callable[[E], None],
    *,
    release: Callable[[], Release] | None = None,
    started: Line | None = None,
    released: Line | None = None,
) -> None:
    """Start ``events`` (a recipe's channel), print ``started``, then ``render``
    each of its own events and print each :class:`Staleness` until the channel ends;
    a fatal :class:`RecipeError` ends the command with its error (non-fatal ones were
    logged by the recipe). Whatever ends the loop (Ctrl-C included), ``release`` runs
    (None: the caller releases) and its :class:`Release` is reported by
    :func:`report_release` with ``released``."""
    from ..recipes.base import RecipeError

    try:
        channel = events()
        if started is not None:
            out.show(started)
        for event in channel:
            if isinstance(event, RecipeError):
                problem(event)
            elif isinstance(event, Staleness):
                print_staleness(out, event)
            else:
                render(event)
    finally:
        if release is not None:
            report_release(release(), out, released)


def problem(event: RecipeError) -> None:
    """A recipe's report: fatal ones end the command (non-fatal ones were logged)."""
    if event.fatal:
        raise event.error


def report_release(release: Release, out: Output, said: Line | None) -> None:
    """Print ``said`` (if any) when etcd confirmed the release; else fail the command
    (exit 1) saying what is left and when it expires."""
    if not release.confirmed:
        raise CommandError(release.detail)
    if said is not None:
        out.show(said)

"""Retry policies and jittered exponential backoff."""

from __future__ import annotations

import random
from dataclasses import dataclass

from . import validate


class Backoff:
    """Jittered exponential delays: ``first`` doubling up to ``cap`` (each drawn
    uniformly from 50 % to 150 % of the nominal delay); :meth:`reset` after a success."""

    def __init__(self, first: float = 0.05, cap: float = 5.0) -> None:
        self.first = first
        self.cap = cap
        self._nominal = first

    def next(self) -> float:
        """The next delay in seconds."""
        delay = min(self._nominal, self.cap) * (0.5 + random.random())
        self._nominal = min(self._nominal * 2, self.cap)
        return min(delay, self.cap)

    def reset(self) -> None:
        """Start again from the first delay."""
        self._nominal = self.first


@dataclass(frozen=True)
class RetryPolicy:
    """How a registration is restored after it was lost (Kitex's retry options).

    ``max_attempts`` consecutive failures end the retries (0: retry forever);
    ``retry_delay`` caps the jittered exponential backoff between attempts;
    ``observe_delay`` is kept so Kitex settings carry over: geventc notices a lost
    registration at once through its watch, so nothing waits for it.
    """

    max_attempts: int = 5
    observe_delay: float = 30.0
    retry_delay: float = 10.0

    def __post_init__(self) -> None:
        validate.integer(self.max_attempts, "max_attempts", minimum=0)
        validate.positive_number(self.observe_delay, "observe_delay")
        validate.positive_number(self.retry_delay, "retry_delay")

    def backoff(self) -> Backoff:
        """A fresh backoff for one series of attempts."""
        return Backoff(first=min(0.1, self.retry_delay), cap=self.retry_delay)

    def gives_up_after(self, failures: int) -> bool:
        """True when ``failures`` consecutive failures exhaust the policy."""
        return self.max_attempts != 0 and failures >= self.max_attempts

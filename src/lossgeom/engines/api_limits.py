"""Requests in flight to an API teacher: a ceiling from the provider's published limit, lowered while the
endpoint answers 429.

Providers publish their limits differently: DeepSeek caps *concurrent* requests per account (its "Rate Limit
& Isolation" page: 2,500 for deepseek-v4-flash, 500 for deepseek-v4-pro) and, under load, answers 429 below
that cap; OpenAI publishes requests and tokens per minute per tier. ``generation.openai.max_concurrency`` is
the ceiling (config/paper.yaml sets it from DeepSeek's table); :class:`InFlight` lets at most its current
``limit`` requests out at once and moves that limit as TCP's congestion control does (additive increase,
multiplicative decrease): halved on a 429, and one higher after ``limit`` successes in a row, back up to the
ceiling. As TCP cuts once per round trip, a 429 cuts only once the requests let out before the last cut have
drained below the new limit (their retries still answer 429 for a while), and ``cooldown_s`` (default 0) has
passed. The 429s are seen on every
HTTP response (:meth:`on_response`, an httpx response hook), including those the ``openai`` client then
retries itself.
"""

from __future__ import annotations

import logging
import threading
import time

from ..errors import InputError

log = logging.getLogger(__name__)


class InFlight:
    """A gate for concurrent requests (``with gate:`` around one request); thread-safe.

    ``limit`` starts at ``ceiling`` (or ``start``), stays within ``[1, ceiling]``; ``cuts`` counts the halvings."""

    def __init__(self, ceiling: int, start: int | None = None, cooldown_s: float = 0.0, clock=time.monotonic):
        if ceiling < 1:
            raise InputError(
                f"generation.openai.max_concurrency (requests in flight) must be at least 1, not {ceiling}"
            )
        self.ceiling = int(ceiling)
        self.limit = max(1, min(self.ceiling, int(start or ceiling)))
        self.in_flight = 0
        self.cuts = 0
        self._successes = 0
        self._last_cut = -float("inf")
        self._cooldown, self._clock = cooldown_s, clock
        self._cond = threading.Condition()

    def __enter__(self) -> InFlight:
        with self._cond:
            while self.in_flight >= self.limit:
                self._cond.wait()
            self.in_flight += 1
        return self

    def __exit__(self, *exc) -> None:
        with self._cond:
            self.in_flight -= 1
            self._cond.notify()

    def succeeded(self) -> None:
        """One request answered: after ``limit`` in a row, one more may fly."""
        with self._cond:
            self._successes += 1
            if self._successes >= self.limit and self.limit < self.ceiling:
                self.limit += 1
                self._successes = 0
                self._cond.notify()

    def rate_limited(self) -> None:
        """The endpoint answered 429: halve the limit (once the last cut has drained, once per cooldown)."""
        with self._cond:
            now = self._clock()
            self._successes = 0
            draining = self.in_flight > self.limit
            if draining or now - self._last_cut < self._cooldown or self.limit == 1:
                return
            self._last_cut = now
            self.limit = max(1, self.limit // 2)
            self.cuts += 1
            log.warning("api teacher: the endpoint answered 429; %d requests in flight at most now", self.limit)

    def on_response(self, response) -> None:
        """An httpx response hook: a 429 lowers the limit."""
        if getattr(response, "status_code", None) == 429:
            self.rate_limited()

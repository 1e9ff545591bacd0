"""Tests of lossgeom.engines.api_limits.InFlight: never more requests in flight than its limit, halved on a
429 (once per cooldown), grown back one at a time to the ceiling."""

from __future__ import annotations

import threading
import time

import pytest

from lossgeom.engines.api_limits import InFlight


def test_never_more_in_flight_than_the_limit_under_many_threads():
    gate, lock, seen = InFlight(3), threading.Lock(), []

    def request():
        with gate:
            with lock:
                seen.append(gate.in_flight)
            time.sleep(0.01)

    threads = [threading.Thread(target=request) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 24 and max(seen) == 3 and gate.in_flight == 0


def test_a_429_halves_the_limit_once_per_cooldown_and_successes_grow_it_back():
    now = [0.0]
    gate = InFlight(16, cooldown_s=5.0, clock=lambda: now[0])
    gate.rate_limited()
    gate.rate_limited()  # the same burst: no second cut
    assert (gate.limit, gate.cuts) == (8, 1)
    now[0] = 6.0
    gate.rate_limited()
    assert (gate.limit, gate.cuts) == (4, 2)
    for _ in range(4):
        gate.succeeded()
    assert gate.limit == 5  # one more after `limit` successes in a row
    for _ in range(1000):
        gate.succeeded()
    assert gate.limit == 16  # never past the ceiling
    for i in range(10):
        now[0] = 100.0 + 10 * i
        gate.rate_limited()
    assert gate.limit == 1  # never below one


def test_a_response_hook_sees_429s_only():
    class Response:
        def __init__(self, status_code):
            self.status_code = status_code

    gate = InFlight(8)
    for status in (200, 500, 503):
        gate.on_response(Response(status))
    assert gate.limit == 8
    gate.on_response(Response(429))
    assert gate.limit == 4


def test_no_second_cut_while_the_requests_let_out_before_the_first_drain():
    gate = InFlight(16, cooldown_s=0.0)
    for _ in range(16):
        gate.__enter__()
    gate.rate_limited()
    assert gate.limit == 8
    for _ in range(7):  # 9 still out, above the new limit: their 429s are the old window's
        gate.__exit__()
        gate.rate_limited()
    assert gate.limit == 8
    gate.__exit__()  # 8 out: the cut has taken effect; a 429 now is news
    gate.rate_limited()
    assert (gate.limit, gate.cuts) == (4, 2)


def test_a_ceiling_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        InFlight(0)

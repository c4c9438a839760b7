"""The sync's limit on whole-object GETs in flight (agent/modelstore/inflight.py): many
against a store that answers many at once, few against one that queues them."""

from __future__ import annotations

import threading
import time
from typing import Callable

from agent.modelstore.inflight import QUEUE, START, InFlightLimit


def answer_times(limit: InFlightLimit, seconds_for: Callable[[int], float], answers: int) -> list[int]:
    """Feed `answers` answers, each taking seconds_for(requests in flight); the limits seen."""
    seen = []
    for _ in range(answers):
        limit.observe(seconds_for(limit.limit))
        seen.append(limit.limit)
    return seen


def test_a_store_that_answers_many_at_once_gets_the_maximum_in_flight():
    # S3 far away: 30 ms per answer however many are in flight.
    limit = InFlightLimit(16)
    assert limit.limit == START
    seen = answer_times(limit, lambda _n: 0.030, 400)
    assert seen[-1] == 16
    assert seen.index(16) < 150  # reached within the first few windows, not at the end


def test_a_store_that_serves_one_at_a_time_gets_a_few_in_flight():
    # moto: 1.5 ms per request, served one after the other, so an answer waits for all
    # those ahead of it; more in flight only lengthen the queue.
    limit = InFlightLimit(16)
    seen = answer_times(limit, lambda n: 0.0015 * n, 2000)
    assert max(seen[200:]) <= START + 2 * QUEUE
    assert min(seen) >= 1


def test_the_limit_falls_when_a_store_starts_queueing_and_rises_when_it_stops():
    limit = InFlightLimit(16)
    answer_times(limit, lambda _n: 0.010, 400)
    assert limit.limit == 16
    answer_times(limit, lambda n: 0.010 * n, 400)  # the store now serves one at a time
    assert limit.limit <= 8
    answer_times(limit, lambda _n: 0.010, 400)  # and recovers
    assert limit.limit == 16


def test_no_more_requests_are_in_flight_than_the_limit_and_a_raised_limit_lets_waiters_in():
    limit = InFlightLimit(8)
    lock = threading.Lock()
    inside = 0
    peaks: list[tuple[int, int]] = []  # (requests inside, the limit then)

    def worker() -> None:
        nonlocal inside
        for _ in range(40):
            with limit:
                with lock:
                    inside += 1
                    peaks.append((inside, limit.limit))
                time.sleep(0.001)
                with lock:
                    inside -= 1
                limit.observe(0.001)  # a store that never queues: the limit rises

    threads = [threading.Thread(target=worker) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a worker waits for ever"
    assert all(n <= cap for n, cap in peaks)
    assert max(n for n, _ in peaks) > START  # the raised limit was used
    assert max(n for n, _ in peaks) <= 8

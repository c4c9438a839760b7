"""The sync's limit on whole-object GETs in flight (agent/modelstore/inflight.py): many
against a store that answers many at once, few against one that queues them."""

from __future__ import annotations

import threading
from typing import Callable

from agent.modelstore.inflight import MIN_WINDOW, QUEUE, START, InFlightLimit


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
    lock = threading.Condition()
    inside = 0
    peak = 0
    release = threading.Event()

    def request() -> None:
        nonlocal inside, peak
        with limit:
            with lock:
                inside += 1
                peak = max(peak, inside)
                lock.notify_all()
            release.wait(timeout=30)  # the request is "at the store" until the test lets go
            with lock:
                inside -= 1

    def until_inside(n: int) -> None:
        with lock:
            assert lock.wait_for(lambda: inside == n, timeout=10), f"{inside} inside, expected {n}"

    threads = [threading.Thread(target=request) for _ in range(12)]
    for t in threads:
        t.start()
    until_inside(START)  # the other 10 wait
    assert peak == START
    # A store that answers as fast however many are in flight: the limit rises, and
    # threads already waiting get in without any new request arriving.
    for _ in range(MIN_WINDOW):
        limit.observe(0.001)
    assert limit.limit == START + QUEUE
    until_inside(START + QUEUE)
    release.set()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a request waits for ever"
    assert peak <= 8

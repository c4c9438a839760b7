"""The sync's limit on whole-object GETs in flight (agent/modelstore/inflight.py): many
against a store that answers many at once, one waiting behind the one being served
against a store that serves one at a time; workers keep their slot between requests."""

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


def test_a_store_that_serves_one_at_a_time_gets_one_request_waiting_behind_the_one_served():
    # moto: 1.5 ms per request, served one after the other, so an answer waits for all
    # those ahead of it; more in flight only lengthen the queue.
    limit = InFlightLimit(16)
    seen = answer_times(limit, lambda n: 0.0015 * n, 2000)
    assert START == 1 and set(seen[: MIN_WINDOW - 1]) == {1}  # the first window: the store unqueued
    assert set(seen[100:]) == {1 + QUEUE} == {2}


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
    until_inside(START)  # the other 11 wait
    assert peak == START == 1
    # A store that answers as fast however many are in flight: the limit rises, and
    # threads already waiting get in without any new request arriving.
    for _ in range(MIN_WINDOW):
        limit.observe(0.001)
    assert limit.limit == 2
    until_inside(2)
    for _ in range(MIN_WINDOW):
        limit.observe(0.001)
    assert limit.limit == 3
    until_inside(3)
    release.set()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a request waits for ever"
    assert peak <= 8


def test_a_worker_keeps_its_slot_while_the_limit_allows_and_gives_it_up_when_the_limit_falls():
    limit = InFlightLimit(8, start=4)
    entered = threading.Barrier(5)
    next_request = threading.Event()
    finish = threading.Event()
    lock = threading.Condition()
    past_keep: list[str] = []

    def worker(name: str) -> None:
        with limit:
            entered.wait(timeout=10)
            next_request.wait(timeout=30)
            limit.keep()  # before its next request
            with lock:
                past_keep.append(name)
                lock.notify_all()
            finish.wait(timeout=30)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    entered.wait(timeout=10)  # four slots held, as the limit allows
    for _ in range(MIN_WINDOW):  # the shortest answers
        limit.observe(0.001)
    while limit.limit > 2:  # the store starts queueing: answers far slower than those
        for _ in range(MIN_WINDOW):
            limit.observe(0.004)
    assert limit.limit == 2
    next_request.set()
    with lock:  # two go on with their slots; the other two give theirs up and wait
        assert lock.wait_for(lambda: len(past_keep) == 2, timeout=10)
    with limit._cond:
        assert limit._in_flight == 2
    finish.set()  # the two finish, and the two waiting get their slots back
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads) and len(past_keep) == 4

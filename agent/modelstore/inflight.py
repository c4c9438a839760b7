"""How many whole-object GETs a sync keeps in flight, adapted to the store as it answers.

A store that serves many requests at once (MinIO on several cores, S3 far away) needs
many in flight to hide its latency. One that serves them one at a time (a single-process
server such as moto) only queues them, and may even work harder per request while they
overlap (moto's threads contend for its locks: 10-25 % more CPU a request with 2 or more
in flight than with 1). There one request waiting behind the one being served is right:
the store never waits for the client's next request, and nothing more queues.

The limit follows the latency gradient, as TCP Vegas does: the time to an answer's first
byte, against the shortest seen. A sync starts with one request in flight, so the first
window measures the store unqueued (a baseline taken with requests already queued would
hold the limit above what the store serves; the price is that a sync's first few GETs go
one at a time). While answers stay near that, the store is not queueing, and the limit
grows by half (at least one) each window, as TCP's slow start does. When they rise with
the limit, the store is queueing, and the limit shrinks toward what the store serves at
once, plus QUEUE waiting.

Workers hold a slot across their requests (`keep` between two) instead of taking one per
request: a slot handed from thread to thread at every request costs a wake-up and a GIL
hand-off each time, while the store waits. Against moto (2,000 files of 64 KiB, 6 rounds,
each against the endpoint floor measured in the same round): slots taken per request,
QUEUE 2 and a start at 2 (where the limit settled at 4-5), 1.16-1.26x the floor, median
1.22x, with 1.78-2.16 s of the client's CPU; slots kept, QUEUE 1 and a start at 1, 1.09-1.28x,
median 1.17x, with 1.73-1.93 s.
"""

from __future__ import annotations

import threading

# Requests kept waiting at the store beyond those it serves at once.
QUEUE = 1
# The limit a sync starts at (then adapts, within [1, maximum]).
START = 1
# Samples per window at the least: one median of a few answers, not one lucky answer.
MIN_WINDOW = 8
# Answers at least this fraction as fast as the shortest seen: the store is not queueing.
UNQUEUED = 0.9


class InFlightLimit:
    """A limit on requests in flight, moved by their latency; thread-safe.

    A worker takes a slot with `with limit:`, calls `keep()` before each of its requests
    (it waits there only when the limit fell below the slots held), and reports each
    answer's time to its first byte with `observe(seconds)`."""

    def __init__(self, maximum: int, start: int = START):
        self.maximum = max(1, maximum)
        self._limit = float(min(self.maximum, max(1, start)))
        self._in_flight = 0
        self._window: list[float] = []
        self._shortest: float | None = None
        self._cond = threading.Condition()

    @property
    def limit(self) -> int:
        """Requests allowed in flight now."""
        return int(self._limit)

    def __enter__(self) -> InFlightLimit:
        with self._cond:
            self._take()
        return self

    def _take(self) -> None:
        # Under self._cond: wait until the limit has room, then hold one more slot.
        self._cond.wait_for(lambda: self._in_flight < int(self._limit))
        self._in_flight += 1

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify()

    def keep(self) -> None:
        """Between two requests of a worker holding a slot: go on at once while the limit
        allows every slot held, else give this one up and wait for a slot again."""
        with self._cond:
            if self._in_flight <= int(self._limit):
                return
            self._in_flight -= 1
            self._take()

    def observe(self, seconds: float) -> None:
        """Record one answer's time to first byte; every window, move the limit."""
        with self._cond:
            self._window.append(seconds)
            if len(self._window) < max(MIN_WINDOW, int(self._limit)):
                return
            typical = sorted(self._window)[len(self._window) // 2]  # the median, near enough
            self._window.clear()
            # The shortest window median, not the shortest answer: one lucky answer
            # would make every later one look queued.
            if self._shortest is None or typical < self._shortest:
                self._shortest = typical
            gradient = min(1.0, max(0.5, self._shortest / typical)) if typical > 0 else 1.0
            if gradient >= UNQUEUED:
                grown = self._limit + max(1.0, self._limit / 2)
            else:
                grown = self._limit * gradient + QUEUE
            self._limit = min(float(self.maximum), max(1.0, grown))
            self._cond.notify_all()

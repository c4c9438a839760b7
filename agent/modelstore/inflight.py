"""How many whole-object GETs a sync keeps in flight, adapted to the store as it answers.

A store that serves many requests at once (MinIO on several cores, S3 far away) needs
many in flight to hide its latency. One that serves them one at a time (a single-process
server such as moto) only queues them: past a few, each extra request adds nothing but
client CPU and thread hand-offs, which on a shared machine the store itself is short of
(2,000 files of 64 KiB from moto, 6 runs each, alternating: median 5.19 s with 16 in
flight, 5.01 s with this limit, which settled at 4). Such a store may even work harder
per request while requests overlap (moto's threads contend for its locks: 10-25 % more
CPU a request with 2 or more in flight than with 1), but with 1 in flight the client's
own time between requests leaves it idle for longer than that costs, so the limit keeps
QUEUE waiting rather than none.

The limit follows the latency gradient, as TCP-Vegas-style limiters do: the time to an
answer's first byte, against the shortest seen. While it stays near the shortest, the
store is not queueing, and the limit grows by QUEUE each window. When it rises with the
limit, the store is queueing, and the limit shrinks toward what the store serves at once,
plus QUEUE so the store never waits for the next request.
"""

from __future__ import annotations

import threading

# Requests kept waiting at the store beyond those it serves at once; also the growth per window.
QUEUE = 2
# The limit a sync starts at (then adapts, within [1, maximum]).
START = 2
# Samples per window at the least: one median of a few answers, not one lucky answer.
MIN_WINDOW = 8


class InFlightLimit:
    """A limit on requests in flight, moved by their latency; thread-safe.

    Use `with limit:` around one request, and `observe(seconds)` with its time to the
    first byte of the answer."""

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
            self._cond.wait_for(lambda: self._in_flight < int(self._limit))
            self._in_flight += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify()

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
            self._limit = min(float(self.maximum), max(1.0, self._limit * gradient + QUEUE))
            self._cond.notify_all()

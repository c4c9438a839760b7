"""Reconnect pacing and outage bookkeeping shared by the network metadata sources."""

from __future__ import annotations

import random
import time

import agent.log

log = agent.log.get(__name__)

# The cap bounds how late a returning service is noticed: with 0.5 s the agent
# reconnects within ~0.5 s of the service coming back, yet a dead service costs
# only a refused connection every quarter to half second (no busy loop).
BACKOFF_BASE = 0.1
BACKOFF_CAP = 0.5


class Backoff:
    """Exponential delays with jitter (half fixed, half random) between reconnect attempts."""

    def __init__(self, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP):
        self.base = base
        self.cap = cap
        self.attempts = 0

    def next_delay(self) -> float:
        """The pause before the next attempt; grows until `cap`."""
        ceiling = min(self.cap, self.base * (2 ** min(self.attempts, 30)))
        self.attempts += 1
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def reset(self) -> None:
        """Start again from the shortest delay (after a success)."""
        self.attempts = 0


class Outage:
    """Whether a source can currently reach its service, and since when it cannot.

    Logs once when the source becomes unreachable and once when it recovers, so a
    long outage does not flood the log with one line per retry."""

    def __init__(self, source: str):
        self.source = source
        self.since: float | None = None
        self.failures = 0

    def failed(self, endpoint: str, error: BaseException | str) -> None:
        """Record one failed attempt against `endpoint`."""
        self.failures += 1
        reason = error if isinstance(error, str) else (str(error) or type(error).__name__)
        if self.since is None:
            self.since = time.time()
            log.warning("metadata source unreachable", source=self.source, endpoint=endpoint, error=reason)
        else:
            log.debug("metadata source still unreachable", source=self.source, endpoint=endpoint,
                      error=reason, failures=self.failures)

    def recovered(self, endpoint: str) -> None:
        """Record a successful read from `endpoint`."""
        if self.since is not None:
            log.info("metadata source reachable again", source=self.source, endpoint=endpoint,
                     down_seconds=round(time.time() - self.since, 3), failures=self.failures)
        self.since = None
        self.failures = 0

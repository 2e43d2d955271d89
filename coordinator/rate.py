"""Pure pacing and measuring of warmup bytes: the site origin-rate token bucket, the rate window.

`TokenBucket` paces what a site's warmups may ask of the origin: tokens (bytes) accrue at the
cap and the bucket holds at most one second's worth, so at no moment are the bytes sent more
than one second's worth ahead of the cap. It starts empty: a site's first job does not burst.

`RateWindow` measures a warmup's rate from the bytes its owners have confirmed: the bytes
confirmed over the last WINDOW_S seconds (or since the run began, if that is shorter),
divided by that span, so a stall shows as a falling rate rather than the last good one.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

WINDOW_S = 10.0  # the span rates are measured over while a job runs


class TokenBucket:
    """Bytes/s pacing with a depth of one second's worth; a rate of 0 never waits."""

    def __init__(self, bytes_per_s: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = bytes_per_s
        self.depth = float(bytes_per_s)  # one second's worth
        self._clock = clock
        self._tokens, self._at = 0.0, clock()
        self._lock = asyncio.Lock()  # one waiter at a time: first come, first served

    def _refill(self) -> float:
        now = self._clock()
        self._tokens = min(self.depth, self._tokens + (now - self._at) * self.rate)
        self._at = now
        return self._tokens

    def wait_s(self, n: int) -> float:
        """Return how long a take of `n` bytes would wait now (0 if it could go at once)."""
        if not self.rate:
            return 0.0
        need = min(float(n), self.depth)  # a take larger than the depth waits for a full bucket
        return max(0.0, (need - self._refill()) / self.rate)

    def take_now(self, n: int) -> bool:
        """Take `n` bytes if the bucket has them (or `n` exceeds the depth and it is full)."""
        if self.wait_s(n) > 0:
            return False
        self._tokens -= n  # may go below 0 for a take over the depth: the next ones wait
        return True

    async def take(self, n: int) -> None:
        """Wait until `n` bytes may be sent, then take them."""
        if not self.rate:
            return
        async with self._lock:
            while not self.take_now(n):
                await asyncio.sleep(self.wait_s(n))

    def give_back(self, n: int) -> None:
        """Return bytes taken but not sent (blocks the owner already had)."""
        if self.rate:
            self._refill()
            self._tokens = min(self.depth, self._tokens + n)


class RateWindow:
    """A moving window of (time, bytes confirmed) samples of one warmup run."""

    def __init__(self, start: float, bytes_at_start: int = 0, window_s: float = WINDOW_S) -> None:
        self._window_s = window_s
        self._samples: collections.deque[tuple[float, int]] = collections.deque(
            [(start, bytes_at_start)])

    def note(self, now: float, confirmed: int) -> None:
        """Record the bytes confirmed so far at `now`."""
        self._samples.append((now, confirmed))
        # Keep one sample at or before the window's start, as its anchor.
        while len(self._samples) > 1 and self._samples[1][0] <= now - self._window_s:
            self._samples.popleft()

    def rate(self, now: float) -> float:
        """Return bytes/s confirmed over the window that ends at `now` (0 before any span)."""
        t0, b0 = self._samples[0]
        for t, b in self._samples:  # the newest sample at or before the window's start
            if t > now - self._window_s:
                break
            t0, b0 = t, b
        span = now - t0
        done = self._samples[-1][1]
        return max(0.0, (done - b0) / span) if span > 0 else 0.0


def eta_s(left_bytes: int, rate: float) -> float | None:
    """Return the seconds `left_bytes` take at `rate` (None if nothing moves)."""
    if left_bytes <= 0:
        return 0.0
    return left_bytes / rate if rate > 0 else None

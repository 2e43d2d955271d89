"""The warmup pacing and measuring in coordinator/rate.py, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.rate import RateWindow, TokenBucket, eta_s


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_starts_empty_and_holds_one_second() -> None:
    """A fresh bucket sends nothing at once; idle, it fills to one second's worth only."""
    c = Clock()
    b = TokenBucket(1000, clock=c)
    assert not b.take_now(1)
    assert b.wait_s(500) == pytest.approx(0.5)
    c.now += 60  # a minute idle
    assert b.take_now(1000)  # one second's worth ...
    assert not b.take_now(1)  # ... and not a byte more


def test_bucket_paces_to_the_rate() -> None:
    """Bytes taken over any span stay within the rate times that span (it starts empty)."""
    c = Clock()
    b = TokenBucket(1000, clock=c)
    taken = 0
    for _ in range(10_000):
        c.now += 0.01
        if b.take_now(300):
            taken += 300
        assert taken <= 1000 * (c.now - 100.0) + 1e-6
    assert taken >= 1000 * (c.now - 100.0) - 300


def test_bucket_take_over_the_depth_waits_for_a_full_bucket() -> None:
    """A take larger than one second's worth goes once the bucket is full, then others wait."""
    c = Clock()
    b = TokenBucket(1000, clock=c)
    c.now += 1
    assert b.take_now(2500)
    assert b.wait_s(1000) == pytest.approx(2.5)


def test_bucket_give_back_and_no_cap() -> None:
    """Bytes given back (blocks already present) may be taken again; rate 0 never waits."""
    c = Clock()
    b = TokenBucket(1000, clock=c)
    c.now += 1
    assert b.take_now(1000)
    b.give_back(400)
    assert b.take_now(400)
    free = TokenBucket(0)
    assert free.take_now(10**12) and free.wait_s(10**12) == 0


def test_bucket_take_waits() -> None:
    """`take` sleeps until the bytes are there."""
    b = TokenBucket(100_000)

    async def go() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await b.take(20_000)
        return loop.time() - t0

    assert 0.15 <= asyncio.run(go()) < 1.0


def test_window_rate() -> None:
    """The rate is the bytes confirmed over the last window (since the start, if shorter)."""
    w = RateWindow(0.0, window_s=10.0)
    assert w.rate(0.0) == 0.0
    for t in range(1, 31):
        w.note(float(t), t * 1000)
    assert w.rate(30.0) == pytest.approx(1000.0)
    w2 = RateWindow(0.0, window_s=10.0)
    w2.note(2.0, 4000)
    assert w2.rate(4.0) == pytest.approx(1000.0)  # 4000 bytes over 4 s since the start


def test_window_rate_falls_during_a_stall() -> None:
    """With nothing confirmed for a while the rate falls, and is 0 after a whole window."""
    w = RateWindow(0.0, window_s=10.0)
    for t in range(1, 11):
        w.note(float(t), t * 1000)
    assert w.rate(15.0) == pytest.approx(500.0)
    assert w.rate(30.0) == 0.0


def test_eta() -> None:
    """ETA is what is left over the rate; unknown without a rate, 0 with nothing left."""
    assert eta_s(1000, 100.0) == 10.0
    assert eta_s(1000, 0.0) is None
    assert eta_s(0, 0.0) == 0.0

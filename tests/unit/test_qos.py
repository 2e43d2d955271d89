"""Origin QoS pieces without I/O: token buckets, slots, node shares of site limits, labels."""

from __future__ import annotations

import asyncio
import math

import pytest

from cachenode.access import NO_LIMITS, NoTenants, TenantLimits
from cachenode.errors import BadRequest
from cachenode.limits import NodeLimits, node_share
from cachenode.metrics import MAX_TENANT_LABELS, TenantLabels
from cachenode.qos import FIRST_BLOCK_WAIT_S, Slots, TokenBucket, check_tenant, peer_charge
from tests.fakes import FakeTenants

MB = 10**6


def test_bucket_gives_its_burst_then_queues_by_debt() -> None:
    b = TokenBucket(rate=10 * MB, burst=4 * MB, now=0.0)
    assert b.reserve(4 * MB, 0.0, 0.0) == 0.0  # the burst
    assert b.reserve(4 * MB, 0.0, 10.0) == pytest.approx(0.4)
    assert b.reserve(4 * MB, 0.0, 10.0) == pytest.approx(0.8)  # behind the one before
    assert b.reserve(4 * MB, 0.0, 1.0) is None  # would wait 1.2 s: refused, nothing taken
    assert b.wait_for(4 * MB, 0.0) == pytest.approx(1.2)
    assert b.reserve(4 * MB, 0.4, 1.0) == pytest.approx(0.8)  # time paid some of the debt


def test_bucket_long_run_rate_is_its_rate_whatever_the_demand() -> None:
    b = TokenBucket(rate=50 * MB, burst=4 * MB, now=0.0)
    due: list[float] = []  # when each granted block's fill may start
    t = 0.0
    while t < 10.0:  # 10 s of readers asking for a block every 10 ms (4x the rate)
        wait = b.reserve(4 * MB, t, 1.0)
        if wait is not None:
            due.append(t + wait)
        t += 0.01
    assert max(due) <= 11.0  # nobody waits past the bound
    started = sum(4 * MB for d in due if d <= 10.0)
    assert started / 10.0 == pytest.approx(50 * MB, abs=4 * MB / 10.0 + 1)  # burst only


def test_bucket_refund_and_reconfigure() -> None:
    b = TokenBucket(rate=1 * MB, burst=2 * MB, now=0.0)
    assert b.reserve(2 * MB, 0.0, 5.0) == 0.0
    assert b.reserve(1 * MB, 0.0, 5.0) == pytest.approx(1.0)
    b.refund(1 * MB, 0.0)  # that reader left
    assert b.reserve(1 * MB, 0.0, 5.0) == pytest.approx(1.0)
    b.configure(2 * MB, 1 * MB, 0.0)  # faster: the debt is paid at the new rate
    assert b.wait_for(1 * MB, 0.0) == pytest.approx(1.0)
    b.refund(10 * MB, 100.0)
    assert b.tokens == 1 * MB  # never above the burst
    zero = TokenBucket(0.0, 0.0, 0.0)
    assert zero.reserve(1, 0.0, 3600.0) is None and math.isinf(zero.wait_for(1, 0.0))


@pytest.mark.asyncio
async def test_slots_serve_waiters_in_order_with_a_bounded_wait() -> None:
    s = Slots(1)
    assert await s.acquire(0.0)
    assert not await s.acquire(0.0) and not await s.acquire(0.05)  # bounded: refused
    got: list[int] = []

    async def waiter(i: int) -> None:
        assert await s.acquire(5.0)
        got.append(i)

    tasks = [asyncio.ensure_future(waiter(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    s.set_limit(2)  # one more fits now
    await asyncio.sleep(0.01)
    assert got == [0]
    s.release()
    s.release()
    await asyncio.gather(*tasks)
    assert got == [0, 1, 2] and s.used == 2
    cancelled = asyncio.ensure_future(s.acquire(5.0))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert s.used == 2 and not s._waiters


def test_node_share_and_the_split_of_site_limits() -> None:
    assert node_share({}, "n1") == 1.0  # alone
    assert node_share({"n1": 0.25, "n2": 0.75}, "n1") == 0.25
    assert node_share({"n1": 0.5, "n2": 0.5}, "n3") == pytest.approx(1 / 3)  # off the ring
    tenants = FakeTenants({"a": TenantLimits(quota_bytes=1000, origin_bytes_per_s=100,
                                             origin_fills=8),
                           "q": TenantLimits(quota_bytes=10)})
    share = 1 / 3
    lim = NodeLimits(tenants, lambda: share)
    assert lim.quota_bytes("a") == 333 and lim.origin_rate("a") == pytest.approx(100 / 3)
    assert lim.origin_fills("a") == 3  # 2.67 rounded
    assert lim.limited("a") and not lim.limited("q") and not lim.limited("")
    assert lim.quota_bytes("") is None and lim.quota_bytes("nobody") is None
    share = 0.01
    assert lim.origin_fills("a") == 1  # never 0
    assert NodeLimits(NoTenants(), lambda: 1.0).origin_rate("a") is None
    assert tenants.limits("zzz") == NO_LIMITS


def test_tenant_names_and_peer_charges() -> None:
    assert check_tenant("") == "" and check_tenant("team-a.1_x") == "team-a.1_x"
    for bad in ("-x", "a b", "a/b", "x" * 129, 7, "é"):
        with pytest.raises(BadRequest):
            check_tenant(bad)
    assert peer_charge("b", "60").wait_s == 60 and peer_charge("b", "60").tenant == "b"
    for wait in (None, "", "x", "nan", "-1", "1e9"):
        assert peer_charge("b", wait).wait_s == FIRST_BLOCK_WAIT_S
    with pytest.raises(BadRequest):
        peer_charge("no such/tenant", "1")


def test_tenant_labels_are_capped() -> None:
    labels = TenantLabels()
    assert labels("") == "_none"
    names = [labels(f"t{i}") for i in range(MAX_TENANT_LABELS + 5)]
    assert names[:MAX_TENANT_LABELS] == [f"t{i}" for i in range(MAX_TENANT_LABELS)]
    assert set(names[MAX_TENANT_LABELS:]) == {"_other"}
    assert labels("t0") == "t0" and labels("new") == "_other"

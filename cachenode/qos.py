"""Origin QoS per tenant: a token bucket (origin bytes/s) and a cap on fills in flight each.

A fill takes its tenant's budget before anything node-wide (the fill limiter, the write-behind
slots): a tenant waiting for its own budget holds nothing another tenant needs. The fill is
charged to the tenant that started it; readers of other tenants who join it (single-flight)
ride along free, and if it is refused for its starter's budget they start one of their own.
How long a fill may wait is its `Charge.wait_s`: a response's first block waits at most
FIRST_BLOCK_WAIT_S, then the reader gets 503 SlowDown with a Retry-After (its headers are not
out yet); blocks after the first, and warms, wait up to half the fill timeout (the rest is
left for the GET), since refusing them would cut a response mid-body. A reservation that
would wait longer than that is refused at once, so a refused fill waited for nothing. Tenant
'' (no auth, the cluster itself) and tenants without an origin budget pass at once. The
limits are this node's part of the site's (cachenode/limits.py).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from cachenode.errors import BadRequest, TenantThrottled
from cachenode.limits import NodeLimits
from cachenode.metrics import NodeMetrics

FIRST_BLOCK_WAIT_S = 1.0  # a response's first block waits this long for budget, then SlowDown
LATER_WAIT_SHARE = 0.5  # of the fill timeout: how long later blocks (and warms) may wait
BURST_S = 0.25  # a bucket holds at most this long of its rate (and at least one block)
MAX_WAITING = 256  # fills of one tenant waiting for its budget at once; more are refused
MAX_WAIT_S = 3600.0  # the most a peer may ask a fill to wait
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True, slots=True)
class Charge:
    """Whose origin budget and quota a fill counts against, and how long it may wait."""

    tenant: str = ""
    wait_s: float = FIRST_BLOCK_WAIT_S  # for the tenant's budget, before SlowDown
    warmed: bool = False  # a /_warm fill: the block is stored as warmed for the tenant


NOBODY = Charge()


def later_wait(fill_timeout_s: float) -> float:
    """Return how long a block after a response's first, or a warm's, may wait for budget."""
    return fill_timeout_s * LATER_WAIT_SHARE


def check_tenant(name: object, where: str = "tenant") -> str:
    """Return a tenant name ('' = nobody), or raise BadRequest (1-128 letters, digits, ._-)."""
    if name == "":
        return ""
    if not isinstance(name, str) or not _TENANT.fullmatch(name):
        raise BadRequest(f"{where} must be '' or 1-128 letters, digits, '.', '_' or '-' "
                         "(starting with a letter or digit)")
    return name


def peer_charge(tenant: str | None, wait: str | None) -> Charge:
    """Return the charge a peer's X-Blockcache-Tenant and -Tenant-Wait headers name."""
    name = check_tenant(tenant or "", "X-Blockcache-Tenant")
    try:
        wait_s = float(wait) if wait else FIRST_BLOCK_WAIT_S
    except ValueError:
        wait_s = FIRST_BLOCK_WAIT_S
    if not 0 <= wait_s <= MAX_WAIT_S:  # NaN too
        wait_s = FIRST_BLOCK_WAIT_S
    return Charge(name, wait_s)


class TokenBucket:
    """Bytes per second with a small burst; a reservation says how long to wait (pure).

    Reservations queue by going into debt: the n-th waiter waits for every byte reserved
    before it, so the long-run rate is the configured one whatever the demand.
    """

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self._at = burst, now  # tokens may be negative: reserved ahead

    def configure(self, rate: float, burst: float, now: float) -> None:
        """Change the rate and burst from now on (reservations made stay as they are)."""
        self._refill(now)
        self.rate, self.burst = rate, burst
        self.tokens = min(self.tokens, burst)

    def reserve(self, n: int, now: float, max_wait_s: float) -> float | None:
        """Take `n` bytes and return how long to wait for them; None (nothing taken) if longer
        than `max_wait_s`."""
        self._refill(now)
        after = self.tokens - n
        wait = 0.0 if after >= 0 else (-after / self.rate if self.rate > 0 else math.inf)
        if wait > max_wait_s:
            return None
        self.tokens = after
        return wait

    def wait_for(self, n: int, now: float) -> float:
        """Return how long a reservation of `n` bytes made now would wait."""
        self._refill(now)
        short = n - self.tokens
        return 0.0 if short <= 0 else (short / self.rate if self.rate > 0 else math.inf)

    def refund(self, n: int, now: float) -> None:
        """Give back `n` bytes of a reservation that was not used (the reader left)."""
        self._refill(now)
        self.tokens = min(self.burst, self.tokens + n)

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self._at) * self.rate)
        self._at = now


class Slots:
    """At most `limit` holders at once, waiters served in order; the limit may change."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0  # guarded by the loop
        self._waiters: deque[asyncio.Future[None]] = deque()

    def free(self) -> bool:
        """Return whether a slot is free now and nobody waits for one."""
        return self.used < self.limit and not self._waiters

    def set_limit(self, limit: int) -> None:
        """Change the limit; waiters that fit now are let in."""
        self.limit = limit
        self._wake()

    async def acquire(self, timeout_s: float) -> bool:
        """Take a slot, waiting at most `timeout_s`; return whether it was taken."""
        if self.free():
            self.used += 1
            return True
        if timeout_s <= 0:
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(timeout_s):
                await fut
        except BaseException as e:
            if fut.done() and not fut.cancelled():  # granted just as we left
                if isinstance(e, TimeoutError):
                    return True
                self.release()
            elif fut in self._waiters:
                self._waiters.remove(fut)
            if isinstance(e, TimeoutError):
                return False
            raise
        return True

    def release(self) -> None:
        """Give a slot back and let the next waiter in."""
        self.used -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used < self.limit:
            fut = self._waiters.popleft()
            if not fut.done():
                self.used += 1
                fut.set_result(None)


@dataclass(slots=True)
class _Budget:
    """One tenant's bucket and slots on this node, and its fills waiting for them."""

    bucket: TokenBucket | None
    slots: Slots | None
    waiting: int = 0


class Ticket:
    """A fill's admission: its slot until `release`, its bytes unless `handed_off`."""

    def __init__(self, slots: Slots | None, bucket: TokenBucket | None, nbytes: int,
                 clock: Callable[[], float]) -> None:
        self._slots, self._bucket, self._nbytes, self._clock = slots, bucket, nbytes, clock

    def handed_off(self) -> None:
        """Give the bytes back: the block came from a peer's disk, not from the origin."""
        if self._bucket is not None and self._nbytes:
            self._bucket.refund(self._nbytes, self._clock())
            self._nbytes = 0

    def release(self) -> None:
        """Give the tenant's fill slot back (once)."""
        slots, self._slots = self._slots, None
        if slots is not None:
            slots.release()


class TenantGate:
    """Admit each fill under its tenant's budget on this node, waiting at most its patience."""

    def __init__(self, limits: NodeLimits, block_size: int, metrics: NodeMetrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._limits, self._block_size, self._metrics = limits, block_size, metrics
        self._clock = clock
        self._budgets: dict[str, _Budget] = {}  # tenant -> budget; guarded by the loop

    async def admit(self, charge: Charge, nbytes: int) -> Ticket | None:
        """Return the fill's ticket once its tenant's budget allows it (None: no budget).

        Raises TenantThrottled, having taken nothing, when the wait would pass `wait_s`.
        """
        tenant = charge.tenant
        budget = self._budget(tenant)
        if budget is None:
            return None
        if budget.waiting >= MAX_WAITING:
            raise self._refused(tenant, f"{MAX_WAITING} of its fills already wait", 1.0)
        deadline = self._clock() + charge.wait_s
        slots, bucket = budget.slots, budget.bucket
        waited = slots is not None and not slots.free()
        budget.waiting += 1
        try:
            if slots is not None and not await slots.acquire(charge.wait_s):
                raise self._refused(tenant, f"{slots.limit} fills in flight", 1.0)
            try:
                waited = await self._take(tenant, bucket, nbytes, deadline) or waited
            except BaseException:
                if slots is not None:
                    slots.release()
                raise
        finally:
            budget.waiting -= 1
        if waited:
            self._metrics.tenant_throttled.labels(self._metrics.tenant(tenant), "waited").inc()
        return Ticket(slots, bucket, nbytes, self._clock)

    async def _take(self, tenant: str, bucket: TokenBucket | None, nbytes: int,
                    deadline: float) -> bool:
        """Reserve the fill's bytes and sleep until they are due; return whether it waited."""
        if bucket is None:
            return False
        now = self._clock()
        wait = bucket.reserve(nbytes, now, deadline - now)
        if wait is None:
            raise self._refused(tenant, f"{bucket.rate:.0f} bytes/s", bucket.wait_for(nbytes, now))
        if wait <= 0:
            return False
        try:
            await asyncio.sleep(wait)
        except BaseException:
            bucket.refund(nbytes, self._clock())  # the reader left: the bytes were not used
            raise
        return True

    def _budget(self, tenant: str) -> _Budget | None:
        """Return the tenant's budget here with its current limits (None: no budget)."""
        rate, fills = self._limits.origin_rate(tenant), self._limits.origin_fills(tenant)
        if rate is None and fills is None:
            return None
        budget = self._budgets.get(tenant)
        if budget is None:
            budget = self._budgets[tenant] = _Budget(None, None)
        if rate is None:
            budget.bucket = None
        else:
            burst = max(float(self._block_size), rate * BURST_S)
            if budget.bucket is None:
                budget.bucket = TokenBucket(rate, burst, self._clock())
            elif (budget.bucket.rate, budget.bucket.burst) != (rate, burst):
                budget.bucket.configure(rate, burst, self._clock())
        if fills is None:
            budget.slots = None  # fills holding the old slots release into it: harmless
        elif budget.slots is None:
            budget.slots = Slots(fills)
        elif budget.slots.limit != fills:
            budget.slots.set_limit(fills)
        return budget

    def _refused(self, tenant: str, why: str, retry_after_s: float) -> TenantThrottled:
        self._metrics.tenant_throttled.labels(self._metrics.tenant(tenant), "refused").inc()
        return TenantThrottled(tenant, why, max(1.0, min(retry_after_s, 60.0)))

"""SingleFlight: one call per key, shared result, cancellation-safe, errors never cached."""

from __future__ import annotations

import asyncio
import gc

import pytest

from cachenode.singleflight import FlightCancelled, SingleFlight


class Call:
    """A call that counts invocations and finishes when `release` is set."""

    def __init__(self, result: str = "v", error: Exception | None = None) -> None:
        self.calls = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.result, self.error = result, error

    async def __call__(self) -> str:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return self.result


@pytest.mark.asyncio
async def test_concurrent_callers_share_one_call() -> None:
    sf: SingleFlight[str] = SingleFlight()
    call = Call()
    tasks = [asyncio.create_task(sf.do("k", call)) for _ in range(50)]
    await call.started.wait()
    assert sf.running("k") and len(sf) == 1
    call.release.set()
    results = await asyncio.gather(*tasks)
    assert call.calls == 1
    assert [v for v, _ in results] == ["v"] * 50
    assert sum(1 for _, shared in results if not shared) == 1  # only the leader
    assert results[0] == ("v", False)
    assert not sf.running("k") and len(sf) == 0


@pytest.mark.asyncio
async def test_distinct_keys_run_separately() -> None:
    sf: SingleFlight[str] = SingleFlight()
    a, b = Call("a"), Call("b")
    ta, tb = asyncio.create_task(sf.do("a", a)), asyncio.create_task(sf.do("b", b))
    await asyncio.gather(a.started.wait(), b.started.wait())
    assert len(sf) == 2
    a.release.set()
    b.release.set()
    assert await ta == ("a", False)
    assert await tb == ("b", False)


@pytest.mark.asyncio
async def test_sequential_calls_do_not_share() -> None:
    sf: SingleFlight[str] = SingleFlight()
    call = Call()
    call.release.set()
    assert await sf.do("k", call) == ("v", False)
    assert await sf.do("k", call) == ("v", False)
    assert call.calls == 2  # results are not cached after the flight ends


@pytest.mark.asyncio
async def test_cancelling_first_caller_does_not_fail_others() -> None:
    sf: SingleFlight[str] = SingleFlight()
    call = Call()
    first = asyncio.create_task(sf.do("k", call))
    await call.started.wait()
    others = [asyncio.create_task(sf.do("k", call)) for _ in range(5)]
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert sf.running("k")  # the work goes on for the others
    call.release.set()
    assert await asyncio.gather(*others) == [("v", True)] * 5
    assert call.calls == 1


@pytest.mark.asyncio
async def test_all_callers_cancelled_work_still_finishes() -> None:
    sf: SingleFlight[str] = SingleFlight()
    call = Call()
    callers = [asyncio.create_task(sf.do("k", call)) for _ in range(3)]
    await call.started.wait()
    for t in callers:
        t.cancel()
    await asyncio.gather(*callers, return_exceptions=True)
    assert sf.running("k")
    late = asyncio.create_task(sf.do("k", call))  # joins the surviving flight
    await asyncio.sleep(0)
    call.release.set()
    assert await late == ("v", True)
    assert call.calls == 1


@pytest.mark.asyncio
async def test_error_reaches_every_waiter_and_is_not_cached() -> None:
    sf: SingleFlight[str] = SingleFlight()
    call = Call(error=RuntimeError("origin down"))
    tasks = [asyncio.create_task(sf.do("k", call)) for _ in range(10)]
    await call.started.wait()
    call.release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and str(r) == "origin down" for r in results)
    assert call.calls == 1
    assert not sf.running("k")
    ok = Call("fresh")
    ok.release.set()
    assert await sf.do("k", ok) == ("fresh", False)  # the next call retries
    assert ok.calls == 1


@pytest.mark.asyncio
async def test_error_with_no_waiters_left_is_not_reported_as_unretrieved() -> None:
    # filterwarnings=error plus the loop's exception handler: an unretrieved task
    # exception would be logged; capture the handler to be sure nothing is reported.
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx))
    try:
        sf: SingleFlight[str] = SingleFlight()
        call = Call(error=ValueError("boom"))
        t = asyncio.create_task(sf.do("k", call))
        await call.started.wait()
        t.cancel()
        await asyncio.gather(t, return_exceptions=True)
        del t  # its traceback would keep the fill task alive
        call.release.set()
        while sf.running("k"):
            await asyncio.sleep(0)
        gc.collect()
        await asyncio.sleep(0)
        assert reported == []
    finally:
        loop.set_exception_handler(None)


@pytest.mark.asyncio
async def test_close_cancels_calls_in_flight() -> None:
    sf: SingleFlight[str] = SingleFlight()
    call = Call()
    waiters = [asyncio.create_task(sf.do(k, call)) for k in ("a", "b")]
    await call.started.wait()
    await asyncio.sleep(0)
    assert len(sf) == 2
    await asyncio.wait_for(sf.close(), 1.0)
    assert len(sf) == 0
    for w in waiters:  # the waiters were not cancelled themselves: they get a clear error
        with pytest.raises(FlightCancelled, match="cancelled"):
            await w
    assert call.calls == 2


@pytest.mark.asyncio
async def test_a_cancelled_waiter_is_cancelled_not_failed() -> None:
    sf: SingleFlight[str] = SingleFlight()
    call = Call()
    waiter = asyncio.create_task(sf.do("a", call))
    await call.started.wait()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await sf.close()


@pytest.mark.asyncio
async def test_abandoned_call_is_cancelled_once_its_last_caller_leaves() -> None:
    sf: SingleFlight[str] = SingleFlight(cancel_abandoned=True)
    cancelled = asyncio.Event()

    async def slow() -> str:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    callers = [asyncio.create_task(sf.do("k", slow)) for _ in range(3)]
    await asyncio.sleep(0)
    callers[0].cancel()
    callers[1].cancel()
    await asyncio.gather(*callers[:2], return_exceptions=True)
    assert sf.running("k") and not cancelled.is_set()  # one caller still waits: it goes on
    callers[2].cancel()
    await asyncio.gather(callers[2], return_exceptions=True)
    await asyncio.wait_for(cancelled.wait(), 1)
    assert not sf.running("k")


@pytest.mark.asyncio
async def test_a_caller_after_an_abandoned_call_starts_afresh() -> None:
    sf: SingleFlight[str] = SingleFlight(cancel_abandoned=True)
    first, second = Call("old"), Call("new")
    t = asyncio.create_task(sf.do("k", first))
    await first.started.wait()
    t.cancel()
    await asyncio.gather(t, return_exceptions=True)
    late = asyncio.create_task(sf.do("k", second))  # the first call is still unwinding
    await second.started.wait()
    second.release.set()
    assert await late == ("new", False)
    assert (first.calls, second.calls) == (1, 1)


@pytest.mark.asyncio
async def test_waiters_of_a_finished_call_never_cancel_the_next_one() -> None:
    sf: SingleFlight[str] = SingleFlight(cancel_abandoned=True)
    a, b = Call("a"), Call("b")
    old = [asyncio.create_task(sf.do("k", a)) for _ in range(2)]
    await a.started.wait()
    a.release.set()
    while sf.running("k"):  # the call is done and forgotten...
        await asyncio.sleep(0)
    assert not any(t.done() for t in old)  # ...and its callers have not resumed yet
    nxt = asyncio.create_task(sf.do("k", b))
    assert [await t for t in old] == [("a", False), ("a", True)]
    await b.started.wait()
    assert sf.running("k")  # the old callers leaving did not count against the new call
    b.release.set()
    assert await nxt == ("b", False)


@pytest.mark.asyncio
async def test_a_caller_asking_again_within_the_grace_joins_the_abandoned_call() -> None:
    sf: SingleFlight[str] = SingleFlight(cancel_abandoned=True, grace_s=0.2)
    call = Call("v")
    first = asyncio.create_task(sf.do("k", call))
    await call.started.wait()
    first.cancel()  # a client gives up on its request...
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.sleep(0.05)
    again = asyncio.create_task(sf.do("k", call))  # ...and asks again at once
    await asyncio.sleep(0.3)  # past the grace: it was not cancelled, a caller came back
    call.release.set()
    assert await again == ("v", True) and call.calls == 1


@pytest.mark.asyncio
async def test_an_abandoned_call_is_cancelled_when_its_grace_runs_out() -> None:
    sf: SingleFlight[str] = SingleFlight(cancel_abandoned=True, grace_s=0.1)
    call = Call("v")
    first = asyncio.create_task(sf.do("k", call))
    await call.started.wait()
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert sf.running("k")  # kept for the grace
    async with asyncio.timeout(2):
        while sf.running("k"):
            await asyncio.sleep(0.01)
    fresh = asyncio.create_task(sf.do("k", call))
    await asyncio.sleep(0)
    call.release.set()
    assert await fresh == ("v", False) and call.calls == 2

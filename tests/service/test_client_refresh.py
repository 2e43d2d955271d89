"""CacheClient learns the group again in the background: no read waits on a hung seed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web

from client import CacheClient
from tests.servers import free_port


class FakeSeed:
    """A node that answers /ring, and hangs on it while `hang` is set."""

    def __init__(self) -> None:
        self.hang = asyncio.Event()
        self.release = asyncio.Event()
        self.asked = 0
        self.port = free_port()

    async def ring(self, request: web.Request) -> web.Response:
        self.asked += 1
        if self.hang.is_set():
            await self.release.wait()
        return web.json_response({"block_size": 4 * 2**20, "epoch": self.asked, "members": [
            {"id": "n0", "http": f"127.0.0.1:{self.port}", "grpc": "127.0.0.1:1",
             "weight": 100, "state": "up"}]})


@pytest_asyncio.fixture
async def seed() -> AsyncIterator[FakeSeed]:
    s = FakeSeed()
    app = web.Application()
    app.router.add_get("/ring", s.ring)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", s.port).start()
    try:
        yield s
    finally:
        s.release.set()
        await runner.cleanup()


@pytest.mark.asyncio
async def test_a_stale_view_is_refreshed_in_the_background_once_at_a_time(seed: FakeSeed
                                                                          ) -> None:
    async with CacheClient([f"127.0.0.1:{seed.port}"], refresh_s=0.1) as c:
        assert seed.asked == 1 and c.view is not None
        seed.hang.set()
        await asyncio.sleep(0.2)  # stale now
        t0 = time.monotonic()
        views = await asyncio.gather(*(c._current() for _ in range(20)))
        assert time.monotonic() - t0 < 0.05  # the last view, at once
        assert {v.epoch for v in views} == {1}
        await asyncio.sleep(0.1)
        assert seed.asked == 2  # one refresh under way, not twenty
        seed.hang.clear()
        assert c._refreshing is not None
        c._refreshing.cancel()  # as if its 5 s timeout had passed
        await asyncio.sleep(0)
        await c._current()
        await asyncio.sleep(0.1)
        assert seed.asked == 3 and c.view.epoch == 3  # refreshed

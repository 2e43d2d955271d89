"""Tell a hung node from a busy one while a request to it waits.

A node that is stopped (SIGSTOP), wedged or cut off mid-transfer still has its TCP
connections and listening socket: the kernel accepts, nothing answers. A busy node (its
origin fill is slow) answers nothing either until the block is ready. What tells them apart
is the event loop: a busy node's answers `/healthz` at once. `Liveness.run` lets a request
wait; once it has waited `probe_after_s`, and every `probe_after_s` after, it asks the node's
`/healthz` (one probe per node at a time, shared by every request waiting on it) and gives
the request up with `Hung` if that goes unanswered for `probe_timeout_s`. So a hung node
costs a reader about probe_after_s + probe_timeout_s, not the request's whole deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

import aiohttp

T = TypeVar("T")
PROBE_AFTER_S = 2.0
PROBE_TIMEOUT_S = 3.0


class Hung(Exception):
    """The node did not answer its health probe: the request was given up."""

    def __init__(self, addr: str, waited_s: float) -> None:
        super().__init__(addr, waited_s)
        self.addr, self.waited_s = addr, waited_s

    def __str__(self) -> str:
        return (f"{self.addr} hung: no answer to /healthz within {PROBE_TIMEOUT_S:g}s "
                f"after waiting {self.waited_s:.1f}s")


class Left(Exception):
    """The node left the group while the request waited: the request was given up."""

    def __init__(self, addr: str) -> None:
        super().__init__(addr)
        self.addr = addr

    def __str__(self) -> str:
        return f"{self.addr} left the group while the request waited"


class Liveness:
    """Health probes of nodes (host:port), shared by every request waiting on one node."""

    def __init__(self, probe_after_s: float = PROBE_AFTER_S,
                 probe_timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self.probe_after_s, self.probe_timeout_s = probe_after_s, probe_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._probes: dict[str, asyncio.Task[bool]] = {}  # addr -> probe in flight
        self._waiting: dict[str, set[asyncio.Task[Any]]] = {}  # addr -> requests waiting on it

    async def close(self) -> None:
        """Cancel the probes in flight and close their connections."""
        for t in self._probes.values():
            t.cancel()
        await asyncio.gather(*self._probes.values(), return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def abandon(self, keep: set[str]) -> int:
        """Cancel the requests waiting on nodes not in `keep` (they left); return how many."""
        gone = [a for a in self._waiting if a not in keep]
        n = 0
        for addr in gone:
            for t in self._waiting.pop(addr):
                n += t.cancel(f"{addr} left the group")
        return n

    async def run(self, addr: str, request: Coroutine[Any, Any, T]) -> T:
        """Return the request's result; raise Hung once `addr` fails its health probe, Left
        once `abandon` gave the request up."""
        task = asyncio.ensure_future(request)
        waiting = self._waiting.setdefault(addr, set())
        waiting.add(task)
        t0 = time.monotonic()
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.probe_after_s)
                if done:
                    if task.cancelled():
                        raise Left(addr)
                    return task.result()
                if not await self._alive(addr):
                    raise Hung(addr, time.monotonic() - t0)
        finally:
            waiting.discard(task)
            if not waiting and self._waiting.get(addr) is waiting:
                del self._waiting[addr]
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            elif not task.cancelled():
                task.exception()  # its caller may have gone at the moment it failed

    def _alive(self, addr: str) -> Awaitable[bool]:
        probe = self._probes.get(addr)
        if probe is None:
            probe = self._probes[addr] = asyncio.ensure_future(self._probe(addr))
            probe.add_done_callback(lambda t: self._probes.pop(addr, None))
        return asyncio.shield(probe)

    async def _probe(self, addr: str) -> bool:
        if self._session is None:  # its own small pool: the request pool may be all hung
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, force_close=True),
                timeout=aiohttp.ClientTimeout(total=self.probe_timeout_s))
        try:
            async with self._session.get(f"http://{addr}/healthz") as r:
                return r.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

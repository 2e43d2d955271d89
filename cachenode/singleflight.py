"""Single-flight: one shared task per key, so concurrent misses cause one fill."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from cachenode.errors import CacheError

T = TypeVar("T")
ABANDON_GRACE_S = 1.0  # how long work nobody waits for is kept for a caller asking again


class FlightCancelled(CacheError):
    """The shared call a caller waited for was cancelled by someone else."""

    def __init__(self, key: Hashable) -> None:
        super().__init__(key)
        self.reason = f"the shared fill of {key!r} was cancelled (node shutting down?)"


class SingleFlight(Generic[T]):
    """Run at most one call per key at a time; concurrent callers share its result.

    The call runs in its own task, so a caller that is cancelled does not cancel
    the work the others wait for. An error reaches every waiter and is not cached:
    the key is dropped as soon as the task ends, so the next call tries again.
    With `cancel_abandoned`, the call is cancelled once its last waiter has been gone for
    `grace_s` (a reader that left takes the origin or peer work only it waited for with
    it, yet a client that gives up and asks again at once, as the Run:ai streamer does
    after a second without bytes, joins the same call instead of starting it over); a
    caller after that starts a fresh one.
    """

    def __init__(self, cancel_abandoned: bool = False, grace_s: float = 0.0) -> None:
        self._tasks: dict[Hashable, asyncio.Task[T]] = {}  # key -> running fill
        self._waiters: dict[asyncio.Task[T], int] = {}  # callers awaiting each task
        self._timers: dict[asyncio.Task[T], asyncio.TimerHandle] = {}  # abandoned, in grace
        self._cancel_abandoned, self._grace_s = cancel_abandoned, grace_s

    def __len__(self) -> int:
        return len(self._tasks)

    def running(self, key: Hashable) -> bool:
        """Return whether a call for `key` is in flight."""
        return key in self._tasks

    def join(self, key: Hashable, fn: Callable[[], Awaitable[T]]
             ) -> tuple[asyncio.Task[T], bool, Callable[[], None]]:
        """Join or start the call for `key`; return its task, `shared` and a `leave` to call
        once the caller no longer waits (it counts as a waiter until then)."""
        task = self._tasks.get(key)
        shared = task is not None
        if task is None:
            task = asyncio.ensure_future(fn())
            self._tasks[key] = task
            task.add_done_callback(functools.partial(self._forget, key))
        self._waiters[task] = self._waiters.get(task, 0) + 1
        timer = self._timers.pop(task, None)
        if timer is not None:
            timer.cancel()  # abandoned a moment ago: wanted again
        left = False

        def leave() -> None:
            nonlocal left
            if not left:
                left = True
                self._leave(key, task)

        return task, shared, leave

    async def do(self, key: Hashable, fn: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Return fn()'s result for `key` and whether it was shared with another caller."""
        task, shared, leave = self.join(key, fn)
        try:
            return await asyncio.shield(task), shared
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                # The shared call was cancelled from elsewhere (shutdown, a closed channel),
                # not this caller: report a failure rather than a cancellation it never asked
                # for, which a server would otherwise treat as a vanished client.
                raise FlightCancelled(key) from None
            raise
        finally:
            leave()

    def _leave(self, key: Hashable, task: asyncio.Task[T]) -> None:
        left = self._waiters[task] - 1
        if left > 0:
            self._waiters[task] = left
            return
        del self._waiters[task]
        if not self._cancel_abandoned or task.done():
            return
        if self._grace_s > 0:
            self._timers[task] = asyncio.get_running_loop().call_later(
                self._grace_s, self._abandon, key, task)
        else:
            self._abandon(key, task)

    def _abandon(self, key: Hashable, task: asyncio.Task[T]) -> None:
        """Cancel a call nobody waits for any more."""
        self._timers.pop(task, None)
        if task in self._waiters or task.done():
            return
        task.cancel("every caller left")
        if self._tasks.get(key) is task:
            del self._tasks[key]  # a new caller starts afresh, never joins a cancelled call

    def _forget(self, key: Hashable, task: asyncio.Task[T]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        timer = self._timers.pop(task, None)
        if timer is not None:
            timer.cancel()
        if not task.cancelled():
            task.exception()  # mark retrieved: waiters may all have gone

    async def close(self) -> None:
        """Cancel every call in flight and wait for them to end."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel("single-flight closing")
        await asyncio.gather(*tasks, return_exceptions=True)

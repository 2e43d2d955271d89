"""Single-flight: one shared task per key, so concurrent misses cause one fill."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Run at most one call per key at a time; concurrent callers share its result.

    The call runs in its own task, so a caller that is cancelled does not cancel
    the work the others wait for. An error reaches every waiter and is not cached:
    the key is dropped as soon as the task ends, so the next call tries again.
    """

    def __init__(self) -> None:
        self._tasks: dict[Hashable, asyncio.Task[T]] = {}  # key -> running fill

    def __len__(self) -> int:
        return len(self._tasks)

    def running(self, key: Hashable) -> bool:
        """Return whether a call for `key` is in flight."""
        return key in self._tasks

    async def do(self, key: Hashable, fn: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Return fn()'s result for `key` and whether it was shared with another caller."""
        task = self._tasks.get(key)
        shared = task is not None
        if task is None:
            task = asyncio.ensure_future(fn())
            self._tasks[key] = task
            task.add_done_callback(functools.partial(self._forget, key))
        return await asyncio.shield(task), shared

    def _forget(self, key: Hashable, task: asyncio.Task[T]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # mark retrieved: waiters may all have gone

    async def close(self) -> None:
        """Cancel every call in flight and wait for them to end."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel("single-flight closing")
        await asyncio.gather(*tasks, return_exceptions=True)

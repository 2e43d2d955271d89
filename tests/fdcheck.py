"""Leak checks on this process's open file descriptors that tolerate transient fds.

Background work the test does not control (executor threads, aiohttp connectors, write-behind
tasks, the event loop's self-pipe) can hold an fd for a moment after the code under test is
done. An exact `open_fds() == baseline` then fails at random on a loaded machine. These helpers
poll instead: a transient fd goes away within the grace period, a leaked one does not, and the
failure message names every fd still open.
"""

from __future__ import annotations

import asyncio
import os
import time

FD_DIR = "/proc/self/fd"


def open_fds() -> int:
    """Return how many file descriptors this process has open."""
    return len(os.listdir(FD_DIR))


def _describe() -> str:
    out = []
    for name in sorted(os.listdir(FD_DIR), key=int):
        try:
            out.append(f"{name} -> {os.readlink(os.path.join(FD_DIR, name))}")
        except OSError:  # closed between listdir and readlink (or the listdir's own fd)
            pass
    return "\n  ".join(out)


async def settle_fds(baseline: int, timeout_s: float = 2.0, poll_s: float = 0.01) -> None:
    """Wait until at most `baseline` fds are open, letting the event loop run meanwhile.

    Fails with the list of open fds if the count is still above `baseline` after `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    while (now := open_fds()) > baseline and time.monotonic() < deadline:
        await asyncio.sleep(poll_s)
    assert now <= baseline, (
        f"{now - baseline} fd(s) still open {timeout_s:g}s after the check began "
        f"({now} open, baseline {baseline}):\n  {_describe()}")

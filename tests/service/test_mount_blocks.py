"""The mount's blocks in memory with a fake group: one fetch per block, the budget holds,
read-ahead never pushes out unread blocks, errors are not kept, the group fetch's bound."""

from __future__ import annotations

import asyncio
import time

import pytest

from client.errors import ClientError, ObjectChanged, Unavailable
from client.mount.blocks import Blocks, Closed
from client.mount.group import GroupFetch
from client.mount.namespace import FileVersion
from client.mount.stats import Stats

BS = 1024


def blob(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(n))


class FakeGroup:
    """Serves blocks of objects by key; counts fetches; can be slow or fail."""

    def __init__(self, data: dict[str, bytes], delay_s: float = 0.0) -> None:
        self.data, self.delay_s = data, delay_s
        self.fetches: list[tuple[str, int]] = []
        self.fail: BaseException | None = None
        self.inflight = self.most_inflight = 0

    async def __call__(self, v: FileVersion, i: int) -> bytes:
        self.fetches.append((v.key, i))
        self.inflight += 1
        self.most_inflight = max(self.most_inflight, self.inflight)
        try:
            await asyncio.sleep(self.delay_s)
            if self.fail is not None:
                raise self.fail
            return self.data[v.key][i * BS:(i + 1) * BS]
        finally:
            self.inflight -= 1


def version(key: str, size: int, ino: int = 2) -> FileVersion:
    return FileVersion(ino, key, size, "e", 0)


@pytest.mark.asyncio
async def test_concurrent_readers_of_a_block_cause_one_fetch_and_slices_are_exact() -> None:
    data = blob(10 * BS + 17)
    g = FakeGroup({"k": data}, delay_s=0.01)
    b = Blocks(g, BS, 8 * BS, Stats())
    v = version("k", len(data))
    piece = 3 * BS // 10 + 1  # disjoint pieces, as the kernel asks (pages it lacks)
    got = await asyncio.gather(*(b.read(v, 100 + i * piece, piece) for i in range(10)))
    assert got == [data[100 + i * piece:100 + (i + 1) * piece] for i in range(10)]
    assert sorted(g.fetches) == [("k", 0), ("k", 1), ("k", 2), ("k", 3)]
    assert bytes(await b.read(v, 5, 10)) == data[5:15]  # block 0 is not all read: kept
    assert len(g.fetches) == 4
    assert await b.read(v, 0, 5) == data[:5]
    assert await b.read(v, 15, 85) == data[15:100]  # now all read: let go
    assert (2, 0) not in b._entries and (2, 3) in b._entries  # 1 and 2 went at once
    assert await b.read(v, 10 * BS + 10, BS) == data[10 * BS + 10:]  # short at the end
    assert await b.read(v, len(data), BS) == b""
    assert await b.read(version("empty", 0, ino=3), 0, BS) == b""


@pytest.mark.asyncio
async def test_memory_stays_within_the_budget_and_read_ahead_keeps_out_of_unread_blocks() -> None:
    data = {f"f{j}": blob(64 * BS, j) for j in range(3)}
    g = FakeGroup(data, delay_s=0.002)
    stats = Stats()
    b = Blocks(g, BS, 8 * BS, stats)
    assert b.reserve == 2 * BS
    vs = [version(f"f{j}", 64 * BS, ino=10 + j) for j in range(3)]

    async def sequential(v: FileVersion) -> bytes:
        parts = [await b.read(v, off, BS // 2, ahead=4) for off in range(0, 64 * BS, BS // 2)]
        return b"".join(parts)

    got = await asyncio.gather(*(sequential(v) for v in vs))
    assert got == [data[v.key] for v in vs]
    assert stats.memory_peak_bytes <= 8 * BS and b.used <= 8 * BS
    assert stats.readahead_started > 0 and stats.readahead_used > 0
    assert stats.readahead_skipped > 0  # three readers want 15 blocks ahead of 8 in budget
    assert stats.readahead_unused == 0  # read-ahead only evicts blocks that were read
    assert len(g.fetches) == 3 * 64  # every block once


@pytest.mark.asyncio
async def test_a_demand_read_waits_for_room_when_every_block_is_in_flight() -> None:
    data = {f"f{j}": blob(4 * BS, j) for j in range(4)}
    g = FakeGroup(data, delay_s=0.05)
    b = Blocks(g, BS, 2 * BS, Stats())
    vs = [version(f"f{j}", 4 * BS, ino=10 + j) for j in range(4)]
    got = await asyncio.gather(*(b.read(v, 0, BS) for v in vs))
    assert got == [data[v.key][:BS] for v in vs]
    assert g.most_inflight == 2  # the budget: two blocks at a time


@pytest.mark.asyncio
async def test_a_failed_fetch_is_not_kept_and_close_fails_waiting_reads() -> None:
    data = blob(4 * BS)
    g = FakeGroup({"k": data})
    b = Blocks(g, BS, 4 * BS, Stats())
    v = version("k", len(data))
    g.fail = ObjectChanged("gone")
    with pytest.raises(ObjectChanged):
        await b.read(v, 0, 10)
    g.fail = None
    assert await b.read(v, 0, 10) == data[:10]
    assert g.fetches == [("k", 0), ("k", 0)]
    g.delay_s = 10.0
    reader = asyncio.ensure_future(b.read(v, 2 * BS, 10))
    await asyncio.sleep(0.01)
    await b.close()
    with pytest.raises(Closed):
        await reader
    with pytest.raises(ClientError, match="at least 2 blocks"):
        Blocks(g, BS, BS, Stats())


class DownClient:
    """A CacheClient stand-in whose every read fails as if no node answered."""

    def __init__(self) -> None:
        self.calls = 0

    async def read_range(self, info: object, start: int, length: int) -> bytes:
        self.calls += 1
        raise Unavailable("no node could serve it")


@pytest.mark.asyncio
async def test_the_group_fetch_retries_until_its_bound_then_fails_fast() -> None:
    client = DownClient()
    stats = Stats()
    fetch = GroupFetch(client, "b", BS, 1.0, stats)  # type: ignore[arg-type]
    v = version("k", 4 * BS)
    t0 = time.monotonic()
    with pytest.raises(Unavailable, match="s3://b/k block 1: no node could serve it"):
        await fetch(v, 1)
    took = time.monotonic() - t0
    assert 0.5 < took < 1.5, took  # retried with backoff, given up within --read-timeout
    assert client.calls >= 3 and stats.group_retries == client.calls - 1
    t0, calls = time.monotonic(), client.calls
    with pytest.raises(Unavailable):
        await fetch(v, 2)
    assert time.monotonic() - t0 < 0.2 and client.calls == calls + 1  # down: one try

"""Router over an in-process group: FakeOrigin, real DiskStores, FakePeers between them."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from cachenode.blocks import BlockRef, ObjectMeta
from cachenode.config import NodeConfig
from cachenode.errors import OriginNotFound, PeerUnavailable
from cachenode.fill import Filler
from cachenode.metrics import NodeMetrics
from cachenode.qos import NOBODY, Charge
from cachenode.routing import Fetched, Router
from cachenode.store.disk import DiskStore
from cachenode.store.files import OpenBlock
from tests.fakes import FakeOrigin

BS = 64 * 1024


@dataclass(frozen=True)
class Rec:
    http: str
    weight: int = 100
    state: str = "up"
    block_size: int = 0
    registered_at: float = 0.0
    filled_since: float = 0.0


class FakePeers:
    """Deliver read_block calls to the routers of the group, by address; addresses can die."""

    def __init__(self, group: Group, me: str) -> None:
        self._group, self._me = group, me
        self.calls: list[tuple[str, int, bool]] = []  # (addr, block index, cached_only)

    def is_down(self, addr: str) -> bool:
        return addr in self._group.dead

    def forget(self, keep: set[str]) -> None:
        pass

    async def read_block(self, addr: str, ref: BlockRef, *, hops: int, epoch: int,
                         cached_only: bool = False, timeout_s: float | None = None,
                         charge: Charge = NOBODY) -> bytes:
        self.calls.append((addr, ref.index, cached_only))
        if addr in self._group.dead:
            raise PeerUnavailable(addr, "connection refused")
        if addr in self._group.hung:
            await asyncio.sleep(3600 if timeout_s is None else timeout_s)
            raise PeerUnavailable(addr, "timed out")
        got = await self._group.nodes[addr].router.read_block(ref, hops, cached_only, charge)
        if isinstance(got, Fetched):
            return got.data
        try:  # a disk hit: checked against its CRC-32C when opened, sent as a file
            return os.pread(got.fd, got.size, 0)
        finally:
            got.close()


class Node:
    def __init__(self, group: Group, name: str, tmp_path: Path) -> None:
        self.config = NodeConfig(data_dir=tmp_path / name, block_size_bytes=BS,
                                 capacity_bytes=512 * BS, node_id=name)
        self.metrics = NodeMetrics()
        self.store = DiskStore(self.config.data_dir, self.config.capacity_bytes, self.metrics)
        self.store.open()
        self.filler = Filler(self.config, group.origin, self.store, self.metrics)
        self.peers = FakePeers(group, name)
        self.router = Router(name, self.filler, self.metrics, self.peers)

    async def read(self, ref: BlockRef) -> bytes:
        got = await self.router.read_block(ref)
        if isinstance(got, Fetched):
            return got.data
        try:
            import os
            return os.pread(got.fd, got.size, 0)
        finally:
            got.close()

    async def close(self) -> None:
        await self.filler.close()
        self.store.close()


class Group:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.origin = FakeOrigin()
        self.nodes: dict[str, Node] = {}
        self.dead: set[str] = set()
        self.hung: set[str] = set()
        self.epoch = 0

    def add(self, name: str) -> Node:
        self.nodes[name] = Node(self, name, self.tmp_path)
        self.publish()
        return self.nodes[name]

    def publish(self, members: Mapping[str, Rec] | None = None) -> None:
        self.epoch += 1
        members = members or {n: Rec(n) for n in self.nodes if n not in self.dead}
        for node in self.nodes.values():
            node.router.update(members, self.epoch)

    def gets(self) -> int:
        return sum(self.origin.gets.values())

    async def flush(self) -> None:
        for n in self.nodes.values():
            await n.filler.flush()


@pytest_asyncio.fixture
async def group(tmp_path: Path) -> AsyncIterator[Group]:
    g = Group(tmp_path)
    for name in ("a", "b", "c"):
        g.add(name)
    yield g
    for n in g.nodes.values():
        await n.close()


def blob(size: int) -> bytes:
    unit = bytes((i * 31 + (i >> 9)) % 251 for i in range(251 * 64))  # blocks differ
    return (unit * (size // len(unit) + 1))[:size]


def obj(group: Group, size: int = 24 * BS, key: str = "model.bin") -> tuple[ObjectMeta, bytes]:
    data = blob(size)
    etag = group.origin.put("bkt", key, data)
    return ObjectMeta("bkt", key, size, etag), data


@pytest.mark.asyncio
async def test_any_node_serves_every_block_with_one_origin_get_each(group: Group) -> None:
    meta, data = obj(group)
    refs = [BlockRef(meta, i, BS) for i in range(24)]
    reads = [n.read(r) for r in refs for n in group.nodes.values() for _ in range(3)]
    got = await asyncio.gather(*reads)
    for i, g in enumerate(got):
        r = refs[i // 9]
        assert g == data[r.start:r.start + r.length]
    assert group.gets() == 24  # only owners fill: one GET per block across the group
    owners = {r.index: group.nodes["a"].router.owners(r)[0] for r in refs}
    await group.flush()
    for r in refs:  # each block is stored on its owner only
        holders = {name for name, n in group.nodes.items()
                   if n.store.has(r.block_id, r.length)}
        assert holders == {owners[r.index]}
    assert len(set(owners.values())) == 3  # 24 blocks spread over all three


@pytest.mark.asyncio
async def test_dead_owner_fails_over_to_the_next_owner(group: Group) -> None:
    meta, data = obj(group)
    refs = [BlockRef(meta, i, BS) for i in range(24)]
    group.dead.add("b")  # b died; the others have not noticed yet (ring unchanged)
    got = await asyncio.gather(*(group.nodes["a"].read(r) for r in refs))
    assert b"".join(got) == data
    via_b = [r for r in refs if group.nodes["a"].router.owners(r)[0] == "b"]
    assert via_b, "some blocks must be owned by b"
    assert group.gets() == 24


@pytest.mark.asyncio
async def test_forwarded_reads_are_served_where_they_land(group: Group) -> None:
    meta, data = obj(group, 2 * BS)
    ref = BlockRef(meta, 0, BS)
    owner = group.nodes["a"].router.owners(ref)[0]
    other = next(n for n in group.nodes if n != owner)
    # a forwarded request (hops=1) is never forwarded again, even by a non-owner
    got = await group.nodes[other].router.read_block_bytes(ref, hops=1)
    assert got == data[:BS]
    forwards = [c for p in group.nodes.values() for c in p.peers.calls if not c[2]]
    assert forwards == []  # (a handoff question to the previous owner is allowed)


@pytest.mark.asyncio
async def test_join_hands_blocks_off_instead_of_refetching(group: Group) -> None:
    meta, data = obj(group, 48 * BS)
    refs = [BlockRef(meta, i, BS) for i in range(48)]
    await asyncio.gather(*(group.nodes["a"].read(r) for r in refs))
    await group.flush()
    assert group.gets() == 48
    d = group.add("d")  # the ring changes: some blocks now belong to d
    moved = [r for r in refs if d.router.owners(r)[0] == "d"]
    assert 0 < len(moved) < 48
    got = await asyncio.gather(*(n.read(r) for r in refs for n in group.nodes.values()))
    assert all(g == data[refs[i // 4].start:refs[i // 4].start + BS] for i, g in enumerate(got))
    assert group.gets() == 48  # moved blocks came from their previous owners' disks
    assert d.metrics.value("blockcache_handoffs_total", result="hit") == len(moved)


@pytest.mark.asyncio
async def test_errors_of_the_owner_reach_the_reader(group: Group) -> None:
    meta = ObjectMeta("bkt", "missing", 3 * BS, '"x"')
    for i in range(3):
        with pytest.raises(OriginNotFound):
            await group.nodes["a"].read(BlockRef(meta, i, BS))


@pytest.mark.asyncio
async def test_draining_nodes_leave_the_ring_but_still_answer(group: Group) -> None:
    meta, data = obj(group)
    refs = [BlockRef(meta, i, BS) for i in range(24)]
    group.publish({"a": Rec("a"), "b": Rec("b"), "c": Rec("c", state="draining")})
    assert all("c" not in group.nodes["a"].router.owners(r) for r in refs)
    got = await asyncio.gather(*(group.nodes["c"].read(r) for r in refs))
    assert b"".join(got) == data
    assert not isinstance(await group.nodes["c"].router.read_block(refs[0]), OpenBlock)


@pytest.mark.asyncio
async def test_a_group_formed_together_stops_asking_for_handoffs(group: Group) -> None:
    meta, _ = obj(group, 600 * BS)
    refs = [BlockRef(meta, i, BS) for i in range(600)]
    await asyncio.gather(*(group.nodes["a"].read(r) for r in refs))
    probes = sum(1 for n in group.nodes.values() for c in n.peers.calls if c[2])
    assert probes <= 3 * 2 * 64  # each owner gives up on each source after 64 misses
    assert group.gets() == 600


def probes(group: Group) -> int:
    return sum(1 for n in group.nodes.values() for c in n.peers.calls if c[2])


@pytest.mark.asyncio
async def test_a_group_registered_together_asks_no_handoff_question(group: Group) -> None:
    t = 1_700_000_000.0
    group.publish({n: Rec(n, registered_at=t + i) for i, n in enumerate(group.nodes)})
    meta, data = obj(group, 96 * BS)
    refs = [BlockRef(meta, i, BS) for i in range(96)]
    got = await asyncio.gather(*(group.nodes["a"].read(r) for r in refs))
    assert b"".join(got) == data
    assert probes(group) == 0
    assert group.gets() == 96
    d = group.add("d")  # joins once the others filled: it asks them, they do not ask it
    times = {"a": (t, t + 9), "b": (t, t + 9), "c": (t, t + 9), "d": (t + 600, 0.0)}
    group.publish({n: Rec(n, registered_at=r, filled_since=f) for n, (r, f) in times.items()})
    moved = [r for r in refs if d.router.owners(r)[0] == "d"]
    assert moved and all(d.router._handoff_sources(r) for r in moved)
    assert not any(group.nodes[n].router._handoff_sources(r) for n in "abc" for r in refs)
    await asyncio.gather(*(d.read(r) for r in moved))
    assert group.gets() == 96  # handed off, not refetched
    group.publish({n: Rec(n, registered_at=r, filled_since=f,
                          state="draining" if n == "c" else "up")
                   for n, (r, f) in times.items()})  # c drains: the new owners ask it
    assert any("c" in group.nodes[n].router._handoff_sources(r) for n in "abd" for r in refs)


@pytest.mark.asyncio
async def test_a_hung_handoff_source_costs_seconds_not_the_fill(group: Group) -> None:
    import time

    meta, data = obj(group, 240 * BS)  # enough blocks that d owns some c held before
    refs = [BlockRef(meta, i, BS) for i in range(240)]
    group.hung.add("c")  # c still looks alive but never answers
    d = group.add("d")
    mine = [r for r in refs if d.router.owners(r)[0] == "d"
            and "c" in d.router._handoff_sources(r)]
    assert mine, "some of d's blocks must have c as their previous holder"
    t0 = time.monotonic()
    assert await d.read(mine[0]) == data[mine[0].start:mine[0].start + BS]
    assert time.monotonic() - t0 < 5  # the handoff question timed out; the origin filled it


@pytest.mark.asyncio
async def test_a_source_leaving_during_a_handoff_is_skipped(group: Group) -> None:
    meta, data = obj(group, 240 * BS)  # enough blocks that some have two sources
    refs = [BlockRef(meta, i, BS) for i in range(240)]
    d = group.add("d")
    d.router.update({"a": Rec("a"), "b": Rec("b")}, 100)  # d's previous view: only a and b
    d.router.update({n: Rec(n) for n in "abcd"}, 101)
    r = next(r for r in refs if d.router.owners(r)[0] == "d"
             and len(d.router._handoff_sources(r)) == 2)
    first, second = d.router._handoff_sources(r)
    original = d.peers.read_block

    async def leave_meanwhile(addr: str, ref: BlockRef, **kw: object) -> bytes:
        if addr == first:  # while the first source is asked, the second leaves the group
            group.publish({n: Rec(n) for n in group.nodes if n != second})
        return await original(addr, ref, **kw)  # type: ignore[arg-type]

    d.peers.read_block = leave_meanwhile  # type: ignore[method-assign]
    assert await d.read(r) == data[r.start:r.start + BS]


def test_nodes_with_another_block_size_are_left_off_the_ring(group: Group) -> None:
    a = group.nodes["a"].router
    a.update({"a": Rec("a", block_size=BS), "b": Rec("b", block_size=BS),
              "c": Rec("c", block_size=2 * BS)}, 50)
    assert a.ring is not None and a.ring.nodes == {"a", "b"}


def test_the_client_skips_members_with_another_block_size() -> None:
    from client.membership import Member, _same_block_size

    members = {"a": Member("a", "h:1", "h:2", block_size=BS), "b": Member("b", "h:3", "h:4"),
               "c": Member("c", "h:5", "h:6", block_size=2 * BS)}
    view = _same_block_size(members, BS, 7)
    assert set(view.members) == {"a", "b"} and view.block_size == BS and view.epoch == 7


@pytest.mark.asyncio
async def test_a_fill_is_charged_on_the_owner_and_its_budget_is_never_failed_over(
        group: Group) -> None:
    from cachenode.access import TenantLimits
    from cachenode.errors import TenantThrottled
    from cachenode.limits import NodeLimits
    from cachenode.qos import TenantGate
    from tests.fakes import FakeTenants

    tenants = FakeTenants({"z": TenantLimits(origin_bytes_per_s=BS // 8)})  # 8 s a block
    for n in group.nodes.values():
        n.filler.gate = TenantGate(NodeLimits(tenants, lambda: 1.0), BS, n.metrics)
    meta, _ = obj(group, 24 * BS)  # enough blocks that some owner has two (ETags are random)
    refs = [BlockRef(meta, i, BS) for i in range(24)]
    a = group.nodes["a"]
    remote = [r for r in refs if a.router.owners(r)[0] != "a"]
    first, second = [r for r in remote if a.router.owners(r)[0] == a.router.owners(remote[0])[0]
                     ][:2]
    owner = a.router.owners(first)[0]
    got = await a.router.read_block(first, charge=Charge("z"))  # the owner's burst
    assert isinstance(got, Fetched) and got.source == "peer"
    await group.flush()
    e = group.nodes[owner].store.entry(first.block_id)
    assert e is not None and (e.tenant, e.warmed) == ("z", False)  # z's, on the owner
    gets, calls = group.gets(), len(a.peers.calls)
    with pytest.raises(TenantThrottled) as err:
        await a.router.read_block(second, charge=Charge("z"))
    assert err.value.tenant == "z"
    assert a.peers.calls[calls:] == [(owner, second.index, False)]  # no second owner asked
    assert group.gets() == gets  # nor any fill here
    data = await a.read(second)  # nobody's read is not z's budget
    assert len(data) == BS

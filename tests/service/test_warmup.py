"""SiteWarmup with fake nodes: rounds, retries, owner changes and counters, without servers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cachenode.blocks import ObjectMeta
from client.membership import GroupView, Member
from coordinator.config import CoordinatorConfig
from coordinator.nodes import NodeFailed
from coordinator.warmup import SiteLimits, SiteWarmup

BS = 4 * 2**20


class FakeNodes:
    """A site whose members can die; each node keeps the blocks it was asked to warm."""

    def __init__(self, n: int) -> None:
        self.members = {f"n{i}": Member(f"n{i}", f"n{i}:1", f"n{i}:2", 100, "up", BS)
                        for i in range(n)}
        self.dead: set[str] = set()
        self.stored: dict[str, set[tuple[str, int]]] = {i: set() for i in self.members}
        self.fails: dict[tuple[str, int], str] = {}  # block -> error the node reports
        self.calls = 0
        self.after_call: Any = None

    async def view(self, site: str) -> GroupView:
        return GroupView({i: m for i, m in self.members.items() if i not in self.dead}, BS)

    async def warm(self, addr: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        self.calls += 1
        node = addr.split(":")[0]
        if self.after_call:
            self.after_call(self)
        if node in self.dead:
            raise NodeFailed(f"{addr}: connection refused")
        out = []
        for o in body["objects"]:
            for i in o["indices"]:
                if (o["key"], i) in self.fails:
                    out.append({"status": "failed", "error": self.fails[(o["key"], i)],
                                "reason": "boom"})
                    continue
                status = "present" if (o["key"], i) in self.stored[node] else "filled"
                self.stored[node].add((o["key"], i))
                out.append({"status": status})
        return out


def _config(**kw: Any) -> CoordinatorConfig:
    return CoordinatorConfig(etcd_endpoints=("http://127.0.0.1:2379",), retry_base_s=0.0,
                             batch_blocks=4, **kw)


def _run(nodes: FakeNodes, objs: list[ObjectMeta], **kw: Any) -> SiteWarmup:
    cfg = _config(**kw)
    w = SiteWarmup("s1", objs, False, cfg, nodes, SiteLimits(cfg))  # type: ignore[arg-type]
    asyncio.run(w.run())
    return w


OBJS = [ObjectMeta("b", f"m/{i}", 10 * BS + 1, f'"{i}"') for i in range(6)]  # 66 blocks


def test_every_block_lands_once_and_a_rerun_finds_them_present() -> None:
    nodes = FakeNodes(3)
    w = _run(nodes, OBJS)
    p = w.progress
    assert (p.blocks_total, p.blocks_done, p.origin_fills, p.present, p.blocks_failed) == (
        66, 66, 66, 0, 0)
    assert p.bytes_done == p.bytes_total == 6 * (10 * BS + 1)
    assert sum(len(s) for s in nodes.stored.values()) == 66  # each block on one node
    again = _run(nodes, OBJS).progress
    assert (again.origin_fills, again.present, again.blocks_done) == (0, 66, 66)


def test_a_node_that_dies_mid_warmup_hands_its_blocks_to_the_new_owners() -> None:
    nodes = FakeNodes(3)

    def kill_after_some(n: FakeNodes) -> None:
        if n.calls == 6:
            n.dead.add("n1")

    nodes.after_call = kill_after_some
    w = _run(nodes, OBJS)
    p = w.progress
    assert (p.blocks_done, p.blocks_failed) == (66, 0)
    assert p.origin_fills + p.present == p.blocks_done  # re-warmed blocks are not counted twice
    live = nodes.stored["n0"] | nodes.stored["n2"]
    assert len(live) == 66  # every block is on a live node
    assert p.retries > 0 or nodes.stored["n1"]


def test_a_block_that_fails_for_good_is_reported_and_a_passing_failure_is_retried() -> None:
    nodes = FakeNodes(2)
    nodes.fails[("m/0", 3)] = "ObjectChanged"
    nodes.fails[("m/1", 0)] = "OriginUnavailable"
    w = _run(nodes, OBJS, block_attempts=3)
    p = w.progress
    assert (p.blocks_done, p.blocks_failed) == (64, 2)
    assert [(f.key, f.error, f.blocks) for f in w.failed] == [
        ("m/0", "ObjectChanged", 1), ("m/1", "OriginUnavailable", 1)]
    assert p.retries == 2  # the passing failure was tried 3 times in all, the other once


def test_a_site_with_no_node_up_fails_every_block_and_ends() -> None:
    nodes = FakeNodes(1)
    nodes.members["n0"] = Member("n0", "n0:1", "n0:2", 100, "draining", BS)
    w = _run(nodes, OBJS[:1], block_attempts=2)
    assert w.progress.blocks_failed == 11 and w.failed[0].error == "Unreachable"


def test_a_malformed_node_answer_fails_the_site_without_leaving_workers_behind() -> None:
    nodes = FakeNodes(2)

    async def broken(addr: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        raise KeyError("results")

    nodes.warm = broken  # type: ignore[method-assign]
    with pytest.raises(ExceptionGroup):
        _run(nodes, OBJS)


def test_blocks_in_flight_stay_under_the_site_cap_and_fill_it() -> None:
    nodes = FakeNodes(3)
    inner = nodes.warm
    now, peak = 0, 0

    async def slow(addr: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        nonlocal now, peak
        n = sum(len(o["indices"]) for o in body["objects"])
        now += n
        peak = max(peak, now)
        await asyncio.sleep(0.01)
        now -= n
        return await inner(addr, body)

    nodes.warm = slow  # type: ignore[method-assign]
    w = _run(nodes, OBJS, site_inflight_blocks=10, node_concurrency=2)
    assert w.progress.blocks_done == 66
    assert 8 <= peak <= 10  # batches of 4 from 3 nodes share 10 slots

"""Route each block read: this node's disk, else the block's owner, the next owners, origin.

Only the owner of a block fills it from the origin, so single-flight holds across the group.
A request forwarded by another node (hops > 0) is always served here: nothing loops while
nodes disagree about the ring. When the ring changes, a new owner that misses a block asks
the previous owner's disk before the origin (handoff), so scaling out is no refetch storm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from cachenode.blocks import BlockRef
from cachenode.errors import (
    BlockNotCached,
    CacheError,
    DiskUnavailable,
    OriginDenied,
    Overloaded,
    PeerUnavailable,
    StoreFull,
    TenantThrottled,
)
from cachenode.fill import Filler
from cachenode.filling import LiveBlock
from cachenode.handoff import HandoffPlan
from cachenode.limits import node_share
from cachenode.metrics import NodeMetrics
from cachenode.qos import NOBODY, Charge
from cachenode.ring import EmptyRing, Ring
from cachenode.singleflight import ABANDON_GRACE_S, FlightCancelled, SingleFlight
from cachenode.store.files import OpenBlock

log = logging.getLogger(__name__)
OWNERS_TRIED = 3  # the owner, then up to two successors, then a fill here
HANDOFF_TIMEOUT_S = 2.0  # a handoff is a disk read on a peer: a slow one is not worth waiting for
PEER_READS_MAX = 64  # blocks being read from peers at once, per node (memory: x block size)
PEER_READS_PER_NODE = 32  # ...of which from one peer: a hung one cannot take every slot
PEER_READS_PER_TENANT = 16  # ...of which for one tenant with an origin budget (it may wait)
# The peer's own trouble: ask the next owner. (A 404 or 416 is the object's, and final; so is
# the origin failing or timing out for the peer: asking others would multiply the load on an
# origin that is down or throttling. Denied credentials are that node's own problem.)
_TRY_NEXT = (PeerUnavailable, Overloaded, StoreFull, DiskUnavailable, FlightCancelled,
             OriginDenied)
_NO_LIMIT = contextlib.nullcontext()


class Member(Protocol):
    """What routing needs of a membership record."""

    @property
    def http(self) -> str: ...
    @property
    def weight(self) -> int: ...
    @property
    def state(self) -> str: ...
    @property
    def block_size(self) -> int: ...
    @property
    def registered_at(self) -> float: ...
    @property
    def filled_since(self) -> float: ...


class Peers(Protocol):
    """Reads blocks from other nodes (cachenode.peers.PeerClient)."""

    def is_down(self, addr: str) -> bool: ...
    def forget(self, keep: set[str]) -> None: ...
    async def read_block(self, addr: str, ref: BlockRef, *, hops: int, epoch: int,
                         cached_only: bool = False, timeout_s: float | None = None,
                         charge: Charge = NOBODY) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Fetched:
    """A block's bytes held in memory, and where they came from ("origin" or "peer")."""

    data: bytes
    source: str
    crc32c: int | None = None  # of `data`, when already known


class Router:
    """Decide where each block comes from, given this node's view of the group."""

    def __init__(self, node_id: str, filler: Filler, metrics: NodeMetrics,
                 peers: Peers | None = None, recent_blocks: int = 16,
                 limited: Callable[[str], bool] | None = None) -> None:
        """Route for `node_id`; `limited(tenant)` says whether a tenant has an origin budget."""
        self.node_id, self.filler, self._metrics, self._peers = node_id, filler, metrics, peers
        self._limited = limited or (lambda tenant: False)
        self._slots_per_tenant: dict[str, asyncio.Semaphore] = {}  # budgeted tenants' shares
        self.share = 1.0  # of the ring, this node's (limits.node_share)
        self._ring: Ring | None = None  # None: this node serves everything itself
        self._prev: Ring | None = None  # the ring before the last change, for handoff
        self._weights: dict[str, int] = {}  # of the nodes on the current ring
        self._addrs: dict[str, str] = {}  # node id -> HTTP host:port, every other member
        self.epoch = 0
        self._peer_flight: SingleFlight[bytes | None] = SingleFlight(
            cancel_abandoned=True, grace_s=ABANDON_GRACE_S)
        self._peer_slots = asyncio.Semaphore(PEER_READS_MAX)
        self._slots_per_peer: dict[str, asyncio.Semaphore] = {}  # node id -> its share
        self._recent: OrderedDict[str, bytes] = OrderedDict()  # peer blocks, newest last
        self._recent_max = recent_blocks
        self.handoffs = HandoffPlan(node_id)  # who is worth a handoff question
        if peers is not None:
            filler.handoff = self._handoff

    @property
    def ring(self) -> Ring | None:
        """Return the current ring (None when alone)."""
        return self._ring

    def update(self, members: Mapping[str, Member], epoch: int) -> None:
        """Adopt a new membership view: the ring of the nodes that are up."""
        bs = self.filler.block_size
        odd = sorted(i for i, m in members.items() if m.block_size not in (0, bs))
        if odd:  # their block ids differ from ours: they can neither own nor hand off
            log.warning("nodes %s use another block size than %d; left off this ring", odd, bs)
            members = {i: m for i, m in members.items() if i not in odd}
        weights = {i: m.weight for i, m in members.items() if m.state == "up"}
        if weights != self._weights:
            self._prev, self._ring = self._ring, (Ring(weights) if weights else None)
            self.handoffs.ring_changed(self._weights, weights)
            self._weights = weights
            self.share = node_share(self._ring.shares() if self._ring else {}, self.node_id)
            log.info("ring epoch %d: %d nodes up of %d members", epoch, len(weights),
                     len(members))
        self._addrs = {i: m.http for i, m in members.items() if i != self.node_id}
        self.handoffs.registered({i: (float(m.registered_at), float(m.filled_since))
                                  for i, m in members.items() if i in weights})
        for gone in set(self._slots_per_peer) - set(self._addrs):
            if not self._slots_per_peer[gone].locked():
                del self._slots_per_peer[gone]
        self.epoch = epoch
        self._metrics.ring_nodes.set(len(weights))
        if self._peers is not None:
            self._peers.forget(set(self._addrs.values()))

    async def close(self) -> None:
        """Cancel peer reads in flight and drop the blocks kept from peers."""
        await self._peer_flight.close()
        self._recent.clear()

    def held_in_memory(self, ref: BlockRef, hops: int, cached_only: bool) -> int:
        """Return the bytes a read of this block will hold in memory (0: sent from a file).

        A block another node owns, and not stored here, comes as bytes from that node; so
        does every block filled here while the disk is out of rotation (it cannot be kept).
        """
        if cached_only or self.filler.has(ref):
            return 0
        if self.filler.cannot_store():
            return ref.length
        if hops:
            return 0
        owners = self.owners(ref)
        return ref.length if owners and owners[0] != self.node_id else 0

    def owners(self, ref: BlockRef) -> list[str]:
        """Return the node ids to ask for a block, owner first ([] when alone)."""
        if self._ring is None or self._peers is None:
            return []
        try:
            return self._ring.owners(ref.block_id, OWNERS_TRIED)
        except EmptyRing:
            return []

    async def read_block(self, ref: BlockRef, hops: int = 0, cached_only: bool = False,
                         charge: Charge = NOBODY) -> OpenBlock | Fetched:
        """Return a block as an open file (local disk; caller closes) or as fetched bytes."""
        got = await self.read_live(ref, hops, cached_only, charge)
        if not isinstance(got, LiveBlock):
            return got
        whole = await self.filler.settle(got)
        return whole if isinstance(whole, OpenBlock) else Fetched(whole, "origin")

    async def read_live(self, ref: BlockRef, hops: int = 0, cached_only: bool = False,
                        charge: Charge = NOBODY) -> OpenBlock | Fetched | LiveBlock:
        """Return a block as an open file (local disk), fetched bytes (from its owner) or the
        fill here it is read from as it lands; the caller closes files and fills.

        `hops` > 0: another node forwarded the read; serve it here (disk, else origin).
        `cached_only`: a handoff question; answer from disk (or a block landed a moment ago)
        or raise BlockNotCached.
        A fill (here or on the owner) is charged to `charge.tenant`.
        """
        ob = await self.filler.open_stored(ref)  # checked: a bad copy is dropped, a miss
        if ob is not None:
            self._metrics.hits.inc()
            return ob
        if cached_only:  # on disk, or landed here a moment ago and being written
            landed = self.filler.landed(ref)
            if landed is None:
                raise BlockNotCached(ref.block_id)
            return landed
        owners = self.owners(ref) if hops == 0 else []
        if owners and owners[0] != self.node_id:
            bid = ref.block_id
            data = self._recent.get(bid)
            if data is None:
                data = await self._shared_peer_read(owners, ref, charge)
            else:
                self._recent.move_to_end(bid)
                self._metrics.peer_reads.labels("recent").inc()
            if data is not None:
                return Fetched(data, "peer")
        return await self.filler.read_live(ref, charge)

    async def _shared_peer_read(self, owners: list[str], ref: BlockRef,
                                charge: Charge) -> bytes | None:
        """Join or start this node's one read of a remote block (as Filler._shared_fill)."""
        try:
            data, shared = await self._peer_flight.do(
                ref.block_id, lambda: self._from_owners(owners, ref, charge))
        except TenantThrottled as e:
            if e.tenant == charge.tenant:
                raise
            data, shared = await self._peer_flight.do(  # refused for its starter's budget
                ref.block_id, lambda: self._from_owners(owners, ref, charge))
        if shared:
            self._metrics.peer_reads.labels("joined").inc()
        return data

    async def _from_owners(self, owners: list[str], ref: BlockRef,
                           charge: Charge) -> bytes | None:
        """Return the block from the first owner that answers, or None to fill it here."""
        for owner in owners:
            if owner == self.node_id:
                return None  # ours after all (the owners before us are down)
            data = await self._from_peer(owner, ref, charge)
            if data is not None:
                self._recent[ref.block_id] = data  # a herd arriving just after finds it
                while len(self._recent) > self._recent_max:
                    self._recent.popitem(last=False)
                return data
        return None

    async def read_block_bytes(self, ref: BlockRef, hops: int = 0,
                               charge: Charge = NOBODY) -> bytes:
        """Return a whole block as bytes (checksum-checked when it comes from disk)."""
        if hops == 0 and self.owners(ref)[:1] not in ([], [self.node_id]):
            got = await self.read_block(ref, charge=charge)
            if isinstance(got, Fetched):
                return got.data
            got.close()
        return await self.filler.read_block_bytes(ref, charge)

    async def _from_peer(self, owner: str, ref: BlockRef, charge: Charge) -> bytes | None:
        """Return the block from `owner`, or None to try the next one; raise its errors.

        A tenant with an origin budget may wait on the owner for it: its reads take a slot
        of its own first, so they never hold more than PEER_READS_PER_TENANT shared ones.
        """
        addr = self._addrs.get(owner)
        if addr is None or self._peers is None or self._peers.is_down(addr):
            return None
        mine = self._slots_per_peer.setdefault(owner, asyncio.Semaphore(PEER_READS_PER_NODE))
        tenant = (self._slots_per_tenant.setdefault(charge.tenant,
                                                    asyncio.Semaphore(PEER_READS_PER_TENANT))
                  if self._limited(charge.tenant) else _NO_LIMIT)
        try:
            async with tenant, mine, self._peer_slots:
                self._metrics.peer_reads_in_flight.inc()
                try:
                    data = await self._peers.read_block(addr, ref, hops=1, epoch=self.epoch,
                                                        charge=charge)
                finally:
                    self._metrics.peer_reads_in_flight.dec()
        except TenantThrottled:
            raise  # the tenant's budget on the owner: another owner would spend it twice
        except _TRY_NEXT as e:
            self._metrics.peer_reads.labels("failover").inc()
            log.info("block %s: owner %s failed (%s); trying the next", ref.block_id, owner, e)
            return None
        self._metrics.peer_reads.labels("ok").inc()
        return data

    def _handoff_sources(self, ref: BlockRef) -> list[str]:
        """Return who held the block before this node and is worth asking (handoff.py): the
        owner on the previous ring, and the owner if this node were not on the ring."""
        found: list[str] = []
        try:
            if self._prev is not None:
                found.append(self._prev.owner(ref.block_id))
            if self._ring is not None:
                found += self._ring.owners(ref.block_id, 2)[1:]
        except EmptyRing:
            pass
        return [n for n in self.handoffs.worth_asking(found, time.monotonic())
                if n in self._addrs]

    async def _handoff(self, ref: BlockRef) -> bytes | None:
        """Return the block from the disk of a node that held it before, or None (origin)."""
        sources = self._handoff_sources(ref) if self._peers is not None else []
        if self._peers is None or not sources:
            return None
        for node in sources:
            addr = self._addrs.get(node)  # the group may have changed while we asked
            if addr is None or self._peers.is_down(addr):
                continue
            try:
                data = await self._peers.read_block(addr, ref, hops=1, epoch=self.epoch,
                                                    cached_only=True,
                                                    timeout_s=HANDOFF_TIMEOUT_S)
            except CacheError as e:
                log.debug("handoff of block %s from %s: %s", ref.block_id, node, e)
                self.handoffs.answered(node, had_it=False)
                continue
            self.handoffs.answered(node, had_it=True)  # it holds moved blocks: keep asking it
            self._metrics.handoffs.labels("hit").inc()
            return data
        self._metrics.handoffs.labels("miss").inc()
        return None

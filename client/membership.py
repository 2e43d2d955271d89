"""Where the client learns the group: a seed list of nodes (their /ring), or etcd."""

from __future__ import annotations

import asyncio
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from client.errors import ClientError, Unavailable, connection_reason

if TYPE_CHECKING:
    from cachenode.membership import NodeRecord  # imports aetcd: only when etcd is used


@dataclass(frozen=True, slots=True)
class Member:
    """One cache node as the client sees it."""

    id: str
    http: str  # host:port
    grpc: str
    weight: int = 100
    state: str = "up"
    block_size: int = 0  # 0: not said


@dataclass(frozen=True, slots=True)
class GroupView:
    """The members of a site and the block size its nodes use."""

    members: dict[str, Member]
    block_size: int
    epoch: int = 0


def base_url(node: str) -> str:
    """Return 'http://host:port' for 'host:port' or a URL."""
    node = node.strip().rstrip("/")
    return node if "://" in node else f"http://{node}"


async def from_seeds(session: aiohttp.ClientSession, seeds: Sequence[str],
                     timeout_s: float = 5.0) -> GroupView:
    """Return the group as the first answering seed node reports it (GET /ring)."""
    errors = []
    for seed in seeds:
        try:
            async with asyncio.timeout(timeout_s):
                async with session.get(base_url(seed) + "/ring") as r:
                    if r.status != 200:
                        errors.append(f"{seed}: HTTP {r.status}")
                        continue
                    view = await r.json()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            errors.append(f"{seed}: {connection_reason(e)}")
            continue
        except ValueError as e:
            errors.append(f"{seed}: not a cache node's answer ({e})")
            continue
        members = {m["id"]: Member(m["id"], m["http"], m["grpc"], int(m["weight"]), m["state"],
                                   int(m.get("block_size", 0)))
                   for m in view["members"]}
        return _same_block_size(members, int(view["block_size"]), int(view.get("epoch", 0)))
    if not seeds:
        raise ClientError("no nodes given: pass --nodes host:port[,...] or --etcd URL")
    raise Unavailable("no seed node answered: " + "; ".join(errors))


async def from_etcd(session: aiohttp.ClientSession, endpoints: Sequence[str], cluster: str,
                    site: str, timeout_s: float = 5.0) -> GroupView:
    """Return the members registered in etcd for a site (block size asked of one of them)."""
    errors = []
    for endpoint in endpoints:
        try:
            records = await asyncio.wait_for(_read_site(endpoint, cluster, site), timeout_s)
            break
        except Exception as e:  # aetcd wraps gRPC failures in its own exception classes
            errors.append(f"{endpoint}: {connection_reason(e)}")
    else:
        raise Unavailable("etcd unreachable: " + "; ".join(errors))
    if not records:
        raise Unavailable(f"no cache nodes registered for cluster {cluster!r} site {site!r} "
                          f"in etcd {','.join(endpoints)}")
    return await from_records(session, records.values(), timeout_s)


async def from_records(session: aiohttp.ClientSession, records: Iterable[NodeRecord],
                       timeout_s: float = 5.0) -> GroupView:
    """Return the group of these node records (block size asked of a node if none says it)."""
    members = {r.id: Member(r.id, r.http, r.grpc, r.weight, r.state, r.block_size)
               for r in records}
    sizes = Counter(m.block_size for m in members.values() if m.block_size)
    if sizes:  # the nodes say their block size: the most common one is the group's
        return _same_block_size(members, sizes.most_common(1)[0][0], 0)
    view = await from_seeds(session, [m.http for m in members.values()], timeout_s)
    return _same_block_size(members, view.block_size, view.epoch)


def _same_block_size(members: dict[str, Member], block_size: int, epoch: int) -> GroupView:
    """Return the group without members that use another block size (the nodes skip them)."""
    kept = {i: m for i, m in members.items() if m.block_size in (0, block_size)}
    return GroupView(kept, block_size, epoch)


async def _read_site(endpoint: str, cluster: str, site: str) -> dict[str, Any]:
    """Return {node id: NodeRecord} registered for a site at one etcd endpoint."""
    import aetcd  # only when etcd is used

    from cachenode.membership import NodeRecord, site_prefix

    parts = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    client = aetcd.Client(parts.hostname or "127.0.0.1", parts.port or 2379, timeout=5)
    try:
        await client.connect()
        got = await client.get_prefix(site_prefix(cluster, site).encode())
    finally:
        await client.close()
    records = {}
    for kv in got.kvs:
        try:
            r = NodeRecord.unpack(kv.value)
        except ValueError:
            continue  # a record this client does not understand: skip that node
        records[r.id] = r
    return records

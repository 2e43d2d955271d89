"""Pure planning, no I/O: which node warms which blocks, and which versions leave a site."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cachenode.blocks import ObjectMeta, block_count, block_id
from cachenode.ring import Ring
from coordinator.model import Version

RETRYABLE = frozenset({"OriginUnavailable", "OriginTimeout", "StoreFull", "DiskUnavailable",
                       "Overloaded", "FlightCancelled", "Unreachable", "NodeError"})


@dataclass(slots=True)
class BlockTask:
    """One block to put on its owner, with what happened to it so far."""

    obj: ObjectMeta
    index: int
    length: int
    bid: str  # the block id: the ring key
    attempts: int = 0
    done_on: str | None = None  # the node that confirmed it (filled or present)
    from_origin: bool = False  # whether that node filled it (else it was present)
    error: str | None = None  # class name of the last failure
    reason: str = ""


def block_tasks(manifest: Iterable[ObjectMeta], block_size: int) -> list[BlockTask]:
    """Return one task per block of every object in the manifest (empty objects have none)."""
    tasks = []
    for o in manifest:
        for i in range(block_count(o.size, block_size)):
            tasks.append(BlockTask(o, i, min(block_size, o.size - i * block_size),
                                   block_id(o.bucket, o.key, o.etag, o.size, i, block_size)))
    return tasks


def ring_of(members: Mapping[str, tuple[int, str]]) -> Ring | None:
    """Return the ring of the members that are up ({id: (weight, state)}), as nodes build it."""
    weights = {i: w for i, (w, state) in members.items() if state == "up"}
    return Ring(weights) if weights else None


def by_owner(tasks: Iterable[BlockTask], ring: Ring,
             batch_blocks: int) -> dict[str, list[list[BlockTask]]]:
    """Return, per owner, its blocks in batches of at most `batch_blocks`, in object order."""
    lists: dict[str, list[BlockTask]] = {}
    for t in tasks:
        lists.setdefault(ring.owner(t.bid), []).append(t)
    return {node: [ts[i:i + batch_blocks] for i in range(0, len(ts), batch_blocks)]
            for node, ts in lists.items()}


def moved(tasks: Iterable[BlockTask], ring: Ring) -> list[BlockTask]:
    """Return the done blocks whose owner is no longer the node that confirmed them."""
    return [t for t in tasks if t.done_on is not None and ring.owner(t.bid) != t.done_on]


def warm_request(batch: Sequence[BlockTask], block_size: int, verify: bool,
                 tenant: str = "") -> dict[str, object]:
    """Return the JSON body of a node's POST /_warm for one batch (blocks grouped by object).

    `tenant` is the job's: its blocks become that tenant's warmed blocks on the nodes ('' =
    nobody's, an admin's job).
    """
    objects: dict[tuple[str, str, str], dict[str, object]] = {}
    for t in batch:
        o = t.obj
        entry = objects.setdefault((o.bucket, o.key, o.etag), {
            "bucket": o.bucket, "key": o.key, "etag": o.etag, "size": o.size,
            "last_modified": o.last_modified, "indices": []})
        entry["indices"].append(t.index)  # type: ignore[attr-defined]
    body: dict[str, object] = {"block_size": block_size, "verify": verify,
                               "objects": list(objects.values())}
    if tenant:
        body["tenant"] = tenant
    return body


def overlapping(bucket: str, prefix: str, versions: Iterable[Version]) -> list[Version]:
    """Return the live versions (not evicted) whose prefix holds, or lies within, `prefix`.

    Nodes evict by key prefix, any ETag: evicting `m/` would take `m/v1/` with it.
    """
    return [v for v in versions if v.bucket == bucket and v.state != "evicted"
            and v.key_prefix != prefix
            and (v.key_prefix.startswith(prefix) or prefix.startswith(v.key_prefix))]


def versions_under(bucket: str, prefix: str, versions: Iterable[Version]) -> list[Version]:
    """Return the versions whose prefix lies within `prefix` (itself included), by prefix."""
    return sorted((v for v in versions if v.bucket == bucket and v.key_prefix.startswith(prefix)),
                  key=lambda v: v.key_prefix)


@dataclass(frozen=True, slots=True)
class EvictVersion:
    """Delete a version's blocks from every node of a site."""

    site: str
    model: str
    version: str
    bucket: str
    key_prefix: str


UNFINISHED = ("failed", "cancelled")  # versions whose warmup ended without every block


def evictions(versions: Iterable[Version], keep: int) -> list[EvictVersion]:
    """Return the versions of one site that fall out of its policy, or are being evicted.

    A site keeps, per model, its `keep` newest ready versions (by when they became ready,
    pinned ones included) and every pinned one. A failed or cancelled warmup's version
    leaves once a newer version is ready; one still warming always stays.
    """
    per_model: dict[str, list[Version]] = {}
    out = []
    for v in versions:
        if v.state == "evicting" and not v.pinned:
            out.append(v)
        elif v.state in ("ready", *UNFINISHED):
            per_model.setdefault(v.model, []).append(v)
    for vs in per_model.values():
        ready = sorted((v for v in vs if v.state == "ready"),
                       key=lambda v: v.ready_at or 0.0, reverse=True)
        out += [v for v in ready[keep:] if not v.pinned]
        newest = max((v.ready_at or 0.0 for v in ready), default=None)
        out += [v for v in vs if v.state in UNFINISHED and not v.pinned and newest is not None
                and v.updated < newest]
    return [EvictVersion(v.site, v.model, v.version, v.bucket, v.key_prefix)
            for v in sorted(out, key=lambda v: (v.model, v.version))]

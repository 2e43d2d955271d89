"""Admin work the coordinator asks of a node: warm listed blocks here, evict a key prefix.

The JSON request parsers are pure; `Admin` does the work through the node's own Filler
(single flight, fill limiter, timeout) and DiskStore (delete path, capacity accounting).
A warm request names the tenant whose job it is ("tenant", '' or absent: nobody's): its
blocks are stored as that tenant's warmed blocks, and its fills take that tenant's origin
budget (waiting for it up to half the fill timeout).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

from cachenode.blocks import BlockRef, ObjectMeta, block_count
from cachenode.errors import BadRequest, CacheError, DiskUnavailable, ObjectChanged
from cachenode.metrics import NodeMetrics
from cachenode.names import validate_name, validate_prefix
from cachenode.qos import Charge, check_tenant, later_wait
from cachenode.service import BlockService
from cachenode.store.disk import DiskStore

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 1 << 20  # of one admin request
MAX_WARM_BLOCKS = 256  # block indices in one warm request, all objects together
WARM_CONCURRENCY = 8  # blocks of one warm request worked on at once
EVICT_SLICE_BLOCKS = 256  # blocks deleted between two yields to the event loop
MAX_ETAG_CHARS = 1024
MAX_OBJECT_BYTES = 1 << 60
_REQUIRED: Any = object()


@dataclass(frozen=True, slots=True)
class WarmRequest:
    """The blocks a warm request names, in request order, and whether to check stored ones."""

    refs: list[BlockRef]
    verify: bool = False
    tenant: str = ""  # whose job: its quota and origin budget ('' = nobody's)


@dataclass(frozen=True, slots=True)
class WarmResult:
    """What warming one block did: "present", "filled" or "failed" (with the error)."""

    ref: BlockRef
    status: str
    repaired: bool = False  # a stored copy failed its checksum and was replaced
    error: str = ""  # CacheError class name, when failed
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        """Return the result as the JSON object of a warm response."""
        doc: dict[str, Any] = {"bucket": self.ref.obj.bucket, "key": self.ref.obj.key,
                               "index": self.ref.index, "status": self.status,
                               "bytes": self.ref.length, "repaired": self.repaired}
        if self.status == "failed":
            doc["error"], doc["reason"] = self.error, self.reason
        return doc


def parse_json(body: bytes) -> dict[str, Any]:
    """Return a request body's JSON object, or raise BadRequest."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise BadRequest(f"body is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(doc, dict):
        raise BadRequest("body must be a JSON object")
    return doc


def _show(value: object) -> str:
    return repr(value)[:40]


def _field(doc: dict[str, Any], name: str, kinds: tuple[type, ...], where: str,
           default: Any = _REQUIRED) -> Any:
    """Return doc[name] if it has one of `kinds` (bool is no number), else raise BadRequest."""
    if name not in doc:
        if default is _REQUIRED:
            raise BadRequest(f"{where}missing field {name!r}")
        return default
    value = doc[name]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise BadRequest(f"{where}field {name!r} must be {names}, not {_show(value)}")
    return value


def _object(obj: object, where: str, policy: str) -> tuple[ObjectMeta, list[Any]]:
    """Return the object version one entry of "objects" names, and its raw indices."""
    if not isinstance(obj, dict):
        raise BadRequest(f"{where}must be a JSON object")
    bucket, key = _field(obj, "bucket", (str,), where), _field(obj, "key", (str,), where)
    try:
        validate_name(bucket, key, policy)
    except BadRequest as e:
        raise BadRequest(where + e.reason) from None
    etag = _field(obj, "etag", (str,), where)
    if not (0 < len(etag) <= MAX_ETAG_CHARS and etag.isascii() and etag.isprintable()):
        raise BadRequest(f"{where}etag must be 1 to {MAX_ETAG_CHARS} printable ASCII characters")
    size = _field(obj, "size", (int,), where)
    if not 0 <= size <= MAX_OBJECT_BYTES:
        raise BadRequest(f"{where}size {size} out of range")
    modified = _field(obj, "last_modified", (int, float), where, 0.0)
    if not math.isfinite(modified):
        raise BadRequest(f"{where}last_modified must be a finite number")
    indices = _field(obj, "indices", (list,), where)
    return ObjectMeta(bucket, key, size, etag, float(modified)), indices


def parse_warm(doc: dict[str, Any], block_size: int, policy: str = "strict") -> WarmRequest:
    """Return the blocks a warm request names, or raise BadRequest with the reason."""
    asked = _field(doc, "block_size", (int,), "")
    if asked != block_size:
        raise BadRequest(f"block_size {asked} differs from this node's block size {block_size}")
    verify = _field(doc, "verify", (bool,), "", False)
    tenant = check_tenant(_field(doc, "tenant", (str,), "", ""))
    refs: list[BlockRef] = []
    for n, obj in enumerate(_field(doc, "objects", (list,), "")):
        where = f"objects[{n}]: "
        meta, indices = _object(obj, where, policy)
        count = block_count(meta.size, block_size)
        for i in indices:
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < count:
                raise BadRequest(f"{where}block index {_show(i)} is not in 0..{count - 1} "
                                 f"(size {meta.size}, block size {block_size})")
            refs.append(BlockRef(meta, i, block_size))
            if len(refs) > MAX_WARM_BLOCKS:
                raise BadRequest(f"more than {MAX_WARM_BLOCKS} blocks in one warm request")
    return WarmRequest(refs, verify, tenant)


def parse_evict(doc: dict[str, Any], policy: str = "strict") -> tuple[str, str]:
    """Return the (bucket, key prefix) an evict request names, or raise BadRequest."""
    bucket, prefix = _field(doc, "bucket", (str,), ""), _field(doc, "prefix", (str,), "")
    validate_prefix(bucket, prefix, policy)
    if not prefix:
        raise BadRequest("prefix must not be empty (a whole bucket is not evicted)")
    return bucket, prefix


class Admin:
    """Warm blocks onto this node's disk and evict key prefixes from it."""

    def __init__(self, node_id: str, service: BlockService, store: DiskStore,
                 metrics: NodeMetrics) -> None:
        self.node_id, self._service, self._store = node_id, service, store
        self._filler, self._metrics = service.filler, metrics

    async def warm_json(self, body: bytes) -> dict[str, Any]:
        """Answer a POST /_warm body (see parse_warm) with one result per block."""
        req = parse_warm(parse_json(body), self._filler.block_size, self._service.key_policy)
        results = await self.warm(await self.own_versions(req.refs), req.verify, req.tenant)
        failed = [r for r in results if r.status == "failed"]
        if failed:
            log.warning("warm: %d of %d blocks failed (first: s3://%s/%s block %d: %s)",
                        len(failed), len(results), failed[0].ref.obj.bucket,
                        failed[0].ref.obj.key, failed[0].ref.index, failed[0].reason)
        return {"node": self.node_id, "results": [r.to_json() for r in results]}

    async def evict_json(self, body: bytes) -> dict[str, Any]:
        """Answer a POST /_evict body (see parse_evict) with the blocks and bytes deleted."""
        bucket, prefix = parse_evict(parse_json(body), self._service.key_policy)
        blocks, nbytes = await self.evict_prefix(bucket, prefix)
        log.info("evicted %d blocks (%d bytes) under s3://%s/%s", blocks, nbytes, bucket, prefix)
        return {"node": self.node_id, "blocks": blocks, "bytes": nbytes}

    async def own_versions(self, refs: list[BlockRef]) -> list[BlockRef | WarmResult]:
        """Return each block as this node's own metadata names it, or its failed result.

        A block's length follows from its object's size, so a fill never takes the size
        from a request: each object with a block missing here is looked up (metadata
        cache, else one HEAD), and a request whose size disagrees with the origin's for
        that ETag is refused. (A stored block needs no lookup: its id covers the size.)
        """
        gate = asyncio.Semaphore(WARM_CONCURRENCY)
        asked = {r.obj for r in refs if not self._store.has(r.block_id, r.length)}

        async def own(meta: ObjectMeta) -> ObjectMeta | CacheError:
            async with gate:
                try:
                    return await self._service.pinned(meta.bucket, meta.key, meta.etag)
                except CacheError as e:
                    return e

        found = dict(zip(asked, await asyncio.gather(*(own(m) for m in asked)), strict=True))
        out: list[BlockRef | WarmResult] = []
        for r in refs:
            got = found.get(r.obj, r.obj)
            if isinstance(got, CacheError):
                name = "ObjectChanged" if isinstance(got, ObjectChanged) else type(got).__name__
                out.append(WarmResult(r, "failed", error=name, reason=str(got)))
                continue
            if got.size != r.obj.size:
                raise BadRequest(f"s3://{r.obj.bucket}/{r.obj.key} has {got.size} bytes at ETag "
                                 f"{r.obj.etag}, not {r.obj.size}: a warm request cannot set "
                                 "a block's length")
            out.append(BlockRef(got, r.index, r.block_size))
        return out

    async def warm(self, refs: list[BlockRef | WarmResult], verify: bool = False,
                   tenant: str = "") -> list[WarmResult]:
        """Warm blocks for `tenant`, WARM_CONCURRENCY at a time; return results in order."""
        gate = asyncio.Semaphore(WARM_CONCURRENCY)
        charge = Charge(tenant, later_wait(self._service.fill_timeout_s), warmed=True)

        async def one(ref: BlockRef | WarmResult) -> WarmResult:
            if isinstance(ref, WarmResult):
                self._metrics.warm_blocks.labels(ref.status).inc()
                return ref
            async with gate:
                return await self.warm_block(ref, verify, charge)

        return list(await asyncio.gather(*(one(r) for r in refs)))

    async def warm_block(self, ref: BlockRef, verify: bool = False,
                         charge: Charge = Charge(warmed=True)) -> WarmResult:
        """Make sure one block is on this node's disk, filling it from origin if missing.

        `verify` reads a stored block and checks its crc32; a bad copy is dropped and
        filled again. Errors become a "failed" result, never an exception.
        """
        repaired = False
        try:
            ok = await self._filler.check_stored(ref) if verify else None
            repaired = ok is False
            filled = False if ok else await self._filler.warm(ref, charge)
            if ok:
                self._store.claim_warmed(ref.block_id, charge.tenant)
        except CacheError as e:
            result = WarmResult(ref, "failed", repaired, type(e).__name__, str(e))
        except Exception as e:  # a bug must not fail the other blocks of the request
            log.exception("warming block %d of s3://%s/%s", ref.index, ref.obj.bucket,
                          ref.obj.key)
            result = WarmResult(ref, "failed", repaired, type(e).__name__, str(e))
        else:
            result = WarmResult(ref, "filled" if filled or repaired else "present", repaired)
        self._metrics.warm_blocks.labels(result.status).inc()
        return result

    async def evict_prefix(self, bucket: str, prefix: str) -> tuple[int, int]:
        """Delete every stored block whose object key starts with `prefix` (any ETag).

        Walks the index's object-prefix rows (never every block), EVICT_SLICE_BLOCKS at a
        time through the store's delete path, yielding to the event loop between slices.
        Returns the blocks and bytes deleted.
        """
        blocks = nbytes = 0
        stray: set[str] = set()  # prefix rows without a block entry (not expected): skipped
        while True:
            rows = (b for b in self._store.by_prefix(bucket, prefix) if b not in stray)
            ids = list(itertools.islice(rows, EVICT_SLICE_BLOCKS))
            if not ids:
                return blocks, nbytes
            keys: set[str] = set()
            for bid in ids:
                e = self._store.entry(bid)
                try:
                    deleted = e is not None and self._store.delete(bid)
                except OSError as err:
                    raise DiskUnavailable(f"deleting block {bid}: {err}") from err
                if e is None or not deleted:
                    stray.add(bid)
                    continue
                blocks, nbytes = blocks + 1, nbytes + e.size
                keys.add(e.key)
                self._metrics.evict_prefix_blocks.inc()
                self._metrics.evict_prefix_bytes.inc(e.size)
                self._metrics.evicted_bytes.labels("evict").inc(e.size)
            for key in keys:  # its metadata would pin nothing now; let a read look again
                self._service.invalidate(bucket, key)
            await asyncio.sleep(0)

"""The gRPC block service (grpc.aio): parse the request, call BlockService, map errors."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc

from cachenode.access import AccessDenied, Authenticator, OpenAccess, require_read
from cachenode.auth.grpc_auth import call_view
from cachenode.blocks import BlockRef, ObjectMeta, block_count
from cachenode.checksum import crc32c
from cachenode.errors import (
    BadRequest,
    BlockNotCached,
    CacheError,
    DiskUnavailable,
    MalformedRange,
    ObjectChanged,
    OriginDenied,
    OriginNotFound,
    OriginTimeout,
    OriginUnavailable,
    Overloaded,
    RangeNotSatisfiable,
    StoreFull,
)
from cachenode.http_limits import ConnectionLimits
from cachenode.metrics import NodeMetrics
from cachenode.pb import blockcache_pb2 as pb
from cachenode.pb import blockcache_pb2_grpc as pb_grpc
from cachenode.peers import ERROR_KEY
from cachenode.qos import Charge
from cachenode.service import BlockService
from cachenode.singleflight import FlightCancelled
from cachenode.window import Chunk, MemChunk, settle_chunk

CHUNK_BYTES = 1024 * 1024  # below gRPC's 4 MiB default message limit
MAX_REQUEST_BYTES = 64 * 1024  # a request names one object: keys are at most 1 KiB
MAX_STREAMS_PER_CONNECTION = 128
CODE_KEY = "blockcache-code"  # trailing metadata of a refusal: the S3 error code
GRPC_STATUS: dict[type[CacheError], grpc.StatusCode] = {
    AccessDenied: grpc.StatusCode.PERMISSION_DENIED,  # bad credentials: UNAUTHENTICATED
    BadRequest: grpc.StatusCode.INVALID_ARGUMENT,
    MalformedRange: grpc.StatusCode.INVALID_ARGUMENT,
    RangeNotSatisfiable: grpc.StatusCode.OUT_OF_RANGE,
    OriginNotFound: grpc.StatusCode.NOT_FOUND,
    OriginDenied: grpc.StatusCode.PERMISSION_DENIED,
    OriginUnavailable: grpc.StatusCode.UNAVAILABLE,
    OriginTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    ObjectChanged: grpc.StatusCode.FAILED_PRECONDITION,
    StoreFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    BlockNotCached: grpc.StatusCode.NOT_FOUND,
    DiskUnavailable: grpc.StatusCode.UNAVAILABLE,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    FlightCancelled: grpc.StatusCode.UNAVAILABLE,
}


def code_of(err: CacheError) -> grpc.StatusCode:
    """Return the gRPC status code for a cache error (most specific class wins)."""
    if isinstance(err, AccessDenied) and getattr(err, "code", "") != "AccessDenied":
        return grpc.StatusCode.UNAUTHENTICATED  # no valid credential, not a scope refusal
    for cls in type(err).__mro__:
        if cls in GRPC_STATUS:
            return GRPC_STATUS[cls]
    return grpc.StatusCode.INTERNAL


def info_of(meta: ObjectMeta, block_size: int) -> pb.ObjectInfo:
    """Return the wire form of object metadata."""
    return pb.ObjectInfo(bucket=meta.bucket, key=meta.key, size=meta.size, etag=meta.etag,
                         last_modified=meta.last_modified, block_size=block_size)


class BlockCacheServicer(pb_grpc.BlockCacheServicer):  # type: ignore[misc]
    """Serve Stat, ReadRange and ReadBlock from the node's BlockService."""

    def __init__(self, service: BlockService, metrics: NodeMetrics, block_size: int,
                 authenticator: Authenticator | None = None) -> None:
        self._service, self._metrics, self._block_size = service, metrics, block_size
        self._auth = authenticator or OpenAccess()

    def _check(self, method: str, request: object, context: grpc.aio.ServicerContext
               ) -> Charge:
        """Return whose fills the call's are, unless its credentials may not read what it
        names (AccessDenied)."""
        view = call_view(method, request, context.invocation_metadata() or ())
        principal = self._auth.authenticate(view, time.time())
        self._metrics.tenant_request(principal.tenant, "grpc")
        try:
            require_read(principal, getattr(request, "bucket"), getattr(request, "key"))
        except AccessDenied:
            self._metrics.tenant_denial(principal.tenant, "grpc")
            raise
        return Charge(principal.tenant)

    async def Stat(self, request: pb.StatRequest,
                   context: grpc.aio.ServicerContext) -> pb.ObjectInfo:
        try:
            self._check("Stat", request, context)
            meta = await self._service.stat(request.bucket, request.key)
        except CacheError as e:
            await self._abort(context, "Stat", e)
        self._metrics.requests.labels("grpc", "OK").inc()
        return info_of(meta, self._block_size)

    async def ReadRange(self, request: pb.ReadRangeRequest,
                        context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Chunk]:
        try:
            charge = self._check("ReadRange", request, context)
            meta = await self._service.pinned(request.bucket, request.key, request.etag)
            start = request.offset
            end = meta.size - 1 if request.length < 0 else start + request.length - 1
            end = min(end, meta.size - 1)
            if start > end and not (request.length == 0 or meta.size == start == 0):
                raise RangeNotSatisfiable(f"offset {start}", meta.size)
            first = True
            offset = start
            async with aclosing(self._service.chunks(meta, start, end,
                                                     charge=charge)) as chunks:
                async for chunk in chunks:
                    async for data in _chunk_bytes(chunk, self._metrics, charge.tenant):
                        yield pb.Chunk(data=data, offset=offset,
                                       info=info_of(meta, self._block_size) if first else None)
                        first, offset = False, offset + len(data)
            if first:
                yield pb.Chunk(data=b"", offset=start, info=info_of(meta, self._block_size))
        except CacheError as e:
            await self._abort(context, "ReadRange", e)
        self._metrics.requests.labels("grpc", "OK").inc()

    async def ReadBlock(self, request: pb.ReadBlockRequest,
                        context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Chunk]:
        try:
            charge = self._check("ReadBlock", request, context)
            meta = await self._service.pinned(request.bucket, request.key, request.etag)
            if request.object_size != meta.size:  # the block id does not cover the size
                raise BadRequest(f"object_size {request.object_size} does not match the "
                                 f"{meta.size} bytes of s3://{meta.bucket}/{meta.key}")
            if request.index >= block_count(meta.size, self._block_size):
                raise RangeNotSatisfiable(f"block {request.index}", meta.size)
            ref = BlockRef(meta, request.index, self._block_size)
            if request.ring_epoch and request.ring_epoch != self._service.router.epoch:
                self._metrics.epoch_mismatches.inc()  # views differ: a ring change in flight
            data = await self._block_bytes(ref, request, charge)
            crc = crc32c(data)
            for i in range(0, len(data), CHUNK_BYTES):
                yield pb.Chunk(data=data[i:i + CHUNK_BYTES], offset=ref.start + i,
                               block_crc32c=crc if i == 0 else 0)
        except CacheError as e:
            await self._abort(context, "ReadBlock", e)
        self._metrics.requests.labels("grpc", "OK").inc()

    async def _block_bytes(self, ref: BlockRef, request: pb.ReadBlockRequest,
                           charge: Charge) -> bytes:
        """Return the block's bytes: disk only for a handoff, else routed (hops > 0: here)."""
        if request.cached_only:
            data = await self._service.filler.read_stored_bytes(ref)
            if data is None:
                raise BlockNotCached(ref.block_id)
            return data
        return await self._service.router.read_block_bytes(ref, hops=request.hops,
                                                           charge=charge)

    async def _abort(self, context: grpc.aio.ServicerContext, method: str,
                     err: CacheError) -> None:
        code = code_of(err)
        self._metrics.requests.labels("grpc", code.name).inc()
        trailing: tuple[tuple[str, str], ...] = ((ERROR_KEY, type(err).__name__),)
        if isinstance(err, AccessDenied):
            self._metrics.auth_failures.labels("grpc", err.code).inc()
            trailing += ((CODE_KEY, err.code),)
        await context.abort(code, f"{type(err).__name__}: {err}", trailing_metadata=trailing)


async def _chunk_bytes(chunk: Chunk, metrics: NodeMetrics, tenant: str
                       ) -> AsyncIterator[bytes]:
    """Yield a chunk's bytes in messages of at most CHUNK_BYTES (a fill's once landed)."""
    chunk = await settle_chunk(chunk)
    if isinstance(chunk, MemChunk):
        metrics.bytes_served.labels(chunk.source).inc(len(chunk.data))
        metrics.tenant_served_bytes.labels(metrics.tenant(tenant), chunk.source).inc(
            len(chunk.data))
        for i in range(0, len(chunk.data), CHUNK_BYTES):
            yield bytes(chunk.data[i:i + CHUNK_BYTES])
        return
    loop = asyncio.get_running_loop()
    try:
        done = 0
        while done < chunk.length:
            n = min(CHUNK_BYTES, chunk.length - done)
            data = await loop.run_in_executor(None, os.pread, chunk.block.fd, n,
                                              chunk.offset + done)
            if len(data) != n:
                raise DiskUnavailable(f"short read of block {chunk.block.block_id}")
            done += n
            yield data
        metrics.bytes_served.labels(chunk.block.source).inc(chunk.length)
        metrics.tenant_served_bytes.labels(metrics.tenant(tenant), chunk.block.source).inc(
            chunk.length)
    finally:
        chunk.close()


def server_options(limits: ConnectionLimits) -> list[tuple[str, int]]:
    """Return the gRPC core server options: message sizes, pings and connection bounds."""
    return [
        ("grpc.so_reuseport", 0),
        ("grpc.max_send_message_length", 8 * 1024 * 1024),
        ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),  # default 4 MiB
        # peers ping every 5s to notice a hung node; allow it (the default bound is 5 min)
        ("grpc.http2.min_ping_interval_without_data_ms", 4000),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 4000),
        # A connection must finish its HTTP/2 handshake (preface and SETTINGS) within the
        # header timeout (default 120 s), is closed (GOAWAY) after the idle timeout with no
        # call (default: never), and beyond the cap new ones are closed at once.
        ("grpc.server_handshake_timeout_ms", int(limits.header_timeout_s * 1000)),
        ("grpc.max_connection_idle_ms", int(limits.idle_timeout_s * 1000)),
        ("grpc.max_allowed_incoming_connections", limits.grpc_connections),
        ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),  # default unbounded
        # Ping a client with calls in flight after a minute of silence (default 2 h), so a
        # dead one is noticed and its calls cancelled.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
    ]


async def start_grpc_server(service: BlockService, metrics: NodeMetrics, addr: tuple[str, int],
                            limits: ConnectionLimits, authenticator: Authenticator | None = None
                            ) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC server on host:port and return it with the bound port.

    Calls beyond one per allowed HTTP connection get RESOURCE_EXHAUSTED (each holds up to
    read-ahead + 1 blocks, as an HTTP response does).
    """
    server = grpc.aio.server(options=server_options(limits),
                             maximum_concurrent_rpcs=limits.http_connections)
    pb_grpc.add_BlockCacheServicer_to_server(
        BlockCacheServicer(service, metrics, service.block_size, authenticator), server)
    host, port = addr
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC to {host}:{port}")
    await server.start()
    return server, bound

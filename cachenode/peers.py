"""Read whole blocks from a cache node over gRPC (ReadBlock), checking size and checksum.

Nodes read from each other over HTTP (cachenode/peers_http.py: measured faster and cheaper,
see README "Choices"). This gRPC reader stays for gRPC clients of ReadBlock and for the
side-by-side measurement in loadtest/peer_transport.py; it maps the cache error named in the
trailing metadata back to its class, and keepalive pings notice a hung node within seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from cachenode.auth.grpc_auth import GrpcCredentials
from cachenode.blocks import BlockRef
from cachenode.checksum import crc32c
from cachenode.errors import CacheError, PeerUnavailable, remote_error
from cachenode.metrics import NodeMetrics
from cachenode.pb import blockcache_pb2 as pb
from cachenode.pb import blockcache_pb2_grpc as pb_grpc
from cachenode.qos import NOBODY, Charge

log = logging.getLogger(__name__)
ERROR_KEY = "blockcache-error"  # trailing metadata: the CacheError class name
PEER_DOWN_S = 2.0  # after a transport failure, skip the peer this long
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 5000),
    ("grpc.keepalive_timeout_ms", 5000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_retries", 0),
]


class PeerClient:
    """One gRPC channel per peer address; reads whole blocks with a deadline."""

    def __init__(self, metrics: NodeMetrics, timeout_s: float,
                 credentials: GrpcCredentials | None = None) -> None:
        self._metrics, self._timeout_s = metrics, timeout_s
        self._credentials = credentials  # signs every call when set (a node with keys)
        self._channels: dict[str, tuple[grpc.aio.Channel, pb_grpc.BlockCacheStub]] = {}
        self._down_until: dict[str, float] = {}  # guarded by the loop

    async def close(self) -> None:
        """Close every channel."""
        channels, self._channels = self._channels, {}
        await asyncio.gather(*(ch.close() for ch, _ in channels.values()),
                             return_exceptions=True)

    def is_down(self, addr: str) -> bool:
        """Return whether a recent transport failure says to skip this peer for now."""
        return self._down_until.get(addr, 0.0) > time.monotonic()

    def _stub(self, addr: str) -> pb_grpc.BlockCacheStub:
        got = self._channels.get(addr)
        if got is None:
            ch = grpc.aio.insecure_channel(addr, options=CHANNEL_OPTIONS)
            got = self._channels[addr] = (ch, pb_grpc.BlockCacheStub(ch))
        return got[1]

    async def read_block(self, addr: str, ref: BlockRef, *, hops: int, epoch: int,
                         cached_only: bool = False, charge: Charge = NOBODY) -> bytes:
        """Return block `ref` read from the node at `addr`, verified against its crc32.

        The gRPC request carries no tenant: the owner charges its fill to the caller's
        credentials (nodes use the HTTP transport, which names the tenant).

        Raises PeerUnavailable when the peer cannot be reached or fails the transfer, or
        the CacheError the peer reported (OriginNotFound, ObjectChanged, BlockNotCached...).
        """
        meta = ref.obj
        req = pb.ReadBlockRequest(bucket=meta.bucket, key=meta.key, etag=meta.etag,
                                  object_size=meta.size, index=ref.index, hops=hops,
                                  ring_epoch=epoch, cached_only=cached_only)
        parts: list[bytes] = []
        got, crc, want_crc = 0, 0, None
        try:
            md = (self._credentials.metadata("ReadBlock", req)
                  if self._credentials is not None else None)
            call = self._stub(addr).ReadBlock(req, timeout=self._timeout_s, metadata=md)
            async for chunk in call:
                if chunk.offset != ref.start + got or got + len(chunk.data) > ref.length:
                    raise self._failed(addr, "sent bytes out of order or past the block")
                if want_crc is None:
                    want_crc = chunk.block_crc32c
                parts.append(chunk.data)
                got += len(chunk.data)
                crc = crc32c(chunk.data, crc)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # our caller gave up
            raise self._failed(addr, "call cancelled (channel closed)") from None
        except grpc.aio.AioRpcError as e:
            name = dict(e.trailing_metadata() or ()).get(ERROR_KEY)
            if name:
                raise remote_error(str(name), _reason(e.details() or ""), meta.bucket,
                                   meta.key) from None
            raise self._failed(addr, f"{e.code().name}: {e.details()}") from None
        if got != ref.length or crc != want_crc:
            raise self._failed(addr, f"block {ref.block_id} arrived short or corrupt")
        self._down_until.pop(addr, None)
        self._metrics.peer_bytes.inc(got)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _failed(self, addr: str, detail: str) -> CacheError:
        self._down_until[addr] = time.monotonic() + PEER_DOWN_S
        self._metrics.peer_errors.inc()
        log.warning("peer %s failed: %s", addr, detail)
        return PeerUnavailable(addr, detail)


def _reason(details: str) -> str:
    """Return the reason part of a peer's 'ClassName: reason' status details."""
    name, sep, reason = details.partition(": ")
    return reason if sep and name.isidentifier() else details

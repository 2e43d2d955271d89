"""Send one object response body (aiohttp): blocks in order, stored ones by sendfile.

Shared by the range API and the S3 API, so both leave by the same zero-copy path: a block
stored here goes out of its file with sendfile(2), a block from a peer or the origin out
of memory, and a response whose headers are out is cut, never patched, when a block fails.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, MutableMapping
from contextlib import aclosing

from aiohttp import web

from cachenode.blocks import ObjectMeta
from cachenode.checksum import crc32c
from cachenode.errors import CacheError, DiskUnavailable, ObjectChanged
from cachenode.metrics import NodeMetrics
from cachenode.peers_http import CRC
from cachenode.qos import NOBODY, Charge
from cachenode.ranges import Span
from cachenode.sendfile import ReaderStalled, SocketSender
from cachenode.service import BlockService
from cachenode.window import Chunk, FileChunk, LiveChunk, MemChunk

log = logging.getLogger("cachenode.http_api")
SOURCE_RANK = {"disk": 0, "peer": 1, "origin": 2}  # a read is as slow as its slowest block
LIVE_STEP_BYTES = 512 * 1024  # a reader of a fill that keeps up is woken this often


def abort(request: web.BaseRequest) -> None:
    """Close the connection at once (the response cannot be completed)."""
    if request.transport is not None:
        request.transport.abort()


class BodySender:
    """Stream byte spans of pinned object versions into aiohttp responses."""

    def __init__(self, service: BlockService, metrics: NodeMetrics) -> None:
        self._service, self._metrics = service, metrics

    async def respond(self, request: web.BaseRequest, meta: ObjectMeta, span: Span,
                      status: int, headers: MutableMapping[str, str], hops: int = 0,
                      cached_only: bool = False, charge: Charge = NOBODY
                      ) -> web.StreamResponse:
        """Answer with `status`, `headers` and the bytes of `span` (none for HEAD).

        A cache error before the headers is raised (the caller maps it to a status);
        after them, the connection is cut so the reader sees a short body. Fills are
        charged to `charge`; the bytes count as the tenant's unless another node asked.
        """
        t0 = time.monotonic()
        length = max(0, span.length)
        if request.method == "HEAD" or length == 0:
            headers["Content-Length"] = str(length)
            return web.Response(status=status, headers=headers)
        async with aclosing(self._service.chunks(meta, span.start, span.end, hops,
                                                 cached_only, charge)) as chunks:
            first = await anext(chunks)  # errors before the headers still get a status
            if (isinstance(first, FileChunk) and first.offset == 0
                    and first.length == first.block.size == length):
                # One whole stored block: its recorded crc32 lets a client check the bytes.
                headers[CRC] = str(first.block.crc32c)
            elif hops and isinstance(first, MemChunk) and len(first.data) == length:
                crc = first.crc32c if first.crc32c is not None else crc32c(first.data)
                headers[CRC] = str(crc)  # a peer checks every block
            try:
                resp = web.StreamResponse(status=status, headers=headers)
                resp.content_length = length
                await resp.prepare(request)
                sender = SocketSender(request, resp,
                                      stall_timeout_s=self._service.send_timeout_s)
            except BaseException as e:
                if isinstance(first, (FileChunk, LiveChunk)):
                    first.close()  # the reader left before the headers; nothing sends it
                if isinstance(e, ConnectionError):
                    log.debug("reader of s3://%s/%s left before the headers", meta.bucket,
                              meta.key)
                    abort(request)
                    return web.Response(status=499)  # nginx's "client closed request"
                raise
            tenant = None if hops else self._metrics.tenant(charge.tenant)
            return await self._stream(request, resp, sender, first, chunks, meta, span,
                                      tenant, t0)

    async def _stream(self, request: web.BaseRequest, resp: web.StreamResponse,
                      sender: SocketSender, first: Chunk,
                      chunks: AsyncGenerator[Chunk, None], meta: ObjectMeta,
                      span: Span, tenant: str | None, t0: float) -> web.StreamResponse:
        """Send every chunk after the headers; cut the connection on any failure."""
        sources = {self._source(first)}  # for blockcache_read_seconds (observed at the end)
        try:
            await self._send(sender, first, tenant)
            async for chunk in chunks:
                sources.add(self._source(chunk))
                await self._send(sender, chunk, tenant)
        except (CacheError, EOFError) as e:
            # Headers are out: cut the connection so the reader sees a short body,
            # never bytes of another version or a silent gap.
            if isinstance(e, ObjectChanged):  # found by a fill's resumed GET: forget it
                self._service.invalidate(meta.bucket, meta.key)
            log.warning("cut s3://%s/%s bytes=%d-%d after the headers: %s", meta.bucket,
                        meta.key, span.start, span.end, e)
            abort(request)
            return resp
        except ConnectionError as e:
            if isinstance(e, ReaderStalled):
                self._metrics.stalled_readers.inc()
            log.debug("reader of s3://%s/%s went away: %s", meta.bucket, meta.key, e)
            abort(request)
            return resp
        finally:
            sender.close()
        await resp.write_eof()
        slowest = max(sources, key=lambda s: SOURCE_RANK.get(s, 3))
        self._metrics.read_seconds.labels(slowest).observe(time.monotonic() - t0)
        return resp

    @staticmethod
    def _source(chunk: Chunk) -> str:
        """Return where a chunk's bytes come from (a fill being received: the origin)."""
        if isinstance(chunk, FileChunk):
            return chunk.block.source
        return chunk.source if isinstance(chunk, MemChunk) else "origin"

    async def _send(self, sender: SocketSender, chunk: Chunk, tenant: str | None) -> None:
        """Send one chunk; count its bytes by source (and for `tenant`, a label, if any)."""
        if isinstance(chunk, MemChunk):
            await sender.send_bytes(chunk.data)
            source, n = chunk.source, len(chunk.data)
        else:
            try:
                if isinstance(chunk, FileChunk):
                    await sender.send_file(chunk.block.fd, chunk.offset, chunk.length)
                else:
                    await send_live(sender, chunk)
            finally:
                chunk.close()
            source, n = self._source(chunk), chunk.length
        self._metrics.bytes_served.labels(source).inc(n)
        if tenant is not None:
            self._metrics.tenant_served_bytes.labels(tenant, source).inc(n)


async def send_live(sender: SocketSender, chunk: LiveChunk) -> None:
    """Send a span of a block being filled as its bytes land, then, once stored, from its file.

    A reader that keeps up is woken every LIVE_STEP_BYTES; one that falls behind writes
    what its socket takes and waits holding only its position, so the fill's buffer can go
    once the block is on disk.
    """
    fill, pos, end = chunk.live.fill, chunk.offset, chunk.offset + chunk.length
    raw, want, progress = await sender.start_raw(), pos + 1, time.monotonic()
    while pos < end:
        await fill.wait(want)  # raises the fill's error: the caller cuts the connection
        buf = fill.buffer
        if buf is None:  # on disk now: the rest from its file
            ob = fill.open_file()
            if ob is None:
                raise DiskUnavailable("a block left the store while it was being sent")
            try:
                await sender.send_file(ob.fd, pos, end - pos)
            finally:
                ob.close()
            return
        view = memoryview(buf)[pos:min(fill.received, end)]
        # Hold nothing of the buffer across a wait: once the block is stored, it can go.
        data = None if raw else bytes(view)  # no socket of our own (TLS, a test transport)
        n = sender.write_now(view) if raw else len(view)
        del view, buf
        if data is not None:
            await sender.send_bytes(data)
            del data
        if n:
            pos, progress = pos + n, time.monotonic()
            want = min(end, pos + LIVE_STEP_BYTES)
            await asyncio.sleep(0)  # let other connections run between writes
        else:
            await sender.wait_writable(progress)

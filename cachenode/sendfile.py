"""Zero-copy file spans into a prepared aiohttp response (works under uvloop and asyncio).

uvloop has no ``loop.sendfile``, so aiohttp's FileResponse falls back to thread-pool reads.
`SocketSender` drives ``os.sendfile`` itself on a dup of the connection's socket: the
transport refuses ``add_writer`` on its own fd under both loops, but a dup is a separate
epoll registration of the same socket. Ordering with aiohttp's buffered writes holds
because every ``os.sendfile`` starts only once the transport's write buffer is empty.
While spans are sent the socket is corked (TCP_CORK, like nginx ``tcp_nopush``) so the
headers and small writes share full segments with file data; on loopback that was worth
~5-15% for 4 MiB responses and nothing measurable for 64 MiB ones. close() uncorks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from types import TracebackType
from typing import Self

from aiohttp import web
from aiohttp.helpers import must_be_empty_body

# Largest single os.sendfile call; bounds how long one response holds the loop. On loopback
# (loadtest/sendfile_probe.py --caps) 1 MiB kept calls under ~2 ms (4 MiB: ~5 ms, 16 MiB: ~10 ms)
# at no measurable throughput cost. nginx's sendfile_max_chunk default is 2 MiB.
MAX_CHUNK_BYTES = 1024 * 1024
_FALLBACK_CHUNK_BYTES = 256 * 1024
_CLOSED_POLL_S = 1.0  # re-check transport.is_closing() while waiting for POLLOUT
STALL_TIMEOUT_S = 30.0  # a reader that takes no bytes for this long is disconnected


class FileTruncatedError(EOFError):
    """The file ended before the requested span; the connection has been aborted."""

    def __init__(self, fd: int, offset: int, expected: int, sent: int) -> None:
        super().__init__(fd, offset, expected, sent)
        self.fd, self.offset, self.expected, self.sent = fd, offset, expected, sent

    def __str__(self) -> str:
        return (f"fd {self.fd}: expected {self.expected} bytes at offset {self.offset}, "
                f"file ended after {self.sent}; response truncated, connection aborted")


class ReaderStalled(ConnectionResetError):
    """The reader took no bytes for the stall timeout; the connection has been aborted."""


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class SocketSender:
    """Writes file spans and bytes, in order, into one prepared `web.StreamResponse`."""

    def __init__(self, request: web.BaseRequest, resp: web.StreamResponse, *,
                 max_chunk_bytes: int = MAX_CHUNK_BYTES, cork: bool = True,
                 stall_timeout_s: float = STALL_TIMEOUT_S) -> None:
        if not resp.prepared:
            raise RuntimeError("SocketSender needs a prepared response")
        if request.transport is None:
            raise ConnectionResetError("connection lost before the body")
        self._loop = asyncio.get_running_loop()
        self._resp = resp
        self._writer = request.writer  # the StreamWriter resp.prepare() returned
        self._chunked = bool(getattr(self._writer, "chunked", False))
        self._transport: asyncio.Transport = request.transport
        self._max_chunk = max_chunk_bytes
        self._stall_s = stall_timeout_s
        self._empty_body = must_be_empty_body(request.method, resp.status)
        t = self._transport
        tsock = t.get_extra_info("socket")
        self.zero_copy = (tsock is not None and not resp.compression and hasattr(os, "sendfile")
                          and t.get_extra_info("sslcontext") is None)
        # Our own dup of the connection socket (O_NONBLOCK is shared, O_CLOEXEC is set);
        # only its fd and setsockopt are used. Owned here, closed in close().
        self._sock: socket.socket | None = None
        self._fd = -1
        if self.zero_copy:
            self._sock = socket.socket(fileno=os.dup(tsock.fileno()))
            self._fd = self._sock.fileno()
        self._cork = (cork and self._sock is not None and hasattr(socket, "TCP_CORK")
                      and self._sock.family in (socket.AF_INET, socket.AF_INET6))
        self._corked = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Uncork (flushing what is queued) and release the dup'd socket; idempotent."""
        if self._sock is not None:
            sock, self._sock, self._fd = self._sock, None, -1
            if self._corked:
                with contextlib.suppress(OSError):  # peer may be gone already
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
            sock.close()

    async def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Write `data` through aiohttp's own writer, after any earlier spans.

        Large buffers go out in slices of at most the per-call cap, each drained before the
        next, so no transport buffers more than one slice. aiohttp's drain returns without
        yielding while the socket takes the bytes (loopback and fast readers: a whole 4 MiB
        block in one step), so each slice also yields to the loop, as `_sendfile` does: many
        readers of one freshly filled block then share the loop fairly.
        """
        if self._empty_body:
            return
        view = memoryview(data)
        step = self._max_chunk
        for i in range(0, len(view), step):
            if i:
                await asyncio.sleep(0)  # let other connections (and timers) run between slices
            try:
                async with asyncio.timeout(self._stall_s):
                    await self._resp.write(view[i:i + step])  # drains above 64 KiB buffered
            except TimeoutError:
                self._abort()
                raise ReaderStalled(f"reader took no bytes for {self._stall_s:g}s") from None

    async def start_raw(self) -> bool:
        """Flush what aiohttp holds (the headers too); return whether `write_now` may be used.

        Raw writes go straight to the socket, so the caller's buffer is never queued in the
        transport: a reader that stalls holds nothing of it.
        """
        if not self.zero_copy or self._chunked or self._empty_body:
            return False
        await self._flush()
        return True

    def write_now(self, data: memoryview) -> int:
        """Write what the socket takes of `data` now, at most one chunk; return how much."""
        try:
            n = os.write(self._fd, data[:self._max_chunk])
        except BlockingIOError:
            return 0
        except ConnectionError as e:
            raise ConnectionResetError(f"peer closed: {e}") from e
        w = self._writer
        w.output_size += n
        if w.length is not None:
            w.length -= n
        return n

    async def wait_writable(self, since: float) -> None:
        """Wait until the socket takes bytes again; abort (ReaderStalled) once it has taken
        none since `since` (monotonic) for the stall timeout."""
        if time.monotonic() - since > self._stall_s:
            self._abort()
            raise ReaderStalled(f"reader took no bytes for {self._stall_s:g}s")
        await self._writable()

    async def send_file(self, fd: int, offset: int, count: int) -> int:
        """Send `count` bytes of `fd` from `offset`; return `count` or raise.

        Raises ConnectionResetError if the peer went away, FileTruncatedError (after
        aborting the connection) if the file is shorter than `offset + count`.
        """
        if self.zero_copy and self._sock is None:
            raise RuntimeError("SocketSender is closed")
        if count <= 0 or self._empty_body:
            return 0
        w = self._writer
        if w.length is not None and count > w.length:
            raise ValueError(f"span of {count} bytes exceeds remaining Content-Length {w.length}")
        if not self.zero_copy:
            return await self._copy_file(fd, offset, count)
        if self._chunked:
            await self._send_raw(b"%x\r\n" % count)
        sent = await self._sendfile(fd, offset, count)
        if self._chunked:
            await self._send_raw(b"\r\n")
        return sent

    async def _sendfile(self, fd: int, offset: int, count: int) -> int:
        await self._flush()
        w, done = self._writer, 0
        progress = time.monotonic()
        while done < count:
            try:
                n = os.sendfile(self._fd, fd, offset + done, min(count - done, self._max_chunk))
            except BlockingIOError:
                n = -1  # wait outside the except block: no misleading exception chain
            except ConnectionError as e:  # EPIPE, ECONNRESET
                raise ConnectionResetError(f"peer closed during sendfile: {e}") from e
            if n < 0:
                if time.monotonic() - progress > self._stall_s:
                    self._abort()
                    raise ReaderStalled(f"reader took no bytes for {self._stall_s:g}s")
                await self._writable()
                continue
            progress = time.monotonic()
            if n == 0:
                self._abort()
                raise FileTruncatedError(fd, offset, count, done)
            done += n
            w.output_size += n  # keeps resp.body_length / aiohttp's error path honest
            if w.length is not None:
                w.length -= n
            if done < count:
                await asyncio.sleep(0)  # let other connections run between chunks
        return done

    async def _send_raw(self, data: bytes) -> None:
        # Chunk framing goes straight to the socket so it stays ordered with sendfile.
        await self._flush()
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                n = -1
            except ConnectionError as e:
                raise ConnectionResetError(f"peer closed: {e}") from e
            if n < 0:
                await self._writable()
            else:
                view = view[n:]
        self._writer.output_size += len(data)

    async def _flush(self) -> None:
        # Headers and earlier resp.write() bytes must leave the transport before os.sendfile.
        if self._cork and not self._corked:  # before the headers, so they share a segment
            assert self._sock is not None
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            self._corked = True
        self._writer.send_headers()
        if self._transport.get_write_buffer_size():
            await self._wait_transport_empty()
        self._check_open()

    async def _wait_transport_empty(self) -> None:
        t = self._transport
        low, high = t.get_write_buffer_limits()
        t.set_write_buffer_limits(high=0, low=0)  # pauses now; resume_writing only when empty
        try:
            while t.get_write_buffer_size():
                self._check_open()
                await self._writer.drain()
                if t.get_write_buffer_size():  # not paused yet (never seen); poll POLLOUT
                    await self._writable()
        finally:
            if not t.is_closing():
                t.set_write_buffer_limits(high=high, low=low)

    async def _writable(self) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()
        self._loop.add_writer(self._fd, _wake, fut)
        timer = self._loop.call_later(_CLOSED_POLL_S, _wake, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self._loop.remove_writer(self._fd)
        self._check_open()

    def _check_open(self) -> None:
        if self._transport.is_closing():
            raise ConnectionResetError("connection closed during response")

    def _abort(self) -> None:
        self._transport.abort()

    async def _copy_file(self, fd: int, offset: int, count: int) -> int:
        done = 0
        while done < count:
            n = min(count - done, _FALLBACK_CHUNK_BYTES)
            chunk = await self._loop.run_in_executor(None, os.pread, fd, n, offset + done)
            if not chunk:
                self._abort()
                raise FileTruncatedError(fd, offset, count, done)
            await self.send_bytes(chunk)  # bounded by the stall timeout like any write
            done += len(chunk)
        return done




async def sendfile(request: web.BaseRequest, resp: web.StreamResponse,
                   fd: int, offset: int, count: int) -> int:
    """Send one span of `fd` into prepared `resp`; see `SocketSender.send_file`."""
    async with SocketSender(request, resp) as sender:
        return await sender.send_file(fd, offset, count)

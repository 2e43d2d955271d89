"""A read-only, seekable binary file over the cache group, for loaders that want a file.

`open_object(nodes=[...], url="s3://bucket/key")` returns a `CacheFile` (an
`io.RawIOBase`, wrap it in `io.BufferedReader` if you like). Its reads run on a private
event loop thread through a CacheClient; the version (ETag) is pinned at open, so a file
never mixes bytes of two versions: if the object is overwritten, reads raise ObjectChanged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import sys
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from client.client import CacheClient, ObjectInfo
from client.errors import ClientError

T = TypeVar("T")
READ_TIMEOUT_S = 300.0  # one read() call
READALL_PIECE = 64 * 2**20
READ_PIECE = 32 * 2**20  # one round trip to the loop thread


class _LoopThread:
    """An event loop on a daemon thread, for running a CacheClient from blocking code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="blockcache-client",
                                        daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self.loop.is_closed()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = READ_TIMEOUT_S) -> T:
        """Run `coro` on the loop thread; on timeout or Ctrl-C cancel it before returning."""
        if not self.alive:
            coro.close()
            raise ClientError("the cache client's loop thread has stopped")
        fut: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout_s)
        except BaseException:
            fut.cancel()  # the coroutine must not go on writing after we gave up on it
            try:
                fut.result(5)  # let it finish cancelling
            except BaseException:  # noqa: S110 - its cancellation or failure; ours is raised
                pass
            raise

    def stop(self) -> None:
        if self.alive:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
        if not self._thread.is_alive() and not self.loop.is_closed():
            self.loop.close()


class CacheFile(io.RawIOBase):
    """One object of one version, readable and seekable like a local file."""

    def __init__(self, client: CacheClient, info: ObjectInfo, loop: _LoopThread,
                 owns_client: bool) -> None:
        super().__init__()
        self.info, self._client, self._loop, self._owns = info, client, loop, owns_client
        self._pos = 0
        self.name = f"s3://{info.bucket}/{info.key}"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the position like a file's seek; return the new position."""
        bases = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.info.size}
        if whence not in bases:
            raise ValueError(f"invalid whence {whence!r}")
        base = bases[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        """Read up to len(buffer) bytes at the position into `buffer`; 0 at the end."""
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(0, self.info.size - self._pos))
        if want == 0:
            return 0
        done = 0
        while done < want:  # in pieces: memory and each timeout stay per piece
            n = min(READ_PIECE, want - done)
            got = self._loop.run(self._client.read_range(self.info, self._pos + done, n))
            view[done:done + len(got)] = got  # copied on the caller's thread, never late
            done += len(got)
            if len(got) < n:
                break
        self._pos += done
        return done

    def readall(self) -> bytes:
        """Read from the position to the end (in pieces of at most READALL_PIECE bytes)."""
        parts = []
        while chunk := self.read(READALL_PIECE):
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Close the file (and its client and loop if it made them)."""
        if not self.closed and self._owns:
            if sys.is_finalizing() or not self._loop.alive:
                pass  # interpreter exit: the loop thread cannot run any more
            else:
                try:
                    self._loop.run(self._client.close(), timeout_s=10)
                finally:
                    self._loop.stop()
        super().close()


def open_object(url: str, nodes: Sequence[str] = (), *, etcd: Sequence[str] = (),
                cluster: str = "default", site: str = "default",
                concurrency: int = 8) -> CacheFile:
    """Open s3://bucket/key through the cache group for blocking reads (pins the ETag)."""
    if not url.startswith("s3://") or "/" not in url[5:]:
        raise ClientError(f"{url!r} is not s3://<bucket>/<key>")
    bucket, _, key = url[5:].partition("/")
    loop = _LoopThread()
    client = CacheClient(nodes, etcd=etcd, cluster=cluster, site=site, concurrency=concurrency)
    try:
        loop.run(client.start())
        info = loop.run(client.stat(bucket, key))
    except BaseException:
        try:
            loop.run(client.close())
        finally:
            loop.stop()
        raise
    return CacheFile(client, info, loop, owns_client=True)

"""The FUSE operations of a read-only mount (pyfuse3, asyncio mode), thin over the namespace
and the blocks in memory.

Nothing here but `open` and `read` touches the network: lookups, attributes and listings come
from the namespace in memory, so `ls`, `stat`, `find` and `du` answer even with the group down.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import pyfuse3

from client.client import CacheClient
from client.errors import ClientError, NotFound, ObjectChanged, Unavailable
from client.mount.blocks import Blocks, Closed
from client.mount.group import GroupFetch
from client.mount.namespace import Directory, FileVersion, Listed, Namespace, Node
from client.mount.readahead import Stream
from client.mount.stats import Stats

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
VERSION_ATTR_TIMEOUT_S = 86400.0  # a file inode is one version: its attributes never change
IO_SIZE = 2**20  # st_blksize: the I/O size stdio and Python buffer by


@dataclass(frozen=True, slots=True)
class FsOptions:
    """What the operations need to know beyond the namespace and the blocks."""

    list_ttl_s: float
    read_timeout_s: float
    readahead_blocks: int
    slack_bytes: int
    uid: int
    gid: int


@dataclass(slots=True)
class OpenFile:
    """One open(2): the version it is pinned to and its read pattern."""

    version: FileVersion
    stream: Stream


def guarded(fn: F) -> F:
    """Answer EIO (logged) for any error an operation did not turn into a FUSEError."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception:
            log.exception("%s failed", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


class MountFs(pyfuse3.Operations):
    """Read-only operations over a Namespace; file bytes from Blocks."""

    def __init__(self, ns: Namespace, blocks: Blocks, fetch: GroupFetch, client: CacheClient,
                 opts: FsOptions, stats: Stats) -> None:
        super().__init__()
        self.ns, self.blocks, self.fetch, self.client = ns, blocks, fetch, client
        self.opts, self.stats = opts, stats
        self.files: dict[int, OpenFile] = {}
        self._dirs: dict[int, list[tuple[bytes, int]]] = {}
        self._next_fh = 1
        self._born_ns = time.time_ns()
        self.on_init: Callable[[], object] = lambda: None

    def init(self) -> None:
        """Tell the mount that the kernel's INIT is answered."""
        self.on_init()

    def attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        """Return the attributes of a directory or file version."""
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.ino
        e.st_uid, e.st_gid = self.opts.uid, self.opts.gid
        e.st_blksize = IO_SIZE
        e.entry_timeout = self.opts.list_ttl_s
        if isinstance(node, Directory):
            e.st_mode = stat.S_IFDIR | 0o555
            e.st_nlink = 2
            e.attr_timeout = self.opts.list_ttl_s
            mtime = node.mtime_ns or self._born_ns
        else:
            e.st_mode = stat.S_IFREG | 0o444
            e.st_nlink = 1
            e.st_size = node.size
            e.st_blocks = (node.size + 511) // 512
            e.attr_timeout = VERSION_ATTR_TIMEOUT_S
            mtime = node.mtime_ns or self._born_ns
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = mtime
        return e

    @guarded
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        """Return the attributes of `name` in a directory (a miss is cached --list-ttl)."""
        node = self.ns.lookup(parent_inode, name)
        if node is None:
            e = pyfuse3.EntryAttributes()  # st_ino 0: the kernel keeps the miss a while
            e.st_ino = 0
            e.entry_timeout = self.opts.list_ttl_s
            return e
        self.ns.looked_up(node.ino)
        return self.attributes(node)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """Let go of the kernel's lookups of these inodes."""
        for ino, n in inode_list:
            self.ns.forget(ino, n)

    @guarded
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        """Return an inode's attributes."""
        return self.attributes(self._node(inode))

    @guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        """Open a directory: a snapshot of its entries, so a relisting skips none."""
        d = self._node(inode)
        if not isinstance(d, Directory):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self._fh()
        self._dirs[fh] = sorted(d.entries.items())  # a snapshot: refreshes skip nothing
        return fh

    @guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """Send entries of an open directory from `start_id` on, as many as fit."""
        entries = self._dirs.get(fh, [])
        for i in range(start_id, len(entries)):
            name, ino = entries[i]
            node = self.ns.node(ino)
            if node is None:
                continue  # a version dropped since the snapshot
            if not pyfuse3.readdir_reply(token, name, self.attributes(node), i + 1):
                return
            self.ns.looked_up(ino)

    async def releasedir(self, fh: int) -> None:
        """Close an open directory."""
        self._dirs.pop(fh, None)

    @guarded
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        """Open a file read-only, pinned to its version (EROFS for any write)."""
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        v = self._node(inode)
        if not isinstance(v, FileVersion):
            raise pyfuse3.FUSEError(errno.EISDIR)
        fh = self._fh()
        if os.path.exists(f"/proc/self/task/{ctx.pid}"):  # our own page-cache probe, from a
            # thread (FUSE names the thread): no reads, no pin, not counted
            return pyfuse3.FileInfo(fh=fh, keep_cache=True)
        await self._pin(v)
        self.files[fh] = OpenFile(v, Stream(self.blocks.block_size, self.opts.readahead_blocks,
                                            slack=self.opts.slack_bytes))
        self.stats.opens += 1
        self.stats.open_files = len(self.files)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)  # the page cache outlives each open

    async def _pin(self, v: FileVersion) -> None:
        """Check that `v` is still the object's version (HEAD with If-Match); else point its
        name at the new version and answer ESTALE, so the kernel looks the name up again."""
        try:
            await self.client.revalidate(self.fetch.info(v),
                                         timeout_s=min(10.0, self.opts.read_timeout_s))
        except ObjectChanged:
            info = await self.client.stat(self.fetch.bucket, v.key)
            new = self.ns.replace(v, Listed(v.key, info.size, info.etag, info.last_modified))
            log.info("s3://%s/%s changed at the origin (ETag %s -> %s): opening the new version",
                     self.fetch.bucket, v.key, v.etag, new.etag)
            self.stats.stale_opens += 1
            raise pyfuse3.FUSEError(errno.ESTALE) from None
        except NotFound:
            log.warning("s3://%s/%s is gone at the origin", self.fetch.bucket, v.key)
            self.ns.remove(v)
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        except (Unavailable, TimeoutError) as e:
            log.info("open of s3://%s/%s pinned to its listed ETag %s unchecked: %s",
                     self.fetch.bucket, v.key, v.etag, e or "timed out")
            self.stats.unvalidated_opens += 1

    @guarded
    async def read(self, fh: int, off: int, size: int  # type: ignore[override]
                   ) -> bytes | memoryview:  # pyfuse3 takes any buffer (PyObject_GetBuffer)
        """Return bytes of an open file's version; EIO within --read-timeout if unservable."""
        f = self.files.get(fh)
        if f is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        ahead = f.stream.advance(off, size)
        v = f.version
        try:
            async with asyncio.timeout(self.opts.read_timeout_s):  # the stated bound
                data = await self.blocks.read(v, off, size, ahead)
        except TimeoutError:
            self._failed("timeout", "read of s3://%s/%s bytes %d-%d: EIO: not served within "
                         "%gs (--read-timeout)", self.fetch.bucket, v.key, off, off + size - 1,
                         self.opts.read_timeout_s)
        except (ObjectChanged, NotFound) as e:
            self._failed("gone", "s3://%s/%s: pinned version %s is gone at the origin, reads "
                         "answer EIO (open the file again for the new version): %s",
                         self.fetch.bucket, v.key, v.etag, e)
        except Closed:
            self._failed("unmounting", "read of s3://%s/%s while unmounting",
                         self.fetch.bucket, v.key)
        except (Unavailable, ClientError) as e:
            self._failed("unavailable", "read of s3://%s/%s bytes %d-%d: EIO: %s",
                         self.fetch.bucket, v.key, off, off + size - 1, e)
        self.stats.fuse_reads += 1
        self.stats.fuse_read_bytes += len(data)
        return data

    def _failed(self, cause: str, msg: str, *args: object) -> NoReturn:
        self.stats.errors[cause] += 1
        log.warning(msg, *args)
        raise pyfuse3.FUSEError(errno.EIO)

    async def release(self, fh: int) -> None:
        """Close an open file."""
        self.files.pop(fh, None)
        self.stats.open_files = len(self.files)

    @guarded
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        """Return the mount's size (the listed bytes) and file count, none free."""
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = (self.ns.bytes + 4095) // 4096
        s.f_bfree = s.f_bavail = s.f_ffree = s.f_favail = 0
        s.f_files = self.ns.files
        s.f_namemax = 255
        return s

    def open_names(self) -> list[str]:
        """Return the keys of the files open now."""
        return sorted({f.version.key for f in self.files.values()})

    def _node(self, inode: int) -> Node:
        node = self.ns.node(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _fh(self) -> int:
        fh, self._next_fh = self._next_fh, self._next_fh + 1
        return fh

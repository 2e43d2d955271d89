"""The life of one mount: list, mount, serve until SIGTERM/SIGINT or umount, summarise.

Everything runs on one asyncio loop (pyfuse3's asyncio mode): the FUSE workers, the
CacheClient's block reads, the listing refresh and the --metrics server.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import IO

import pyfuse3
import pyfuse3.asyncio
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from client.client import CacheClient
from client.errors import ClientError
from client.mount import mountpoint, pagecache
from client.mount.blocks import Blocks
from client.mount.fs import FsOptions, MountFs
from client.mount.group import GroupFetch
from client.mount.namespace import Listed, Namespace
from client.mount.stats import Stats, StatsCollector

log = logging.getLogger(__name__)
pyfuse3.asyncio.enable()
MiB = 2**20


def _notify_closing(fd: int) -> None:
    """Fail the waits on the FUSE fd, as pyfuse3.asyncio's own does, but skip a wait that has
    already ended (its version raises InvalidStateError then, and terminate() fails), and stop
    watching the fd first (else its reader callback may still resolve a failed wait)."""
    asyncio.get_running_loop().remove_reader(fd)
    for f in list(pyfuse3.asyncio._read_futures.get(fd, ())):
        if not f.done():
            f.set_exception(pyfuse3.asyncio.ClosedResourceError())


pyfuse3.asyncio.notify_closing = _notify_closing
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def tune_malloc() -> None:
    """Serve 4 MiB block buffers from the heap, not fresh mmaps that page-fault on every fill
    (as cachenode/__main__.py does for the node: the same 4 MiB buffers, the same cure)."""
    name = ctypes.util.find_library("c")
    if not sys.platform.startswith("linux") or not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(M_MMAP_THRESHOLD, 32 * MiB)
        libc.mallopt(M_TRIM_THRESHOLD, 256 * MiB)
    except (OSError, AttributeError):
        pass  # not glibc: keep its defaults


@dataclass(frozen=True, slots=True)
class MountOptions:
    """What `cachectl mount` was asked for (units in the names)."""

    bucket: str
    prefix: str
    mountpoint: str
    memory_bytes: int = 1024 * MiB
    readahead_blocks: int = 8
    read_timeout_s: float = 30.0
    list_ttl_s: float = 30.0
    kernel_readahead_bytes: int = MiB
    metrics: str = ""  # host:port
    allow_other: bool = False
    debug_fuse: bool = False

    def fuse_options(self) -> set[str]:
        """Return the libfuse mount options."""
        opts = set(pyfuse3.default_options) | {"ro", "fsname=blockcache", "subtype=blockcache"}
        if self.allow_other:
            opts.add("allow_other")
        if self.debug_fuse:
            opts.add("debug")
        return opts


async def relist(client: CacheClient, ns: Namespace, opts: MountOptions, stats: Stats) -> None:
    """List the prefix again and rebuild the tree (the old one stays if listing fails)."""
    try:
        async with asyncio.timeout(max(30.0, opts.read_timeout_s)):
            objects = [Listed(o.key, o.size, o.etag, o.last_modified)
                       async for o in client.list_objects(opts.bucket, opts.prefix)]
    except (ClientError, TimeoutError) as e:
        stats.listings["failed"] += 1
        raise ClientError(f"cannot list s3://{opts.bucket}/{opts.prefix}: "
                          f"{e or 'timed out'}") from None
    before = set(ns.skipped)
    ns.apply(objects)
    stats.listings["ok"] += 1
    stats.files, stats.bytes = ns.files, ns.bytes
    for key in sorted(set(ns.skipped) - before)[:20]:
        log.warning("s3://%s/%s is not shown: not a path here (empty, '.' or '..' segments, "
                    "a name over 255 bytes, or a file where a directory is)", opts.bucket, key)


async def refresh_forever(client: CacheClient, ns: Namespace, opts: MountOptions,
                          stats: Stats) -> None:
    """Relist the prefix every --list-ttl."""
    while True:
        await asyncio.sleep(opts.list_ttl_s)
        try:
            await relist(client, ns, opts, stats)
        except ClientError as e:
            log.warning("%s; the mount keeps the listing it has", e)


@asynccontextmanager
async def metrics_server(addr: str, stats: Stats, probe: PageCacheProbe) -> AsyncIterator[None]:
    """Serve the mount's metrics on http://addr/metrics while the mount lives."""
    if not addr:
        yield
        return
    registry = CollectorRegistry()
    registry.register(StatsCollector(stats))

    async def page(request: web.Request) -> web.Response:
        await probe.measure(max_age_s=5.0)
        return web.Response(body=generate_latest(registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = addr.rpartition(":")
    try:
        try:
            await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
        except (OSError, ValueError) as e:
            raise ClientError(f"--metrics {addr}: {e}") from None
        yield
    finally:
        await runner.cleanup()


class PageCacheProbe:
    """Measure the page-cache residency of the mount's files, at most so often."""

    def __init__(self, root: str, ns: Namespace, stats: Stats) -> None:
        self.root, self.ns, self.stats = root, ns, stats
        self._at = 0.0

    async def measure(self, max_age_s: float = 0.0) -> None:
        """Update stats.page_cache_bytes (in a thread: the opens come back to this loop)."""
        if time.monotonic() - self._at < max_age_s:
            return
        self._at = time.monotonic()
        paths = self.ns.paths()[:10000]
        with suppress(TimeoutError, OSError):
            async with asyncio.timeout(10.0):
                self.stats.page_cache_bytes = await asyncio.to_thread(
                    pagecache.resident_bytes, self.root, paths)


def install_signals(fs: MountFs, blocks: Blocks, probe: PageCacheProbe, where: str) -> None:
    """Unmount cleanly on SIGTERM and SIGINT (saying which files are still open)."""
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    async def stop(name: str) -> None:
        names = fs.open_names()
        if names:
            log.warning("%s: unmounting %s with %d file(s) open (%s): what they read next "
                        "is served from the page cache or fails with ENOTCONN (Transport "
                        "endpoint is not connected)", name, where,
                        len(names), ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""))
        else:
            log.info("%s: unmounting %s", name, where)
        await probe.measure()
        pyfuse3.terminate()
        await blocks.close()  # reads still waiting get EIO now, not at their deadline

    def on_signal(name: str) -> None:
        if not stopping:  # a second signal while unmounting changes nothing
            stopping.append(asyncio.ensure_future(stop(name)))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)


async def build(client: CacheClient, opts: MountOptions, stats: Stats) -> MountFs:
    """Return the file system over a first listing of the prefix (ClientError if empty)."""
    ns = Namespace(opts.prefix)
    await relist(client, ns, opts, stats)
    if not ns.files:
        raise ClientError(f"nothing under s3://{opts.bucket}/{opts.prefix}")
    assert client.view is not None
    bs = client.view.block_size
    fetch = GroupFetch(client, opts.bucket, bs, opts.read_timeout_s, stats)
    blocks = Blocks(fetch, bs, opts.memory_bytes, stats)
    return MountFs(ns, blocks, fetch, client, FsOptions(
        opts.list_ttl_s, opts.read_timeout_s, opts.readahead_blocks,
        max(MiB, opts.kernel_readahead_bytes), os.getuid(), os.getgid()), stats)


async def mount(client: CacheClient, opts: MountOptions, err: IO[str]) -> int:
    """Mount s3://bucket/prefix read-only on opts.mountpoint and serve it until unmounted."""
    mountpoint.prepare(opts.mountpoint)
    tune_malloc()
    stats = Stats()
    fs = await build(client, opts, stats)
    ns, blocks = fs.ns, fs.blocks
    where = os.path.abspath(opts.mountpoint)
    probe = PageCacheProbe(where, ns, stats)

    def mounted() -> None:  # after the kernel's INIT, which sets its read-ahead too
        ra_kib = mountpoint.set_kernel_readahead(where, opts.kernel_readahead_bytes)
        log.info("mounted s3://%s/%s on %s: %d files, %.2f GiB; kernel read-ahead %d KiB",
                 opts.bucket, opts.prefix, where, ns.files, ns.bytes / 2**30, ra_kib)

    fs.on_init = lambda: asyncio.get_running_loop().call_soon(mounted)
    try:
        pyfuse3.init(fs, where, opts.fuse_options())
    except RuntimeError as e:  # libfuse printed its reason on stderr
        raise ClientError(f"cannot mount on {where}: {e} (is /dev/fuse there? fusermount3 "
                          "installed? --allow-other needs root or user_allow_other)") from None
    try:
        install_signals(fs, blocks, probe, where)
        refresher = asyncio.ensure_future(refresh_forever(client, ns, opts, stats))
        try:
            async with metrics_server(opts.metrics, stats, probe):
                await pyfuse3.main()
        finally:
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)
    finally:
        await blocks.close()
        pyfuse3.close(unmount=True)
        summary = stats.summary(where)
        log.info("%s", summary)
        err.write(f"cachectl mount: {summary}\n")
        err.flush()
    return 0

"""CacheClient: read byte ranges straight from the blocks' owners, in parallel, in order.

The client computes owners with the same ring as the nodes (cachenode.ring), asks each
block's owner with an HTTP range GET (the owner sends it from disk with sendfile), and on
failure moves to the next owner, then to any node (which fills from origin). Memory stays
bounded by `concurrency` blocks; every response must carry the pinned ETag.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

import aiohttp

from cachenode.blocks import block_id
from cachenode.checksum import HEADER as CRC
from cachenode.checksum import crc32c
from cachenode.liveness import Hung, Left, Liveness
from cachenode.ring import Ring
from client.errors import ClientError, ObjectChanged, Unavailable, error_for, reason_of
from client.membership import GroupView, Member, base_url, from_etcd, from_seeds

log = logging.getLogger(__name__)
T = TypeVar("T")
OWNERS_TRIED = 3


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """An object's size and the ETag that pins its version."""

    bucket: str
    key: str
    size: int
    etag: str
    last_modified: float = 0.0


async def windowed(fetch: Callable[[int], Awaitable[T]], n: int,
                   inflight: int) -> AsyncIterator[T]:
    """Yield fetch(0), ..., fetch(n-1) in order, with up to `inflight` of them running."""
    pending: deque[asyncio.Future[T]] = deque()
    todo = iter(range(n))
    try:
        while True:
            while len(pending) < inflight:
                i = next(todo, None)
                if i is None:
                    break
                pending.append(asyncio.ensure_future(fetch(i)))
            if not pending:
                return
            yield await pending.popleft()
    finally:
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


class CacheClient:
    """Ring-aware reader of a cache group: `async with CacheClient(nodes=[...]) as c:`."""

    def __init__(self, nodes: Sequence[str] = (), *, etcd: Sequence[str] = (),
                 cluster: str = "default", site: str = "default", concurrency: int = 8,
                 timeout_s: float = 120.0, refresh_s: float = 10.0, token: str = "") -> None:
        """Describe a client; `token` is a tenant's bearer token, sent on every request."""
        if not nodes and not etcd:
            raise ClientError("give seed nodes (host:port) or etcd URLs")
        if concurrency < 1:
            raise ClientError("concurrency must be at least 1")
        self._seeds, self._etcd = list(nodes), list(etcd)
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._cluster, self._site = cluster, site
        self.concurrency, self._timeout_s, self._refresh_s = concurrency, timeout_s, refresh_s
        self._session: aiohttp.ClientSession | None = None
        self.view: GroupView | None = None
        self._ring: Ring | None = None
        self._learned = 0.0
        self._refreshing: asyncio.Future[None] | None = None  # the background refresh
        self._down_until: dict[str, float] = {}
        self._liveness = Liveness()  # a hung node is given up in seconds, not at the deadline
        self.failovers = 0  # requests moved to another node after one failed
        self.corrupt = 0  # blocks that failed the crc32 their node recorded

    async def __aenter__(self) -> CacheClient:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the connection pool and learn the group."""
        self._session = aiohttp.ClientSession(
            headers=self._auth,
            connector=aiohttp.TCPConnector(limit=max(64, 2 * self.concurrency)),
            timeout=aiohttp.ClientTimeout(total=self._timeout_s, sock_connect=3.0),
            auto_decompress=False)
        try:
            await self.refresh()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection pool."""
        if self._refreshing is not None:
            self._refreshing.cancel()
            await asyncio.gather(self._refreshing, return_exceptions=True)
        await self._liveness.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def refresh(self) -> GroupView:
        """Learn the group's members again (from etcd, else from the seeds and known nodes)."""
        assert self._session is not None, "call start() first"
        if self._etcd:
            view = await from_etcd(self._session, self._etcd, self._cluster, self._site)
        else:
            known = [m.http for m in (self.view.members.values() if self.view else [])]
            view = await from_seeds(self._session, self._seeds + known)
        up = {i: m.weight for i, m in view.members.items() if m.state == "up"}
        self.view, self._ring = view, (Ring(up) if up else None)
        self._learned = time.monotonic()
        return view

    async def _current(self) -> GroupView:
        """Return the group's view; a stale one is refreshed in the background, one refresh
        at a time, so no read waits on etcd or on a seed that hangs."""
        if self.view is None:
            await self.refresh()
        elif time.monotonic() - self._learned > self._refresh_s and (
                self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.ensure_future(self._refresh_quietly())
        assert self.view is not None
        return self.view

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except ClientError as e:  # keep the last view; try again after refresh_s
            self._learned = time.monotonic()
            log.info("keeping the last view of the group: %s", e)

    def owners(self, info: ObjectInfo, index: int) -> list[Member]:
        """Return the nodes to ask for a block: owners first, then every other member."""
        assert self.view is not None
        ids = self._ring.owners(block_id(info.bucket, info.key, info.etag, info.size, index,
                                         self.view.block_size), OWNERS_TRIED) if self._ring else []
        rest = sorted(set(self.view.members) - set(ids))
        members = [self.view.members[i] for i in ids + rest]
        now = time.monotonic()  # nodes that just failed go last
        return sorted(members, key=lambda m: self._down_until.get(m.http, 0.0) > now)

    async def stat(self, bucket: str, key: str) -> ObjectInfo:
        """Return the object's size and ETag (HEAD through a node)."""
        view = await self._current()
        info = ObjectInfo(bucket, key, 0, "")
        headers, _ = await self._fetch(self._spread(view, f"{bucket}/{key}"), "HEAD", info, None)
        lm = headers.get("Last-Modified")
        return ObjectInfo(bucket, key, int(headers["Content-Length"]), headers["ETag"],
                          email.utils.parsedate_to_datetime(lm).timestamp() if lm else 0.0)

    async def revalidate(self, info: ObjectInfo, timeout_s: float | None = None) -> None:
        """Check that the object still has the pinned ETag (a HEAD with If-Match through a
        node): ObjectChanged if not, NotFound if it is gone, Unavailable if nobody answers."""
        async with asyncio.timeout(timeout_s):
            view = await self._current()
            await self._fetch(self._spread(view, f"{info.bucket}/{info.key}"), "HEAD", info, None)

    async def list_objects(self, bucket: str, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Yield the objects under `prefix` (listed by a node from origin), page by page."""
        view = await self._current()
        token = ""
        while True:
            q = urllib.parse.urlencode({"prefix": prefix, "token": token})
            page = None
            for m in self._spread(view, prefix):
                try:
                    async with self._http().get(
                            f"{base_url(m.http)}/_list/{urllib.parse.quote(bucket)}?{q}") as r:
                        if r.status != 200:
                            raise error_for(r.status, await r.text())
                        page = await r.json()
                        break
                except (aiohttp.ClientError, OSError, TimeoutError) as e:
                    self._mark_down(m, e)
            if page is None:
                raise Unavailable(f"no node could list s3://{bucket}/{prefix}")
            for o in page["objects"]:
                yield ObjectInfo(bucket, o["key"], int(o["size"]), o["etag"],
                                 float(o.get("last_modified", 0.0)))
            token = page["next_token"]
            if not token:
                return

    async def read_range(self, info: ObjectInfo, start: int = 0, length: int = -1) -> bytes:
        """Return bytes [start, start+length) of the pinned object (-1: to the end)."""
        return b"".join([b async for b in self.iter_range(info, start, length)])

    async def iter_range(self, info: ObjectInfo, start: int = 0,
                         length: int = -1) -> AsyncIterator[bytes]:
        """Yield bytes [start, start+length) in order; up to `concurrency` blocks in flight."""
        view = await self._current()
        end = info.size if length < 0 else min(info.size, start + length)
        if not 0 <= start <= info.size:
            raise ClientError(f"offset {start} is outside s3://{info.bucket}/{info.key} "
                              f"({info.size} bytes)")
        bs = view.block_size
        first = start // bs
        count = (end + bs - 1) // bs - first if end > start else 0

        def block(k: int) -> Awaitable[bytes]:
            i = first + k
            return self._block(info, i, max(start, i * bs), min(end, (i + 1) * bs))

        async for data in windowed(block, count, self.concurrency):
            yield data

    async def _block(self, info: ObjectInfo, index: int, lo: int, hi: int) -> bytes:
        """Return bytes [lo, hi) of one block, from its owner or whoever answers."""
        _, data = await self._fetch(self.owners(info, index), "GET", info, (lo, hi))
        return data

    async def _fetch(self, nodes: list[Member], method: str, info: ObjectInfo,
                     span: tuple[int, int] | None) -> tuple[Mapping[str, str], bytes]:
        """Return headers and body from the first node that serves the request whole.

        A node that cannot be reached, fails mid-body or answers 503 is skipped; a 502
        (the origin failed) or a 4xx is final. Every answer must carry the pinned ETag.
        """
        url_path = f"/{urllib.parse.quote(info.bucket)}/{urllib.parse.quote(info.key)}"
        headers = {"Range": f"bytes={span[0]}-{span[1] - 1}"} if span else {}
        if info.etag:
            headers["If-Match"] = info.etag  # a node with older metadata looks again
        errors = []
        for m in nodes:
            try:
                async with asyncio.timeout(self._timeout_s):  # a hung node: Hung in seconds
                    status, got, body = await self._liveness.run(
                        m.http, self._request(method, base_url(m.http) + url_path, headers,
                                              span))
            except (aiohttp.ClientError, OSError, TimeoutError, Hung, Left) as e:
                self._mark_down(m, e)
                errors.append(f"{m.id}: {e or type(e).__name__}")
                continue
            if status in (200, 206):
                if info.etag and got.get("ETag") != info.etag:
                    errors.append(f"{m.id}: sent ETag {got.get('ETag')}")
                    continue  # that node knows another version: ask the next
                return got, body
            # only an error body is text (decoding a 4 MiB block took most of a read's CPU)
            text = body.decode("utf-8", "replace") or got.get("X-Blockcache-Reason", "")
            if status == 503:
                errors.append(f"{m.id}: HTTP 503 {reason_of(text)}")
                continue
            if status >= 500:  # the origin failed for this node: it would for the others
                errors.append(f"{m.id}: HTTP {status} {reason_of(text)}")
                break
            if status == 412:
                raise ObjectChanged(f"s3://{info.bucket}/{info.key} changed at origin (pinned "
                                    f"ETag {info.etag} is gone); stat it again")
            raise error_for(status, text)
        raise Unavailable(f"no node could serve s3://{info.bucket}/{info.key}: "
                          + "; ".join(errors[-4:]))

    async def _request(self, method: str, url: str, headers: Mapping[str, str],
                       span: tuple[int, int] | None
                       ) -> tuple[int, Mapping[str, str], bytes]:
        """Return status, headers and body of one request; a 2xx body is length and
        checksum checked (ClientPayloadError if it fails)."""
        async with self._http().request(method, url, headers=headers) as r:
            body = await (r.read() if r.status in (200, 206) else r.content.read(64 * 1024))
            if r.status not in (200, 206):
                return r.status, r.headers.copy(), body
            if span and len(body) != span[1] - span[0]:
                raise aiohttp.ClientPayloadError(f"{len(body)} of {span[1] - span[0]} bytes")
            crc = r.headers.get(CRC)
            if crc is not None and crc32c(body) != int(crc):
                self.corrupt += 1
                raise aiohttp.ClientPayloadError("block failed its CRC-32C")
            return r.status, r.headers.copy(), body

    def _http(self) -> aiohttp.ClientSession:
        assert self._session is not None, "call start() first"
        return self._session

    def _spread(self, view: GroupView, key: str) -> list[Member]:
        """Return live-looking members in a per-key order, so stats spread over nodes."""
        ids = Ring({i: 1 for i in view.members}).owners(key, len(view.members)) \
            if view.members else []
        now = time.monotonic()
        members = [view.members[i] for i in ids]
        return sorted(members, key=lambda m: self._down_until.get(m.http, 0.0) > now)

    def _mark_down(self, m: Member, e: BaseException) -> None:
        self.failovers += 1
        log.info("node %s (%s) failed: %s; trying the next", m.id, m.http, e or type(e).__name__)
        self._down_until[m.http] = time.monotonic() + 2.0

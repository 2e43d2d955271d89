"""Count requests to an S3 endpoint through a byte-for-byte reverse proxy that can go down."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Self

import aiohttp
from aiohttp import web
from yarl import URL

from tests.servers import free_port

# Hop-by-hop headers (RFC 9110 7.6.1) and Expect (not signed by SigV4) stay on their own hop.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
                        "expect"})


@dataclass
class Counts:
    """A snapshot of what the proxy has seen since the last reset."""

    total: int = 0
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (method, path)
    range_gets: Counter[tuple[str, str]] = field(default_factory=Counter)  # (path, Range)


class CountingProxy:
    """A reverse proxy to `upstream` on 127.0.0.1, served from its own thread and event loop."""

    def __init__(self, upstream: str, port: int | None = None, chunk_bytes: int = 256 * 1024,
                 rate_bytes_s: float | None = None, latency_s: float = 0.0,
                 latency_max_s: float | None = None) -> None:
        """Describe a proxy; `rate_bytes_s` shapes every response body together (one link),
        `latency_s` delays each request before it is forwarded (a distant origin), or a
        delay drawn uniformly from [`latency_s`, `latency_max_s`] if that is given."""
        self.upstream = upstream.rstrip("/")
        self.port = port or free_port()
        self.chunk_bytes = chunk_bytes
        self.rate_bytes_s, self.latency_s = rate_bytes_s, latency_s
        self.latency_max_s = latency_max_s
        self._cuts: list[int] = []  # bodies to cut after so many bytes; guarded by _lock
        self._link_free_at = 0.0  # loop time the shaped link is next free; touched on _loop
        self._counts = Counts()  # guarded by _lock
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"CountingProxy:{self.port}")
        self._thread.start()
        self._runner: web.AppRunner | None = None  # touched only on _loop
        self._session: aiohttp.ClientSession | None = None  # touched only on _loop
        self._failures: list[tuple[int, str]] = []  # injected answers, guarded by _lock
        # While hanging: a future that hung requests wait on, resolved True to forward them
        # (hang(False)) or False to drop their connections (stop()). Touched only on _loop.
        self._hang_release: asyncio.Future[bool] | None = None

    @property
    def endpoint_url(self) -> str:
        """Return the proxy's URL, to use as an S3 endpoint."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def counts(self) -> Counts:
        """Return a copy of the counters."""
        with self._lock:
            c = self._counts
            return Counts(c.total, Counter(c.requests), Counter(c.range_gets))

    @property
    def total(self) -> int:
        """Return how many requests arrived since the last reset."""
        return self.counts.total

    @property
    def requests(self) -> Counter[tuple[str, str]]:
        """Return request counts per (method, decoded path)."""
        return self.counts.requests

    @property
    def range_gets(self) -> Counter[tuple[str, str]]:
        """Return counts of GETs with a Range header per (decoded path, Range value)."""
        return self.counts.range_gets

    def reset(self) -> None:
        """Zero every counter."""
        with self._lock:
            self._counts = Counts()

    def start(self) -> Self:
        """Listen on the proxy's port and forward requests (again, after stop)."""
        self._call(self._start())
        return self

    def stop(self) -> None:
        """Close the listener and every connection, so new connections are refused.

        Also ends a hang: requests held by `hang()` lose their connections unanswered, and
        after `start()` the proxy forwards again.
        """
        self._call(self._stop())

    def hang(self, on: bool = True) -> None:
        """While on, accept connections and requests but never answer them.

        Hung requests are counted, then held until `hang(False)`, which forwards them (late)
        unless their client has gone away meanwhile, or until `stop()`/`close()`, which drop
        their connections without an answer.
        """
        self._call(self._set_hang(on))

    async def _set_hang(self, on: bool) -> None:
        if on and self._hang_release is None:
            self._hang_release = self._loop.create_future()
        elif not on:
            self._release_hung(forward=True)

    def _release_hung(self, forward: bool) -> None:
        release, self._hang_release = self._hang_release, None
        if release is not None:
            release.set_result(forward)

    def close(self) -> None:
        """Stop and end the proxy's thread and loop."""
        if self._thread.is_alive():
            self.stop()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    async def _start(self) -> None:
        if self._runner is not None:
            return
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True).start()
        self._runner = runner

    async def _stop(self) -> None:
        self._release_hung(forward=False)
        runner, session, self._runner, self._session = self._runner, self._session, None, None
        if runner is not None:
            await runner.cleanup()
        if session is not None:
            await session.close()

    def _count(self, request: web.Request) -> None:
        with self._lock:
            self._counts.total += 1
            self._counts.requests[(request.method, request.path)] += 1
            if request.method == "GET" and "Range" in request.headers:
                self._counts.range_gets[(request.path, request.headers["Range"])] += 1

    def fail_next(self, n: int, status: int = 503, code: str = "SlowDown") -> None:
        """Answer the next `n` requests with an S3 error instead of forwarding them."""
        with self._lock:
            self._failures.extend([(status, code)] * n)

    def cut_next(self, n: int, after_bytes: int) -> None:
        """Cut the bodies of the next `n` GETs after `after_bytes` bytes (connection dropped)."""
        with self._lock:
            self._cuts.extend([after_bytes] * n)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        """Send the request on unchanged (raw path, query, Host, Authorization); stream back."""
        self._count(request)
        if self.latency_max_s is not None:
            await asyncio.sleep(random.uniform(self.latency_s, self.latency_max_s))
        elif self.latency_s:
            await asyncio.sleep(self.latency_s)
        if self._hang_release is not None:
            forward = await asyncio.shield(self._hang_release)
            transport = request.transport
            if not forward or transport is None or transport.is_closing():
                if transport is not None:
                    transport.abort()  # no answer at all: the client sees the connection drop
                return web.Response(status=504)  # never sent: the transport is gone
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            xml = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{failure[1]}</Code>"
                   f"<Message>injected by CountingProxy</Message></Error>")
            return web.Response(status=failure[0], text=xml, content_type="application/xml")
        assert self._session is not None
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        url = URL(self.upstream + request.raw_path, encoded=True)
        body = request.content if request.body_exists else None
        try:
            upstream = await self._session.request(
                request.method, url, headers=headers, data=body, allow_redirects=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"))
        except aiohttp.ClientError as e:
            return web.Response(status=502, text=f"proxy: upstream unavailable: {e}")
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() not in HOP_BY_HOP:
                    response.headers.add(k, v)
            await response.prepare(request)
            with self._lock:
                cut = self._cuts.pop(0) if self._cuts and request.method == "GET" else None
            try:
                if request.method != "HEAD":
                    await self._body(request, response, upstream, cut)
                await response.write_eof()
            except ConnectionResetError:  # the client went away mid-body
                pass
            return response

    async def _body(self, request: web.Request, response: web.StreamResponse,
                    upstream: aiohttp.ClientResponse, cut: int | None) -> None:
        """Stream the upstream body through the shaped link, cut after `cut` bytes if set."""
        sent = 0
        async for chunk in upstream.content.iter_chunked(self.chunk_bytes):
            if cut is not None and sent + len(chunk) > cut:
                await response.write(chunk[:cut - sent])
                if request.transport is not None:
                    request.transport.abort()  # the client sees the body end short
                raise ConnectionResetError("body cut by CountingProxy")
            await self._shape(len(chunk))
            await response.write(chunk)
            sent += len(chunk)

    async def _shape(self, n: int) -> None:
        """Wait until the shaped link has carried the bytes before these `n` (FIFO)."""
        if not self.rate_bytes_s:
            return
        now = self._loop.time()
        start = max(now, self._link_free_at)
        self._link_free_at = start + n / self.rate_bytes_s
        if self._link_free_at > now:
            await asyncio.sleep(self._link_free_at - now)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)

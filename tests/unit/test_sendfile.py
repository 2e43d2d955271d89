"""SocketSender against a real aiohttp server on 127.0.0.1, under asyncio and uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import uvloop
from aiohttp import web

from cachenode import sendfile as sendfile_mod
from cachenode.sendfile import FileTruncatedError, SocketSender

T = TypeVar("T")
MiB = 1024 * 1024
Span = tuple[str, Any]  # ("file", (path, offset, count)) or ("bytes", b"...")


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[T]], T]:
    """Return a runner that executes a coroutine on a fresh loop of the parametrized kind."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def _run(coro: Awaitable[T]) -> T:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coro)  # type: ignore[arg-type]

    return _run


def make_file(path: Path, size: int, seed: int) -> Path:
    """Write `size` deterministic, position-dependent bytes to `path`."""
    block = bytes((seed * 31 + i * 7) % 251 for i in range(4096))
    path.write_bytes((block * (size // 4096 + 1))[:size])
    return path


def expected_body(spans: list[Span]) -> bytes:
    out = bytearray()
    for kind, arg in spans:
        if kind == "bytes":
            out += arg
        else:
            path, offset, count = arg
            out += Path(path).read_bytes()[offset:offset + count]
    return bytes(out)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class SpanApp:
    """An app whose single route streams `self.spans` and records how it ended."""

    def __init__(self, *, length: int | None = None) -> None:
        self.spans: list[Span] = []
        self.length = length  # Content-Length; defaults to the spans' total
        self.chunked = False
        self.compress = False
        self.max_chunk_bytes = sendfile_mod.MAX_CHUNK_BYTES
        self.outcomes: list[BaseException | None] = []
        self.zero_copy: list[bool] = []
        self.transports: list[asyncio.Transport] = []
        self.done = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/small":
            return web.Response(body=b"ok")
        resp = web.StreamResponse()
        if self.compress:
            resp.enable_compression()
        elif not self.chunked:
            resp.content_length = self.length if self.length is not None else sum(
                len(a) if k == "bytes" else a[2] for k, a in self.spans)
        await resp.prepare(request)
        assert request.transport is not None
        self.transports.append(request.transport)
        fds: list[int] = []
        try:
            async with SocketSender(request, resp, max_chunk_bytes=self.max_chunk_bytes) as s:
                self.zero_copy.append(s.zero_copy)
                for kind, arg in self.spans:
                    if kind == "bytes":
                        await s.send_bytes(arg)
                    else:
                        fds.append(os.open(arg[0], os.O_RDONLY))
                        assert await s.send_file(fds[-1], arg[1], arg[2]) == arg[2]
            await resp.write_eof()
            self.outcomes.append(None)
        except (ConnectionResetError, FileTruncatedError) as e:
            self.outcomes.append(e)
            raise
        finally:
            for fd in fds:
                os.close(fd)
            self.done.set()
        return resp


@contextlib.asynccontextmanager
async def serve(app: SpanApp, ssl_ctx: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """Serve `app` on 127.0.0.1:0 and yield the port."""
    wa = web.Application()
    wa.router.add_get("/{tail:.*}", app.handle)
    runner = web.AppRunner(wa, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_ctx)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    return int(lines[0].split()[1]), headers


async def raw_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  path: str = "/spans") -> tuple[int, dict[str, str], bytes]:
    """Send one keep-alive GET on an open connection and read a Content-Length response."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    status, headers = await read_head(reader)
    return status, headers, await reader.readexactly(int(headers["content-length"]))


def test_mixed_spans_byte_exact_and_keepalive(run: Any, tmp_path: Path) -> None:
    a = make_file(tmp_path / "a", 3 * MiB + 17, 1)
    b = make_file(tmp_path / "b", 1 * MiB, 2)
    app = SpanApp()
    app.max_chunk_bytes = 1 * MiB + 3  # force several os.sendfile calls per span
    app.spans = [("bytes", b"HEAD-"), ("file", (a, 5, 3 * MiB)), ("bytes", b"-mid-"),
                 ("bytes", b"x" * 70_000), ("file", (b, 0, MiB)), ("file", (a, 0, 1)),
                 ("file", (b, MiB - 9, 9)), ("bytes", b"-tail")]

    async def main() -> None:
        async with serve(app) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(2):  # second response on the same connection: keep-alive intact
                status, headers, body = await raw_get(reader, writer)
                assert status == 200 and headers.get("connection", "").lower() != "close"
                assert body == expected_body(app.spans)
            status, _, body = await raw_get(reader, writer, "/small")
            assert (status, body) == (200, b"ok")
            writer.close()
            await writer.wait_closed()
        assert app.outcomes == [None, None] and app.zero_copy == [True, True]

    run(main())


def test_small_corked_responses_are_not_delayed(run: Any, tmp_path: Path) -> None:
    a = make_file(tmp_path / "a", 5000, 9)
    app = SpanApp()
    app.spans = [("file", (a, 10, 1000)), ("bytes", b"0123456789")]

    async def main() -> None:
        async with serve(app) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(5):  # a tail left corked would wait for the kernel's 200 ms timer
                t0 = asyncio.get_running_loop().time()
                _, _, body = await raw_get(reader, writer)
                assert asyncio.get_running_loop().time() - t0 < 0.1
                assert body == expected_body(app.spans)
            writer.close()
            await writer.wait_closed()

    run(main())


def test_module_sendfile_one_span_and_closed_sender(run: Any, tmp_path: Path) -> None:
    a = make_file(tmp_path / "a", 2 * MiB, 10)
    errors: list[BaseException] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = MiB
        await resp.prepare(request)
        fd = os.open(a, os.O_RDONLY)
        try:
            assert await sendfile_mod.sendfile(request, resp, fd, 7, MiB) == MiB
            sender = SocketSender(request, resp)
            sender.close()
            with pytest.raises(RuntimeError, match="closed"):
                await sender.send_file(fd, 0, 1)
        except BaseException as e:
            errors.append(e)
            raise
        finally:
            os.close(fd)
        await resp.write_eof()
        return resp

    async def main() -> None:
        wa = web.Application()
        wa.router.add_get("/", handle)
        runner = web.AppRunner(wa, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            async with (aiohttp.ClientSession() as sess,
                        sess.get(f"http://127.0.0.1:{runner.addresses[0][1]}/") as r):
                assert await r.read() == a.read_bytes()[7:7 + MiB]
        finally:
            await runner.cleanup()
        assert errors == []

    run(main())


@pytest.mark.parametrize("mode", ["chunked", "compressed"])
def test_chunked_and_compressed_responses(run: Any, tmp_path: Path, mode: str) -> None:
    a = make_file(tmp_path / "a", 2 * MiB + 5, 3)
    app = SpanApp()
    app.chunked, app.compress = mode == "chunked", mode == "compressed"
    app.spans = [("file", (a, 1, MiB)), ("bytes", b"--"), ("file", (a, MiB, MiB + 4))]

    async def main() -> None:
        async with serve(app) as port, aiohttp.ClientSession() as sess:
            for _ in range(2):
                async with sess.get(f"http://127.0.0.1:{port}/spans") as r:
                    assert await r.read() == expected_body(app.spans)
        # Compression needs the bytes in userspace, so it takes the copying path.
        assert app.zero_copy == [mode == "chunked"] * 2 and app.outcomes == [None, None]

    run(main())


def test_large_response_slow_reader_keeps_loop_responsive(
        run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = [make_file(tmp_path / f"blk{i}", 4 * MiB, i) for i in range(16)]
    app = SpanApp()
    # 40 kB writes between spans often land in a full socket: _flush must wait them out.
    app.spans = [s for i, f in enumerate(files)
                 for s in (("file", (f, 0, 4 * MiB)), ("bytes", b"%02d" % i * 20_000))]
    app.length = len(expected_body(app.spans))
    waits = {"pollout": 0, "transport": 0}
    real = {name: getattr(SocketSender, name) for name in ("_writable", "_wait_transport_empty")}

    def counting(name: str, key: str) -> Callable[[SocketSender], Awaitable[None]]:
        async def wrapper(self: SocketSender) -> None:
            waits[key] += 1
            await real[name](self)
        return wrapper

    monkeypatch.setattr(SocketSender, "_writable", counting("_writable", "pollout"))
    monkeypatch.setattr(SocketSender, "_wait_transport_empty",
                        counting("_wait_transport_empty", "transport"))

    async def main() -> None:
        async with serve(app) as port:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)  # slow, small pipe
            sock.connect(("127.0.0.1", port))
            sock.setblocking(False)
            reader, writer = await asyncio.open_connection(sock=sock, limit=16 * 1024)
            writer.write(b"GET /spans HTTP/1.1\r\nHost: x\r\n\r\n")
            _, headers = await read_head(reader)
            assert int(headers["content-length"]) == app.length
            got, stalls = bytearray(), 0
            while len(got) < app.length:
                got += await reader.read(64 * 1024)
                if len(got) >= stalls * 8 * MiB:  # stall: server parks; loop must stay live
                    stalls += 1
                    r2, w2 = await asyncio.open_connection("127.0.0.1", port)
                    status, _, body = await asyncio.wait_for(raw_get(r2, w2, "/small"), 1.0)
                    assert (status, body) == (200, b"ok")
                    w2.close()
                    await w2.wait_closed()
                    await asyncio.sleep(0.02)
            assert bytes(got) == expected_body(app.spans)
            _, _, body = await raw_get(reader, writer, "/small")  # keep-alive after 64 MiB
            assert body == b"ok"
            writer.close()
            await writer.wait_closed()
        assert app.outcomes == [None]
        assert waits["pollout"] > 0 and waits["transport"] > 0, waits

    run(main())


def test_client_disconnect_mid_response_leaves_server_healthy(run: Any, tmp_path: Path) -> None:
    a = make_file(tmp_path / "a", 4 * MiB, 4)
    app = SpanApp()
    app.spans = [("file", (a, 0, 4 * MiB))] * 16

    async def main() -> None:
        async with serve(app) as port:
            await asyncio.sleep(0)
            before = open_fds()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /spans HTTP/1.1\r\nHost: x\r\n\r\n")
            await read_head(reader)
            await reader.readexactly(5 * MiB)
            writer.transport.abort()  # unread data pending -> RST to the server
            await asyncio.wait_for(app.done.wait(), 5)
            assert isinstance(app.outcomes[0], ConnectionResetError)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            status, _, body = await raw_get(reader, writer, "/small")
            assert (status, body) == (200, b"ok")
            writer.close()
            await writer.wait_closed()
            await asyncio.sleep(0.05)  # let the server side close its transport
            assert open_fds() == before

    run(main())


def test_server_side_abort_while_blocked_on_slow_client(run: Any, tmp_path: Path) -> None:
    a = make_file(tmp_path / "a", 4 * MiB, 5)
    app = SpanApp()
    app.spans = [("file", (a, 0, 4 * MiB))] * 16

    async def main() -> None:
        async with serve(app) as port:
            await asyncio.sleep(0)
            before = open_fds()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /spans HTTP/1.1\r\nHost: x\r\n\r\n")
            await read_head(reader)
            await asyncio.sleep(0.3)  # client stops reading: the sender parks on POLLOUT
            assert not app.done.is_set()
            app.transports[0].abort()  # e.g. shutdown; our dup must not keep the socket alive
            await asyncio.wait_for(app.done.wait(), 3 * sendfile_mod._CLOSED_POLL_S)
            assert isinstance(app.outcomes[0], ConnectionResetError)
            with contextlib.suppress(ConnectionError):
                while await reader.read(MiB):  # peer sees the connection end
                    pass
            writer.close()
            await writer.wait_closed()
            await asyncio.sleep(0.05)
            assert open_fds() == before

    run(main())


@pytest.mark.parametrize("zero_copy", [True, False])
def test_short_file_raises_and_aborts(run: Any, tmp_path: Path, zero_copy: bool) -> None:
    a = make_file(tmp_path / "a", MiB, 6)
    app = SpanApp()
    app.compress = not zero_copy
    app.spans = [("bytes", b"x"), ("file", (a, 0, MiB)), ("file", (a, MiB // 2, MiB))]

    async def main() -> None:
        async with serve(app) as port, aiohttp.ClientSession() as sess:
            with pytest.raises(aiohttp.ClientPayloadError):
                async with sess.get(f"http://127.0.0.1:{port}/spans") as r:
                    await r.read()
            await asyncio.wait_for(app.done.wait(), 5)
            err = app.outcomes[0]
            assert isinstance(err, FileTruncatedError), err
            assert (err.offset, err.expected, err.sent) == (MiB // 2, MiB, MiB // 2)
            assert "connection aborted" in str(err)
            async with sess.get(f"http://127.0.0.1:{port}/small") as r:
                assert await r.read() == b"ok"
        assert app.zero_copy == [zero_copy]

    run(main())


def test_span_larger_than_content_length_is_refused(run: Any, tmp_path: Path) -> None:
    a = make_file(tmp_path / "a", MiB, 7)
    app = SpanApp(length=10)
    app.spans = [("file", (a, 0, 11))]

    async def main() -> None:
        async with serve(app) as port, aiohttp.ClientSession() as sess:
            with contextlib.suppress(aiohttp.ClientError):
                async with sess.get(f"http://127.0.0.1:{port}/spans") as r:
                    await r.read()
            await asyncio.wait_for(app.done.wait(), 5)
            async with sess.get(f"http://127.0.0.1:{port}/small") as r:
                assert await r.read() == b"ok"
        assert app.outcomes == []  # ValueError propagated out of the handler

    run(main())


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Return (server, client) contexts for a throwaway self-signed 127.0.0.1 cert."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", d / "key.pem", "-out", d / "cert.pem"],
                   check=True, capture_output=True)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(d / "cert.pem", d / "key.pem")
    client = ssl.create_default_context(cafile=d / "cert.pem")
    return server, client


def test_tls_falls_back_to_copying(run: Any, tmp_path: Path,
                                   tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    a = make_file(tmp_path / "a", 2 * MiB + 1, 8)
    app = SpanApp()
    app.spans = [("file", (a, 0, 2 * MiB + 1)), ("bytes", b"end")]

    async def main() -> None:
        async with (serve(app, tls[0]) as port, aiohttp.ClientSession() as sess,
                    sess.get(f"https://127.0.0.1:{port}/spans", ssl=tls[1]) as r):
            assert await r.read() == expected_body(app.spans)
        assert app.zero_copy == [False] and app.outcomes == [None]

    run(main())

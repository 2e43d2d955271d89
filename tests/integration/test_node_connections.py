"""Connections that could hang a node or run it out of fds, against real node processes.

Each test injects one finding of issue 9 (slowloris, an fd-limited node, malformed request
heads, keys SeaweedFS aliases) and asserts a clear answer within a stated time. SLACK_S
covers a loaded 2-core machine; no wait is a guessed sleep, every one has a deadline.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import selectors
import shutil
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from cachenode.http_server import REFUSE_WAIT_S
from cachenode.pb import blockcache_pb2 as pb
from cachenode.pb import blockcache_pb2_grpc as pb_grpc
from tests.nodeproc import NodeProcess

pytestmark = pytest.mark.integration
HEADER_S, IDLE_S = 1.0, 3.0  # the node's --header-timeout and --idle-timeout here
SLACK_S = 2.0
BODY = b"0123456789" * 100


@dataclass
class Outcome:
    """What a client connection saw: the bytes the node sent and when it closed."""

    data: bytes = b""
    closed_after_s: float | None = None  # None: still open at the deadline
    error: str = ""  # e.g. ConnectionResetError


def connect(port: int) -> socket.socket:
    """Return a TCP connection to 127.0.0.1:port."""
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def watch(socks: list[socket.socket], timeout_s: float,
          trickle: dict[socket.socket, bytes] | None = None,
          every_s: float = 0.1) -> list[Outcome]:
    """Read every socket until the node closes it (at most `timeout_s`).

    Sockets in `trickle` send their bytes one at a time, one every `every_s` (slowloris).
    """
    sel = selectors.DefaultSelector()
    out = {s: Outcome() for s in socks}
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    pending = dict(trickle or {})
    t0 = time.monotonic()
    next_send = t0
    while sel.get_map() and (now := time.monotonic()) < t0 + timeout_s:
        if pending and now >= next_send:
            for s, rest in list(pending.items()):
                try:
                    s.send(rest[:1])
                except OSError:
                    rest = b""
                pending[s] = rest[1:]
                if not pending[s]:
                    del pending[s]
            next_send += every_s
        for key, _ in sel.select(timeout=0.02):
            s = key.fileobj  # type: ignore[assignment]
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError as e:
                chunk, out[s].error = b"", type(e).__name__
            if chunk:
                out[s].data += chunk
                continue
            out[s].closed_after_s = time.monotonic() - t0
            sel.unregister(s)
            pending.pop(s, None)
    for s in socks:
        s.close()
    return [out[s] for s in socks]


def status_and_doc(raw: bytes) -> tuple[int, dict[str, Any]]:
    """Return the status and JSON body of one raw error response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def read_response(s: socket.socket) -> bytes:
    """Read one response with a Content-Length from a blocking socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body


@pytest.fixture
def node(tmp_path: Path, proxy, s3) -> Iterator[NodeProcess]:  # type: ignore[no-untyped-def]
    """Start a node with short head and idle deadlines, its origin the counting proxy."""
    s3.make_bucket("conn")
    s3.put_object("conn", "k.bin", BODY)
    s3.put_object("conn", "llm/v1/x.bin", BODY)
    n = NodeProcess(tmp_path / "node", {**s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url},
                    "--header-timeout", f"{HEADER_S}s", "--idle-timeout", f"{IDLE_S}s")
    n.start()
    yield n
    n.stop()


def test_slowloris_is_cut_within_the_header_timeout(node: NodeProcess) -> None:
    silent = [connect(node.http_port) for _ in range(20)]
    trickled = [connect(node.http_port) for _ in range(5)]
    grpc_silent = connect(node.grpc_port)
    head = b"GET /conn/k.bin HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    with ThreadPoolExecutor(1) as pool:
        reader = pool.submit(node.get, "/conn/k.bin", None, "GET", 10.0)
        outs = watch(silent + trickled + [grpc_silent], HEADER_S + SLACK_S,
                     {s: head for s in trickled})
        status, _, body = reader.result(timeout=10)
    assert status == 200 and body == BODY  # a normal reader is served meanwhile
    for o in outs[:20]:  # sent nothing: closed, nothing to answer
        assert o.closed_after_s is not None and not o.error and o.data == b""
        assert HEADER_S - 0.1 <= o.closed_after_s <= HEADER_S + SLACK_S
    for o in outs[20:25]:  # a head still trickling in: 408 with the reason, then closed
        assert o.closed_after_s is not None and o.closed_after_s <= HEADER_S + SLACK_S
        code, doc = status_and_doc(o.data)
        assert code == 408 and "--header-timeout" in doc["reason"]
    g = outs[25]  # gRPC: no HTTP/2 preface, GOAWAY at the handshake timeout
    assert g.closed_after_s is not None and g.closed_after_s <= HEADER_S + SLACK_S
    assert b"handshake timeout" in g.data
    assert node.metric("blockcache_http_header_timeouts_total") == 25


def test_kept_alive_connection_idles_until_the_idle_timeout(node: NodeProcess) -> None:
    s = connect(node.http_port)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(s).startswith(b"HTTP/1.1 200 ")
    (idle,) = watch([s], IDLE_S + SLACK_S)
    assert idle.closed_after_s is not None and idle.data == b"" and not idle.error
    assert IDLE_S - 0.1 <= idle.closed_after_s <= IDLE_S + SLACK_S  # not the header timeout

    s = connect(node.http_port)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(s).startswith(b"HTTP/1.1 200 ")
    (slow,) = watch([s], HEADER_S + SLACK_S, {s: b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 100})
    assert slow.closed_after_s is not None and slow.closed_after_s <= HEADER_S + SLACK_S
    assert status_and_doc(slow.data)[0] == 408  # timed from the next request's first byte


def test_trickled_admin_body_gets_408_within_the_header_timeout(node: NodeProcess) -> None:
    s = connect(node.http_port)
    body = json.dumps({"bucket": "conn", "prefix": "nothing/"}).encode()
    s.sendall(b"POST /_evict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body))  # the head at once, the body slowly
    (o,) = watch([s], 2 * HEADER_S + SLACK_S, {s: body}, every_s=0.2)
    # 408 after the header timeout, closed after draining the body as long again at most
    assert o.closed_after_s is not None and o.closed_after_s <= 2 * HEADER_S + SLACK_S
    code, doc = status_and_doc(o.data)
    assert code == 408 and "request body not complete" in doc["reason"]


MALFORMED = [
    (b"GARBAGE\r\n\r\n", 400, "Invalid method"),
    (b"GET /conn/k.bin HTTP/2.0\r\nHost: x\r\n\r\n", 505, "HTTP/2.0 is not supported"),
    (b"GET /conn/k.bin HTTP/1.2\r\nHost: x\r\n\r\n", 505, "HTTP version not supported"),
    (b"GET /conn/k.bin\r\n\r\n", 505, "HTTP/0.9 is not supported"),
    (b"GET /conn/k.bin HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", 400, "header token"),
    (b"GET /conn/k.bin HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 400,
     "longer than 8190 bytes"),
    (b"GET /conn/" + b"k" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400, "longer than 8190"),
    (b"GET /conn/k.bin HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 400,
     "Too many headers"),
    (b"GET /conn/k.bin HTTP/1.1\r\n\r\n", 400, "Host"),
    (b"GET /conn/%ZZ HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid percent-escape '%ZZ'"),
    (b"GET /_list/conn?prefix=a%G HTTP/1.1\r\nHost: x\r\n\r\n", 400, "percent-escape"),
]


def test_malformed_heads_get_a_short_4xx_and_no_traceback(node: NodeProcess, proxy) -> None:  # type: ignore[no-untyped-def]
    proxy.reset()
    for raw, status, reason in MALFORMED:
        s = connect(node.http_port)
        s.sendall(raw)
        (o,) = watch([s], 2.0)
        assert o.closed_after_s is not None, raw[:60]  # answered and closed within 2 s
        code, doc = status_and_doc(o.data)
        assert code == status and reason in doc["reason"], (raw[:60], doc)
        assert len(doc["reason"]) < 200 and "\n" not in doc["reason"]
    assert proxy.total == 0  # none reached a handler, let alone the origin
    assert node.get("/conn/k.bin")[2] == BODY
    log = node.log_path.read_text()
    assert "Traceback" not in log and " ERROR " not in log
    lines = [ln for ln in log.splitlines() if "for a request head from" in ln]
    assert 1 <= len(lines) <= 2 and all(" INFO " in ln for ln in lines)  # one per 10 s


ALIASED = ["llm//v1/x.bin", "llm/v1//x.bin", "/llm/v1/x.bin", "llm%5Cv1%5Cx.bin",
           "llm/v1/", "..%5Cllm"]


def _post(node: NodeProcess, path: str, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=10)
    try:
        conn.request("POST", path, body=json.dumps(doc).encode(),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_keys_seaweedfs_aliases_are_refused_on_every_api(node: NodeProcess, proxy) -> None:  # type: ignore[no-untyped-def]
    proxy.reset()
    for key in ALIASED:  # SeaweedFS reads each as llm/v1/x.bin, a directory or a '..'
        status, _, body = node.get(f"/conn/{key}", timeout_s=5)
        assert status == 400 and b"--origin-keys verbatim" in body, (key, body)
    status, _, body = node.get("/_list/conn?prefix=llm//", timeout_s=5)
    assert status == 400 and b"empty path segment" in body
    status, doc = _post(node, "/_evict", {"bucket": "conn", "prefix": "llm//"})
    assert status == 400 and "empty path segment" in doc["reason"]
    status, doc = _post(node, "/_warm", {"block_size": 4 * 2**20, "objects": [
        {"bucket": "conn", "key": "llm//v1/x.bin", "etag": '"e"', "size": 10, "indices": [0]}]})
    assert status == 400 and "empty path segment" in doc["reason"]
    with grpc.insecure_channel(f"127.0.0.1:{node.grpc_port}") as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.BlockCacheStub(channel).Stat(
                pb.StatRequest(bucket="conn", key="llm\\v1\\x.bin"), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "backslash" in (info.value.details() or "")
    assert proxy.total == 0  # refused before any origin request
    assert node.get("/conn/llm/v1/x.bin")[2] == BODY


def test_verbatim_keys_on_seaweedfs_show_why_strict_is_its_default(
        tmp_path: Path, proxy, s3) -> None:  # type: ignore[no-untyped-def]
    s3.make_bucket("alias")
    s3.put_object("alias", "llm/v1/x.bin", BODY)
    n = NodeProcess(tmp_path / "verbatim", {**s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url},
                    "--origin-keys", "verbatim")
    n.start()
    try:
        proxy.reset()
        a, b = n.get("/alias/llm/v1/x.bin"), n.get("/alias/llm//v1/x.bin")
        assert a[0] == b[0] == 200 and a[2] == b[2] == BODY
        assert a[1]["etag"] == b[1]["etag"]  # one object at the origin...
        gets = sum(c for (m, _p), c in proxy.requests.items() if m == "GET")
        assert gets == 2  # ...fetched twice, under two sets of block ids
        deadline = time.monotonic() + 10
        while n.metric("blockcache_store_blocks") < 2:  # written behind the responses
            assert time.monotonic() < deadline, "blocks not on disk within 10 s"
            time.sleep(0.05)
        status, doc = _post(n, "/_evict", {"bucket": "alias", "prefix": "llm/v1/"})
        assert status == 200 and doc["blocks"] == 1  # and llm//v1/x.bin's block stays
        assert n.metric("blockcache_store_blocks") == 1
    finally:
        n.stop()


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_fd_limited_node_answers_503_not_resets_and_recovers(tmp_path: Path, s3) -> None:  # type: ignore[no-untyped-def]
    s3.make_bucket("conn")
    s3.put_object("conn", "k.bin", BODY)
    n = NodeProcess(tmp_path / "fd", s3.env(), "--header-timeout", "3s",
                    wrapper=["prlimit", "--nofile=256:256", "--"])
    n.start()
    try:
        log = n.log_path.read_text()
        assert "open-files limit 256" in log
        cap = int(re.search(r"HTTP at most (\d+)", log).group(1))  # type: ignore[union-attr]
        assert 16 <= cap <= 128
        t0 = time.monotonic()
        socks = [connect(n.http_port) for _ in range(300)]  # more than fit: 300 > 256 fds
        status, headers, body = n.get("/conn/k.bin", timeout_s=10)  # a well-behaved reader
        assert status == 503 and headers["retry-after"] == "1", body
        assert headers["connection"] == "close" and b"--max-connections" in body
        outs = watch(socks, 3.0 + SLACK_S)
        assert time.monotonic() - t0 <= 3.0 + SLACK_S + 1.0
        assert all(o.closed_after_s is not None and not o.error for o in outs)  # no resets
        refused = [o for o in outs if o.data.startswith(b"HTTP/1.1 503 ")]
        cut = [o for o in outs if o.data == b""]  # admitted, then cut by the header timeout
        assert len(refused) == 300 - cap and len(cut) == cap
        assert all(o.closed_after_s <= REFUSE_WAIT_S + SLACK_S for o in refused)  # type: ignore[operator]
        assert b"Retry-After: 1" in refused[0].data and b"Connection: close" in refused[0].data
        status, _, body = n.get("/conn/k.bin", timeout_s=10)  # the idle ones are gone
        assert status == 200 and body == BODY
        log = n.log_path.read_text()
        warnings = [ln for ln in log.splitlines() if "HTTP connection refused with 503" in ln]
        assert 1 <= len(warnings) <= 2 and " WARNING " in warnings[0]  # one per 10 s
        assert f"--max-connections {cap}, open-files limit 256" in warnings[0]
        assert "Traceback" not in log
        assert n.metric("blockcache_http_connections_refused_total") == 300 - cap + 1
        assert n.proc is not None and len(os.listdir(f"/proc/{n.proc.pid}/fd")) < 128
    finally:
        n.stop()

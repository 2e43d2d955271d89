"""Record what S3 clients send on the wire: the Run:ai streamer and s5cmd against SeaweedFS.

    .venv/bin/python loadtest/s3_trace.py [--size MiB] [--shards 3] [--hidden 1024] [--concurrency N]
                                          [--chunk BYTES] [--streamer-env K=V] [--tool streamer|s5cmd|both]
                                          [--group [--node-arg ARG ...]]

Starts SeaweedFS on 127.0.0.1, uploads a generated safetensors model (tests/safetensors_gen.py)
once per tool, and puts a recording reverse proxy in front of SeaweedFS (with `--group`: in
front of node n0's S3 listener of a 3-node group, and each tool runs twice, cold then warm).
Every request is forwarded unchanged and logged: method, target form, path, query, the
headers that matter to a server, status, time to headers, response headers, bytes, and when
the client gave up on it. Then it runs the streamer (tests/streamer_load.py, as vLLM does:
list, pull the JSON files, stream the shards) and/or `s5cmd cp` of the prefix through the
proxy, checks every tensor and file, and prints a summary per run: requests by operation,
Range sizes, requests in flight (max, mean), conditional and checksum headers, statuses,
requests abandoned by the client and asked again. The full log goes to
loadtest/results/trace-<stamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import shutil
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp
from aiohttp import web
from yarl import URL

from loadtest.harness import MiB, exit_code
from loadtest.s3_clients import compare_files, run_s5cmd, run_streamer, s3_env, upload_model
from tests.s3proxy import HOP_BY_HOP
from tests.safetensors_gen import write_model
from tests.servers import SeaweedFS, free_port

BUCKET = "models"
RESULTS_DIR = ROOT / "loadtest" / "results"
KEPT_HEADERS = ("range", "content-type", "x-amz-api-version", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since",
                "if-range", "x-amz-checksum-mode", "x-amz-content-sha256", "user-agent",
                "content-length", "expect", "accept-encoding")
KEPT_RESPONSE = ("content-range", "content-length", "etag", "x-amz-checksum-crc32",
                 "x-amz-checksum-crc32c", "content-type", "last-modified", "accept-ranges")


class TraceProxy:
    """A reverse proxy to `upstream` on its own thread that logs every request it forwards."""

    def __init__(self, upstream: str) -> None:
        self.upstream, self.port = upstream.rstrip("/"), free_port()
        self.log: list[dict[str, Any]] = []  # appended on the proxy's loop only
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        """Return the proxy's URL, to use as a client's endpoint."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TraceProxy:
        """Start the proxy's thread and listener."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def stop(self) -> None:
        """Close the listener and end the proxy's thread."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def take(self) -> list[dict[str, Any]]:
        """Return the requests logged so far and start a new log."""
        return asyncio.run_coroutine_threadsafe(self._take(), self._loop).result(30)

    async def _take(self) -> list[dict[str, Any]]:
        out, self.log = self.log, []
        return out

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        t0 = time.monotonic()
        # The streamer's CRT client sends absolute-form targets (GET http://host/b/k HTTP/1.1),
        # which aiohttp keeps in raw_path: forward the origin-form of the target.
        entry: dict[str, Any] = {
            "t0": t0, "method": request.method, "path": request.path,
            "query": request.query_string,
            "absolute_form": not request.raw_path.startswith("/"),
            "headers": {k: request.headers[k] for k in KEPT_HEADERS if k in request.headers}}
        self.log.append(entry)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        url = URL(self.upstream + request.rel_url.raw_path_qs, encoded=True)
        body = request.content if request.body_exists else None
        sent = 0
        resp: web.StreamResponse | None = None
        try:
            async with self._session.request(
                    request.method, url, headers=headers, data=body, allow_redirects=False,
                    skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type")) as up:
                entry.update(status=up.status, ttfb=time.monotonic() - t0,
                             response={k: up.headers[k] for k in KEPT_RESPONSE
                                       if k in up.headers})
                resp = web.StreamResponse(status=up.status, reason=up.reason)
                for k, v in up.headers.items():
                    if k.lower() not in HOP_BY_HOP:
                        resp.headers.add(k, v)
                await resp.prepare(request)
                if request.method != "HEAD":
                    async for chunk in up.content.iter_chunked(256 * 1024):
                        await resp.write(chunk)
                        sent += len(chunk)
                await resp.write_eof()
                entry.update(bytes=sent, t1=time.monotonic())
                return resp
        except (asyncio.CancelledError, ConnectionResetError):
            # The client gave up on this request (closed its connection): note when.
            entry.update(abandoned_after_s=time.monotonic() - t0, bytes=sent)
            if resp is None or not resp.prepared:
                raise
            return resp  # nothing more to send to a client that has gone


def operation(e: dict[str, Any]) -> str:
    """Return the S3 operation a logged request is."""
    q, m = str(e["query"]), str(e["method"])
    parts = e["path"].strip("/").split("/", 1)
    if m == "GET" and len(parts) == 1:
        if "list-type=2" in q:
            return "ListObjectsV2"
        return "ListBuckets" if not parts[0] else ("GetBucketLocation" if "location" in q
                                                   else "ListObjects")
    if m == "HEAD":
        return "HeadBucket" if len(parts) == 1 else "HeadObject"
    if m == "GET":
        return "GetObject (Range)" if "range" in e["headers"] else "GetObject"
    return m


def range_len(r: str) -> int | None:
    """Return the length a `bytes=a-b` Range asks for (None for other forms)."""
    spec = r.removeprefix("bytes=")
    a, _, b = spec.partition("-")
    return int(b) - int(a) + 1 if a and b else None


def summarize(log: list[dict[str, Any]]) -> dict[str, Any]:
    """Return counts by operation, Range sizes, requests in flight, statuses and headers seen."""
    done = [e for e in log if "t1" in e]
    if not done:
        return {"requests": 0}
    t_first, t_last = min(e["t0"] for e in done), max(e["t1"] for e in done)
    events = sorted([(e["t0"], 1) for e in done] + [(e["t1"], -1) for e in done])
    now = peak = 0
    area, last = 0.0, t_first
    for t, d in events:
        area += now * (t - last)
        now, last = now + d, t
        peak = max(peak, now)
    sizes = collections.Counter(range_len(e["headers"]["range"]) for e in done
                                if "range" in e["headers"])
    gone = [e for e in log if "abandoned_after_s" in e]
    asked = collections.Counter((e["path"], e["headers"]["range"]) for e in log
                                if e["method"] == "GET" and "range" in e["headers"])
    ttfb = sorted(e["ttfb"] for e in log if "ttfb" in e)
    gets = [e for e in done if e["method"] == "GET" and "range" in e["headers"]]
    return {
        "requests": len(done), "by_operation": dict(collections.Counter(map(operation, done))),
        "status": dict(collections.Counter(str(e["status"]) for e in done)),
        "range_sizes": {str(k): v for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:12]},
        "in_flight_max": peak, "in_flight_mean": area / (t_last - t_first) if t_last > t_first
        else float(peak), "wall_s": t_last - t_first,
        "bytes": sum(e["bytes"] for e in done),
        "with_if_match": sum("if-match" in e["headers"] for e in gets),
        "abandoned": len(gone), "abandoned_before_headers": sum("ttfb" not in e for e in gone),
        "abandoned_after_s": sorted(round(e["abandoned_after_s"], 2) for e in gone)[:20],
        "asked_again": sum(n - 1 for n in asked.values()),
        "ttfb_s": {"p50": ttfb[len(ttfb) // 2], "max": ttfb[-1]} if ttfb else None,
        "absolute_form": sum(e["absolute_form"] for e in done),
        "header_names": dict(collections.Counter(k for e in done for k in e["headers"])),
        "user_agents": sorted({e["headers"].get("user-agent", "")[:60] for e in done}),
        "queries": sorted({e["query"] for e in done if e["query"]})[:10],
        "first": [{k: e[k] for k in ("method", "path", "query", "headers", "status")}
                  for e in sorted(done, key=lambda e: e["t0"])[:6]],
    }


def print_summary(tool: str, s: dict[str, Any]) -> None:
    """Print one tool's wire summary."""
    print(f"\n== {tool}: {s['requests']} requests in {s.get('wall_s', 0):.2f} s, "
          f"{s.get('bytes', 0) / MiB:.1f} MiB; in flight max {s.get('in_flight_max')}, "
          f"mean {s.get('in_flight_mean', 0):.1f}")
    for k in ("by_operation", "status", "range_sizes", "header_names", "queries", "user_agents"):
        print(f"  {k}: {s.get(k)}")
    print(f"  ranged GETs with If-Match: {s.get('with_if_match')}; absolute-form targets: "
          f"{s.get('absolute_form')}; time to headers {s.get('ttfb_s')}")
    print(f"  abandoned by the client: {s.get('abandoned')} ({s.get('abandoned_before_headers')}"
          f" before headers) after {s.get('abandoned_after_s')} s; GETs asked again (same "
          f"key and Range): {s.get('asked_again')}")
    for e in s.get("first", []):
        print(f"  first: {e['method']} {e['path']}?{e['query']} {e['headers']} -> {e['status']}")


def trace_tools(a: argparse.Namespace, proxy: TraceProxy, tmp: Path, manifest: dict[str, Any],
                label: str, out: dict[str, Any]) -> None:
    """Run the chosen tools through `proxy` once; log, summarize and check each."""
    env = s3_env(proxy.url)
    extra = dict(kv.split("=", 1) for kv in a.streamer_env)
    if a.concurrency:
        extra["RUNAI_STREAMER_CONCURRENCY"] = str(a.concurrency)
    if a.chunk:
        extra["RUNAI_STREAMER_CHUNK_BYTESIZE"] = str(a.chunk)
    for tool in ("streamer", "s5cmd"):
        if a.tool not in (tool, "both"):
            continue
        prefix = f"s3://{BUCKET}/trace-{tool}/"
        shutil.rmtree(tmp / "out", ignore_errors=True)
        if tool == "streamer":
            r = run_streamer(env, prefix, tmp / "manifest.json", tmp / "out", extra)
            check = f"{r['tensors']} tensors, {r['n_bad']} bad, {r['n_missing']} missing"
        else:
            r = run_s5cmd(env, prefix, tmp / "out")
            r["bad"] = compare_files(tmp / "out", manifest)
            check = f"{len(manifest['shards']) + len(manifest['other_files'])} files, bad " \
                    f"{r['bad'][:3]}"
        log = proxy.take()
        name = f"{tool}{label}"
        out["tools"][name] = {"result": r, "summary": summarize(log), "log": log}
        print_summary(name, out["tools"][name]["summary"])
        print(f"  checked: {check}")


def main() -> int:
    """Trace the chosen tools; return the exit status."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64, help="model size in MiB (default 64)")
    p.add_argument("--shards", type=int, default=3)
    p.add_argument("--hidden", type=int, default=1024,
                   help="model width (tests/safetensors_gen.py; bench_s3.py's model: 1024)")
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary (embedding rows)")
    p.add_argument("--tool", choices=("streamer", "s5cmd", "both"), default="both")
    p.add_argument("--concurrency", type=int, help="RUNAI_STREAMER_CONCURRENCY")
    p.add_argument("--chunk", type=int, help="RUNAI_STREAMER_CHUNK_BYTESIZE")
    p.add_argument("--streamer-env", action="append", default=[], metavar="K=V",
                   help="extra streamer setting (repeat), e.g. RUNAI_STREAMER_S3_REQUEST_TIMEOUT_MS=10000")
    p.add_argument("--group", action="store_true",
                   help="trace in front of node n0's S3 listener of a 3-node group (cold, then "
                        "warm) instead of in front of SeaweedFS")
    p.add_argument("--node-arg", action="append", default=[], metavar="ARG",
                   help="extra cachenode argument (repeat)")
    a = p.parse_args()
    from tests.cluster import LocalGroup
    from tests.servers import Etcd

    tmp = Path(tempfile.mkdtemp(prefix="blockcache-trace-"))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    s3, etcd = SeaweedFS(tmp / "seaweedfs"), Etcd(tmp / "etcd")
    group: Any = None
    proxy: TraceProxy | None = None
    out: dict[str, Any] = {"argv": sys.argv, "tools": {}}
    failed: BaseException | None = None
    try:
        manifest = write_model(tmp / "src", a.size * MiB, a.shards, seed=7, hidden=a.hidden,
                               vocab=a.vocab)
        (tmp / "manifest.json").write_text(json.dumps(manifest))
        s3.start()
        s3.make_bucket(BUCKET)
        for tool in ("streamer", "s5cmd"):
            upload_model(s3, BUCKET, f"trace-{tool}/", tmp / "src", manifest)
        upstream = s3.endpoint_url
        if a.group:
            etcd.start()
            group = LocalGroup(tmp / "group", s3.env(), etcd.endpoint, 3, "--capacity", "4GiB",
                               *a.node_arg)
            group.start()
            upstream = group.nodes[0].s3_url
        proxy = TraceProxy(upstream).start()
        for label in ([" cold", " warm"] if a.group else [""]):
            trace_tools(a, proxy, tmp, manifest, label, out)
    except BaseException as e:  # noqa: BLE001 - still save what was recorded
        failed = e
        out["error"] = repr(e)
    finally:
        if proxy is not None:
            proxy.stop()
        if group is not None:
            group.stop()
        etcd.stop()
        s3.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    dest = RESULTS_DIR / f"trace-{stamp}.json"
    dest.write_text(json.dumps(out, indent=1, default=str))
    print(f"\nJSON: {dest.relative_to(ROOT)}")
    return exit_code(failed, out.get("error", ""))


if __name__ == "__main__":
    sys.exit(main())

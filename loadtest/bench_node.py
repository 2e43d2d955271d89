"""blockcache node benchmark, loopback only, side by side in one run (see loadtest/README.md).

    .venv/bin/python loadtest/bench_node.py [--quick] [--parts abc] [--profile]

(a) hit path: cachenode serving 4 MiB ranges / a whole 64 MiB object from its block files,
    against nginx (1 worker, sendfile on) serving the very same block files / a 64 MiB file.
(b) miss path: one client (aiobotocore, N concurrent 4 MiB range GETs) reading a big object
    straight from SeaweedFS, then cold through the node, then straight again.
(c) herd: 64 readers GET the same 4 MiB block at the same moment, block after block, through
    a cold node: origin GETs per block, and how the waiters are released after the fill;
    optionally the same herd against nginx proxy_cache + proxy_cache_lock.
Prints a table and writes loadtest/results/bench-<UTC timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cachenode.blocks import block_id
from loadtest import harness as h
from tests.nodeproc import NodeProcess
from tests.servers import SeaweedFS, aio_s3_client

MiB, GiB = h.MiB, h.GiB
BLOCK = 4 * MiB
BUCKET = "bench"
RESULTS_DIR = ROOT / "loadtest" / "results"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- small helpers

def http_get(port: int, path: str, headers: Mapping[str, str] | None = None,
             timeout_s: float = 60.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def node_metrics(node: NodeProcess) -> dict[Any, float]:
    return h.parse_metrics(node.get("/metrics")[2].decode())


def write_random_file(path: Path, size: int, chunk: int = 16 * MiB) -> str:
    """Write `size` random bytes to `path`, streaming; return their sha256."""
    sha = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            b = os.urandom(min(chunk, left))
            sha.update(b)
            f.write(b)
            left -= len(b)
    return sha.hexdigest()


def page_cache_write_gbps(d: Path, blocks: int = 64) -> float:
    """Return how fast new 4 MiB files are written into the page cache here (no fsync).

    On some VMs (Firecracker with free page reporting) memory freed to the host is slow to
    get back, so this can be ~10x below memory bandwidth; every cache fill pays it.
    """
    d.mkdir(parents=True, exist_ok=True)
    data = os.urandom(BLOCK)
    t = time.perf_counter()
    for i in range(blocks):
        with open(d / f"{i}", "wb") as f:
            f.write(data)
    secs = time.perf_counter() - t
    shutil.rmtree(d)
    return blocks * BLOCK / 1e9 / secs


def rng(i: int, size: int) -> str:
    return f"bytes={i * BLOCK}-{min(size, (i + 1) * BLOCK) - 1}"


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@dataclass
class Row:
    """One line of the printed table."""

    name: str
    value: float | None
    unit: str
    ratio: float | None = None
    cpu_s: float | None = None
    gb_per_cpu_s: float | None = None
    note: str = ""


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    s3: SeaweedFS
    node: NodeProcess
    rows: list[Row] = field(default_factory=list)
    out: dict[str, Any] = field(default_factory=dict)
    server_cpu: int | None = None
    wrk_cpu: int | None = None
    warnings: list[str] = field(default_factory=list)


class Profiler:
    """py-spy record of one process while a block of work runs (only with --profile)."""

    def __init__(self, bench: Bench, pid: int, name: str) -> None:
        self.bench, self.pid, self.name = bench, pid, name
        self.proc: subprocess.Popen[bytes] | None = None
        self.path = RESULTS_DIR / f"profile-{bench.out['meta']['stamp']}-{name}.txt"

    def __enter__(self) -> Self:
        spy = Path(sys.executable).parent / "py-spy"
        if self.bench.args.profile and spy.exists():
            self.proc = subprocess.Popen(
                [str(spy), "record", "-p", str(self.pid), "-r", "200", "--nonblocking",
                 "-f", "raw", "-o", str(self.path), "--threads"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        elif self.bench.args.profile:
            log("--profile: py-spy not found; .venv/bin/pip install py-spy")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(2)  # SIGINT: py-spy writes its output and exits
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.path.exists():
            self.bench.out.setdefault("profiles", {})[self.name] = {
                "file": str(self.path.relative_to(ROOT)), "top": summarize_profile(self.path)}


def summarize_profile(path: Path, top: int = 15) -> list[tuple[str, float]]:
    """Return the leaf frames with the largest share of samples (py-spy raw/collapsed)."""
    leaf: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        total += int(n)
        leaf[frames[-1]] = leaf.get(frames[-1], 0) + int(n)
    return [(f, round(100 * c / total, 1)) for f, c in
            sorted(leaf.items(), key=lambda kv: -kv[1])[:top]] if total else []


# ---------------------------------------------------------------- (a) hit path vs nginx

def part_hit(b: Bench) -> None:
    a, s3, node = b.args, b.s3, b.node
    size, key = 16 * BLOCK, "hit/model-64m.bin"
    www = b.tmp / "www"
    www.mkdir()
    big = www / "big.bin"
    big_sha = write_random_file(big, size)
    s3.put_file(BUCKET, key, big)
    status, hdrs, body = node.get(f"/{BUCKET}/{key}")  # fills all 16 blocks
    assert status == 200 and sha(body) == big_sha, f"priming read failed: {status}"
    etag = hdrs["etag"]
    files = []
    for i in range(16):
        bid = block_id(BUCKET, key, etag, size, i, BLOCK)
        p = node.data_dir / "blocks" / bid[:2] / bid[2:4] / bid
        assert p.is_file() and p.stat().st_size == BLOCK, f"block file {p} missing"
        files.append(p.relative_to(node.data_dir / "blocks"))
    m = node_metrics(node)
    assert h.sample(m, "blockcache_origin_requests_total", op="get") == 16

    ngx = h.Nginx(b.tmp / "nginx-hit", server_body=(
        f"location /blocks/ {{ alias {node.data_dir / 'blocks'}/; }}\n"
        f"    location /www/ {{ alias {www}/; }}"), cpu=b.server_cpu).start()
    try:
        # byte-identical bodies, once
        for i, f in enumerate(files):
            s1, _, x = node.get(f"/{BUCKET}/{key}", {"Range": rng(i, size)})
            s2, _, y = http_get(ngx.port, f"/blocks/{f}")
            assert s1 == 206 and s2 == 200 and sha(x) == sha(y) == sha(body[i * BLOCK:(i + 1) * BLOCK]), i
        s1, _, x = node.get(f"/{BUCKET}/{key}")
        s2, _, y = http_get(ngx.port, "/www/big.bin")
        assert s1 == s2 == 200 and sha(x) == sha(y) == big_sha
        b.out["hit_identical"] = {"blocks": 16, "sha256_64mib": big_sha, "ok": True}
        del body, x, y

        if b.server_cpu is not None:
            h.set_affinity(node.proc.pid, [b.server_cpu])  # type: ignore[union-attr]
        node_4m: list[h.Request] = [(f"/{BUCKET}/{key}", {"Range": rng(i, size)})
                                    for i in range(16)]
        ngx_4m: list[h.Request] = [(f"/blocks/{f}", {}) for f in files]
        cases: list[tuple[str, list[h.Request], list[h.Request]]] = [
            ("4mib", node_4m, ngx_4m),
            ("64mib", [(f"/{BUCKET}/{key}", {})], [("/www/big.bin", {})])]
        hit: dict[str, Any] = {}
        for name, node_reqs, ngx_reqs in cases:
            targets = {"node": (node.proc.pid, node.url, node_reqs),  # type: ignore[union-attr]
                       "nginx": (ngx.pid, ngx.url, ngx_reqs)}
            log(f"(a) {name}: wrk -t{a.threads} -c{a.connections}, {a.repeat} x {a.seconds:g}s "
                "per server, interleaved")
            res = interleaved(b, targets, name)
            hit[name] = res
        b.out["hit"] = hit
    finally:
        ngx.stop()
        if node.proc is not None and node.proc.poll() is None:
            h.set_affinity(node.proc.pid, None)

    for name, label in (("4mib", "4 MiB range GETs"), ("64mib", "64 MiB whole GETs")):
        n, g = b.out["hit"][name]["node"], b.out["hit"][name]["nginx"]
        ratio = n["gbps"] / g["gbps"]
        paired = h.median([x["gbps"] / y["gbps"] for x, y in zip(n["runs"], g["runs"])])
        b.out["hit"][name]["ratio_node_nginx"] = ratio
        b.out["hit"][name]["ratio_paired_median"] = paired
        b.out["hit"][name]["ratio_gb_per_machine_cpu"] = (
            n["gb_per_machine_cpu_s"] / g["gb_per_machine_cpu_s"])
        b.out["hit"][name]["ratio_gb_per_cpu"] = (
            n["gb_per_server_cpu_s"] / g["gb_per_server_cpu_s"]
            if n["gb_per_server_cpu_s"] and g["gb_per_server_cpu_s"] else None)
        for who, r, rt in (("node", n, ratio), ("nginx", g, None)):
            b.rows.append(Row(f"(a) hit {label}: {who}", r["gbps"], "GB/s", rt,
                              r["server_cpu_s"], r["gb_per_server_cpu_s"],
                              (f"paired ratio {paired:.2f}, " if who == "node" else "")
                              + f"{r['gbps_min']:.2f}-{r['gbps_max']:.2f} GB/s, "
                              f"{r['req_s']:.0f} req/s, p99 {r['p99_ms']:.0f} ms, "
                              f"{r['gb_per_machine_cpu_s']:.2f} GB/machine-CPU-s"
                              + (f", ERR {r['errors']:.0f}/{r['status_errors']:.0f}"
                                 if r["errors"] or r["status_errors"] else "")))


def interleaved(b: Bench, targets: dict[str, tuple[int, str, list[h.Request]]],
                case: str) -> dict[str, Any]:
    """Warm up each server, then alternate single wrk runs; return the median per server."""
    a = b.args
    kw: dict[str, Any] = {"threads": a.threads, "connections": a.connections,
                          "wrk_cpu": b.wrk_cpu, "script_dir": b.tmp / "wrk"}
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in targets}
    disturbed: dict[str, list[dict[str, Any]]] = {k: [] for k in targets}
    for who, (pid, url, reqs) in targets.items():
        h.wrk_run(url, reqs, seconds=a.warmup, threads=a.threads, connections=a.connections,
                  cpu=b.wrk_cpu, script_dir=b.tmp / "wrk")
    for rep in range(a.repeat):
        for who, (pid, url, reqs) in targets.items():
            prof = Profiler(b, pid, f"hit-{case}-{who}") if (who == "node" and rep == 0) \
                else None
            if prof:
                prof.__enter__()
            try:
                r = h.measure(pid, url, reqs, seconds=a.seconds, repeat=1, warmup_s=0, **kw)
            finally:
                if prof:
                    prof.__exit__()
            runs[who].append(r["runs"][0])
            disturbed[who] += r["disturbed_runs"]
    out: dict[str, Any] = {}
    for who, rs in runs.items():
        ordered = sorted(rs, key=lambda x: x["gbps"])
        med = dict(ordered[len(ordered) // 2])
        med["gbps_min"], med["gbps_max"] = ordered[0]["gbps"], ordered[-1]["gbps"]
        med["runs"] = rs
        med["disturbed_runs"] = disturbed[who]
        if disturbed[who]:
            b.warnings.append(f"(a) {case} {who}: {len(disturbed[who])} wrk run(s) repeated "
                              "because other processes loaded the machine")
        if any(x["foreign_cpu_s"] > 0.1 * x["seconds"] for x in rs):
            b.warnings.append(f"(a) {case} {who}: kept a run with other load on the machine "
                              "(retries exhausted)")
        out[who] = med
    return out


# ---------------------------------------------------------------- (b) miss path vs direct

async def probe_aiobotocore(endpoint: str, key: str, expect: bytes) -> str | None:
    """Return None if aiobotocore get_object with Range works against `endpoint`, else why."""
    try:
        async with aio_s3_client(endpoint, retries={"max_attempts": 1}) as c:
            r = await c.get_object(Bucket=BUCKET, Key=key, Range=f"bytes=0-{len(expect) - 1}")
            async with r["Body"] as body:
                got = await body.read()
        return None if got == expect else f"body mismatch ({len(got)} bytes)"
    except Exception as e:  # noqa: BLE001 - any failure means: use the fallback client
        return f"{type(e).__name__}: {e}"


async def read_object(endpoint: str, key: str, size: int, parallel: int, kind: str,
                      check: Callable[[int, bytes], None]) -> dict[str, Any]:
    """Read the whole object as 4 MiB range GETs, `parallel` in flight; return timing."""
    todo = iter(range((size + BLOCK - 1) // BLOCK))
    lat: list[float] = []

    async def run(fetch: Callable[[int], Any]) -> float:
        async def worker() -> None:
            for i in todo:
                t = time.perf_counter()
                data = await fetch(i)
                lat.append(time.perf_counter() - t)
                check(i, data)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(parallel)))
        return time.perf_counter() - t0

    if kind == "aiobotocore":
        async with aio_s3_client(endpoint, max_pool_connections=parallel, read_timeout=120,
                                 retries={"max_attempts": 1}) as c:
            async def fetch(i: int) -> bytes:
                r = await c.get_object(Bucket=BUCKET, Key=key, Range=rng(i, size))
                async with r["Body"] as body:
                    return bytes(await body.read())
            secs = await run(fetch)
    else:  # aiohttp on presigned URLs (the node ignores the query string)
        import aiohttp

        from tests.servers import s3_client
        url = s3_client(endpoint).generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=3600)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=parallel),
                                         timeout=aiohttp.ClientTimeout(total=300)) as s:
            async def fetch(i: int) -> bytes:
                async with s.get(url, headers={"Range": rng(i, size)}) as r:
                    r.raise_for_status()
                    return await r.read()
            secs = await run(fetch)
    return {"seconds": secs, "gbps": size / 1e9 / secs, "req_p50_ms": h.median(lat) * 1e3,
            "req_max_ms": max(lat) * 1e3}


def part_miss(b: Bench) -> None:
    a, s3, node = b.args, b.s3, b.node
    # the probe object is a tiny separate key, so the big objects stay cold in the node
    head = os.urandom(16)
    s3.put_object(BUCKET, "miss/probe.bin", head)
    why = asyncio.run(probe_aiobotocore(node.url, "miss/probe.bin", head))
    kind = "aiobotocore" if why is None else "aiohttp-presigned"
    if why:
        log(f"(b) aiobotocore against the node failed ({why}); using aiohttp for both")
    b.out["miss"] = {"client": kind, "client_probe_error": why}
    b.out["miss"]["main"] = miss_case(b, a.miss_size, a.parallel, kind, "")
    if a.miss_serial_size:
        b.out["miss"]["serial"] = miss_case(b, a.miss_serial_size, 1, kind, "-serial")


def miss_case(b: Bench, size: int, parallel: int, kind: str, tag: str) -> dict[str, Any]:
    """Upload a fresh object; read it direct, cold through the node, direct again."""
    s3, node = b.s3, b.node
    key = f"miss/model-{size // MiB}m{tag}.bin"
    path = b.tmp / "miss.bin"
    log(f"(b) writing and uploading a {size / MiB:g} MiB object")
    write_random_file(path, size)
    t0 = time.monotonic()
    s3.put_file(BUCKET, key, path)
    upload_s = time.monotonic() - t0
    nblocks = (size + BLOCK - 1) // BLOCK
    crcs = []  # every block's crc32, to check each body (cheap next to the transfer)
    with open(path, "rb") as f:
        while chunk := f.read(BLOCK):
            crcs.append(zlib.crc32(chunk))
    path.unlink()
    bad: list[int] = []

    def check(i: int, data: bytes) -> None:
        if len(data) != min(BLOCK, size - i * BLOCK) or zlib.crc32(data) != crcs[i]:
            bad.append(i)

    pid = node.proc.pid  # type: ignore[union-attr]
    pgid = s3.proc.pid  # type: ignore[union-attr]  # weed runs in its own session/group
    counters = [("blockcache_origin_requests_total", {"op": "get"}),
                ("blockcache_origin_requests_total", {"op": "head"}),
                ("blockcache_block_misses_total", {}), ("blockcache_block_hits_total", {}),
                ("blockcache_fills_total", {}), ("blockcache_fill_seconds_sum", {}),
                ("blockcache_fill_seconds_count", {}), ("blockcache_origin_bytes_total", {})]
    runs: dict[str, Any] = {}
    for name, endpoint in (("direct_1", s3.endpoint_url), ("node_cold", node.url),
                           ("direct_2", s3.endpoint_url)):
        m0 = node_metrics(node)
        c = (h.self_cpu_seconds(), h.cpu_split(pid), h.group_cpu_seconds(pgid),
             h.machine_busy_seconds())
        log(f"(b) {name}: {nblocks} x 4 MiB range GETs, {parallel} in flight ({kind})")
        prof = Profiler(b, pid, f"miss{tag}-node-cold") if name == "node_cold" else None
        if prof:
            prof.__enter__()
        foreign = h.ForeignLoad().start()
        try:
            r = asyncio.run(read_object(endpoint, key, size, parallel, kind, check))
        finally:
            if prof:
                prof.__exit__()
        r["foreign_cpu_s"] = foreign.stop()
        r["foreign_top"] = foreign.top
        if r["foreign_cpu_s"] > 0.1 * r["seconds"]:
            b.warnings.append(f"(b) {size // MiB} MiB x{parallel} {name}: other processes used "
                              f"{r['foreign_cpu_s']:.1f} CPU-s during the read")
        c1 = (h.self_cpu_seconds(), h.cpu_split(pid), h.group_cpu_seconds(pgid),
              h.machine_busy_seconds())
        m1 = node_metrics(node)
        r.update(client_cpu_s=c1[0] - c[0], node_user_s=c1[1][0] - c[1][0],
                 node_sys_s=c1[1][1] - c[1][1], seaweed_cpu_s=c1[2] - c[2],
                 machine_cpu_s=c1[3] - c[3])
        r["node_cpu_s"] = r["node_user_s"] + r["node_sys_s"]
        r["machine_cpu_util"] = r["machine_cpu_s"] / (r["seconds"] * h.NCPU)
        r["gb_per_machine_cpu_s"] = size / 1e9 / r["machine_cpu_s"] if r["machine_cpu_s"] else None
        if name == "node_cold":
            for metric, lab in counters:
                k = metric + ("_" + "_".join(lab.values()) if lab else "")
                r[k] = h.sample(m1, metric, **lab) - h.sample(m0, metric, **lab)
        runs[name] = r
    if bad:
        raise AssertionError(f"(b) {len(bad)} block bodies had the wrong length or crc32: {bad[:10]}")
    direct = (runs["direct_1"]["gbps"] + runs["direct_2"]["gbps"]) / 2
    nc = runs["node_cold"]
    ratio = nc["gbps"] / direct
    gets = nc["blockcache_origin_requests_total_get"]
    fill_mean = (nc["blockcache_fill_seconds_sum"] / nc["blockcache_fill_seconds_count"]
                 if nc["blockcache_fill_seconds_count"] else float("nan"))
    label = f"(b) miss {size // MiB} MiB, {parallel}x4 MiB"
    for name in ("direct_1", "node_cold", "direct_2"):
        r = runs[name]
        server = r["node_cpu_s"] if name == "node_cold" else r["seaweed_cpu_s"]
        note = (f"client {r['client_cpu_s']:.1f} s, seaweed {r['seaweed_cpu_s']:.1f} s"
                + (f", node {r['node_user_s']:.1f} usr + {r['node_sys_s']:.1f} sys"
                   if name == "node_cold" else "")
                + f", machine {r['machine_cpu_s']:.1f} s ({100 * r['machine_cpu_util']:.0f}%);"
                f" GET p50 {r['req_p50_ms']:.0f} ms")
        b.rows.append(Row(f"{label}: " + {"direct_1": "direct #1", "node_cold": "node cold",
                                          "direct_2": "direct #2"}[name],
                          r["gbps"], "GB/s", ratio if name == "node_cold" else None, server,
                          size / 1e9 / server if server else None, note))
    b.rows.append(Row(f"{label}: node origin GETs", gets, "GETs", gets / nblocks, None, None,
                      f"expected {nblocks}; HEADs {nc['blockcache_origin_requests_total_head']:.0f}"
                      f"; fill mean {fill_mean * 1e3:.0f} ms"))
    return {"size": size, "key": key, "parallel": parallel, "upload_s": upload_s,
            "runs": runs, "direct_mean_gbps": direct, "ratio_node_direct": ratio,
            "origin_gets": gets, "origin_gets_expected": nblocks,
            "fill_mean_ms": fill_mean * 1e3, "bodies_checked": "len+crc32 of every block"}


# ---------------------------------------------------------------- (c) herd

async def herd(base_url: str, path: str, size: int, readers: int,
               crcs: list[int], between: Callable[[int], Any] | None = None
               ) -> list[dict[str, Any]]:
    """For each block, `readers` clients GET it at the same moment; return per-block timings."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=120)
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), timeout=timeout)
                for _ in range(readers)]
    out = []
    try:
        # open every connection first, so the herd measures requests, not TCP handshakes
        async def warm(s: aiohttp.ClientSession) -> None:
            async with s.get(base_url + "/healthz") as r:
                await r.read()
        await asyncio.gather(*(warm(s) for s in sessions))
        for i in range((size + BLOCK - 1) // BLOCK):
            go = asyncio.Event()

            async def one(s: aiohttp.ClientSession, k: int, i: int = i,
                          go: asyncio.Event = go) -> tuple[float, float, float, int, str]:
                await go.wait()
                t0 = time.perf_counter()
                async with s.get(base_url + path, headers={"Range": rng(i, size)}) as r:
                    t_hdr = time.perf_counter()
                    data = await r.read()
                    t_end = time.perf_counter()
                    ok = r.status == 206 and (k % 16 or zlib.crc32(data) == crcs[i])
                    return t0, t_hdr, t_end, len(data) if ok else -1, r.headers.get("X-Cache", "")

            tasks = [asyncio.create_task(one(s, k)) for k, s in enumerate(sessions)]
            await asyncio.sleep(0.05)  # all parked on the event
            go.set()
            res = await asyncio.gather(*tasks)
            first_send = min(r[0] for r in res)
            ttfb = [r[1] - r[0] for r in res]
            total = [r[2] - r[0] for r in res]
            hdr_at = [r[1] - first_send for r in res]  # header arrival since the first send
            out.append({
                "block": i, "bad_bodies": sum(r[3] != min(BLOCK, size - i * BLOCK) for r in res),
                "ttfb_ms": {"min": min(ttfb) * 1e3, "p50": h.median(ttfb) * 1e3,
                            "max": max(ttfb) * 1e3},
                "total_ms": {"min": min(total) * 1e3, "p50": h.median(total) * 1e3,
                             "max": max(total) * 1e3},
                "send_spread_ms": (max(r[0] for r in res) - first_send) * 1e3,
                "release_spread_ms": (max(hdr_at) - min(hdr_at)) * 1e3,
                "cache_status": sorted({r[4] for r in res}),
            })
            if between is not None:
                out[-1].update(await between(i))
    finally:
        await asyncio.gather(*(s.close() for s in sessions))
    return out


def summarize_herd(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    def med(f: Callable[[dict[str, Any]], float]) -> float:
        return h.median([f(x) for x in blocks])
    return {
        "blocks": len(blocks),
        "bad_bodies": sum(x["bad_bodies"] for x in blocks),
        "median_over_blocks": {
            "ttfb_min_ms": med(lambda x: x["ttfb_ms"]["min"]),
            "ttfb_p50_ms": med(lambda x: x["ttfb_ms"]["p50"]),
            "ttfb_max_ms": med(lambda x: x["ttfb_ms"]["max"]),
            "release_spread_ms": med(lambda x: x["release_spread_ms"]),
            "send_spread_ms": med(lambda x: x["send_spread_ms"]),
            "total_min_ms": med(lambda x: x["total_ms"]["min"]),
            "total_p50_ms": med(lambda x: x["total_ms"]["p50"]),
            "total_max_ms": med(lambda x: x["total_ms"]["max"]),
        },
        "worst_ttfb_max_ms": max(x["ttfb_ms"]["max"] for x in blocks),
    }


def part_herd(b: Bench) -> None:
    a, s3, node = b.args, b.s3, b.node
    size = 16 * BLOCK
    key = "herd/model-64m.bin"
    data = os.urandom(size)
    crcs = [zlib.crc32(data[i:i + BLOCK]) for i in range(0, size, BLOCK)]
    s3.put_object(BUCKET, key, data)
    metric_names = [("blockcache_origin_requests_total", {"op": "get"}),
                    ("blockcache_origin_requests_total", {"op": "head"}),
                    ("blockcache_fill_seconds_sum", {}), ("blockcache_fill_seconds_count", {}),
                    ("blockcache_singleflight_joins_total", {}),
                    ("blockcache_block_misses_total", {})]

    def snap() -> dict[str, float]:
        m = node_metrics(node)
        return {n + ("_" + "_".join(lab.values()) if lab else ""): h.sample(m, n, **lab)
                for n, lab in metric_names}

    prev = [snap()]

    async def between(i: int) -> dict[str, Any]:
        cur = await asyncio.to_thread(snap)
        d = {k: cur[k] - prev[0][k] for k in cur}
        prev[0] = cur
        return {"origin_gets": d["blockcache_origin_requests_total_get"],
                "origin_heads": d["blockcache_origin_requests_total_head"],
                "fill_ms": (d["blockcache_fill_seconds_sum"] * 1e3
                            if d["blockcache_fill_seconds_count"] else None),
                "singleflight_joins": d["blockcache_singleflight_joins_total"]}

    log(f"(c) herd: {a.herd_readers} readers x 16 blocks through the cold node")
    m0 = snap()
    foreign = h.ForeignLoad().start()
    t0 = time.monotonic()
    blocks = asyncio.run(herd(node.url, f"/{BUCKET}/{key}", size, a.herd_readers, crcs, between))
    other, herd_s = foreign.stop(), time.monotonic() - t0
    if other > 0.1 * herd_s:
        b.warnings.append(f"(c) node herd: other processes used {other:.1f} CPU-s in {herd_s:.1f} s")
    m1 = snap()
    gets = m1["blockcache_origin_requests_total_get"] - m0["blockcache_origin_requests_total_get"]
    fills = m1["blockcache_fill_seconds_count"] - m0["blockcache_fill_seconds_count"]
    fill_s = m1["blockcache_fill_seconds_sum"] - m0["blockcache_fill_seconds_sum"]
    s = summarize_herd(blocks)
    s.update(readers=a.herd_readers, origin_gets=gets, origin_gets_per_block=gets / 16,
             origin_heads=m1["blockcache_origin_requests_total_head"]
             - m0["blockcache_origin_requests_total_head"],
             singleflight_joins=m1["blockcache_singleflight_joins_total"]
             - m0["blockcache_singleflight_joins_total"],
             fill_mean_ms=fill_s / fills * 1e3 if fills else None, foreign_cpu_s=other,
             seconds=herd_s, per_block=blocks)
    gaps = [x["ttfb_ms"]["min"] - x["fill_ms"] for x in blocks if x.get("fill_ms") is not None]
    s["ttfb_min_minus_fill_ms"] = h.median(gaps)  # write + open + HTTP, after the GET landed
    b.out["herd"] = {"node": s}
    mo = s["median_over_blocks"]
    b.rows.append(Row(f"(c) herd {a.herd_readers} readers: node origin GETs/block",
                      gets / 16, "GETs", None, None, None,
                      f"{gets:.0f} GETs for 16 blocks; {s['singleflight_joins']:.0f} joins; "
                      f"bad bodies {s['bad_bodies']}"))
    b.rows.append(Row("(c) herd: node waiter release (TTFB max-min)", mo["release_spread_ms"],
                      "ms", None, None, None,
                      f"fill {s['fill_mean_ms']:.1f} ms, first release +"
                      f"{s['ttfb_min_minus_fill_ms']:.1f} ms; TTFB min/p50/max "
                      f"{mo['ttfb_min_ms']:.1f}/{mo['ttfb_p50_ms']:.1f}/{mo['ttfb_max_ms']:.1f} ms;"
                      f" full body p50/max {mo['total_p50_ms']:.0f}/{mo['total_max_ms']:.0f} ms"))
    if a.nginx_herd:
        try:
            nginx_herd(b, crcs, data)
        except Exception as e:  # noqa: BLE001 - optional comparison: report, do not fail
            log(f"(c) nginx herd failed: {e}")
            b.out["herd"]["nginx_error"] = traceback.format_exc()


NGINX_CACHE_HTTP = """
  proxy_cache_path {tmp}/cache levels=1:2 keys_zone=herd:16m max_size=2g inactive=1h
                   use_temp_path=off;
  log_format herd '$upstream_cache_status $status $request_time $upstream_response_time';
"""


def nginx_herd(b: Bench, crcs: list[int], data: bytes) -> None:
    """The same herd against nginx proxy_cache + proxy_cache_lock in front of SeaweedFS.

    nginx cannot sign S3 requests, so it proxies the SeaweedFS filer's plain HTTP
    (`/buckets/<bucket>/<key>`, the same bytes the S3 gateway serves). With proxy_cache on,
    nginx drops Range towards the upstream unless told, so the key includes the range.
    """
    a, s3 = b.args, b.s3
    key = "herd/model-64m-nginx.bin"
    s3.put_object(BUCKET, key, data)
    filer = s3.ports["filer"]
    body = f"""
    location /buckets/ {{
      access_log {{tmp}}/herd.log herd;
      proxy_pass http://127.0.0.1:{filer};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache herd;
      proxy_cache_key $uri$http_range;
      proxy_set_header Range $http_range;
      proxy_cache_valid 200 206 1h;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 60s;
      proxy_cache_lock_age 60s;
      add_header X-Cache $upstream_cache_status;
    }}
    location = /healthz {{ return 200 "ok"; }}
    """
    ngx = h.Nginx(b.tmp / "nginx-herd", server_body=body, http_extra=NGINX_CACHE_HTTP).start()
    try:
        log(f"(c) herd: {a.herd_readers} readers x 16 blocks through nginx proxy_cache_lock")
        foreign = h.ForeignLoad().start()
        t0 = time.monotonic()
        blocks = asyncio.run(herd(ngx.url, f"/buckets/{BUCKET}/{key}", len(data),
                                  a.herd_readers, crcs))
        other, herd_s = foreign.stop(), time.monotonic() - t0
        if other > 0.1 * herd_s:
            b.warnings.append(f"(c) nginx herd: other processes used {other:.1f} CPU-s in "
                              f"{herd_s:.1f} s")
        status_lines = (ngx.tmp / "herd.log").read_text().split("\n")
        counts: dict[str, int] = {}
        for line in status_lines:
            if line:
                counts[line.split()[0]] = counts.get(line.split()[0], 0) + 1
        upstream = counts.get("MISS", 0) + counts.get("EXPIRED", 0) + counts.get("BYPASS", 0)
        s = summarize_herd(blocks)
        s.update(readers=a.herd_readers, cache_status_counts=counts, origin_gets=upstream,
                 origin_gets_per_block=upstream / 16, per_block=blocks,
                 note="upstream = SeaweedFS filer HTTP (unsigned), not the S3 gateway")
        b.out["herd"]["nginx"] = s
        mo = s["median_over_blocks"]
        b.rows.append(Row("(c) herd: nginx proxy_cache_lock origin GETs/block", upstream / 16,
                          "GETs", None, None, None,
                          f"cache status {counts}; bad bodies {s['bad_bodies']}"))
        b.rows.append(Row("(c) herd: nginx waiter release (TTFB max-min)",
                          mo["release_spread_ms"], "ms", None, None, None,
                          f"TTFB min/p50/max {mo['ttfb_min_ms']:.1f}/{mo['ttfb_p50_ms']:.1f}/"
                          f"{mo['ttfb_max_ms']:.1f} ms; full body p50/max "
                          f"{mo['total_p50_ms']:.0f}/{mo['total_max_ms']:.0f} ms"))
    finally:
        ngx.stop()


# ---------------------------------------------------------------- driver

def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[Row]) -> None:
    w = max(len(r.name) for r in rows)
    print(f"\n{'measurement':<{w}}  {'value':>8} {'unit':<5} {'ratio':>6} {'CPU s':>6} "
          f"{'GB/CPU-s':>8}  notes")
    for r in rows:
        val = fmt(r.value, ".3f" if r.unit == "GB/s" else ".2f" if r.unit != "ms" else ".1f")
        print(f"{r.name:<{w}}  {val:>8} {r.unit:<5} {fmt(r.ratio, '.2f'):>6} "
              f"{fmt(r.cpu_s, '.2f'):>6} {fmt(r.gb_per_cpu_s, '.2f'):>8}  {r.note}")


def tool_version(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except Exception as e:  # noqa: BLE001
        return f"unknown ({e})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1 s wrk runs, 256 MiB miss object")
    p.add_argument("--parts", default="abc", help="which parts to run (subset of 'abc')")
    p.add_argument("--seconds", type=float, help="seconds per wrk run (default 4; quick 1)")
    p.add_argument("--repeat", type=int, default=3, help="wrk runs per cell; median reported")
    p.add_argument("--warmup", type=float, default=1.0, help="wrk warm-up seconds per server")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (same for both servers)")
    p.add_argument("--connections", type=int, default=8, help="wrk connections (same for both)")
    p.add_argument("--miss-size", help="miss-path object size in MiB (default 1024; quick 256)",
                   type=lambda s: int(s) * MiB)
    p.add_argument("--parallel", type=int, default=8, help="miss-path range GETs in flight")
    p.add_argument("--miss-serial-size", type=lambda s: int(s) * MiB,
                   help="also read a fresh object of this many MiB with 1 GET in flight "
                        "(latency, not CPU, bound); 0 skips (default 256; quick 64)")
    p.add_argument("--herd-readers", type=int, default=64)
    p.add_argument("--no-nginx-herd", dest="nginx_herd", action="store_false",
                   help="skip the nginx proxy_cache_lock herd comparison")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin server to CPU 0 and wrk to CPU 1 in (a)")
    p.add_argument("--profile", action="store_true",
                   help="py-spy the node during (a) and (b) node runs (summary in the JSON)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, data)")
    a = p.parse_args()
    a.seconds = a.seconds or (1.0 if a.quick else 4.0)
    a.miss_size = a.miss_size or (256 * MiB if a.quick else GiB)
    if a.miss_serial_size is None:
        a.miss_serial_size = 64 * MiB if a.quick else 256 * MiB
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool):
            print(f"{tool} not found: apt-get install -y nginx wrk", file=sys.stderr)
            return 2

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="blockcache-bench-"))
    pin = not a.no_pin and h.NCPU > 1
    out: dict[str, Any] = {"meta": {
        "stamp": stamp, "argv": sys.argv, "quick": a.quick, "parts": a.parts,
        "cpus": h.NCPU, "kernel": platform.release(), "python": platform.python_version(),
        "cpu_model": next((ln.split(":", 1)[1].strip() for ln in
                           Path("/proc/cpuinfo").read_text().splitlines()
                           if ln.startswith("model name")), "?"),
        "nginx_version": tool_version(["nginx", "-v"]),
        "wrk_version": tool_version(["wrk", "-v"]),
        "pinning": {"server_cpu": 0, "wrk_cpu": 1} if pin else None,
        "wrk": {"threads": a.threads, "connections": a.connections, "seconds": a.seconds,
                "repeat": a.repeat, "warmup_s": a.warmup},
        "node_args": ["--capacity", "4GiB"], "block_size": BLOCK}}
    t_start = time.monotonic()
    s3 = SeaweedFS(tmp / "seaweedfs")
    node: NodeProcess | None = None
    failed = None
    rows: list[Row] = []
    warnings: list[str] = []
    try:
        out["meta"]["page_cache_write_gbps"] = page_cache_write_gbps(tmp / "calibrate")
        log("starting SeaweedFS")
        s3.start()
        s3.make_bucket(BUCKET)
        node = NodeProcess(tmp / "node-data", s3.env(), "--capacity", "4GiB",
                           "--log-level", "WARNING")
        node.start()
        out["meta"]["node_url"] = node.url
        b = Bench(a, tmp, s3, node, rows, out, 0 if pin else None, 1 if pin else None,
                  warnings)
        for part, fn in (("a", part_hit), ("b", part_miss), ("c", part_herd)):
            if part in a.parts:
                t = time.monotonic()
                fn(b)
                out.setdefault("part_seconds", {})[part] = round(time.monotonic() - t, 1)
    except BaseException as e:  # noqa: BLE001 - still print and save what was measured
        failed = e
        out["error"] = traceback.format_exc()
    finally:
        if node is not None:
            try:
                node.stop()
            except Exception as e:  # noqa: BLE001
                log(f"stopping cachenode: {e}")
        s3.stop()
        out["meta"]["wall_seconds"] = round(time.monotonic() - t_start, 1)
        if not a.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"kept {tmp}")
    out["table"] = [r.__dict__ for r in rows]
    out["warnings"] = warnings
    dest = RESULTS_DIR / f"bench-{stamp}.json"
    dest.write_text(json.dumps(out, indent=1, default=str))
    if rows:
        print_table(rows)
    for w in warnings:
        print(f"WARNING: {w}")
    pc = out["meta"].get("page_cache_write_gbps")
    print(f"\nwall {out['meta']['wall_seconds']} s; {h.NCPU} CPUs; new-file page-cache writes "
          f"{pc or 0:.2f} GB/s; JSON: {dest.relative_to(ROOT)}")
    return h.exit_code(failed, out.get("error", ""))


if __name__ == "__main__":
    sys.exit(main())

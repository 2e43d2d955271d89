"""Node-to-node transport: whole 4 MiB blocks from a warm node over gRPC vs HTTP, side by side.

    .venv/bin/python loadtest/peer_transport.py [--quick] [--size 256] [--blocks 128]

A serving node takes the blocks of a range that it does not own from their owners over the
internal transport. This measures that hop alone: one cache node (its own process, standalone,
`--capacity 4GiB`) holds a warmed object (read once, so every block is on its disk), and this
process, playing the requesting node, fetches whole blocks from it with

  grpc        cachenode.peers.PeerClient.read_block: the node's own peer client (one channel,
              ReadBlock, hops=1; server reads the block into memory, checks its stored crc32,
              crc32s it again and streams 1 MiB messages; the client checks size and crc32)
  grpc_range  the same channel, ReadRange of the block's bytes (server streams 1 MiB preads
              from the block file, no checksum), to separate gRPC itself from ReadBlock's work
  http        aiohttp range GET of the block (node: sendfile from the block file), body read
              whole into memory, as a peer would (a pool of as many connections as in flight)
  http_crc    the same plus crc32 of the body on the client, checked against the crc32 the node
              recorded for the block (X-Blockcache-Crc32c, as CacheClient does): the check grpc
              makes on receipt

at 1, 4 and 16 blocks in flight. Rounds alternate the transports' order (median of 3 rounds by
GB/s). Per run: GB/s, per-block latency p50/p99 (request to the whole block in memory), CPU
seconds per GB of the server process and of this client process, and of the whole machine.
The node is pinned to CPU 0 and this process to CPU 1 (two "machines"; --no-pin to share).
Prints a table and writes loadtest/results/transport-<UTC timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp

from cachenode.blocks import BlockRef, ObjectMeta
from cachenode.checksum import crc32c
from cachenode.metrics import NodeMetrics
from cachenode.pb import blockcache_pb2 as pb
from cachenode.peers import PeerClient
from loadtest import harness as h
from tests.nodeproc import NodeProcess
from tests.servers import SeaweedFS

MiB = h.MiB
BLOCK = 4 * MiB
BUCKET = "peer"
RESULTS_DIR = ROOT / "loadtest" / "results"
TRANSPORTS = ("grpc", "grpc_range", "http", "http_crc")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_random_file(path: Path, size: int) -> list[int]:
    """Write `size` random bytes to `path`, streaming; return the crc32 of each block."""
    crcs = []
    with open(path, "wb") as f:
        left = size
        while left:
            b = os.urandom(min(BLOCK, left))
            crcs.append(zlib.crc32(b))
            f.write(b)
            left -= len(b)
    return crcs


class Fetchers:
    """One way per transport to fetch block i of the warmed object as bytes."""

    def __init__(self, node: NodeProcess, meta: ObjectMeta, crcs: list[int]) -> None:
        self.node, self.meta, self.crcs = node, meta, crcs
        self.grpc_addr = f"127.0.0.1:{node.grpc_port}"
        self.url = f"{node.url}/{BUCKET}/{meta.key}"
        self.peers = PeerClient(NodeMetrics(), timeout_s=60.0)
        self.session: aiohttp.ClientSession | None = None
        self.bad = 0
        self.no_crc_header = 0  # http_crc responses without X-Blockcache-Crc32

    async def start(self, pool: int = 64) -> None:
        """Open a fresh HTTP connection pool of `pool` connections (closing the old one).

        The pool is sized to the blocks in flight: at 1 in flight, requests rotating over
        several idle pooled connections stall 20-100 ms now and then on loopback (seen
        against nginx too), which would be measured as the transport's latency.
        """
        if self.session is not None:
            await self.session.close()
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=pool),
            timeout=aiohttp.ClientTimeout(total=60), auto_decompress=False)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        await self.peers.close()

    def get(self, transport: str) -> Callable[[int], Awaitable[bytes]]:
        return {"grpc": self.grpc, "grpc_range": self.grpc_range, "http": self.http,
                "http_crc": self.http_crc}[transport]

    def _check(self, i: int, data: bytes, crc: bool) -> None:
        want = min(BLOCK, self.meta.size - i * BLOCK)
        if len(data) != want or (crc and zlib.crc32(data) != self.crcs[i]):
            self.bad += 1

    async def grpc(self, i: int) -> bytes:
        ref = BlockRef(self.meta, i, BLOCK)
        data = await self.peers.read_block(self.grpc_addr, ref, hops=1, epoch=0)
        self._check(i, data, crc=False)  # read_block checked the owner's crc32 already
        return data

    async def grpc_range(self, i: int) -> bytes:
        stub = self.peers._stub(self.grpc_addr)  # the node's channel (same options)
        ref = BlockRef(self.meta, i, BLOCK)
        req = pb.ReadRangeRequest(bucket=BUCKET, key=self.meta.key, offset=ref.start,
                                  length=ref.length, etag=self.meta.etag)
        parts = [c.data async for c in stub.ReadRange(req, timeout=60)]
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self._check(i, data, crc=False)
        return data

    async def _http(self, i: int) -> tuple[bytes, str | None]:
        assert self.session is not None
        lo = i * BLOCK
        hi = min(self.meta.size, lo + BLOCK) - 1
        async with self.session.get(self.url, headers={"Range": f"bytes={lo}-{hi}",
                                                       "If-Match": self.meta.etag}) as r:
            if r.status != 206:
                raise RuntimeError(f"HTTP {r.status} for block {i}")
            return await r.read(), r.headers.get("X-Blockcache-Crc32c")

    async def http(self, i: int) -> bytes:
        data, _ = await self._http(i)
        self._check(i, data, crc=False)
        return data

    async def http_crc(self, i: int) -> bytes:
        """Check the body against the CRC-32C the node recorded (X-Blockcache-Crc32c), as
        CacheClient does, else against the uploaded bytes' crc32."""
        data, header = await self._http(i)
        if header is None:
            self.no_crc_header += 1
        if header is not None and crc32c(data) != int(header):
            self.bad += 1
        if header is None and zlib.crc32(data) != self.crcs[i]:
            self.bad += 1
        self._check(i, data, crc=False)
        return data


async def run_once(fetch: Callable[[int], Awaitable[bytes]], n_blocks: int, count: int,
                   inflight: int, first: int) -> tuple[float, list[float], int]:
    """Fetch `count` blocks (cycling over the object from `first`) with `inflight` workers.

    Return (seconds, per-block latencies in ms, bytes).
    """
    lat: list[float] = []
    got = 0
    nxt = 0

    async def worker() -> None:
        nonlocal got, nxt
        while nxt < count:
            i = (first + nxt) % n_blocks
            nxt += 1
            t = time.perf_counter()
            data = await fetch(i)
            lat.append((time.perf_counter() - t) * 1e3)
            got += len(data)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return time.perf_counter() - t0, lat, got


async def one_run(f: Fetchers, t: str, n_blocks: int, count: int, inflight: int, first: int,
                  node_pid: int) -> dict[str, Any]:
    """One timed run of one transport, with the CPU it cost the server, us and the machine."""
    foreign = h.ForeignLoad().start()
    s0, m0, c0 = h.cpu_split(node_pid), h.machine_busy_seconds(), h.self_cpu_seconds()
    secs, lat, got = await run_once(f.get(t), n_blocks, count, inflight, first)
    c1, s1, m1 = h.self_cpu_seconds(), h.cpu_split(node_pid), h.machine_busy_seconds()
    other = foreign.stop()
    gb = got / 1e9
    su, ss = s1[0] - s0[0], s1[1] - s0[1]
    return {"gbps": gb / secs, "seconds": secs, "bytes": got,
            "p50_ms": h.percentile(lat, 0.5), "p99_ms": h.percentile(lat, 0.99),
            "max_ms": max(lat), "server_cpu_s": su + ss, "server_user_s": su,
            "server_sys_s": ss, "server_cpu_s_per_gb": (su + ss) / gb,
            "client_cpu_s": c1 - c0, "client_cpu_s_per_gb": (c1 - c0) / gb,
            "machine_cpu_s": m1 - m0, "machine_cpu_s_per_gb": (m1 - m0) / gb,
            "foreign_cpu_s": other, "foreign_top": foreign.top}


async def wait_quiet(max_wait_s: float, window_s: float = 0.5, limit: float = 0.1) -> float:
    """Wait (up to `max_wait_s`) for a `window_s` in which other processes used < `limit` CPUs.

    Return the seconds waited. On a shared machine other sessions' test suites come and go.
    """
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_wait_s:
        foreign = h.ForeignLoad().start()
        await asyncio.sleep(window_s)
        if foreign.stop() < limit * window_s:
            break
    return time.monotonic() - t0


async def measure(f: Fetchers, a: argparse.Namespace, node_pid: int) -> dict[str, Any]:
    n_blocks = (f.meta.size + BLOCK - 1) // BLOCK
    cells: dict[str, dict[str, list[dict[str, Any]]]] = {}
    first = 0
    disturbed: list[dict[str, Any]] = []
    for k in a.inflight:
        await f.start(pool=k)
        for t in a.transports:  # open the channel and k connections, warm both code paths
            await run_once(f.get(t), n_blocks, max(8, 2 * k), k, 0)
        for rnd in range(a.rounds):
            order = list(a.transports) if rnd % 2 == 0 else list(reversed(a.transports))
            await wait_quiet(a.max_wait)
            for t in order:
                for attempt in range(a.retries + 1):
                    run = await one_run(f, t, n_blocks, a.blocks, k, first, node_pid)
                    first = (first + a.blocks) % n_blocks
                    run.update(round=rnd, attempt=attempt)
                    noisy = run["foreign_cpu_s"] > 0.1 * run["seconds"]
                    log(f"{k:>2} in flight, round {rnd + 1}, {t:<10} {run['gbps']:.2f} GB/s, "
                        f"p50 {run['p50_ms']:.1f} ms, p99 {run['p99_ms']:.1f} ms, server "
                        f"{run['server_cpu_s_per_gb']:.2f} CPU-s/GB"
                        + (f" (foreign load {run['foreign_cpu_s']:.2f} CPU-s: "
                           f"{'again' if attempt < a.retries else 'kept'})" if noisy else ""))
                    if noisy and attempt < a.retries:
                        disturbed.append({"inflight": k, "transport": t, **run})
                        await wait_quiet(a.max_wait)
                        continue
                    run["disturbed"] = noisy
                    cells.setdefault(str(k), {}).setdefault(t, []).append(run)
                    break
    out: dict[str, Any] = {}
    for k, by_t in cells.items():
        out[k] = {}
        for t, runs in by_t.items():
            ordered = sorted(runs, key=lambda r: r["gbps"])
            med = dict(ordered[len(ordered) // 2])
            med["gbps_min"], med["gbps_max"] = ordered[0]["gbps"], ordered[-1]["gbps"]
            for key in ("p50_ms", "p99_ms", "server_cpu_s_per_gb", "client_cpu_s_per_gb",
                        "machine_cpu_s_per_gb"):
                med[key + "_median"] = h.median([r[key] for r in runs])
            med["runs"] = runs
            med["disturbed_kept"] = sum(r["disturbed"] for r in runs)
            out[k][t] = med
        if "grpc" in by_t and "http" in by_t:  # paired, round by round
            pairs = [g["gbps"] / x["gbps"] for g, x in zip(by_t["grpc"], by_t["http"],
                                                            strict=True)]
            out[k]["grpc_over_http_gbps_paired_median"] = h.median(pairs)
    return {"cells": out, "disturbed_runs": disturbed}


def print_table(res: dict[str, Any], transports: list[str]) -> None:
    print(f"\n{'in flight':>9} {'transport':<10} {'GB/s':>6} {'(min-max)':>11} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'srv CPU-s/GB':>12} {'cli CPU-s/GB':>12} {'mach CPU-s/GB':>13} "
          f"{'vs http':>7}")
    for k, by_t in res.items():
        http = by_t.get("http", {}).get("gbps")
        for t in transports:
            r = by_t.get(t)
            if r is None:
                continue
            print(f"{k:>9} {t:<10} {r['gbps']:>6.2f} {r['gbps_min']:>5.2f}-{r['gbps_max']:<5.2f} "
                  f"{r['p50_ms_median']:>7.1f} {r['p99_ms_median']:>7.1f} "
                  f"{r['server_cpu_s_per_gb_median']:>12.2f} "
                  f"{r['client_cpu_s_per_gb_median']:>12.2f} "
                  f"{r['machine_cpu_s_per_gb_median']:>13.2f} "
                  f"{(r['gbps'] / http if http else float('nan')):>7.2f}"
                  + (f"  ({r['disturbed_kept']} run(s) under foreign load)"
                     if r["disturbed_kept"] else ""))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, help="object size in MiB (default 256; quick 64)")
    p.add_argument("--blocks", type=int, help="blocks fetched per run (default 128; quick 32)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per cell; median reported")
    p.add_argument("--inflight", default="1,4,16", help="blocks in flight, comma-separated")
    p.add_argument("--transports", default=",".join(TRANSPORTS),
                   help=f"subset of {','.join(TRANSPORTS)}")
    p.add_argument("--quick", action="store_true", help="64 MiB object, 32 blocks per run")
    p.add_argument("--retries", type=int, default=2,
                   help="repeat a run during which other processes used > 0.1 CPU (times)")
    p.add_argument("--max-wait", type=float, default=20.0,
                   help="before each round, wait up to this many seconds for a quiet machine")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin the node to CPU 0 and this process to CPU 1")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, data)")
    a = p.parse_args()
    a.size = (a.size or (64 if a.quick else 256)) * MiB
    a.blocks = a.blocks or (32 if a.quick else 128)
    a.inflight = [int(x) for x in a.inflight.split(",")]
    a.transports = [t for t in a.transports.split(",") if t]
    if set(a.transports) - set(TRANSPORTS):
        p.error(f"--transports: unknown {set(a.transports) - set(TRANSPORTS)}")
    pin = not a.no_pin and h.NCPU > 1

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="blockcache-transport-"))
    out: dict[str, Any] = {"meta": {
        "stamp": stamp, "argv": sys.argv, "size": a.size, "blocks_per_run": a.blocks,
        "rounds": a.rounds, "inflight": a.inflight, "transports": a.transports,
        "pinning": {"node_cpu": 0, "client_cpu": 1} if pin else None, "cpus": h.NCPU,
        "kernel": platform.release(), "python": platform.python_version(),
        "node_args": ["--capacity", "4GiB"], "block_size": BLOCK}}
    t_start = time.monotonic()
    s3 = SeaweedFS(tmp / "seaweedfs")
    node: NodeProcess | None = None
    failed: BaseException | None = None
    res: dict[str, Any] = {}
    try:
        log("starting SeaweedFS")
        s3.start()
        s3.make_bucket(BUCKET)
        key = "peer/block-source.bin"
        crcs = write_random_file(tmp / "obj.bin", a.size)
        s3.put_file(BUCKET, key, tmp / "obj.bin")
        (tmp / "obj.bin").unlink()
        node = NodeProcess(tmp / "node-data", s3.env(), "--capacity", "4GiB",
                           "--log-level", "WARNING")
        node.start()
        n_blocks = len(crcs)
        log(f"warming the node: {n_blocks} blocks")
        for i in range(n_blocks):
            lo = i * BLOCK
            st, hdrs, body = node.get(f"/{BUCKET}/{key}", {
                "Range": f"bytes={lo}-{min(a.size, lo + BLOCK) - 1}"})
            assert st == 206 and zlib.crc32(body) == crcs[i], f"warm-up block {i}: {st}"
        st, hdrs, _ = node.get(f"/{BUCKET}/{key}", method="HEAD")
        deadline = time.monotonic() + 10  # the node writes blocks behind the response
        while (stored := node.metric("blockcache_store_blocks")) < n_blocks:
            assert time.monotonic() < deadline, f"{stored} blocks stored, want {n_blocks}"
            time.sleep(0.05)
        meta = ObjectMeta(BUCKET, key, int(hdrs["content-length"]), hdrs["etag"])
        out["meta"]["etag"] = meta.etag
        if pin:
            h.set_affinity(node.proc.pid, {0})  # type: ignore[union-attr]
            h.set_affinity(os.getpid(), {1})
        m0 = node.metric("blockcache_origin_requests_total", op="get")

        async def go() -> dict[str, Any]:
            f = Fetchers(node, meta, crcs)
            await f.start()
            try:
                r = await measure(f, a, node.proc.pid)  # type: ignore[union-attr]
            finally:
                await f.close()
            out["bad_blocks"] = f.bad
            out["http_crc_responses_without_crc_header"] = f.no_crc_header
            return r

        try:
            import uvloop
            res = uvloop.run(go())
        except ImportError:
            res = asyncio.run(go())
        out["origin_gets_during_runs"] = node.metric("blockcache_origin_requests_total",
                                                     op="get") - m0
        out["node_grpc_requests"] = {s: node.metric("blockcache_requests_total", api="grpc",
                                                    status=s) for s in ("OK", "NOT_FOUND")}
        out["node_peer_note"] = "origin_gets_during_runs must be 0: every block a disk hit"
    except BaseException as e:  # noqa: BLE001 - still print and save what was measured
        failed = e
        out["error"] = traceback.format_exc()
    finally:
        if pin:
            h.set_affinity(os.getpid(), None)
        if node is not None:
            try:
                out["node_log_tail"] = node.log_path.read_text(errors="replace")[-3000:]
                node.stop()
            except Exception as e:  # noqa: BLE001
                log(f"stopping cachenode: {e}")
        s3.stop()
        out["meta"]["wall_seconds"] = round(time.monotonic() - t_start, 1)
        if a.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    out["results"] = res.get("cells", {})
    out["disturbed_runs"] = res.get("disturbed_runs", [])
    res = out["results"]
    dest = RESULTS_DIR / f"transport-{stamp}.json"
    dest.write_text(json.dumps(out, indent=1, default=str))
    if res:
        print_table(res, a.transports)
        for k, by_t in res.items():
            if "grpc_over_http_gbps_paired_median" in by_t:
                print(f"  {k} in flight: grpc/http GB/s, paired by round: "
                      f"{by_t['grpc_over_http_gbps_paired_median']:.2f}")
    print(f"\n{len(out['disturbed_runs'])} runs repeated for foreign load; "
          f"bad blocks {out.get('bad_blocks')}; origin GETs during the runs "
          f"{out.get('origin_gets_during_runs')}; wall {out['meta']['wall_seconds']} s; "
          f"pinned: {'node CPU 0, client CPU 1' if pin else 'no'}; "
          f"JSON: {dest.relative_to(ROOT)}")
    return h.exit_code(failed, out.get("error", ""))


if __name__ == "__main__":
    sys.exit(main())

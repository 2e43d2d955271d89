"""Cold-start herd: N loaders read one model through a 3-node cache group vs straight from S3.

    .venv/bin/python loadtest/bench_group.py [--quick] [--size MiB] [--loaders 16] [--inflight 4]

SeaweedFS + etcd + a LocalGroup of 3 cache nodes (`--capacity 4GiB`), all on 127.0.0.1. A
model-like set of files (a big random `model.safetensors` plus a few small JSON files) is
uploaded, then the same loaders, released at once, each read every file whole, in order,
4 MiB blocks with `--inflight` GETs in flight (an in-order sliding window, like the client):

  direct      straight from SeaweedFS (aiobotocore range GETs, one S3 client per loader)
  group cold  through the group with the ring-aware client.CacheClient (blocks straight from
              their owners over HTTP), fresh cold cache: every block filled once
  group warm  the same again: every block a hit on its owner
  rr cold/warm (unless --no-rr) plain HTTP range GETs, loader i -> node i % 3, of a second
              copy of the model: the node that is asked fetches the other owners' blocks over
              the internal transport (what the ring-aware client saves)
  direct 2    straight from SeaweedFS again (unless --quick / --no-direct-again), to bracket drift

Per phase: time until all loaders have every byte, per-loader times, origin bytes and GETs
(direct: the bytes read; group: node metrics), per-node balance (blocks stored, bytes served),
CPU seconds of the nodes, SeaweedFS, etcd, the loaders and the whole machine. Every loader
crc32-checks every block against the uploaded bytes (`--verify first`: loader 0 only, the
others check lengths). Loaders run in `--procs` worker processes (default: one per CPU).
Prints a table and writes loadtest/results/group-<UTC timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from client.client import windowed  # the client's own in-order window
from loadtest import harness as h

MiB, GiB = h.MiB, h.GiB
BLOCK = 4 * MiB
BUCKET = "models"
RESULTS_DIR = ROOT / "loadtest" / "results"
N_NODES = 3
SMALL_FILES = (("config.json", 2_000), ("generation_config.json", 300),
               ("tokenizer.json", 3 * MiB))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class File:
    """One uploaded file: key, size and the crc32 of each 4 MiB block."""

    key: str
    size: int
    crcs: list[int]

    @property
    def blocks(self) -> int:
        return len(self.crcs)


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


# ---------------------------------------------------------------- loaders (worker processes)

class Check:
    """Per-loader byte and checksum accounting."""

    def __init__(self, verify: bool) -> None:
        self.verify, self.bytes, self.blocks, self.bad = verify, 0, 0, 0

    def block(self, f: dict[str, Any], i: int, data: bytes) -> None:
        want = min(BLOCK, f["size"] - i * BLOCK)
        if len(data) != want or (self.verify and zlib.crc32(data) != f["crcs"][i]):
            self.bad += 1
        self.bytes += len(data)
        self.blocks += 1


def rng(i: int, size: int) -> str:
    return f"bytes={i * BLOCK}-{min(size, (i + 1) * BLOCK) - 1}"


async def load_direct(s3: Any, spec: dict[str, Any], check: Check) -> None:
    for f in spec["files"]:
        head = await s3.head_object(Bucket=BUCKET, Key=f["key"])
        size, etag = int(head["ContentLength"]), head["ETag"]

        async def get(i: int, f: dict[str, Any] = f, size: int = size, etag: str = etag) -> bytes:
            r = await s3.get_object(Bucket=BUCKET, Key=f["key"], Range=rng(i, size), IfMatch=etag)
            async with r["Body"] as body:
                return bytes(await body.read())

        i = 0
        async for data in windowed(get, f["blocks"], spec["inflight"]):
            check.block(f, i, data)
            i += 1


async def load_group(client: Any, spec: dict[str, Any], check: Check) -> None:
    for f in spec["files"]:
        info = await client.stat(BUCKET, f["key"])
        i = 0
        async for data in client.iter_range(info):
            check.block(f, i, data)
            i += 1


async def load_http(session: Any, base: str, spec: dict[str, Any], check: Check) -> None:
    """Plain HTTP range GETs to one node (any HTTP loader: curl -r, fsspec)."""
    for f in spec["files"]:
        url = f"{base}/{BUCKET}/{f['key']}"
        async with session.head(url) as r:
            size = int(r.headers["Content-Length"])

        async def get(i: int, url: str = url, size: int = size) -> bytes:
            async with session.get(url, headers={"Range": rng(i, size)}) as r:
                if r.status != 206:
                    raise RuntimeError(f"GET {url} {rng(i, size)}: HTTP {r.status}")
                return bytes(await r.read())

        i = 0
        async for data in windowed(get, f["blocks"], spec["inflight"]):
            check.block(f, i, data)
            i += 1


async def run_phase(conn: Connection, spec: dict[str, Any]) -> None:
    """Set up every loader of this worker, report ready, wait for go, run them all."""
    import aiohttp

    from client.client import CacheClient
    from tests.servers import aio_s3_client

    mode, loaders, inflight = spec["mode"], spec["loaders"], spec["inflight"]
    async with contextlib.AsyncExitStack() as stack:
        runners: list[Callable[[Check], Awaitable[None]]] = []
        clients: list[Any] = []
        for lid in loaders:
            if mode == "direct":
                s3 = await stack.enter_async_context(aio_s3_client(
                    spec["endpoint"], max_pool_connections=max(10, 2 * inflight),
                    read_timeout=120, retries={"max_attempts": 1}))
                runners.append(functools.partial(load_direct, s3, spec))
            elif mode == "group":
                cl = await stack.enter_async_context(CacheClient(spec["seeds"],
                                                                 concurrency=inflight))
                clients.append(cl)
                runners.append(functools.partial(load_group, cl, spec))
            else:  # rr: one node per loader, round-robin
                sess = await stack.enter_async_context(aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=max(64, 2 * inflight)),
                    timeout=aiohttp.ClientTimeout(total=120), auto_decompress=False))
                base = spec["node_urls"][lid % len(spec["node_urls"])]
                runners.append(functools.partial(load_http, sess, base, spec))
        conn.send(("ready",))
        assert await asyncio.to_thread(conn.recv) == ("go",)
        ru0 = resource.getrusage(resource.RUSAGE_SELF)

        async def one(lid: int, run: Callable[[Check], Awaitable[None]]) -> dict[str, Any]:
            check = Check(spec["verify"] == "all" or lid == 0)
            t0 = time.monotonic()
            err = None
            try:
                await run(check)
            except Exception as e:  # noqa: BLE001 - reported per loader
                err = f"{type(e).__name__}: {e}"
            return {"loader": lid, "t_start": t0, "t_end": time.monotonic(),
                    "bytes": check.bytes, "blocks": check.blocks, "bad_blocks": check.bad,
                    "verified": check.verify, "error": err}

        res = await asyncio.gather(*(one(lid, r) for lid, r in zip(loaders, runners,
                                                                   strict=True)))
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        # Report before the clients close, so the parent's CPU window ends with the loaders.
        conn.send(("done", {"loaders": res, "cpu_s": cpu,
                            "client_failovers": sum(cl.failovers for cl in clients)}))


def worker_main(conn: Connection) -> None:
    """A loader process: run phases as the parent sends them, until told to quit."""
    try:
        import uvloop
        run: Callable[..., Any] = uvloop.run
    except ImportError:
        run = asyncio.run
    while True:
        msg = conn.recv()
        if msg[0] == "quit":
            return
        try:
            run(run_phase(conn, msg[1]))
        except BaseException:  # noqa: BLE001 - the parent reports it
            conn.send(("error", traceback.format_exc()))


class Loaders:
    """`procs` worker processes; loaders are dealt out round-robin."""

    def __init__(self, procs: int, loaders: int) -> None:
        ctx = mp.get_context("spawn")
        self.assign = [list(range(p, loaders, procs)) for p in range(procs)]
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(procs):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(child,), daemon=True)
            p.start()
            self.conns.append(parent)
            self.procs.append(p)

    def run(self, spec: dict[str, Any], on_go: Callable[[], None],
            on_done: Callable[[], None]) -> dict[str, Any]:
        """Set the phase up in every worker, release all loaders at once, collect.

        `on_go` runs once every loader is set up, just before they are released; `on_done`
        as soon as the last one has finished (before the workers close their clients).
        """
        for conn, ids in zip(self.conns, self.assign, strict=True):
            conn.send(("phase", {**spec, "loaders": ids}))
        for conn in self.conns:
            msg = conn.recv()
            if msg[0] != "ready":
                raise RuntimeError(f"loader setup failed:\n{msg[1]}")
        on_go()
        t_go = time.monotonic()
        for conn in self.conns:
            conn.send(("go",))
        out: list[dict[str, Any]] = []
        cpu, failovers = 0.0, 0
        errors = []
        for conn in self.conns:
            msg = conn.recv()
            if msg[0] != "done":
                errors.append(msg[1])
                continue
            out += msg[1]["loaders"]
            cpu += msg[1]["cpu_s"]
            failovers += msg[1]["client_failovers"]
        on_done()
        if errors:
            raise RuntimeError("loader process failed:\n" + "\n".join(errors))
        return {"t_go": t_go, "loaders": sorted(out, key=lambda r: r["loader"]), "cpu_s": cpu,
                "client_failovers": failovers}

    def stop(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("quit",))
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)


# ---------------------------------------------------------------- the parent: servers and phases

NODE_COUNTERS = ("blockcache_origin_bytes_total", "blockcache_origin_requests_total",
                 "blockcache_served_bytes_total", "blockcache_peer_bytes_total",
                 "blockcache_peer_reads_total", "blockcache_peer_errors_total",
                 "blockcache_block_hits_total", "blockcache_block_misses_total",
                 "blockcache_singleflight_joins_total", "blockcache_fills_total",
                 "blockcache_fill_seconds_sum", "blockcache_fill_seconds_count",
                 "blockcache_requests_total", "blockcache_origin_errors_total",
                 "blockcache_evictions_total", "blockcache_handoffs_total")
NODE_GAUGES = ("blockcache_store_blocks", "blockcache_store_bytes")


def node_snapshot(node: Any) -> dict[str, float]:
    """Return {name or name{labels}: value} of the counters and gauges we track."""
    m = h.parse_metrics(node.get("/metrics", timeout_s=10)[2].decode())
    out: dict[str, float] = {}
    for (name, labels), v in m.items():
        if name in NODE_COUNTERS or name in NODE_GAUGES:
            out[name] = out.get(name, 0.0) + v
            if labels:
                lab = ",".join(f"{k}={val}" for k, val in sorted(labels))
                out[f"{name}{{{lab}}}"] = v
    return out


def wait_quiet(max_wait_s: float, window_s: float = 0.5, limit: float = 0.1) -> float:
    """Wait (up to `max_wait_s`) for a `window_s` in which other processes used < `limit` CPUs.

    Return the seconds waited. On a shared machine other sessions' test suites come and go.
    """
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_wait_s:
        foreign = h.ForeignLoad().start()
        time.sleep(window_s)
        if foreign.stop() < limit * window_s:
            break
    return time.monotonic() - t0


def settle_stored(nodes: list[Any], timeout_s: float = 5.0) -> None:
    """Wait until the nodes' stored-block counts stop changing (write-behind after a fill)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        now = [n.metric("blockcache_store_blocks") for n in nodes]
        if now == last:
            return
        last = now
        time.sleep(0.2)


def diff(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b.get(k, 0.0) - (0.0 if k.split("{")[0] in NODE_GAUGES else a.get(k, 0.0))
            for k in sorted(set(a) | set(b))}


def status_counts(deltas: list[dict[str, float]]) -> dict[str, float]:
    """Return requests served by the nodes in a phase, by "api status" (summed over nodes)."""
    out: dict[str, float] = {}
    for x in deltas:
        for k, v in x.items():
            if k.startswith("blockcache_requests_total{") and v:
                labels = dict(kv.split("=", 1) for kv in k[k.index("{") + 1:-1].split(","))
                key = f"{labels.get('api')} {labels.get('status')}"
                out[key] = out.get(key, 0.0) + v
    return dict(sorted(out.items()))


def balance(values: list[float]) -> float | None:
    mean = sum(values) / len(values) if values else 0.0
    return max(values) / mean if mean else None


@dataclass
class Ctx:
    args: argparse.Namespace
    s3: Any
    etcd: Any
    group: Any
    loaders: Loaders
    files: dict[str, list[File]]  # copy name -> files
    link: Any = None  # a loadtest.link.Link in front of SeaweedFS, or None

    @property
    def origin_url(self) -> str:
        """Return where loaders and nodes reach the origin (the link, if there is one)."""
        return self.link.url if self.link is not None else str(self.s3.endpoint_url)


def run_phase_parent(c: Ctx, name: str, mode: str, copy: str) -> dict[str, Any]:
    a, nodes = c.args, c.group.nodes
    files = c.files[copy]
    spec = {"mode": mode, "inflight": a.inflight, "verify": a.verify,
            "files": [{"key": f.key, "size": f.size, "crcs": f.crcs, "blocks": f.blocks}
                      for f in files],
            "endpoint": c.origin_url, "seeds": c.group.seeds,
            "node_urls": [n.url for n in nodes]}
    total = sum(f.size for f in files)
    waited = wait_quiet(a.max_wait)
    log(f"{name}: {a.loaders} loaders x {total / MiB:.0f} MiB ({mode}, {a.inflight} in flight)")
    m0 = [node_snapshot(n) for n in nodes]
    w: dict[str, Any] = {}

    def cpu_now() -> dict[str, Any]:
        return {"nodes": [h.cpu_seconds(n.proc.pid) for n in nodes],
                "seaweedfs": h.group_cpu_seconds(c.s3.proc.pid),
                "etcd": h.group_cpu_seconds(c.etcd.proc.pid),
                "link": c.link.cpu_seconds() if c.link is not None else 0.0,
                "machine": h.machine_busy_seconds(), "t": time.monotonic()}

    def on_go() -> None:
        w["cpu0"] = cpu_now()
        w["foreign"] = h.ForeignLoad().start()

    def on_done() -> None:
        w["other"] = w["foreign"].stop()
        w["cpu1"] = cpu_now()

    r = c.loaders.run(spec, on_go, on_done)
    c0, c1 = w["cpu0"], w["cpu1"]
    other, foreign = w["other"], w["foreign"]
    mach = c1["machine"] - c0["machine"]
    cpu_n = [y - x for x, y in zip(c0["nodes"], c1["nodes"], strict=True)]
    cpu_s = c1["seaweedfs"] - c0["seaweedfs"]
    cpu_e = c1["etcd"] - c0["etcd"]
    window_s = c1["t"] - c0["t"]
    if mode != "direct":  # blocks are written behind the responses: let the writes land
        settle_stored(nodes)
    m1 = [node_snapshot(n) for n in nodes]
    d = [diff(x, y) for x, y in zip(m0, m1, strict=True)]
    lds = r["loaders"]
    t_go = r["t_go"]
    ends = [x["t_end"] - t_go for x in lds]
    makespan = max(ends)
    got = sum(x["bytes"] for x in lds)
    errors = [x["error"] for x in lds if x["error"]]
    bad = sum(x["bad_blocks"] for x in lds)
    short = sum(1 for x in lds if x["bytes"] != total)
    out: dict[str, Any] = {
        "name": name, "mode": mode, "copy": copy, "loaders": a.loaders, "inflight": a.inflight,
        "object_bytes": total, "all_have_it_s": makespan,
        "loader_s": {"min": min(ends), "p50": h.median(ends), "max": makespan},
        "start_spread_ms": (max(x["t_start"] for x in lds) - min(x["t_start"] for x in lds)) * 1e3,
        "aggregate_gbps": got / 1e9 / makespan, "bytes_received": got,
        "bad_blocks": bad, "short_loaders": short, "loader_errors": errors[:5],
        "n_loader_errors": len(errors), "client_failovers": r["client_failovers"],
        "cpu_s": {"nodes": sum(cpu_n), "per_node": cpu_n, "seaweedfs": cpu_s, "etcd": cpu_e,
                  "link": c1["link"] - c0["link"],
                  "loaders": r["cpu_s"], "machine": mach, "machine_util": mach / window_s / h.NCPU,
                  "window_s": window_s},
        "foreign_cpu_s": other, "foreign_top": foreign.top, "waited_for_quiet_s": waited,
        "per_loader": [{k: (v - t_go if k.startswith("t_") else v) for k, v in x.items()}
                       for x in lds],
        "node_metrics_delta": {n.log_path.stem: x for n, x in zip(nodes, d, strict=True)},
    }
    if mode == "direct":
        out["origin_bytes"] = got
        out["origin_gets"] = a.loaders * sum(f.blocks for f in files)
        out["origin_heads"] = a.loaders * len(files)
    else:
        served = [x.get("blockcache_served_bytes_total", 0.0) for x in d]
        stored = [x.get("blockcache_store_blocks", 0.0) for x in d]
        fills = sum(x.get("blockcache_fill_seconds_count", 0.0) for x in d)
        out.update(
            origin_bytes=sum(x.get("blockcache_origin_bytes_total", 0.0) for x in d),
            origin_gets=sum(x.get("blockcache_origin_requests_total{op=get}", 0.0) for x in d),
            origin_heads=sum(x.get("blockcache_origin_requests_total{op=head}", 0.0) for x in d),
            expected_origin_gets=sum(f.blocks for f in files) if name.endswith("cold") else 0,
            fill_mean_ms=(sum(x.get("blockcache_fill_seconds_sum", 0.0) for x in d) / fills * 1e3
                          if fills else None),
            singleflight_joins=sum(x.get("blockcache_singleflight_joins_total", 0.0) for x in d),
            peer_bytes=sum(x.get("blockcache_peer_bytes_total", 0.0) for x in d),
            peer_errors=sum(x.get("blockcache_peer_errors_total", 0.0) for x in d),
            node_requests=status_counts(d),
            handoffs={r: sum(x.get(f"blockcache_handoffs_total{{result={r}}}", 0.0) for x in d)
                      for r in ("hit", "miss")},
            balance={"served_bytes_per_node": served, "served_max_over_mean": balance(served),
                     "store_blocks_per_node": stored, "stored_max_over_mean": balance(stored),
                     "cpu_max_over_mean": balance(cpu_n)})
    if other > 0.1 * makespan:
        out["warning"] = f"other processes used {other:.1f} CPU-s during {makespan:.1f} s"
    log(f"{name}: all {a.loaders} have it after {makespan:.2f} s "
        f"({got / 1e9 / makespan:.2f} GB/s); bad blocks {bad}, errors {len(errors)}")
    return out


def scan_logs(group: Any) -> dict[str, Any]:
    """Return counts of WARNING/ERROR/Traceback lines per node log, and the first few."""
    out: dict[str, Any] = {}
    for n in group.nodes:
        try:
            lines = n.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            continue
        bad = [ln for ln in lines if any(w in ln for w in ("WARNING", "ERROR", "CRITICAL",
                                                           "Traceback", "Exception"))]
        out[n.log_path.name] = {"lines": len(lines), "warning_or_error_lines": len(bad),
                                "first": bad[:10], "last": bad[-5:] if len(bad) > 10 else []}
    return out


# ---------------------------------------------------------------- table

def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(phases: list[dict[str, Any]], ref_s: float | None) -> None:
    print(f"\n{'phase':<12} {'all have it':>11} {'agg GB/s':>8} {'vs direct':>9} "
          f"{'loader min/p50/max s':>21} {'origin GiB':>10} {'orig GETs':>9} "
          f"{'CPU-s nodes/weed/ldr/mach':>26} {'served max/mean':>15} {'stored max/mean':>15}")
    for p in phases:
        ls = p["loader_s"]
        cpu = p["cpu_s"]
        bal = p.get("balance", {})
        print(f"{p['name']:<12} {p['all_have_it_s']:>10.2f}s {p['aggregate_gbps']:>8.2f} "
              f"{fmt(ref_s / p['all_have_it_s'] if ref_s else None, '.2f'):>8}x "
              f"{ls['min']:>6.1f}/{ls['p50']:>5.1f}/{ls['max']:>5.1f}     "
              f"{p['origin_bytes'] / GiB:>10.2f} {p['origin_gets']:>9.0f} "
              f"{cpu['nodes']:>6.1f}/{cpu['seaweedfs']:>5.1f}/{cpu['loaders']:>5.1f}/"
              f"{cpu['machine']:>5.1f}     "
              f"{fmt(bal.get('served_max_over_mean'), '.2f'):>15} "
              f"{fmt(bal.get('stored_max_over_mean'), '.2f'):>15}")
    for p in phases:
        notes = []
        if p.get("expected_origin_gets"):
            notes.append(f"origin GETs {p['origin_gets']:.0f} (expected {p['expected_origin_gets']}"
                         f"), HEADs {p['origin_heads']:.0f}, fill mean "
                         f"{fmt(p.get('fill_mean_ms'), '.0f')} ms, "
                         f"{p['singleflight_joins']:.0f} single-flight joins, handoff probes "
                         f"hit/miss {p['handoffs']['hit']:.0f}/{p['handoffs']['miss']:.0f}")
        if "balance" in p:
            mib = [f"{x / MiB:.0f}" for x in p["balance"]["served_bytes_per_node"]]
            notes.append(f"served MiB per node {'/'.join(mib)}; blocks on disk "
                         f"{'/'.join(f'{x:.0f}' for x in p['balance']['store_blocks_per_node'])}"
                         f"; peer MiB {p['peer_bytes'] / MiB:.0f}; node CPU-s "
                         f"{'/'.join(f'{x:.1f}' for x in p['cpu_s']['per_node'])}")
        if p["bad_blocks"] or p["n_loader_errors"] or p["short_loaders"]:
            notes.append(f"BAD: {p['bad_blocks']} bad blocks, {p['short_loaders']} short loaders,"
                         f" errors {p['loader_errors'][:2]}")
        if p.get("client_failovers"):
            notes.append(f"client failovers {p['client_failovers']}")
        if p.get("node_requests"):
            notes.append("node requests " + ", ".join(f"{k} {v:.0f}"
                                                      for k, v in p["node_requests"].items()))
        if p.get("warning"):
            notes.append("WARNING " + p["warning"])
        if notes:
            print(f"  {p['name']}: " + "; ".join(notes))


def reference(phases: list[dict[str, Any]]) -> float | None:
    """Return the mean time of the direct runs not disturbed by foreign load (else of all)."""
    directs = [p for p in phases if p["mode"] == "direct"]
    quiet = [p for p in directs if not p.get("warning")] or directs
    return sum(p["all_have_it_s"] for p in quiet) / len(quiet) if quiet else None


def report(out: dict[str, Any], dest: Path) -> None:
    """Print the table and notes of a result (fresh, or loaded with --table)."""
    phases, ref = out.get("phases", []), out.get("reference_direct_s")
    if phases:
        print_table(phases, ref)
    for name, lg in (out.get("node_logs") or {}).items():
        if lg["warning_or_error_lines"]:
            print(f"  {name}: {lg['warning_or_error_lines']} warning/error lines, first: "
                  f"{lg['first'][0][:160]}")
    m = out["meta"]
    print(f"\n'vs direct' = direct time / phase time, direct = mean of the undisturbed direct "
          f"runs ({fmt(ref, '.2f')} s); {m['loaders']} loaders x {m['size'] / MiB:.0f} MiB, "
          f"{m['inflight']} in flight; wall {m.get('wall_seconds')} s; {m['cpus']} CPUs; "
          f"JSON: {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")


# ---------------------------------------------------------------- driver

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, help="model file size in MiB (default 1024; quick 256)")
    p.add_argument("--loaders", type=int, help="concurrent loaders (default 16; quick 8)")
    p.add_argument("--inflight", type=int, default=4,
                   help="4 MiB GETs in flight per loader (direct, client concurrency, rr)")
    p.add_argument("--quick", action="store_true", help="256 MiB, 8 loaders, no direct rerun")
    p.add_argument("--procs", type=int, default=max(2, h.NCPU),
                   help="loader worker processes (loaders dealt out round-robin)")
    p.add_argument("--verify", choices=("all", "first"), default="all",
                   help="crc32 every block in every loader (all) or in loader 0 only")
    p.add_argument("--no-rr", dest="rr", action="store_false",
                   help="skip the round-robin plain-HTTP loader variant")
    p.add_argument("--no-direct-again", dest="direct_again", action="store_false",
                   help="do not read straight from SeaweedFS a second time at the end")
    p.add_argument("--max-wait", type=float, default=20.0,
                   help="before each phase, wait up to this many seconds for a quiet machine")
    p.add_argument("--link-gbit", type=float, default=0.0,
                   help="put a thin link (loadtest/link.py) of this many Gbit/s in front of "
                        "SeaweedFS, for the loaders and the nodes alike (0: none)")
    p.add_argument("--link-latency-ms", default="5-20",
                   help="the link's delay before each response, ms (\"10\" or \"5-20\")")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, data)")
    p.add_argument("--table", type=Path, metavar="JSON",
                   help="only print the table of a saved result (loadtest/results/group-*.json)")
    a = p.parse_args()
    if a.table:
        saved = json.loads(a.table.read_text())
        saved["reference_direct_s"] = reference(saved.get("phases", []))
        report(saved, a.table.resolve())
        return 0
    a.size = (a.size or (256 if a.quick else 1024)) * MiB
    a.loaders = a.loaders or (8 if a.quick else 16)
    if a.quick:
        a.direct_again = False
    a.procs = max(1, min(a.procs, a.loaders))

    from tests.cluster import LocalGroup
    from tests.servers import Etcd, SeaweedFS

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="blockcache-group-"))
    out: dict[str, Any] = {"meta": {
        "stamp": stamp, "argv": sys.argv, "quick": a.quick, "size": a.size,
        "loaders": a.loaders, "inflight": a.inflight, "procs": a.procs, "verify": a.verify,
        "nodes": N_NODES, "node_args": ["--capacity", "4GiB"], "block_size": BLOCK,
        "cpus": h.NCPU, "kernel": platform.release(), "python": platform.python_version()}}
    t_start = time.monotonic()
    s3 = SeaweedFS(tmp / "seaweedfs")
    etcd = Etcd(tmp / "etcd")
    group: Any = None
    link: Any = None
    loaders: Loaders | None = None
    phases: list[dict[str, Any]] = []
    failed: BaseException | None = None
    try:
        loaders = Loaders(a.procs, a.loaders)  # spawn early: imports overlap the uploads
        log(f"writing a {a.size / MiB:.0f} MiB random model file")
        src = tmp / "src"
        src.mkdir()
        model_crcs = write_random_file(src / "model.safetensors", a.size)
        small = {name: write_random_file(src / name, size) for name, size in SMALL_FILES}
        log("starting SeaweedFS and etcd")
        s3.start()
        s3.make_bucket(BUCKET)
        etcd.start()
        if a.link_gbit:
            from loadtest.link import Link, parse_latency

            link = Link(s3.endpoint_url, a.link_gbit, parse_latency(a.link_latency_ms)).start()
            out["meta"]["link"] = link.describe()
        copies = ["v1"] + (["v1-rr"] if a.rr else [])
        files: dict[str, list[File]] = {}
        t = time.monotonic()
        for copy in copies:
            fl = []
            for name, size in SMALL_FILES:
                key = f"demo-8b/{copy}/{name}"
                s3.put_file(BUCKET, key, src / name)
                fl.append(File(key, size, small[name]))
            key = f"demo-8b/{copy}/model.safetensors"
            log(f"uploading s3://{BUCKET}/{key}")
            s3.put_file(BUCKET, key, src / "model.safetensors")
            fl.append(File(key, a.size, model_crcs))
            files[copy] = fl
        out["meta"]["upload_s"] = round(time.monotonic() - t, 1)
        out["files"] = {c: [{"key": f.key, "size": f.size, "blocks": f.blocks} for f in fl]
                        for c, fl in files.items()}
        shutil.rmtree(src)
        log(f"starting a group of {N_NODES} cache nodes")
        env = {**s3.env(), "AWS_ENDPOINT_URL": link.url} if link is not None else s3.env()
        group = LocalGroup(tmp / "group", env, etcd.endpoint, N_NODES, "--capacity", "4GiB")
        group.start()
        out["meta"]["node_urls"] = [n.url for n in group.nodes]
        c = Ctx(a, s3, etcd, group, loaders, files, link)
        plan = [("direct", "direct", "v1"), ("group cold", "group", "v1"),
                ("group warm", "group", "v1")]
        if a.rr:
            plan += [("rr cold", "rr", "v1-rr"), ("rr warm", "rr", "v1-rr")]
        if a.direct_again:
            plan.append(("direct 2", "direct", "v1"))
        for name, mode, copy in plan:
            phases.append(run_phase_parent(c, name, mode, copy))
    except BaseException as e:  # noqa: BLE001 - still print and save what was measured
        failed = e
        out["error"] = traceback.format_exc()
    finally:
        if loaders is not None:
            loaders.stop()
        if group is not None:
            out["node_logs"] = scan_logs(group)
            group.stop()
        if link is not None:
            link.stop()
        etcd.stop()
        s3.stop()
        out["meta"]["wall_seconds"] = round(time.monotonic() - t_start, 1)
        if a.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    out["phases"] = phases
    out["reference_direct_s"] = reference(phases)
    for ph in phases:
        ph["speedup_vs_direct"] = (out["reference_direct_s"] / ph["all_have_it_s"]
                                   if out["reference_direct_s"] else None)
    dest = RESULTS_DIR / f"group-{stamp}.json"
    dest.write_text(json.dumps(out, indent=1, default=str))
    report(out, dest)
    return h.exit_code(failed, out.get("error", ""))


if __name__ == "__main__":
    sys.exit(main())

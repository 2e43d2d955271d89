"""Warmup: the coordinator puts a model prefix on a 3-node group vs reading it straight from S3.

    .venv/bin/python loadtest/bench_warmup.py [--quick] [--size MiB] [--parallel 16]
                                              [--batch-blocks 8] [--no-direct-again]

SeaweedFS + etcd + a LocalGroup of 3 cache nodes (`--capacity` big enough for the whole
model on each) + one `cachecoordinator` (tests/coordproc.py settings, plus
`--site-inflight-blocks P --batch-blocks B`), all on 127.0.0.1. A model-like prefix is
uploaded: `--size` MiB of random safetensors shards (~512 MiB each, not block-aligned) plus a
few small JSON files. Phases, one after the other:

  direct         this process lists the prefix and reads every byte straight from SeaweedFS:
                 aiobotocore ranged GETs (If-Match) of 4 MiB blocks, P in flight in total,
                 bytes discarded, lengths checked (uvloop, like the nodes)
  warmup cold    POST /v1/jobs for the prefix onto the group's site (fresh caches), polled
                 until `complete`: every block filled once from the origin by its owner
  warmup again   the same POST again: every block is present, nothing read from the origin
                 (the "check" path: the coordinator lists, the owners look blocks up)
  direct 2       straight from SeaweedFS again (unless --quick / --no-direct-again)

Per phase: wall time (warmups: from just before the POST to the coordinator's `finished`
timestamp, same clock; the polled time is kept too), throughput, origin GETs/HEADs and bytes
(direct: counted here; warmups: node metrics), job progress (origin_fills, present, retries),
mean origin GETs in flight (Little's law: summed GET latency / wall; node fills: the delta of
`blockcache_fill_seconds_sum`), CPU seconds (utime+stime from /proc) of the coordinator, the
nodes, SeaweedFS and etcd (their process groups), this process and the whole machine, and the
CPU of other workloads (ForeignLoad). Also measured: the coordinator's idle CPU rate (leader
lease, 0.5 s reconcile passes) and the coordinator CPU one job poll costs, so its share of the
phase can be told apart. Prints a table and writes loadtest/results/warmup-<UTC stamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest import harness as h
from loadtest.bench_group import log, scan_logs, status_counts, wait_quiet, write_random_file

MiB, GiB = h.MiB, h.GiB
BLOCK = 4 * MiB
BUCKET = "models"
PREFIX = "org/demo-8b/v1/"
RESULTS_DIR = ROOT / "loadtest" / "results"
N_NODES = 3
SHARD_TARGET = 512 * MiB
SMALL_FILES = (("config.json", 2_000), ("generation_config.json", 300),
               ("model.safetensors.index.json", 27_000), ("tokenizer.json", 3 * MiB + 12_345))
POLL_S = 0.2  # job polling interval (what tests/coordproc.py's wait_job uses)
FINISHED = ("complete", "failed", "cancelled")
NODE_GAUGES = ("blockcache_store_blocks", "blockcache_store_bytes",
               "blockcache_fills_in_flight")


@dataclass
class Bench:
    """Everything the phases need: arguments, servers, the model's files."""

    args: argparse.Namespace
    s3: Any
    etcd: Any
    group: Any
    coord: Any
    files: list[tuple[str, int]]  # (key, size)
    link: Any = None  # a loadtest.link.Link in front of SeaweedFS, or None

    @property
    def origin_url(self) -> str:
        """Return where direct reads and the nodes reach the origin (the link, if any)."""
        return self.link.url if self.link is not None else str(self.s3.endpoint_url)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    @property
    def total_blocks(self) -> int:
        return sum(math.ceil(size / BLOCK) for _, size in self.files)


def design_inflight(parallel: int, batch: int, node_concurrency: int = 2) -> int:
    """Return the most origin GETs a warmup can have in flight as the coordinator is written:
    max(1, P // B) batches at once per site (coordinator/warmup.py `_site_slots`), at most
    `--node-concurrency` per node, each filled WARM_CONCURRENCY blocks at a time on the node."""
    try:
        from cachenode.warm import WARM_CONCURRENCY as per_request
    except ImportError:
        per_request = batch
    batches = min(max(1, parallel // batch), N_NODES * node_concurrency)
    return batches * min(batch, per_request)


def model_files(size: int) -> list[tuple[str, int]]:
    """Return (name, bytes) of the model: a few ~512 MiB shards summing to `size`, small files."""
    n = max(2, round(size / SHARD_TARGET))
    base = size // n
    shards = [base - 4099 * (i + 1) for i in range(n - 1)]  # not multiples of the block size
    shards.append(size - sum(shards))
    names = [(f"model-{i + 1:05d}-of-{n:05d}.safetensors", s) for i, s in enumerate(shards)]
    return list(SMALL_FILES) + names


# ---------------------------------------------------------------- CPU and metrics snapshots

def cpu_now(b: Bench) -> dict[str, Any]:
    """Return CPU seconds so far of every process we measure, the machine, and the time."""
    return {"coordinator": h.cpu_seconds(b.coord.proc.pid),
            "nodes": [h.cpu_seconds(n.proc.pid) for n in b.group.nodes],
            "nodes_user_sys": [h.cpu_split(n.proc.pid) for n in b.group.nodes],
            "seaweedfs": h.group_cpu_seconds(b.s3.proc.pid),
            "etcd": h.group_cpu_seconds(b.etcd.proc.pid),
            "link": b.link.cpu_seconds() if b.link is not None else 0.0,
            "bench": h.self_cpu_seconds(), "machine": h.machine_busy_seconds(),
            "t": time.monotonic()}


def cpu_delta(c0: dict[str, Any], c1: dict[str, Any]) -> dict[str, Any]:
    per_node = [y - x for x, y in zip(c0["nodes"], c1["nodes"], strict=True)]
    window = c1["t"] - c0["t"]
    mach = c1["machine"] - c0["machine"]
    out = {k: c1[k] - c0[k] for k in ("coordinator", "seaweedfs", "etcd", "link", "bench",
                                         "machine")}
    us = [(y[0] - x[0], y[1] - x[1])
          for x, y in zip(c0["nodes_user_sys"], c1["nodes_user_sys"], strict=True)]
    out.update(nodes=sum(per_node), per_node=per_node, window_s=window,
               nodes_user=sum(u for u, _ in us), nodes_sys=sum(s for _, s in us),
               machine_util=mach / window / h.NCPU if window else None)
    return out


def node_snapshot(node: Any) -> dict[str, float]:
    """Return {name or name{labels}: value} of every blockcache_* sample (no histogram buckets)."""
    m = h.parse_metrics(node.get("/metrics", timeout_s=10)[2].decode())
    out: dict[str, float] = {}
    for (name, labels), v in m.items():
        if not name.startswith("blockcache_") or name.endswith("_bucket"):
            continue
        out[name] = out.get(name, 0.0) + v
        if labels:
            out[name + "{" + ",".join(f"{k}={x}" for k, x in sorted(labels)) + "}"] = v
    return out


def metrics_delta(m0: list[dict[str, float]], m1: list[dict[str, float]]) -> list[dict[str, float]]:
    """Per node: counters as deltas, gauges as their value at the end (zero deltas left out)."""
    out = []
    for a, b in zip(m0, m1, strict=True):
        d = {k: b.get(k, 0.0) - (0.0 if k.split("{")[0] in NODE_GAUGES else a.get(k, 0.0))
             for k in sorted(set(a) | set(b))}
        out.append({k: v for k, v in d.items() if v})
    return out


def total(d: list[dict[str, float]], key: str) -> float:
    return sum(x.get(key, 0.0) for x in d)


# ---------------------------------------------------------------- direct

async def read_direct(b: Bench, marks: dict[str, Any]) -> dict[str, Any]:
    """List the prefix and read every block straight from SeaweedFS, P GETs in flight."""
    from tests.servers import aio_s3_client

    p = b.args.parallel
    async with aio_s3_client(b.origin_url, max_pool_connections=2 * p, read_timeout=120,
                             retries={"max_attempts": 1}) as s3:
        await s3.head_bucket(Bucket=BUCKET)  # the connection pool is warm, as the nodes' is
        marks["cpu0"], marks["foreign"] = cpu_now(b), h.ForeignLoad().start()
        t0 = time.monotonic()
        listing = await s3.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX, MaxKeys=1000)
        objs = [(o["Key"], int(o["Size"]), o["ETag"]) for o in listing.get("Contents", [])]
        blocks = iter([(k, size, etag, i) for k, size, etag in objs
                       for i in range(math.ceil(size / BLOCK))])
        lat: list[float] = []
        acc = {"bytes": 0, "bad": 0, "gets": 0}

        async def worker() -> None:
            for key, size, etag, i in blocks:  # one shared iterator: P blocks in flight
                start = i * BLOCK
                length = min(BLOCK, size - start)
                t = time.monotonic()
                r = await s3.get_object(Bucket=BUCKET, Key=key, IfMatch=etag,
                                        Range=f"bytes={start}-{start + length - 1}")
                async with r["Body"] as body:
                    n = len(await body.read())
                lat.append(time.monotonic() - t)
                acc["gets"] += 1
                acc["bytes"] += n
                acc["bad"] += n != length

        await asyncio.gather(*(worker() for _ in range(p)))
        wall = time.monotonic() - t0
        marks["other"] = marks["foreign"].stop()
        marks["cpu1"] = cpu_now(b)
    return {"wall_s": wall, "objects": len(objs), "bytes": acc["bytes"], "gets": acc["gets"],
            "bad_blocks": acc["bad"], "get_ms": {"p50": h.percentile(lat, 0.5) * 1e3,
                                                 "p99": h.percentile(lat, 0.99) * 1e3,
                                                 "max": max(lat) * 1e3},
            "gets_in_flight_mean": sum(lat) / wall}


def run_direct(b: Bench, name: str) -> dict[str, Any]:
    try:
        import uvloop
        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    waited = wait_quiet(b.args.max_wait)
    log(f"{name}: {b.total_bytes / MiB:.0f} MiB straight from SeaweedFS, "
        f"{b.args.parallel} GETs in flight")
    marks: dict[str, Any] = {}
    r = run(read_direct(b, marks))
    if r["bytes"] != b.total_bytes or r["bad_blocks"]:
        raise RuntimeError(f"{name}: read {r['bytes']} of {b.total_bytes} bytes, "
                           f"{r['bad_blocks']} short blocks")
    out = {"name": name, "mode": "direct", **r, "gbps": r["bytes"] / 1e9 / r["wall_s"],
           "origin_gets": r["gets"], "origin_heads": 0, "origin_lists": 1,
           "origin_bytes": r["bytes"], "cpu_s": cpu_delta(marks["cpu0"], marks["cpu1"]),
           "foreign_cpu_s": marks["other"], "foreign_top": marks["foreign"].top,
           "waited_for_quiet_s": waited}
    if marks["other"] > max(0.1 * r["wall_s"], 0.1):
        out["warning"] = f"other processes used {marks['other']:.1f} CPU-s in {r['wall_s']:.1f} s"
    log(f"{name}: {r['wall_s']:.2f} s, {out['gbps']:.2f} GB/s")
    return out


# ---------------------------------------------------------------- warmup

def run_warm(b: Bench, name: str, expect_fills: bool) -> dict[str, Any]:
    """POST a warmup job for the prefix, poll it until it ends; measure around it."""
    a, coord, nodes = b.args, b.coord, b.group.nodes
    waited = wait_quiet(a.max_wait)
    log(f"{name}: POST /v1/jobs s3://{BUCKET}/{PREFIX} -> site {b.group.site}")
    m0 = [node_snapshot(n) for n in nodes]
    c0, foreign = cpu_now(b), h.ForeignLoad().start()
    t_post = time.time()
    t0 = time.monotonic()
    status, body = coord.call("POST", "/v1/jobs", {"prefix": f"s3://{BUCKET}/{PREFIX}",
                                                   "sites": [b.group.site]})
    if status != 201:
        raise RuntimeError(f"{name}: POST /v1/jobs answered {status}: {body}")
    job_id = body["job"]["id"]
    polls, samples = 0, []
    while True:
        job = coord.job(job_id)
        polls += 1
        pr = job["progress"]
        samples.append([round(time.monotonic() - t0, 3), pr.get("bytes_done", 0),
                        pr.get("origin_fills", 0), pr.get("present", 0)])
        if job["state"] in FINISHED:
            break
        if time.monotonic() - t0 > a.job_timeout:
            raise RuntimeError(f"{name}: job {job_id} still {job['state']} after "
                               f"{a.job_timeout:g} s: {pr}")
        time.sleep(POLL_S)
    polled = time.monotonic() - t0
    other = foreign.stop()
    c1 = cpu_now(b)
    m1 = [node_snapshot(n) for n in nodes]
    d = metrics_delta(m0, m1)
    pr = job["progress"]
    wall = (job["finished"] - t_post) if job.get("finished") else polled
    fills_s = total(d, "blockcache_fill_seconds_sum")
    fills = total(d, "blockcache_fill_seconds_count")
    gets = total(d, "blockcache_origin_requests_total{op=get}")
    out: dict[str, Any] = {
        "name": name, "mode": "warmup", "job_id": job_id, "state": job["state"],
        "error": job.get("error"), "failed_objects": job.get("failed_objects"),
        "wall_s": wall, "polled_s": polled, "polls": polls,
        "max_poll_gap_s": max((y[0] - x[0] for x, y in zip(samples, samples[1:])), default=0.0),
        "queued_s": (job["started"] - job["created"]) if job.get("started") else None,
        "coordinator_run_s": (job["finished"] - job["started"])
        if job.get("finished") and job.get("started") else None,
        "bytes": pr["bytes_done"], "bytes_total": pr["bytes_total"],
        "gbps": pr["bytes_done"] / 1e9 / wall, "objects": pr["objects"],
        "blocks_total": pr["blocks_total"], "blocks_done": pr["blocks_done"],
        "blocks_failed": pr["blocks_failed"], "origin_fills": pr["origin_fills"],
        "present": pr["present"], "retries": pr["retries"], "job": job,
        "origin_gets": gets, "origin_heads": total(d, "blockcache_origin_requests_total{op=head}"),
        "origin_bytes": total(d, "blockcache_origin_bytes_total"),
        "origin_gets_per_block": gets / pr["blocks_total"] if pr["blocks_total"] else None,
        "fill_mean_ms": fills_s / fills * 1e3 if fills else None,
        "gets_in_flight_mean": fills_s / wall if wall else None,
        "warm_blocks": {r: total(d, f"blockcache_warm_blocks_total{{result={r}}}")
                        for r in ("filled", "present", "failed")},
        "node_requests": status_counts(d),
        "handoffs": {r: total(d, f"blockcache_handoffs_total{{result={r}}}")
                     for r in ("hit", "miss")},
        "store_blocks_per_node": [x.get("blockcache_store_blocks", 0.0) for x in d],
        "cpu_s": cpu_delta(c0, c1), "foreign_cpu_s": other, "foreign_top": foreign.top,
        "waited_for_quiet_s": waited, "progress_samples": samples,
        "node_metrics_delta": {n.log_path.stem: x for n, x in zip(nodes, d, strict=True)},
    }
    warn = []
    if other > max(0.1 * wall, 0.1):
        warn.append(f"other processes used {other:.1f} CPU-s in {wall:.1f} s")
    if job.get("runs", 1) != 1:
        warn.append(f"the job ran {job['runs']} times: the coordinator lost and regained "
                    "leadership mid-job")
    if job["state"] != "complete":
        warn.append(f"job ended {job['state']}: {job.get('error')}")
    elif expect_fills and gets != pr["blocks_total"]:
        warn.append(f"{gets:.0f} origin GETs for {pr['blocks_total']} blocks")
    elif not expect_fills and (pr["origin_fills"] or gets):
        warn.append(f"rerun read from origin: {pr['origin_fills']} fills, {gets:.0f} GETs")
    if warn:
        out["warning"] = "; ".join(warn)
    log(f"{name}: {job['state']} after {wall:.2f} s ({out['gbps']:.2f} GB/s); "
        f"origin fills {pr['origin_fills']}, present {pr['present']}, GETs {gets:.0f}")
    return out


def coordinator_idle(b: Bench, seconds: float) -> float:
    """Return the coordinator's CPU seconds per second while no job runs."""
    c0, t0 = h.cpu_seconds(b.coord.proc.pid), time.monotonic()
    time.sleep(seconds)
    return (h.cpu_seconds(b.coord.proc.pid) - c0) / (time.monotonic() - t0)


def poll_cost(b: Bench, job_id: str, n: int = 50) -> float:
    """Return the coordinator CPU seconds one GET /v1/jobs/<id> costs (idle rate removed)."""
    idle = coordinator_idle(b, 1.0)
    c0, t0 = h.cpu_seconds(b.coord.proc.pid), time.monotonic()
    for _ in range(n):
        b.coord.job(job_id)
    used = h.cpu_seconds(b.coord.proc.pid) - c0 - idle * (time.monotonic() - t0)
    return max(0.0, used) / n


def etcd_log(etcd: Any) -> dict[str, Any]:
    """Return counts of etcd's slowness warnings (slow fsync, slow applies) and the first few."""
    try:
        lines = etcd.log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return {}
    marks = ("slow fdatasync", "took too long", "leader failed to send out heartbeat")
    slow = [ln for ln in lines if any(m in ln for m in marks)]
    return {"lines": len(lines), "slow_lines": len(slow),
            "by_kind": {m: sum(m in ln for ln in slow) for m in marks},
            "first": [ln[:400] for ln in slow[:5]]}


def coordinator_log(coord: Any) -> dict[str, Any]:
    try:
        lines = coord.log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return {}
    bad = [ln for ln in lines if any(w in ln for w in ("WARNING", "ERROR", "Traceback"))]
    return {"lines": len(lines), "warning_or_error_lines": len(bad), "first": bad[:10],
            "job_lines": [ln for ln in lines if " job " in ln][-6:]}


# ---------------------------------------------------------------- report

def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def summarize(out: dict[str, Any]) -> dict[str, Any]:
    """Return the headline figures: ratio, coordinator overhead, GETs per block, rerun."""
    phases = out["phases"]
    directs = [p for p in phases if p["mode"] == "direct"]
    quiet = [p for p in directs if not p.get("warning")] or directs
    ref = sum(p["gbps"] for p in quiet) / len(quiet) if quiet else None
    cold = next((p for p in phases if p["name"] == "warmup cold"), None)
    again = next((p for p in phases if p["name"] == "warmup again"), None)
    s: dict[str, Any] = {"direct_gbps": ref, "direct_runs_used": [p["name"] for p in quiet]}
    for p in phases:  # machine CPU per GiB moved, other workloads' CPU taken out
        if p["bytes"]:
            p["machine_cpu_s_per_gib_ours"] = ((p["cpu_s"]["machine"] - p["foreign_cpu_s"])
                                               / (p["bytes"] / GiB))
    d_cpu = [p["machine_cpu_s_per_gib_ours"] for p in directs if "machine_cpu_s_per_gib_ours" in p]
    s["direct_machine_cpu_s_per_gib"] = sum(d_cpu) / len(d_cpu) if d_cpu else None
    if cold:
        cpu = cold["cpu_s"]
        gib = cold["bytes"] / GiB
        idle = out.get("coordinator_idle_cpu_per_s") or 0.0
        per_poll = out.get("coordinator_cpu_per_poll_s") or 0.0
        ours = sum(cpu[k] for k in ("coordinator", "nodes", "seaweedfs", "etcd", "bench"))
        s.update(
            ratio_cold_vs_direct=cold["gbps"] / ref if ref else None,
            cold_wall_s=cold["wall_s"], cold_gbps=cold["gbps"],
            coordinator_cpu_s=cpu["coordinator"],
            coordinator_cpu_s_per_gib=cpu["coordinator"] / gib if gib else None,
            coordinator_share_of_machine=cpu["coordinator"] / cpu["machine"]
            if cpu["machine"] else None,
            coordinator_share_of_ours=cpu["coordinator"] / ours if ours else None,
            coordinator_cpu_s_idle_part=idle * cpu["window_s"],
            coordinator_cpu_s_polling_part=per_poll * cold["polls"],
            nodes_cpu_s_per_gib=cpu["nodes"] / gib if gib else None,
            seaweedfs_cpu_s_per_gib=cpu["seaweedfs"] / gib if gib else None,
            origin_gets_per_block=cold["origin_gets_per_block"],
            origin_fills=cold["origin_fills"], blocks=cold["blocks_total"],
            gets_in_flight_cold=cold["gets_in_flight_mean"],
            cold_machine_cpu_s_per_gib=cold.get("machine_cpu_s_per_gib_ours"),
            cpu_per_gib_direct_over_cold=s["direct_machine_cpu_s_per_gib"]
            / cold["machine_cpu_s_per_gib_ours"]
            if s["direct_machine_cpu_s_per_gib"] and cold.get("machine_cpu_s_per_gib_ours")
            else None)
        for d in directs:
            d["gbps_vs_cold"] = cold["gbps"] / d["gbps"]
    if again:
        s.update(rerun_wall_s=again["wall_s"], rerun_gbps=again["gbps"],
                 rerun_origin_gets=again["origin_gets"], rerun_present=again["present"],
                 rerun_coordinator_cpu_s=again["cpu_s"]["coordinator"],
                 rerun_nodes_cpu_s=again["cpu_s"]["nodes"])
    return s


def print_report(out: dict[str, Any], dest: Path) -> None:
    phases, s, m = out.get("phases", []), out.get("summary", {}), out["meta"]
    ref = s.get("direct_gbps")
    print(f"\n{'phase':<13} {'wall s':>7} {'GB/s':>6} {'vs direct':>9} {'origin GETs':>11} "
          f"{'GETs/blk':>8} {'in flight':>9} {'CPU-s coord/nodes/weed/etcd/bench/machine':>43}"
          f" {'busy':>5} {'other':>5}")
    for p in phases:
        cpu = p["cpu_s"]
        blocks = p.get("blocks_total") or out["meta"]["blocks"]
        print(f"{p['name']:<13} {p['wall_s']:>7.2f} {p['gbps']:>6.2f} "
              f"{fmt(p['gbps'] / ref if ref else None, '.2f'):>8}x {p['origin_gets']:>11.0f} "
              f"{p['origin_gets'] / blocks:>8.2f} {fmt(p.get('gets_in_flight_mean'), '.1f'):>9} "
              f"{cpu['coordinator']:>9.2f}/{cpu['nodes']:>5.1f}/{cpu['seaweedfs']:>5.1f}/"
              f"{cpu['etcd']:>4.2f}/{cpu['bench']:>5.1f}/{cpu['machine']:>5.1f}      "
              f"{fmt(cpu['machine_util'] * 100 if cpu['machine_util'] else None, '.0f'):>4}% "
              f"{p['foreign_cpu_s']:>5.1f}")
    for p in phases:
        notes = []
        if p["mode"] == "direct":
            g = p["get_ms"]
            notes.append(f"GET ms p50/p99/max {g['p50']:.0f}/{g['p99']:.0f}/{g['max']:.0f}")
        else:
            runs = p["job"].get("runs", 1)
            if runs != 1:
                notes.append(f"job ran {runs} times (leadership changed; origin_fills counts "
                             "the last run only)")
            notes.append(f"job {p['state']}: {p['blocks_done']}/{p['blocks_total']} blocks, "
                         f"origin_fills {p['origin_fills']}, present {p['present']}, retries "
                         f"{p['retries']}; queued {fmt(p.get('queued_s'), '.2f')} s, ran "
                         f"{fmt(p.get('coordinator_run_s'), '.2f')} s, polled "
                         f"{p['polled_s']:.2f} s ({p['polls']} polls, longest gap "
                         f"{p.get('max_poll_gap_s', 0):.2f} s)")
            if p["origin_gets"]:
                notes.append(f"fill mean {fmt(p.get('fill_mean_ms'), '.0f')} ms, HEADs "
                             f"{p['origin_heads']:.0f}, handoff probes hit/miss "
                             f"{p['handoffs']['hit']:.0f}/{p['handoffs']['miss']:.0f}")
            notes.append("node CPU-s " + "/".join(f"{x:.1f}" for x in p["cpu_s"]["per_node"])
                         + f" (user {p['cpu_s']['nodes_user']:.1f} + sys "
                         f"{p['cpu_s']['nodes_sys']:.1f})"
                         + "; blocks stored " + "/".join(f"{x:.0f}"
                                                         for x in p["store_blocks_per_node"]))
        if p.get("warning"):
            notes.append("WARNING " + p["warning"])
        print(f"  {p['name']}: " + "; ".join(notes))
    if s.get("ratio_cold_vs_direct") is not None:
        print(f"\nthroughput warmup cold / direct: {s['ratio_cold_vs_direct']:.2f} "
              f"({s['cold_gbps']:.2f} vs {ref:.2f} GB/s; mean GETs in flight "
              f"{fmt(s['gets_in_flight_cold'], '.1f')}; direct {m['parallel']}, most the "
              f"coordinator + node allow: {m.get('design_max_gets_in_flight')})")
        print(f"coordinator: {s['coordinator_cpu_s']:.2f} CPU-s for "
              f"{m['bytes'] / GiB:.2f} GiB = {s['coordinator_cpu_s_per_gib']:.3f} CPU-s/GiB, "
              f"{fmt((s['coordinator_share_of_machine'] or 0) * 100, '.1f')} % of the machine's busy CPU in the"
              f" phase, {fmt((s['coordinator_share_of_ours'] or 0) * 100, '.1f')} % of the CPU of the "
              f"benchmark's processes (of which idle loop ~{s['coordinator_cpu_s_idle_part']:.2f} s, job "
              f"polling ~{s['coordinator_cpu_s_polling_part']:.2f} s); nodes "
              f"{s['nodes_cpu_s_per_gib']:.2f}, SeaweedFS {s['seaweedfs_cpu_s_per_gib']:.2f} "
              f"CPU-s/GiB")
        print(f"machine CPU-s per GiB (other workloads' CPU taken out): direct "
              f"{fmt(s['direct_machine_cpu_s_per_gib'], '.1f')}, warmup cold "
              f"{fmt(s['cold_machine_cpu_s_per_gib'], '.1f')}: direct/cold "
              f"{fmt(s['cpu_per_gib_direct_over_cold'], '.2f')} (the throughput ratio if both "
              f"phases were CPU-bound and alone on the machine)")
        print(f"origin GETs per block (cold): {fmt(s['origin_gets_per_block'], '.2f')} "
              f"({s['origin_fills']} origin_fills, {s['blocks']} blocks)")
    if "rerun_wall_s" in s:
        print(f"rerun (all present): {s['rerun_wall_s']:.2f} s = {s['rerun_gbps']:.2f} GB/s "
              f"checked, {s['rerun_origin_gets']:.0f} origin GETs, {s['rerun_present']} present;"
              f" coordinator {s['rerun_coordinator_cpu_s']:.2f} CPU-s, nodes "
              f"{s['rerun_nodes_cpu_s']:.2f}")
    for name, lg in (out.get("node_logs") or {}).items():
        if lg.get("warning_or_error_lines"):
            print(f"  {name}: {lg['warning_or_error_lines']} warning/error lines, first: "
                  f"{lg['first'][0][:160]}")
    cl = out.get("coordinator_log") or {}
    if cl.get("warning_or_error_lines"):
        print(f"  coordinator log: {cl['warning_or_error_lines']} warning/error lines, first: "
              f"{cl['first'][0][:160]}")
    el = out.get("etcd_log") or {}
    if el.get("slow_lines"):
        print(f"  etcd log: {el['slow_lines']} slowness warnings {el['by_kind']}")
    print("\n'in flight' = mean origin GETs in flight (summed GET time / wall); 'busy' = machine "
          "CPU busy / (wall x CPUs); 'other' = CPU-s of processes not started by this script; "
          "'vs direct' = throughput / mean direct throughput")
    print(f"{m['objects']} objects, {m['bytes'] / MiB:.0f} MiB, {m['blocks']} blocks of 4 MiB;"
          f" P = {m['parallel']}, coordinator {' '.join(m['coordinator_args'])}; "
          f"{N_NODES} nodes; {m['cpus']} CPUs; wall {m.get('wall_seconds')} s; "
          f"JSON: {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")


# ---------------------------------------------------------------- driver

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, help="MiB of safetensors shards (default 2048; quick 512)")
    p.add_argument("--parallel", type=int, default=16,
                   help="P: direct GETs in flight = the warmup's --site-inflight-blocks")
    p.add_argument("--batch-blocks", type=int, default=8,
                   help="the coordinator's --batch-blocks (blocks per POST /_warm)")
    p.add_argument("--coordinator-arg", action="append", default=[], metavar="ARG",
                   help="extra cachecoordinator argument (repeat; e.g. --coordinator-arg="
                        "--node-concurrency --coordinator-arg=4)")
    p.add_argument("--quick", action="store_true", help="512 MiB, no direct rerun")
    p.add_argument("--no-direct-again", dest="direct_again", action="store_false",
                   help="do not read straight from SeaweedFS a second time at the end")
    p.add_argument("--max-wait", type=float, default=20.0,
                   help="before each phase, wait up to this many seconds for a quiet machine")
    p.add_argument("--job-timeout", type=float, default=300.0,
                   help="give up on a warmup job after this many seconds")
    p.add_argument("--link-gbit", type=float, default=0.0,
                   help="put a thin link (loadtest/link.py) of this many Gbit/s in front of "
                        "SeaweedFS, for direct reads and the nodes alike (0: none)")
    p.add_argument("--link-latency-ms", default="5-20",
                   help="the link's delay before each response, ms (\"10\" or \"5-20\")")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, data)")
    a = p.parse_args()
    size = (a.size or (512 if a.quick else 2048)) * MiB
    if a.quick:
        a.direct_again = False

    from tests.cluster import LocalGroup
    from tests.coordproc import FAST, CoordinatorProcess
    from tests.servers import Etcd, SeaweedFS

    files = model_files(size)
    total_bytes = sum(s for _, s in files)
    capacity = f"{math.ceil(total_bytes / GiB) + 1}GiB"  # each node could hold all of it
    coord_args = ["--site-inflight-blocks", str(a.parallel), "--batch-blocks",
                  str(a.batch_blocks), *a.coordinator_arg]
    ca = a.coordinator_arg
    node_conc = int(ca[ca.index("--node-concurrency") + 1]) if "--node-concurrency" in ca[:-1] \
        else 2
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="blockcache-warmup-"))
    out: dict[str, Any] = {"meta": {
        "stamp": stamp, "argv": sys.argv, "quick": a.quick, "parallel": a.parallel,
        "batch_blocks": a.batch_blocks, "bucket": BUCKET, "prefix": PREFIX,
        "objects": len(files), "bytes": total_bytes,
        "blocks": sum(math.ceil(s / BLOCK) for _, s in files), "block_size": BLOCK,
        "files": [{"key": PREFIX + n, "size": s} for n, s in files], "nodes": N_NODES,
        "node_args": ["--capacity", capacity], "coordinator_args": coord_args,
        "coordinator_fast_args": list(FAST),
        "design_max_gets_in_flight": design_inflight(a.parallel, a.batch_blocks, node_conc), "poll_s": POLL_S, "cpus": h.NCPU,
        "kernel": platform.release(), "python": platform.python_version()}}
    t_start = time.monotonic()
    s3, etcd = SeaweedFS(tmp / "seaweedfs"), Etcd(tmp / "etcd")
    group: Any = None
    coord: Any = None
    link: Any = None
    phases: list[dict[str, Any]] = []
    failed: BaseException | None = None
    try:
        log("starting SeaweedFS and etcd")
        s3.start()
        s3.make_bucket(BUCKET)
        etcd.start()
        src = tmp / "src"
        src.mkdir()
        t = time.monotonic()
        for name, fsize in files:
            log(f"uploading s3://{BUCKET}/{PREFIX}{name} ({fsize / MiB:.1f} MiB)")
            write_random_file(src / name, fsize)
            s3.put_file(BUCKET, PREFIX + name, src / name)
            (src / name).unlink()
        out["meta"]["upload_s"] = round(time.monotonic() - t, 1)
        log(f"starting {N_NODES} cache nodes (--capacity {capacity}) and the coordinator")
        if a.link_gbit:
            from loadtest.link import Link, parse_latency

            link = Link(s3.endpoint_url, a.link_gbit, parse_latency(a.link_latency_ms)).start()
            out["meta"]["link"] = link.describe()
        env = {**s3.env(), "AWS_ENDPOINT_URL": link.url} if link is not None else s3.env()
        group = LocalGroup(tmp / "group", env, etcd.endpoint, N_NODES, "--capacity", capacity)
        group.start()
        coord = CoordinatorProcess(tmp / "coord", s3.env(), etcd.endpoint, group.cluster, "c1",
                                   *coord_args)
        coord.start()
        coord.wait_leader()
        b = Bench(a, s3, etcd, group, coord, [(PREFIX + n, s) for n, s in files], link)
        phases.append(run_direct(b, "direct"))
        wait_quiet(a.max_wait)
        out["coordinator_idle_cpu_per_s"] = coordinator_idle(b, 3.0)
        cold = run_warm(b, "warmup cold", expect_fills=True)
        phases.append(cold)
        phases.append(run_warm(b, "warmup again", expect_fills=False))
        out["coordinator_cpu_per_poll_s"] = poll_cost(b, cold["job_id"])
        if a.direct_again:
            phases.append(run_direct(b, "direct 2"))
        try:
            text = coord.call("GET", "/metrics")[1].decode()
            out["coordinator_metrics"] = {
                n + ("{" + ",".join(f"{k}={v}" for k, v in sorted(ls)) + "}" if ls else ""): v
                for (n, ls), v in h.parse_metrics(text).items()
                if n.startswith("blockcache_coordinator_")}
        except (OSError, ValueError, AttributeError) as e:
            out["coordinator_metrics"] = f"unreadable: {e}"
    except BaseException as e:  # noqa: BLE001 - still print and save what was measured
        failed = e
        out["error"] = traceback.format_exc()
    finally:
        if coord is not None:
            try:
                coord.stop()
            except RuntimeError as e:
                out.setdefault("stop_errors", []).append(str(e))
            out["coordinator_log"] = coordinator_log(coord)
        if group is not None:
            out["node_logs"] = scan_logs(group)
            group.stop()
        if link is not None:
            link.stop()
        etcd.stop()
        out["etcd_log"] = etcd_log(etcd)
        s3.stop()
        out["meta"]["wall_seconds"] = round(time.monotonic() - t_start, 1)
        if a.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    out["phases"] = phases
    out["summary"] = summarize(out)
    dest = RESULTS_DIR / f"warmup-{stamp}.json"
    dest.write_text(json.dumps(out, indent=1, default=str))
    print_report(out, dest)
    return h.exit_code(failed, out.get("error", ""))


if __name__ == "__main__":
    sys.exit(main())

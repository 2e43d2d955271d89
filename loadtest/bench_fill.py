"""The fill path against the link and against direct reads, side by side in one run (issue 13).

    .venv/bin/python loadtest/bench_fill.py [--quick] [--parts abcde] [--size MiB]
                                            [--model-size MiB] [--link-gbit 1,2] [--profile]

SeaweedFS on 127.0.0.1, cache nodes as processes (tests/nodeproc.py, fresh data dir for every
cold run), and for the shaped parts a thin link in front of SeaweedFS (loadtest/link.py: one
token bucket of `--link-gbit` Gbit/s for every body, `--link-latency-ms` before each
response, in its own process so its CPU is reported). Every read here is the *bare reader*: a
process of its own with one aiohttp session reading 4 MiB ranges in order, `inflight` at a
time (or, "1 seq", one GET of the whole object, leaving read-ahead to the node), lengths
checked; straight from SeaweedFS it uses one presigned URL (Range unsigned), through a node
the node's plain URL. Parts:

  (a) unshaped, `--size`: direct 16 in flight, node cold 16, node warm 16 (hit), direct again;
      ratio node cold / mean(direct), node CPU-s per GiB vs the bare reader's (direct runs)
  (b) per link rate, `--size`: one sequential reader through a cold node vs the link rate;
      16 in flight direct through the link vs 16 through a cold node
  (c) rollout: loadtest/bench_group.py, 16 loaders, `--model-size`, shaped at the last link
      rate: direct vs a cold 3-node group (origin bytes / model bytes) vs the group warm
  (d) warmup: loadtest/bench_warmup.py, `--model-size`, shaped and unshaped: warmup onto 3
      nodes vs a direct read of the prefix (16 in flight)
  (e) hit path vs nginx: loadtest/bench_node.py --parts a

Prints a table of every figure beside its target and writes loadtest/results/fill-<stamp>.json
(with the JSON of the sub-benchmarks). `--profile` runs py-spy on the node during (a)'s cold
read and lists the hottest frames. Everything it starts it stops.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest import harness as h

MiB, GiB = h.MiB, h.GiB
BLOCK = 4 * MiB
BUCKET = "fill"
RESULTS_DIR = ROOT / "loadtest" / "results"
NODE_ARGS = ("--capacity", "4GiB")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- the bare reader (own process)

async def read(url: str, size: int, inflight: int) -> dict[str, Any]:
    """Read `url` whole: 4 MiB ranges `inflight` at a time in order, or (0) one GET."""
    import aiohttp

    from client.client import windowed

    conn = aiohttp.TCPConnector(limit=max(1, inflight) + 1)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        first: list[float] = []
        got = 0
        if inflight == 0:
            async with session.get(url) as resp:
                assert resp.status == 200, resp.status
                async for chunk in resp.content.iter_any():
                    first = first or [time.monotonic() - t0]
                    got += len(chunk)
        else:
            async def get(i: int) -> int:
                lo, hi = i * BLOCK, min(size, (i + 1) * BLOCK) - 1
                async with session.get(url, headers={"Range": f"bytes={lo}-{hi}"}) as resp:
                    assert resp.status == 206, resp.status
                    body = await resp.read()
                    first.append(time.monotonic() - t0)
                    assert len(body) == hi - lo + 1, (i, len(body))
                    return len(body)

            async for n in windowed(get, -(-size // BLOCK), inflight):
                got += n
        t1, r1 = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
    assert got == size, (got, size)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"seconds": t1 - t0, "bytes": got, "cpu_s": cpu, "first_ms": min(first) * 1e3}


def reader_main(url: str, size: int, inflight: int) -> int:
    import uvloop

    print(json.dumps(uvloop.run(read(url, size, inflight))), flush=True)
    return 0


def run_reader(url: str, size: int, inflight: int) -> dict[str, Any]:
    """Run the bare reader in a process of its own; return what it measured."""
    out = subprocess.run([sys.executable, __file__, "--reader", url, "--reader-size", str(size),
                          "--reader-inflight", str(inflight)],
                         capture_output=True, text=True, timeout=1800, check=False)
    if out.returncode:
        raise RuntimeError(f"reader failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------- phases

class Bench:
    """Servers and results of one run."""

    def __init__(self, args: argparse.Namespace, tmp: Path, out: dict[str, Any]) -> None:
        self.args, self.tmp, self.out = args, tmp, out
        self.s3: Any = None
        self.nodes: list[Any] = []  # every node started, stopped at the end
        self.rows: list[tuple[str, str, str, str]] = []  # figure, value, target, met

    def node(self, origin_url: str) -> Any:
        """Start a node with a fresh (cold) data dir whose origin is `origin_url`."""
        from tests.nodeproc import NodeProcess

        n = NodeProcess(self.tmp / f"node{len(self.nodes)}",
                        {**self.s3.env(), "AWS_ENDPOINT_URL": origin_url}, *NODE_ARGS,
                        *self.args.node_arg)
        self.nodes.append(n)
        return n.start()

    def stop_node(self, n: Any) -> None:
        """Stop a node and drop its blocks (the disk is shared with the next runs)."""
        n.stop()
        shutil.rmtree(n.data_dir, ignore_errors=True)

    def presigned(self, endpoint: str, key: str) -> str:
        """Return a GET URL for `key` through `endpoint` that needs no other signature."""
        from tests.servers import s3_client

        url = s3_client(endpoint).generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=3600)
        return str(url)

    def phase(self, name: str, url: str, size: int, inflight: int, node: Any = None,
              link: Any = None, profile: str | None = None) -> dict[str, Any]:
        """Run one read and return its rate and everyone's CPU over it."""
        from loadtest.bench_node import Profiler

        def cpu() -> dict[str, float]:
            return {"node": h.cpu_seconds(node.proc.pid) if node is not None else 0.0,
                    "link": link.cpu_seconds() if link is not None else 0.0,
                    "seaweedfs": h.group_cpu_seconds(self.s3.proc.pid),
                    "machine": h.machine_busy_seconds()}

        m0 = self.node_counts(node)
        c0 = cpu()
        spy = Profiler(self, node.proc.pid, profile) if profile and node is not None else None
        if spy is not None:
            spy.__enter__()
        try:
            r = run_reader(url, size, inflight)
        finally:
            if spy is not None:
                spy.__exit__(None, None, None)
        c1 = cpu()
        m1 = self.node_counts(node)
        gib = size / GiB
        res: dict[str, Any] = {
            "name": name, "inflight": inflight, "bytes": size, "seconds": r["seconds"],
            "gbps": size / 1e9 / r["seconds"], "first_byte_ms": r["first_ms"],
            "reader_cpu_s": r["cpu_s"], "reader_cpu_s_per_gib": r["cpu_s"] / gib,
            "cpu_s": {k: c1[k] - c0[k] for k in c0}}
        if node is not None:
            res["node_cpu_s_per_gib"] = res["cpu_s"]["node"] / gib
            res["origin"] = {k: m1[k] - m0[k] for k in m0}
        log(f"{name}: {res['gbps']:.3f} GB/s in {r['seconds']:.2f} s, first byte "
            f"{r['first_ms']:.0f} ms, CPU-s/GiB reader {res['reader_cpu_s_per_gib']:.2f}"
            + (f" node {res['node_cpu_s_per_gib']:.2f}" if node is not None else ""))
        return res

    @staticmethod
    def node_counts(node: Any) -> dict[str, float]:
        if node is None:
            return {}
        return {"gets": node.metric("blockcache_origin_requests_total", op="get"),
                "bytes": node.metric("blockcache_origin_bytes_total")}

    def row(self, figure: str, value: float | None, target: str, met: bool | None) -> None:
        """Add a figure beside its target to the table."""
        v = "-" if value is None else f"{value:.3g}"
        self.rows.append((figure, v, target, "-" if met is None else ("yes" if met else "NO")))


# ---------------------------------------------------------------- (a) and (b): one node

def upload(b: Bench, key: str, size: int) -> None:
    """Put `size` random bytes at `key` (streamed through a temp file)."""
    from loadtest.bench_group import write_random_file

    path = b.tmp / "upload.bin"
    write_random_file(path, size)
    b.s3.put_file(BUCKET, key, path)
    path.unlink()


def part_a(b: Bench) -> None:
    size, key = b.args.size, "a/object.bin"
    upload(b, key, size)
    direct = b.presigned(b.s3.endpoint_url, key)
    node = b.node(b.s3.endpoint_url)
    via = f"{node.url}/{BUCKET}/{key}"
    try:
        runs = [b.phase("direct 16", direct, size, 16),
                b.phase("node cold 16", via, size, 16, node, profile="a-cold"),
                b.phase("node warm 16 (hits)", via, size, 16, node),
                b.phase("direct 16 again", direct, size, 16)]
    finally:
        b.stop_node(node)
    d = [runs[0], runs[3]]
    ref = sum(r["gbps"] for r in d) / 2
    bare = sum(r["reader_cpu_s_per_gib"] for r in d) / 2
    cold, warm = runs[1], runs[2]
    s = {"runs": runs, "direct_gbps": ref, "ratio_cold_vs_direct": cold["gbps"] / ref,
         "bare_reader_cpu_s_per_gib": bare, "node_cold_cpu_s_per_gib": cold["node_cpu_s_per_gib"],
         "node_hit_cpu_s_per_gib": warm["node_cpu_s_per_gib"],
         "node_cold_cpu_over_bare": cold["node_cpu_s_per_gib"] / bare,
         "origin_gets_per_block": cold["origin"]["gets"] / -(-size // BLOCK)}
    b.out["a"] = s
    b.row("(a) node cold / direct, 16 in flight", s["ratio_cold_vs_direct"], ">= 0.6",
          s["ratio_cold_vs_direct"] >= 0.6)
    b.row("(a) node cold-fill CPU-s/GiB / bare reader's", s["node_cold_cpu_over_bare"], "<= 2",
          s["node_cold_cpu_over_bare"] <= 2)
    b.row("(a)   node cold-fill CPU-s/GiB", s["node_cold_cpu_s_per_gib"], "(info)", None)
    b.row("(a)   bare reader CPU-s/GiB", bare, "(info)", None)
    b.row("(a)   node hit CPU-s/GiB", s["node_hit_cpu_s_per_gib"], "(info)", None)


def part_b(b: Bench, gbit: float) -> None:
    from loadtest.link import Link

    size, key = b.args.size, f"b/object-{gbit:g}.bin"
    upload(b, key, size)
    with Link(b.s3.endpoint_url, gbit, b.args.link_latency_ms) as link:
        rate = link.rate_bytes_s
        direct = b.presigned(link.url, key)
        runs = []
        for name, inflight in (("node cold 1 seq", 0), ("direct 16", 16), ("node cold 16", 16)):
            if name.startswith("direct"):
                runs.append(b.phase(f"{gbit:g} Gbit/s: {name}", direct, size, inflight,
                                    link=link))
                continue
            node = b.node(link.url)
            try:
                runs.append(b.phase(f"{gbit:g} Gbit/s: {name}", f"{node.url}/{BUCKET}/{key}",
                                    size, inflight, node, link))
            finally:
                b.stop_node(node)
    one, direct16, node16 = runs
    s = {"runs": runs, "link": link.describe(), "link_gbps": rate / 1e9,
         "one_reader_vs_link": one["gbps"] * 1e9 / rate,
         "node16_vs_direct16": node16["gbps"] / direct16["gbps"],
         "direct16_vs_link": direct16["gbps"] * 1e9 / rate,
         "link_cpu_s_per_gib": direct16["cpu_s"]["link"] / (size / GiB)}
    b.out.setdefault("b", {})[f"{gbit:g}"] = s
    b.row(f"(b) {gbit:g} Gbit/s: 1 seq reader via node / link", s["one_reader_vs_link"],
          ">= 0.9", s["one_reader_vs_link"] >= 0.9)
    b.row(f"(b) {gbit:g} Gbit/s: node 16 / direct 16", s["node16_vs_direct16"], ">= 0.95",
          s["node16_vs_direct16"] >= 0.95)
    b.row(f"(b)   {gbit:g} Gbit/s: direct 16 / link", s["direct16_vs_link"], "(info)", None)
    b.row(f"(b)   {gbit:g} Gbit/s: link proxy CPU-s/GiB", s["link_cpu_s_per_gib"], "(info)",
          None)


# ---------------------------------------------------------------- (c), (d), (e): other benches

def sub_bench(b: Bench, script: str, pattern: str, *args: str) -> dict[str, Any]:
    """Run loadtest/`script` with `args`; return the JSON result it wrote."""
    before = set(RESULTS_DIR.glob(pattern))
    cmd = [sys.executable, str(ROOT / "loadtest" / script), *args]
    log("running " + " ".join(cmd[1:]))
    proc = subprocess.run(cmd, timeout=3600, check=False, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    new = sorted(set(RESULTS_DIR.glob(pattern)) - before)
    if not new:
        raise RuntimeError(f"{script} wrote no result (rc {proc.returncode}): "
                           f"{proc.stdout[-3000:]}")
    res = dict(json.loads(new[-1].read_text()))
    res["_command"], res["_rc"], res["_file"] = cmd[1:], proc.returncode, str(new[-1])
    print(proc.stdout[-4000:], flush=True)
    return res


def part_c(b: Bench, gbit: float) -> None:
    size = b.args.model_size // MiB
    r = sub_bench(b, "bench_group.py", "group-*.json", "--size", str(size), "--loaders", "16",
                  "--no-rr", "--no-direct-again", "--link-gbit", f"{gbit:g}",
                  "--link-latency-ms", b.args.link_latency_text, "--max-wait", "5")
    ph = {p["name"]: p for p in r.get("phases", [])}
    model = sum(f["size"] for f in r["files"]["v1"])
    one_copy_s = model / (gbit * 1e9 / 8)
    cold, warm, direct = ph.get("group cold"), ph.get("group warm"), ph.get("direct")
    s: dict[str, Any] = {"model_bytes": model, "one_copy_on_link_s": one_copy_s,
                         "file": r["_file"], "command": r["_command"], "error": r.get("error")}
    if cold and direct:
        s.update(cold_s=cold["all_have_it_s"], direct_s=direct["all_have_it_s"],
                 cold_over_one_copy=cold["all_have_it_s"] / one_copy_s,
                 origin_bytes_over_model=cold["origin_bytes"] / model,
                 speedup_cold_vs_direct=direct["all_have_it_s"] / cold["all_have_it_s"],
                 handoffs=cold.get("handoffs"), link_cpu_s=cold["cpu_s"].get("link"),
                 nodes_cpu_s_per_gib_served=cold["cpu_s"]["nodes"] / (16 * model / GiB))
    if warm and direct:
        s.update(warm_s=warm["all_have_it_s"],
                 speedup_warm_vs_direct=direct["all_have_it_s"] / warm["all_have_it_s"],
                 warm_origin_bytes=warm["origin_bytes"],
                 nodes_hit_cpu_s_per_gib_served=warm["cpu_s"]["nodes"] / (16 * model / GiB))
    b.out["c"] = s
    ok = "cold_s" in s
    b.row(f"(c) 16 loaders, cold group / one copy on {gbit:g} Gbit/s",
          s.get("cold_over_one_copy"), "<= 1.2", ok and s["cold_over_one_copy"] <= 1.2)
    b.row("(c) origin bytes / model bytes (cold)", s.get("origin_bytes_over_model"), "<= 1.05",
          ok and s["origin_bytes_over_model"] <= 1.05)
    b.row("(c)   speedup cold group vs direct", s.get("speedup_cold_vs_direct"), "(~13x)", None)
    b.row("(c)   speedup warm group vs direct", s.get("speedup_warm_vs_direct"), "(info)", None)


def part_d(b: Bench, gbit: float) -> None:
    size = str(b.args.model_size // MiB)
    for shaped in (True, False):
        extra = ["--link-gbit", f"{gbit:g}", "--link-latency-ms",
                 b.args.link_latency_text] if shaped else []
        r = sub_bench(b, "bench_warmup.py", "warmup-*.json", "--size", size,
                      "--no-direct-again", "--max-wait", "5", *extra)
        sm = r.get("summary", {})
        cold = next((p for p in r.get("phases", []) if p["name"] == "warmup cold"), None)
        s: dict[str, Any] = {"summary": sm, "file": r["_file"], "command": r["_command"],
                             "error": r.get("error")}
        key = f"shaped {gbit:g} Gbit/s" if shaped else "unshaped"
        if cold:
            s["handoffs"] = sum(x.get(f"blockcache_handoffs_total{{result={k}}}", 0.0)
                                for x in cold.get("node_metrics_delta", {}).values()
                                for k in ("hit", "miss"))
        b.out.setdefault("d", {})[key] = s
        if shaped:
            vs_link = sm["cold_gbps"] * 1e9 / (gbit * 1e9 / 8) if sm.get("cold_gbps") else None
            s["warmup_vs_link"] = vs_link
            b.row(f"(d) warmup / link, {gbit:g} Gbit/s", vs_link, ">= 0.95",
                  vs_link is not None and vs_link >= 0.95)
            b.row(f"(d)   warmup / direct, {gbit:g} Gbit/s", sm.get("ratio_cold_vs_direct"),
                  "(info)", None)
        else:
            r2 = sm.get("ratio_cold_vs_direct")
            b.row("(d) warmup / direct, unshaped", r2, ">= 0.75", r2 is not None and r2 >= 0.75)
        b.row(f"(d)   nodes CPU-s/GiB warmed, {key}", sm.get("nodes_cpu_s_per_gib"), "(info)",
              None)


def part_e(b: Bench) -> None:
    r = sub_bench(b, "bench_node.py", "bench-*.json", "--parts", "a",
                  *(["--quick"] if b.args.quick else []))
    hit = r.get("hit", {})
    b.out["e"] = {"hit": hit, "file": r["_file"], "command": r["_command"],
                  "error": r.get("error")}
    for name in ("4mib", "64mib"):
        ratio = hit.get(name, {}).get("ratio_node_nginx")
        b.row(f"(e) hit {name} node / nginx", ratio, ">= 0.9", ratio is not None and ratio >= 0.9)


# ---------------------------------------------------------------- main

def print_table(b: Bench, dest: Path) -> None:
    w = max([len(r[0]) for r in b.rows] + [10])
    print(f"\n{'figure':<{w}}  {'value':>8}  {'target':>8}  met")
    for fig, v, target, met in b.rows:
        print(f"{fig:<{w}}  {v:>8}  {target:>8}  {met}")
    prof = b.out.get("profiles", {}).get("a-cold")
    if prof:
        print("\nnode during (a) cold read, hottest frames (% of samples):")
        for frame, pct in prof["top"][:12]:
            print(f"  {pct:5.1f}  {frame}")
    print(f"\nshared machine: {h.NCPU} CPUs; JSON: {dest.relative_to(ROOT)}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="abcde", help="which parts to run (subset of 'abcde')")
    p.add_argument("--quick", action="store_true",
                   help="~10 min: 256 MiB for (a) and (b), 512 MiB models for (c) and (d), "
                        "one link rate (2 Gbit/s), bench_node --quick")
    p.add_argument("--size", type=int, help="MiB read in (a) and (b) (default 1024)")
    p.add_argument("--model-size", type=int, help="model MiB for (c) and (d) (default 1024)")
    p.add_argument("--link-gbit", help="link rates for (b), comma-separated; the last one "
                                       "also shapes (c) and (d) (default 1,2)")
    p.add_argument("--link-latency-ms", dest="link_latency_text", default="5-20")
    p.add_argument("--profile", action="store_true", help="py-spy the node in (a)'s cold read")
    p.add_argument("--node-arg", action="append", default=[], metavar="ARG",
                   help="extra cachenode argument for (a) and (b) (repeat; e.g. "
                        "--node-arg=--readahead --node-arg=8)")
    p.add_argument("--keep-tmp", action="store_true")
    p.add_argument("--reader", help=argparse.SUPPRESS)
    p.add_argument("--reader-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--reader-inflight", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    a.size = (a.size or (256 if a.quick else 1024)) * MiB
    a.model_size = (a.model_size or (512 if a.quick else 1024)) * MiB
    a.gbits = [float(x) for x in (a.link_gbit or ("2" if a.quick else "1,2")).split(",")]
    from loadtest.link import parse_latency

    a.link_latency_ms = parse_latency(a.link_latency_text)
    return a


def main() -> int:
    a = parse_args()
    if a.reader:
        return reader_main(a.reader, a.reader_size, a.reader_inflight)
    from tests.servers import SeaweedFS

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="blockcache-fill-"))
    out: dict[str, Any] = {"meta": {
        "stamp": stamp, "argv": sys.argv, "parts": a.parts, "size": a.size,
        "model_size": a.model_size, "link_gbit": a.gbits, "link_latency_ms": a.link_latency_ms,
        "node_args": [*NODE_ARGS, *a.node_arg], "cpus": h.NCPU, "kernel": platform.release(),
        "python": platform.python_version()}}
    b = Bench(a, tmp, out)
    failed: BaseException | None = None
    t0 = time.monotonic()
    try:
        if set(a.parts) & set("ab"):
            b.s3 = SeaweedFS(tmp / "seaweedfs").start()
            b.s3.make_bucket(BUCKET)
        steps = [("a", lambda: part_a(b))] + [("b", lambda g=g: part_b(b, g)) for g in a.gbits]
        steps += [("c", lambda: part_c(b, a.gbits[-1])), ("d", lambda: part_d(b, a.gbits[-1])),
                  ("e", lambda: part_e(b))]
        for part, step in steps:
            if part in a.parts:
                try:
                    step()
                except Exception:  # noqa: BLE001 - the other parts still run
                    out.setdefault("errors", []).append(f"({part}) {traceback.format_exc()}")
                    log(f"part ({part}) failed:\n{traceback.format_exc()}")
    except BaseException as e:  # noqa: BLE001 - still print and save what was measured
        failed = e
        out["error"] = traceback.format_exc()
    finally:
        for n in b.nodes:
            n.stop()
        if b.s3 is not None:
            b.s3.stop()
        out["meta"]["wall_seconds"] = round(time.monotonic() - t0, 1)
        if not a.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    out["table"] = b.rows
    dest = RESULTS_DIR / f"fill-{stamp}.json"
    dest.write_text(json.dumps(out, indent=1, default=str))
    print_table(b, dest)
    return h.exit_code(failed, out.get("error", "")) or (1 if out.get("errors") else 0)


if __name__ == "__main__":
    sys.exit(main())

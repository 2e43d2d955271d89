"""S3 clients through the cache: s5cmd and the Run:ai streamer, direct vs a cold and a warm group.

    .venv/bin/python loadtest/bench_s3.py [--quick] [--size MiB] [--shards 4]
                                          [--tools s5cmd,streamer] [--no-direct-again]

SeaweedFS + etcd + a LocalGroup of 3 cache nodes, each with its S3 listener
(`--s3 127.0.0.1:<port>`), all on 127.0.0.1. A generated llama-like safetensors model
(tests/safetensors_gen.py: `--size` MiB in `--shards` shards, plus config.json and the index)
is uploaded twice, under `s5cmd/` and under `streamer/`, so each tool's cold phase starts
from blocks nobody has read. Phases, one after the other, both tools in each:

  direct      the clients read straight from SeaweedFS (AWS_ENDPOINT_URL = SeaweedFS)
  cold        the same through node n0's S3 listener, fresh caches: every block filled once
  warm        the same again: every block a hit on its owner
  direct 2    straight from SeaweedFS again (unless --quick / --no-direct-again)

s5cmd: `s5cmd cp 's3://models/s5cmd/<model>/*' DIR/` (its defaults: 256 workers, 5 parts of
50 MiB in flight per file), then every file compared with the manifest (size, CRC-32C).
Streamer: tests/streamer_load.py in its own process, as vLLM loads: list_safetensors,
pull_files of the JSON files, one SafetensorsStreamer over all shards (its defaults: 8
workers, 8 MiB ranges), every tensor checked (dtype, shape, size, CRC-32C).

Per phase: seconds, GiB/s, ratio to direct (mean of the undisturbed direct runs of that
tool), origin GETs per block (delta of the nodes' blockcache_origin_requests_total{op="get"}
over the blocks of the objects read; must be 1.00 cold, 0 warm), CPU seconds of the client
(its process; the streamer's from after its imports), the nodes, SeaweedFS, etcd, the machine
(busy %), and other workloads' CPU. Prints a table and writes loadtest/results/s3-<stamp>.json.
Without an S3 listener on this cachenode (no `--s3` in `cachenode --help`), only the direct
phases run and the table says so.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest import harness as h
from loadtest.bench_group import log, settle_stored, status_counts, wait_quiet
from loadtest.bench_warmup import metrics_delta, node_snapshot, total
from loadtest.s3_clients import compare_files, run_s5cmd, run_streamer, s3_env, upload_model

MiB, GiB = h.MiB, h.GiB
BLOCK = 4 * MiB
BUCKET = "models"
MODEL = "demo-1b/v1/"
RESULTS_DIR = ROOT / "loadtest" / "results"
N_NODES = 3
TOOLS = ("s5cmd", "streamer")


@dataclass
class Bench:
    """Servers, the model and where each tool reads it."""

    args: argparse.Namespace
    tmp: Path
    s3: Any
    etcd: Any
    manifest: dict[str, Any]
    manifest_path: Path
    group: Any = None
    s3_ports: list[int] = field(default_factory=list)

    @property
    def objects(self) -> list[dict[str, Any]]:
        """Return the manifest entries of every file of the model."""
        return [*self.manifest["shards"], *self.manifest["other_files"]]

    @property
    def bytes(self) -> int:
        """Return the bytes of every file of the model."""
        return sum(f["size"] for f in self.objects)

    @property
    def blocks(self) -> int:
        """Return the 4 MiB blocks of every file of the model."""
        return sum(math.ceil(f["size"] / BLOCK) for f in self.objects)


def cachenode_has_s3() -> bool:
    """Return whether this venv's cachenode has an S3 listener (`--s3` in its help)."""
    exe = Path(sys.executable).parent / "cachenode"
    done = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=False)
    return "--s3 " in done.stdout or "--s3=" in done.stdout or "--s3\n" in done.stdout


def git_info() -> dict[str, Any]:
    """Return HEAD, its subject, and the newest commits of main and of s3-api that it holds."""
    def git(*args: str) -> str:
        r = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                           check=False)
        return r.stdout.strip() if r.returncode == 0 else ""

    return {"head": git("rev-parse", "--short", "HEAD"),
            "subject": git("log", "-1", "--format=%s"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "main_merged": git("merge-base", "HEAD", "main")[:7] or None,
            "s3_api_merged": git("merge-base", "HEAD", "s3-api")[:7] or None}


# ---------------------------------------------------------------- one phase

def cpu_now(b: Bench) -> dict[str, Any]:
    """Return CPU seconds so far of the nodes, SeaweedFS, etcd and the machine, and the time."""
    nodes = b.group.nodes if b.group is not None else []
    return {"nodes": [h.cpu_seconds(n.proc.pid) for n in nodes],
            "seaweedfs": h.group_cpu_seconds(b.s3.proc.pid),
            "etcd": h.group_cpu_seconds(b.etcd.proc.pid),
            "machine": h.machine_busy_seconds(), "t": time.monotonic()}


def cpu_delta(c0: dict[str, Any], c1: dict[str, Any]) -> dict[str, Any]:
    """Return the CPU seconds used between two `cpu_now` snapshots, and the machine's share."""
    per_node = [y - x for x, y in zip(c0["nodes"], c1["nodes"], strict=True)]
    window = c1["t"] - c0["t"]
    mach = c1["machine"] - c0["machine"]
    return {"nodes": sum(per_node), "per_node": per_node,
            "seaweedfs": c1["seaweedfs"] - c0["seaweedfs"], "etcd": c1["etcd"] - c0["etcd"],
            "machine": mach, "window_s": window,
            "machine_util": mach / window / h.NCPU if window else None}


def run_tool(b: Bench, tool: str, endpoint: str, on_go: Callable[[], None]) -> dict[str, Any]:
    """Run one tool against `endpoint`; return seconds, client CPU and what failed its check."""
    env = s3_env(endpoint)
    prefix = f"s3://{BUCKET}/{tool}/{MODEL}"
    if tool == "s5cmd":
        dest = b.tmp / "s5cmd-out"
        shutil.rmtree(dest, ignore_errors=True)
        on_go()
        r = run_s5cmd(env, prefix, dest, *b.args.s5cmd_arg)
        bad = compare_files(dest, b.manifest)  # after the window: every byte, by CRC-32C
        shutil.rmtree(dest, ignore_errors=True)
        return {"seconds": r["seconds"], "client_cpu_s": r["cpu_s"], "bad": bad,
                "command": r["command"]}
    pull = b.tmp / "streamer-pull"
    shutil.rmtree(pull, ignore_errors=True)
    extra = dict(kv.split("=", 1) for kv in b.args.streamer_env)
    r = run_streamer(env, prefix, b.manifest_path, pull, extra, on_go=on_go)
    shutil.rmtree(pull, ignore_errors=True)
    bad = list(r["bad"]) + ([f"{r['n_missing']} tensors missing: {r['missing'][:3]}"]
                            if r["n_missing"] else [])
    if r["tensors"] != b.manifest["tensors"]:
        bad.append(f"{r['tensors']} tensors, want {b.manifest['tensors']}")
    return {"seconds": r["seconds"], "client_cpu_s": r["cpu_s"], "bad": bad,
            "streamer": {k: r[k] for k in ("list_s", "pull_s", "stream_s", "tensors",
                                           "tensor_bytes", "process_wall_s", "verify")}}


def run_phase(b: Bench, name: str, tool: str) -> dict[str, Any]:
    """Measure one tool in one phase (direct, cold or warm) around its process."""
    mode = "direct" if name.startswith("direct") else "node"
    endpoint = b.s3.endpoint_url if mode == "direct" else f"http://127.0.0.1:{b.s3_ports[0]}"
    nodes = b.group.nodes if mode == "node" else []
    waited = wait_quiet(b.args.max_wait)
    log(f"{name} {tool}: {b.bytes / MiB:.0f} MiB from {endpoint}")
    m0 = [node_snapshot(n) for n in nodes]
    w: dict[str, Any] = {}

    def on_go() -> None:
        w["cpu0"], w["foreign"] = cpu_now(b), h.ForeignLoad().start()

    r = run_tool(b, tool, endpoint, on_go)
    other, c1 = w["foreign"].stop(), cpu_now(b)
    out: dict[str, Any] = {
        "name": name, "tool": tool, "mode": mode, "endpoint": endpoint, **r,
        "bytes": b.bytes, "gib_s": b.bytes / GiB / r["seconds"],
        "cpu_s": {**cpu_delta(w["cpu0"], c1), "client": r["client_cpu_s"]},
        "foreign_cpu_s": other, "foreign_top": w["foreign"].top, "waited_for_quiet_s": waited}
    if mode == "node":
        settle_stored(nodes)  # blocks are written behind the responses
        d = metrics_delta(m0, [node_snapshot(n) for n in nodes])
        gets = total(d, "blockcache_origin_requests_total{op=get}")
        out.update(
            origin_gets=gets, origin_gets_per_block=gets / b.blocks,
            origin_heads=total(d, "blockcache_origin_requests_total{op=head}"),
            origin_lists=total(d, "blockcache_origin_requests_total{op=list}"),
            origin_bytes=total(d, "blockcache_origin_bytes_total"),
            peer_bytes=total(d, "blockcache_peer_bytes_total"),
            node_requests=status_counts(d),
            served_bytes={s: total(d, f"blockcache_served_bytes_total{{source={s}}}")
                          for s in ("disk", "origin", "peer")},
            store_blocks_per_node=[x.get("blockcache_store_blocks", 0.0) for x in d],
            node_metrics_delta={n.log_path.stem: x for n, x in zip(nodes, d, strict=True)})
    warn = []
    if other > max(0.1 * r["seconds"], 0.1):
        warn.append(f"other processes used {other:.1f} CPU-s in {r['seconds']:.1f} s")
    if r["bad"]:
        warn.append(f"CHECK FAILED: {r['bad'][:3]}")
    if warn:
        out["warning"] = "; ".join(warn)
    log(f"{name} {tool}: {r['seconds']:.2f} s, {out['gib_s']:.2f} GiB/s"
        + (f", origin GETs/block {out['origin_gets_per_block']:.2f}" if mode == "node" else "")
        + (f"; BAD {r['bad'][:2]}" if r["bad"] else "; every byte checked"))
    return out


EXPECTED_WARNINGS = ("no --access-keys", "no --cluster-secret-file")


def scan_logs(group: Any) -> dict[str, Any]:
    """Return per node log its unexpected WARNING/ERROR lines, each with what follows it."""
    out: dict[str, Any] = {}
    for n in group.nodes:
        try:
            lines = n.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            continue
        hits = [i for i, ln in enumerate(lines)
                if any(w in ln for w in (" WARNING ", " ERROR ", " CRITICAL "))
                and not any(e in ln for e in EXPECTED_WARNINGS)]
        out[n.log_path.name] = {
            "lines": len(lines), "warning_or_error_lines": len(hits),
            "first": [lines[i][:300] for i in hits[:10]],
            "blocks": ["\n".join(lines[i:i + 60])[:8000] for i in hits[:4]]}
    return out


# ---------------------------------------------------------------- report

def fmt(v: float | None, spec: str) -> str:
    """Return `v` formatted, or '-' for None."""
    return "-" if v is None else format(v, spec)


def references(phases: list[dict[str, Any]]) -> dict[str, float]:
    """Return per tool the mean seconds of its undisturbed direct runs (else of all of them)."""
    out = {}
    for tool in TOOLS:
        directs = [p for p in phases if p["tool"] == tool and p["mode"] == "direct"]
        quiet = [p for p in directs if not p.get("warning")] or directs
        if quiet:
            out[tool] = sum(p["seconds"] for p in quiet) / len(quiet)
    return out


def print_report(out: dict[str, Any], dest: Path) -> None:
    """Print the table and notes of a result (fresh, or loaded with --table)."""
    phases, refs, m = out.get("phases", []), out.get("reference_direct_s", {}), out["meta"]
    print(f"\n{'phase':<9} {'tool':<9} {'seconds':>8} {'GiB/s':>6} {'vs direct':>9} "
          f"{'GETs/blk':>8} {'CPU-s client/nodes/weed/machine':>32} {'busy':>5} {'other':>5}"
          f"  check")
    for p in phases:
        cpu, ref = p["cpu_s"], refs.get(p["tool"])
        print(f"{p['name']:<9} {p['tool']:<9} {p['seconds']:>8.2f} {p['gib_s']:>6.2f} "
              f"{fmt(ref / p['seconds'] if ref else None, '.2f'):>8}x "
              f"{fmt(p.get('origin_gets_per_block'), '.2f'):>8} "
              f"{cpu['client']:>9.1f}/{cpu['nodes']:>5.1f}/{cpu['seaweedfs']:>5.1f}/"
              f"{cpu['machine']:>6.1f}      "
              f"{fmt(cpu['machine_util'] * 100 if cpu['machine_util'] else None, '.0f'):>4}% "
              f"{p['foreign_cpu_s']:>5.1f}  {'BAD' if p['bad'] else 'ok'}")
    for p in phases:
        notes = []
        if p["mode"] == "node":
            notes.append(f"origin GETs {p['origin_gets']:.0f} for {m['blocks']} blocks, HEADs "
                         f"{p['origin_heads']:.0f}, lists {p['origin_lists']:.0f}; peer MiB "
                         f"{p['peer_bytes'] / MiB:.0f}; served MiB disk/origin/peer "
                         + "/".join(f"{p['served_bytes'][s] / MiB:.0f}"
                                    for s in ("disk", "origin", "peer"))
                         + "; node CPU-s " + "/".join(f"{x:.1f}" for x in p["cpu_s"]["per_node"]))
            if p.get("node_requests"):
                notes.append("requests " + ", ".join(f"{k} {v:.0f}"
                                                     for k, v in p["node_requests"].items()))
        if p.get("streamer"):
            s = p["streamer"]
            notes.append(f"list {s['list_s']:.2f} s, pull {s['pull_s']:.2f} s, stream "
                         f"{s['stream_s']:.2f} s, {s['tensors']} tensors ({s['verify']})")
        if p.get("warning"):
            notes.append("WARNING " + p["warning"])
        if notes:
            print(f"  {p['name']} {p['tool']}: " + "; ".join(notes))
    for name, lg in (out.get("node_logs") or {}).items():
        if lg.get("warning_or_error_lines"):
            print(f"  {name}: {lg['warning_or_error_lines']} warning/error lines, first: "
                  f"{lg['first'][0][:160]}")
    if out.get("skipped"):
        print(f"\nSKIPPED: {out['skipped']}")
    g = m.get("git", {})
    print("\n'vs direct' = mean seconds of the tool's undisturbed direct runs / seconds; "
          "GETs/blk = origin GETs / blocks; 'busy' = machine CPU busy / (seconds x CPUs); "
          "'other' = CPU-s of processes this script did not start")
    print(f"{m['objects']} objects, {m['bytes'] / MiB:.0f} MiB, {m['blocks']} blocks of 4 MiB, "
          f"{m['tensors']} tensors; {N_NODES} nodes {' '.join(m['node_args'])}; {m['cpus']} "
          f"CPUs; HEAD {g.get('head')} (main {g.get('main_merged')}, s3-api "
          f"{g.get('s3_api_merged')}); wall "
          f"{m.get('wall_seconds')} s; JSON: "
          f"{dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")


# ---------------------------------------------------------------- driver

def parse_args() -> argparse.Namespace:
    """Return the command line's options, with --quick and the size resolved."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, help="MiB of safetensors shards (default 1024; quick 256)")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--tools", default=",".join(TOOLS), help="comma-separated: s5cmd,streamer")
    p.add_argument("--quick", action="store_true", help="256 MiB, no direct rerun")
    p.add_argument("--no-direct-again", dest="direct_again", action="store_false",
                   help="do not read straight from SeaweedFS a second time at the end")
    p.add_argument("--no-nodes", action="store_true", help="run the direct phases only")
    p.add_argument("--s5cmd-arg", action="append", default=[], metavar="ARG",
                   help="extra s5cmd global option (repeat), e.g. --s5cmd-arg=--numworkers=64")
    p.add_argument("--streamer-env", action="append", default=[], metavar="K=V",
                   help="extra streamer setting (repeat), e.g. RUNAI_STREAMER_CONCURRENCY=16")
    p.add_argument("--node-arg", action="append", default=[], metavar="ARG",
                   help="extra cachenode argument (repeat)")
    p.add_argument("--max-wait", type=float, default=20.0,
                   help="before each phase, wait up to this many seconds for a quiet machine")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, data)")
    p.add_argument("--table", type=Path, metavar="JSON", help="only print a saved result")
    a = p.parse_args()
    a.tools = [t for t in a.tools.split(",") if t]
    if unknown := set(a.tools) - set(TOOLS):
        p.error(f"unknown tools {sorted(unknown)}")
    if a.quick:
        a.direct_again = False
    a.size = (a.size or (256 if a.quick else 1024)) * MiB
    return a


def start_group(b: Bench, capacity: str) -> None:
    """Start 3 nodes of one site, each with its S3 listener on a free loopback port."""
    from tests.cluster import LocalGroup

    b.group = LocalGroup(b.tmp / "group", b.s3.env(), b.etcd.endpoint, N_NODES,
                         "--capacity", capacity, *b.args.node_arg)
    b.s3_ports = [n.s3_port for n in b.group.nodes]  # NodeProcess passes --s3 127.0.0.1:port
    b.group.start()
    for port in b.s3_ports:
        h.wait_port(port)


def plan(a: argparse.Namespace, nodes: bool) -> list[tuple[str, str]]:
    """Return the (phase, tool) pairs to run, in order."""
    names = ["direct"] + (["cold", "warm"] if nodes else []) + (
        ["direct 2"] if a.direct_again else [])
    return [(n, t) for n in names for t in a.tools]


def main() -> int:
    """Run the benchmark (or print a saved one); return the exit status."""
    a = parse_args()
    if a.table:
        saved = json.loads(a.table.read_text())
        print_report(saved, a.table.resolve())
        return 0
    from tests.safetensors_gen import write_model
    from tests.servers import Etcd, SeaweedFS

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="blockcache-s3bench-"))
    has_s3 = cachenode_has_s3() and not a.no_nodes
    out: dict[str, Any] = {"meta": {
        "stamp": stamp, "argv": sys.argv, "tools": a.tools, "size": a.size, "shards": a.shards,
        "nodes": N_NODES, "cpus": h.NCPU, "kernel": platform.release(),
        "python": platform.python_version(), "git": git_info(), "block_size": BLOCK,
        "s5cmd_args": a.s5cmd_arg, "streamer_env": a.streamer_env}}
    if not has_s3:
        out["skipped"] = ("node phases: --no-nodes" if a.no_nodes else
                          "node phases: this cachenode has no --s3 listener")
    t_start = time.monotonic()
    s3, etcd = SeaweedFS(tmp / "seaweedfs"), Etcd(tmp / "etcd")
    b: Bench | None = None
    phases: list[dict[str, Any]] = []
    failed: BaseException | None = None
    try:
        log(f"writing a {a.size / MiB:.0f} MiB safetensors model in {a.shards} shards")
        manifest = write_model(tmp / "src", a.size, a.shards, seed=1)
        manifest_path = tmp / "manifest.json"
        manifest_path.write_text(json.dumps(manifest))
        log("starting SeaweedFS and etcd")
        s3.start()
        s3.make_bucket(BUCKET)
        etcd.start()
        b = Bench(a, tmp, s3, etcd, manifest, manifest_path)
        t = time.monotonic()
        for tool in a.tools:
            log(f"uploading s3://{BUCKET}/{tool}/{MODEL}")
            upload_model(s3, BUCKET, f"{tool}/{MODEL}", tmp / "src", manifest)
        shutil.rmtree(tmp / "src")
        capacity = f"{math.ceil(len(a.tools) * b.bytes / GiB) + 1}GiB"  # nothing evicted
        out["meta"].update(upload_s=round(time.monotonic() - t, 1), objects=len(b.objects),
                           bytes=b.bytes, blocks=b.blocks, tensors=manifest["tensors"],
                           node_args=["--capacity", capacity, *a.node_arg],
                           files=[{"file": f["file"], "size": f["size"]} for f in b.objects])
        if has_s3:
            log(f"starting {N_NODES} cache nodes (--capacity {capacity}, S3 listeners)")
            start_group(b, capacity)
            out["meta"]["s3_endpoints"] = [f"http://127.0.0.1:{p}" for p in b.s3_ports]
        for name, tool in plan(a, has_s3):
            phases.append(run_phase(b, name, tool))
    except BaseException as e:  # noqa: BLE001 - still print and save what was measured
        failed = e
        out["error"] = traceback.format_exc()
    finally:
        if b is not None and b.group is not None:
            out["node_logs"] = scan_logs(b.group)
            b.group.stop()
        etcd.stop()
        s3.stop()
        out["meta"]["wall_seconds"] = round(time.monotonic() - t_start, 1)
        if a.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    out["phases"] = phases
    out["reference_direct_s"] = references(phases)
    for p in phases:
        ref = out["reference_direct_s"].get(p["tool"])
        p["vs_direct"] = ref / p["seconds"] if ref else None
    dest = RESULTS_DIR / f"s3-{stamp}.json"
    dest.write_text(json.dumps(out, indent=1, default=str))
    print_report(out, dest)
    if failed is None and any(p["bad"] for p in phases):
        failed = RuntimeError("a check failed: bytes read differ from the model")
        out["error"] = "a check failed: bytes read differ from the model (see BAD rows)"
    return h.exit_code(failed, out.get("error", ""))


if __name__ == "__main__":
    sys.exit(main())

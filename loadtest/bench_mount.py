"""`cachectl mount` against the ring-aware client and against `cachectl get` + a local file.

    .venv/bin/python loadtest/bench_mount.py [--quick] [--size MiB] [--repeat N]

SeaweedFS + etcd + a LocalGroup of 3 cache nodes (`--capacity 4GiB`), all on 127.0.0.1. One
safetensors shard of `--size` MiB (4 MiB float32 tensors) is uploaded. Two workloads:

  seq   read the shard front to back (8 MiB read(2)s into one buffer, like dd bs=8M)
  load  safetensors safe_open + get_tensor of every tensor (mmap: page faults, one copy each)

each in these phases (the page cache is dropped before each, except where it is the point):

  mount cold        a fresh mount, blocks evicted from the group first: every block filled
  mount warm        a fresh mount (empty memory), the group warm
  mount page cache  the same mount again, nothing dropped: every byte from the page cache
  client warm       client.CacheClient(concurrency=8): seq streams the object, load reads it
                    whole into memory and safetensors.numpy.load()s it
  get + local       `cachectl get` of the prefix to a local dir, then seq/load of that file
                    (as the download left it: in the page cache)
  local page cache  the local file again
  local disk        the local file after dropping the page cache

Per phase: seconds, GiB/s, CPU seconds of the mount, the nodes and the whole machine, and the
CPU used meanwhile by processes that are not ours (another workload: then rerun). Prints a
table and writes loadtest/results/mount-<UTC timestamp>.json. Needs root (mount, drop_caches).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest import harness as h

MiB, GiB = h.MiB, h.GiB
BUCKET, PREFIX, NAME = "models", "bench/v1/", "model.safetensors"
RESULTS_DIR = ROOT / "loadtest" / "results"
CACHECTL = str(Path(sys.executable).parent / "cachectl")
PHASES = ["mount cold", "mount warm", "mount page cache", "client warm", "get + local",
          "local page cache", "local disk"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def drop_caches() -> None:
    Path("/proc/sys/vm/drop_caches").write_text("1\n")


def seq_read(path: Path) -> int:
    """Read `path` front to back with 8 MiB read(2)s into one buffer; return the bytes."""
    buf, n = bytearray(8 * MiB), 0
    with open(path, "rb", buffering=0) as f:
        while got := f.readinto(buf):
            n += got
    return n


def st_load(path: Path) -> int:
    """Load every tensor with safe_open (mmap); return the bytes of the tensors."""
    from safetensors import safe_open

    n = 0
    with safe_open(str(path), framework="np") as f:
        for name in f.keys():  # noqa: SIM118 - not a mapping
            n += f.get_tensor(name).nbytes
    return n


async def client_run(seeds: list[str], mode: str) -> int:
    """Read the shard through CacheClient: streamed (seq) or whole, then loaded (load)."""
    from safetensors.numpy import load

    from client import CacheClient

    async with CacheClient(seeds, concurrency=8) as c:
        info = await c.stat(BUCKET, PREFIX + NAME)
        if mode == "seq":
            n = 0
            async for chunk in c.iter_range(info):
                n += len(chunk)
            return n
        return sum(t.nbytes for t in load(await c.read_range(info)).values())


class Bench:
    """The servers, the shard, and one measured phase at a time."""

    def __init__(self, tmp: Path, size: int) -> None:
        from tests.cluster import LocalGroup
        from tests.servers import Etcd, SeaweedFS

        self.tmp, self.size = tmp, size
        self.s3 = SeaweedFS(tmp / "s3").start()
        self.etcd = Etcd(tmp / "etcd").start()
        self.group = LocalGroup(tmp / "group", self.s3.env(), self.etcd.endpoint, 3,
                                "--capacity", "4GiB").start()
        self.mount: Any = None
        self.mount_args: list[str] = []

    def upload(self) -> None:
        from tests.modelfiles import write_safetensors

        src = self.tmp / NAME
        write_safetensors(src, self.size // (4 * MiB), 4 * MiB, seed=1)
        self.s3.make_bucket(BUCKET)
        self.s3.put_file(BUCKET, PREFIX + NAME, src)
        src.unlink()

    def evict(self) -> None:
        """Drop every block of the prefix from every node (POST /_evict)."""
        body = json.dumps({"bucket": BUCKET, "prefix": PREFIX}).encode()
        for n in self.group.nodes:
            req = urllib.request.Request(f"{n.url}/_evict", body, method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                r.read()

    def mount_fresh(self) -> Path:
        from tests.mountproc import MountProcess

        self.unmount()
        mp = self.tmp / "mnt"
        self.mount = MountProcess(self.group.seeds, f"s3://{BUCKET}/{PREFIX}", mp,
                                  *self.mount_args, log_path=self.tmp / "mount.log").start()
        return mp / NAME

    def unmount(self) -> None:
        if self.mount is not None:
            self.mount.cleanup()
            self.mount = None

    def measure(self, phase: str, mode: str, run: Callable[[], int]) -> dict[str, Any]:
        """Run one phase and return its time, rate and CPU seconds."""
        procs = {"nodes": [n.proc.pid for n in self.group.nodes if n.proc],
                 "mount": [self.mount.proc.pid] if self.mount and self.mount.proc else []}
        cpu0 = {k: sum(h.cpu_seconds(p) for p in v) for k, v in procs.items()}
        me0 = h.self_cpu_seconds()
        busy0, foreign = h.machine_busy_seconds(), h.ForeignLoad().start()
        t0 = time.monotonic()
        n = run()
        wall = time.monotonic() - t0
        out = {"phase": phase, "mode": mode, "seconds": round(wall, 3), "bytes": n,
               "gibps": round(n / GiB / wall, 3),
               "cpu_s": {**{k: round(sum(h.cpu_seconds(p) for p in v) - cpu0[k], 2)
                            for k, v in procs.items()},
                         "reader": round(h.self_cpu_seconds() - me0, 2)},
               "machine_busy": round((h.machine_busy_seconds() - busy0) / (h.NCPU * wall), 2),
               "foreign_cpu_s": round(foreign.stop(), 2), "foreign_top": foreign.top}
        log(f"{mode:<4} {phase:<16} {wall:6.2f}s {out['gibps']:6.3f} GiB/s  cpu {out['cpu_s']}"
            f"  machine {out['machine_busy']:.0%}  foreign {out['foreign_cpu_s']}s")
        return out

    def workload(self, mode: str) -> list[dict[str, Any]]:
        """Run every phase of one workload (seq or load)."""
        local = self.tmp / "local"
        shutil.rmtree(local, ignore_errors=True)
        work = seq_read if mode == "seq" else st_load
        out = []
        self.evict()
        for phase in PHASES[:3]:
            if phase != "mount page cache":
                path = self.mount_fresh()
                drop_caches()
            out.append(self.measure(phase, mode, lambda p=path: work(p)))
        self.unmount()
        drop_caches()
        out.append(self.measure("client warm", mode,
                                lambda: asyncio.run(client_run(self.group.seeds, mode))))

        def get_then_work() -> int:
            subprocess.run([CACHECTL, "--nodes", ",".join(self.group.seeds), "get",
                            f"s3://{BUCKET}/{PREFIX}", str(local)], check=True,
                           capture_output=True, timeout=600)
            return work(local / NAME)

        out.append(self.measure("get + local", mode, get_then_work))
        out.append(self.measure("local page cache", mode, lambda: work(local / NAME)))
        drop_caches()
        out.append(self.measure("local disk", mode, lambda: work(local / NAME)))
        return out

    def close(self) -> None:
        self.unmount()
        for stop in (self.group.stop, self.etcd.stop, self.s3.stop):
            try:
                stop()
            except Exception as e:  # noqa: BLE001 - stop the rest regardless
                log(f"stop: {e}")


def ratios(phases: list[dict[str, Any]]) -> dict[str, float]:
    """Return the issue's target ratios, medians over the rounds."""
    def t(phase: str, mode: str) -> float:
        vals = sorted(p["seconds"] for p in phases if p["phase"] == phase and p["mode"] == mode)
        return vals[len(vals) // 2]

    return {"warm mount seq / client seq (>= 0.8)": round(t("client warm", "seq")
                                                          / t("mount warm", "seq"), 2),
            "mount page cache / local page cache, seq (>= 0.9)":
                round(t("local page cache", "seq") / t("mount page cache", "seq"), 2),
            "get + load / warm mount load (> 1)": round(t("get + local", "load")
                                                        / t("mount warm", "load"), 2)}


def print_table(out: dict[str, Any]) -> None:
    print(f"\n{'phase':<17} {'seq s':>7} {'GiB/s':>6} {'load s':>7} {'GiB/s':>6}   "
          f"{'CPU-s mount/nodes/reader (seq; load)':>37} {'machine':>8} {'foreign CPU-s':>13}")
    for r in range(out["meta"]["repeat"]):
        for phase in PHASES:
            rows = {p["mode"]: p for p in out["phases"] if p["phase"] == phase
                    and p["round"] == r}
            s, ld = rows["seq"], rows["load"]
            cpu = "; ".join(f"{r['cpu_s']['mount']:.1f}/{r['cpu_s']['nodes']:.1f}/"
                            f"{r['cpu_s'].get('reader', 0):.1f}" for r in (s, ld))
            print(f"{phase:<17} {s['seconds']:>7.2f} {s['gibps']:>6.2f} {ld['seconds']:>7.2f} "
                  f"{ld['gibps']:>6.2f}   {cpu:>37} {s['machine_busy']:>4.0%}/"
                  f"{ld['machine_busy']:<3.0%} {s['foreign_cpu_s']:>6.1f}/{ld['foreign_cpu_s']:.1f}")
    print()
    for k, v in out["ratios"].items():
        print(f"{k}: {v}")
    m = out["meta"]
    print(f"{m['size'] / MiB:.0f} MiB shard, {m['repeat']} round(s), wall {m['wall_seconds']} s, "
          f"{m['cpus']} CPUs, load average before {m['loadavg_before']}")


def run_rounds(args: argparse.Namespace, tmp: Path, size: int, out: dict[str, Any]) -> None:
    """Start the servers, upload the shard, run every round, stop the servers."""
    bench = None
    try:
        bench = Bench(tmp, size)
        bench.mount_args = args.mount_args.split()
        log(f"uploading a {size // MiB} MiB safetensors shard")
        bench.upload()
        for r in range(args.repeat):
            for mode in args.modes.split(","):
                out["phases"] += [{**ph, "round": r} for ph in bench.workload(mode)]
    finally:
        if bench is not None:
            bench.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=1024, help="shard size in MiB [1024]")
    p.add_argument("--quick", action="store_true", help="a 256 MiB shard")
    p.add_argument("--repeat", type=int, default=1, help="rounds of every phase [1]")
    p.add_argument("--keep-tmp", action="store_true", help="keep logs and data")
    p.add_argument("--table", help="only print the table of a saved result")
    p.add_argument("--mount-args", default="", help="more `cachectl mount` options, e.g. "
                   "'--kernel-readahead 4MiB'")
    p.add_argument("--modes", default="seq,load", help="workloads to run [seq,load]")
    args = p.parse_args()
    if args.table:
        print_table(json.loads(Path(args.table).read_text()))
        return 0
    size = (256 if args.quick else args.size) * MiB
    tmp = Path(tempfile.mkdtemp(prefix="bench-mount-"))
    t0, failed = time.monotonic(), None
    out: dict[str, Any] = {"meta": {"size": size, "repeat": args.repeat, "cpus": h.NCPU,
                                    "python": platform.python_version(),
                                    "loadavg_before": os.getloadavg()[0]}, "phases": []}
    try:
        run_rounds(args, tmp, size, out)
    except BaseException as e:  # noqa: BLE001 - reported by exit_code, servers stopped
        failed = e
    finally:
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    if failed is None:
        out["ratios"] = ratios(out["phases"])
        out["meta"]["wall_seconds"] = round(time.monotonic() - t0)
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        dest = RESULTS_DIR / f"mount-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
        dest.write_text(json.dumps(out, indent=1))
        print_table(out)
        print(f"JSON: {dest.relative_to(ROOT)}")
    return h.exit_code(failed, f"bench_mount failed: {failed!r}")


if __name__ == "__main__":
    sys.exit(main())

"""Run the local stack: SeaweedFS + one cache node; warm-read a generated model and read it back."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.servers import SeaweedFS, free_port  # noqa: E402

BUCKET, PREFIX = "models", "demo-llm/v1/"
PART = 4 * 1024 * 1024


def write_safetensors(path: Path, n_bytes: int, seed: int) -> None:
    """Write a valid safetensors file with one F16 tensor of about `n_bytes`, streaming."""
    n = n_bytes // 2 * 2
    header = json.dumps({"__metadata__": {"format": "pt"},
                         "weight": {"dtype": "F16", "shape": [n // 2],
                                    "data_offsets": [0, n]}}).encode()
    header += b" " * (-len(header) % 8)
    block = hashlib.sha256(str(seed).encode()).digest() * (PART // 32)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        for done in range(0, n, PART):
            f.write(block[: min(PART, n - done)])


def make_model(folder: Path, total_mib: int) -> dict[str, Path]:
    """Create a demo model (config, tokenizer, 3 safetensors shards) and return key -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"config.json": folder / "config.json"}
    files["config.json"].write_text(json.dumps({"model_type": "demo", "hidden_size": 1024}))
    shard = total_mib * 2**20 // 3 + 12345  # not block-aligned, on purpose
    for i in range(3):
        name = f"model-{i + 1:05d}-of-00003.safetensors"
        write_safetensors(folder / name, shard, i)
        files[name] = folder / name
    return {PREFIX + k: v for k, v in files.items()}


def sha256_file(path: Path) -> str:
    """Return the hex SHA-256 of a local file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(PART):
            h.update(chunk)
    return h.hexdigest()


async def read_through(session: aiohttp.ClientSession, url: str, size: int,
                       parallel: int) -> str:
    """Read a whole object with `parallel` 4 MiB range GETs in flight; return its SHA-256."""
    sem = asyncio.Semaphore(parallel)

    async def part(start: int) -> bytes:
        end = min(size, start + PART) - 1
        async with sem, session.get(url, headers={"Range": f"bytes={start}-{end}"}) as r:
            if r.status != 206:
                raise RuntimeError(f"GET {url} bytes={start}-{end}: {r.status} {await r.text()}")
            return await r.read()

    h = hashlib.sha256()
    starts = list(range(0, size, PART))
    for i in range(0, len(starts), parallel * 2):  # bounded memory: a window of parts at once
        for data in await asyncio.gather(*(part(s) for s in starts[i:i + parallel * 2])):
            h.update(data)
    return h.hexdigest()


async def read_model(base: str, files: dict[str, Path], parallel: int) -> float:
    """Read every file of the model through the node, verify it, and return the seconds."""
    t0 = time.monotonic()
    async with aiohttp.ClientSession() as s:
        for key, path in files.items():
            url = f"{base}/{BUCKET}/{key}"
            got = await read_through(s, url, path.stat().st_size, parallel)
            if got != sha256_file(path):
                raise SystemExit(f"MISMATCH: {key} read through the cache differs from origin")
        # A loader reads the safetensors header with two small range requests.
        shard = next(k for k in files if k.endswith(".safetensors"))
        async with s.get(f"{base}/{BUCKET}/{shard}", headers={"Range": "bytes=0-7"}) as r:
            (hlen,) = struct.unpack("<Q", await r.read())
        async with s.get(f"{base}/{BUCKET}/{shard}",
                         headers={"Range": f"bytes=8-{7 + hlen}"}) as r:
            json.loads(await r.read())
    return time.monotonic() - t0


async def metric(base: str, name: str) -> float:
    """Return the sum of a metric's samples from the node's /metrics."""
    async with aiohttp.ClientSession() as s, s.get(f"{base}/metrics") as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    """Wait until the node answers /readyz, or fail with its exit status."""
    import urllib.request
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"cachenode exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("cachenode did not become ready in time")


def main() -> int:
    """Run the demo."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mib", type=int, default=384, help="model size to generate")
    ap.add_argument("--parallel", type=int, default=8, help="range GETs in flight per file")
    ap.add_argument("--keep", action="store_true", help="keep serving until Ctrl-C")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="blockcache-demo-") as tmp:
        work = Path(tmp)
        print(f"generating a {args.size_mib} MiB demo model ...")
        files = make_model(work / "model", args.size_mib)
        s3 = SeaweedFS(work / "seaweedfs")
        s3.start()
        node = None
        try:
            print(f"SeaweedFS S3 on {s3.endpoint_url}; uploading s3://{BUCKET}/{PREFIX}")
            s3.make_bucket(BUCKET)
            for key, path in files.items():
                s3.put_file(BUCKET, key, path)
            http = free_port()
            node = subprocess.Popen(
                [str(Path(sys.executable).parent / "cachenode"), "--data-dir",
                 str(work / "node"), "--capacity", "2GiB", "--http", f"127.0.0.1:{http}",
                 "--grpc", f"127.0.0.1:{free_port()}", "--log-level", "WARNING"],
                env={**os.environ, **s3.env()})
            base = f"http://127.0.0.1:{http}"
            wait_ready(base, node)
            print(f"cachenode on {base}")
            cold = asyncio.run(read_model(base, files, args.parallel))
            gets_cold = asyncio.run(metric(base, "blockcache_origin_requests_total"))
            warm = asyncio.run(read_model(base, files, args.parallel))
            gets_warm = asyncio.run(metric(base, "blockcache_origin_requests_total"))
            hits = asyncio.run(metric(base, "blockcache_block_hits_total"))
            mib = sum(p.stat().st_size for p in files.values()) / 2**20
            print(f"cold read through the cache: {mib:.0f} MiB in {cold:.2f}s "
                  f"({mib / cold:.0f} MiB/s), {gets_cold:.0f} origin requests")
            print(f"warm read (all hits):        {mib:.0f} MiB in {warm:.2f}s "
                  f"({mib / warm:.0f} MiB/s), {gets_warm - gets_cold:.0f} origin requests, "
                  f"{hits:.0f} block hits")
            print("every byte verified against the origin (SHA-256): OK")
            if args.keep:
                print(f"serving; try: curl -r 0-99 {base}/{BUCKET}/{PREFIX}config.json")
                node.wait()
        finally:
            if node is not None and node.poll() is None:
                node.terminate()
                node.wait(10)
            s3.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

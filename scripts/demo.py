"""Run the local stack (`blockcache-stack --auth`: SeaweedFS + etcd + a group of 3 cache nodes
+ a coordinator, sharing a cluster secret, the coordinator with an admin token); create a
tenant whose keys the reads use, warm a generated model with `cachectl warmup --wait` as that
tenant, then read it through the group (ring-aware client, plain HTTP range GETs via one
node, `cachectl get`) with no origin reads, verifying every byte against the origin."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from client import CacheClient  # noqa: E402
from client.stack.auth import Key, create_tenant  # noqa: E402
from client.stack.coordinator import CoordinatorProcess  # noqa: E402
from client.stack.group import LocalGroup  # noqa: E402
from client.stack.run import Stack, StackConfig  # noqa: E402

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


async def read_model(base: str, files: dict[str, Path], parallel: int, token: str) -> float:
    """Read every file of the model through the node, verify it, and return the seconds."""
    t0 = time.monotonic()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as s:
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


async def read_with_client(seeds: list[str], files: dict[str, Path], parallel: int,
                           token: str) -> float:
    """Read every file with the ring-aware client (blocks from their owners); return seconds."""
    t0 = time.monotonic()
    async with CacheClient(seeds, concurrency=parallel, token=token) as c:
        for key, path in files.items():
            info = await c.stat(BUCKET, key)
            h = hashlib.sha256()
            async for data in c.iter_range(info):
                h.update(data)
            if h.hexdigest() != sha256_file(path):
                raise SystemExit(f"MISMATCH: {key} read through the cache differs from origin")
    return time.monotonic() - t0


def main() -> int:
    """Run the demo."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mib", type=int, default=384, help="model size to generate")
    ap.add_argument("--nodes", type=int, default=3, help="cache nodes in the group")
    ap.add_argument("--parallel", type=int, default=8, help="blocks in flight per file")
    ap.add_argument("--origin-rate", default="40MB", help="the warmup's origin cap per site "
                    "(the coordinator's --site-origin-rate), so its progress shows a rate")
    ap.add_argument("--keep", action="store_true", help="keep the stack serving until Ctrl-C "
                    "(or run blockcache-stack yourself)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="blockcache-demo-") as tmp:
        work = Path(tmp)
        print(f"generating a {args.size_mib} MiB demo model ...")
        files = make_model(work / "model", args.size_mib)
        print(f"$ blockcache-stack --auth --nodes {args.nodes} --site-origin-rate "
              f"{args.origin_rate}   (SeaweedFS, etcd, the group, a coordinator)")
        config = StackConfig(base_dir=work / "stack", nodes=args.nodes, buckets=(BUCKET,),
                             auth=True, site_origin_rate=args.origin_rate)
        with Stack(config) as stack:
            print(stack.describe())
            print(f"uploading s3://{BUCKET}/{PREFIX} to the origin")
            for name, path in files.items():
                stack.s3.put_file(BUCKET, name, path)
            assert stack.group is not None and stack.coordinator is not None
            group, coord = stack.group, stack.coordinator
            print(f"$ cachectl tenant create demo --read s3://{BUCKET}/{PREFIX} "
                  f"--quota {config.site}=1GiB   (with the admin token)")
            key = create_tenant(coord, stack.admin_token, "demo", "--read",
                                f"s3://{BUCKET}/{PREFIX}", "--quota", f"{config.site}=1GiB")
            print(f"tenant demo: access key {key.key_id}, its secret and token "
                  "printed once (the reads below use the token)")
            run(group, coord, files, args, work, key)
            if args.keep:
                print("serving until Ctrl-C (the export lines above reach it)")
                try:
                    while stack.dead() is None:
                        time.sleep(1.0)
                except KeyboardInterrupt:
                    pass
    return 0


def run(group: LocalGroup, coord: CoordinatorProcess, files: dict[str, Path],
        args: argparse.Namespace, work: Path, key: Key) -> None:
    """Show the ring, warm the model, read it three ways as the tenant; print the figures."""
    cachectl = [str(Path(sys.executable).parent / "cachectl"), "--token", key.token]
    seeds = ",".join(group.seeds)
    print(f"cache group of {len(group.nodes)} nodes registered in etcd:")
    subprocess.run([*cachectl, "--nodes", seeds, "ring"], check=True)
    mib = sum(p.stat().st_size for p in files.values()) / 2**20
    blocks = sum(-(-p.stat().st_size // PART) for p in files.values())
    print(f"$ cachectl warmup s3://{BUCKET}/{PREFIX} --site local --wait")
    t0 = time.monotonic()
    subprocess.run([*cachectl, "--coordinator", coord.url, "warmup",
                    f"s3://{BUCKET}/{PREFIX}", "--site", "local", "--wait"], check=True)
    took = time.monotonic() - t0
    gets_warmup = group.metric("blockcache_origin_requests_total", op="get")
    print(f"warmup: {mib:.0f} MiB in {took:.2f}s, {gets_warmup:.0f} origin GETs for "
          f"{blocks} blocks")
    cold = asyncio.run(read_with_client(group.seeds, files, args.parallel, key.token))
    gets_read = group.metric("blockcache_origin_requests_total", op="get") - gets_warmup
    base = group.nodes[0].url
    warm = asyncio.run(read_model(base, files, args.parallel, key.token))
    gets_http = group.metric("blockcache_origin_requests_total", op="get") - gets_warmup
    print(f"read, ring-aware client:       {mib:.0f} MiB in {cold:.2f}s ({mib / cold:.0f} MiB/s), "
          f"{gets_read:.0f} origin GETs")
    print(f"read, HTTP via one node:       {mib:.0f} MiB in {warm:.2f}s ({mib / warm:.0f} MiB/s), "
          f"{gets_http - gets_read:.0f} origin GETs")
    if gets_http:
        raise SystemExit(f"reads after the warmup went to the origin {gets_http:.0f} times")
    per_node = [int(n.metric("blockcache_store_blocks")) for n in group.nodes]
    print(f"blocks per node: {per_node} (each block stored once, on its owner)")
    out = work / "download"
    subprocess.run([*cachectl, "--nodes", seeds, "get", f"s3://{BUCKET}/{PREFIX}", str(out),
                    "--state-dir", str(work / "get-state")],
                   check=True, stdout=subprocess.DEVNULL)
    for name, path in files.items():
        if sha256_file(out / name[len(PREFIX):]) != sha256_file(path):
            raise SystemExit(f"MISMATCH: cachectl get of {name}")
    print(f"cachectl get s3://{BUCKET}/{PREFIX} -> {len(files)} files")
    subprocess.run([*cachectl, "--coordinator", coord.url, "models"], check=True)
    subprocess.run([*cachectl, "--coordinator", coord.url, "tenant", "show", "demo"], check=True)
    print("every byte verified against the origin (SHA-256): OK")


if __name__ == "__main__":
    sys.exit(main())

"""`cachectl`: show a cache group and read through it from the shell (thin over CacheClient).

The commands that drive the coordinator (warmup, jobs, models, ...) are in cli_coordinator.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import IO

from cachenode.errors import CacheError
from cachenode.ranges import parse_range
from cachenode.ring import Ring
from client import cli_coordinator, cli_mount
from client.client import CacheClient, ObjectInfo
from client.errors import ClientError

DEFAULT_NODES = "127.0.0.1:8080"


def split_s3_url(url: str, want_key: bool = True) -> tuple[str, str]:
    """Return (bucket, key-or-prefix) from 's3://bucket/key'."""
    if not url.startswith("s3://"):
        raise ClientError(f"{url!r} is not s3://<bucket>/<key>")
    bucket, _, key = url[5:].partition("/")
    if not bucket or (want_key and not key):
        raise ClientError(f"{url!r} is not s3://<bucket>/<key>")
    return bucket, key


def make_client(args: argparse.Namespace) -> CacheClient:
    """Return a CacheClient for the group the flags name."""
    nodes = [n for n in (args.node or args.nodes).split(",") if n.strip()]
    etcd = [u for u in args.etcd.split(",") if u.strip()] if args.etcd else []
    return CacheClient(nodes, etcd=etcd, cluster=args.cluster, site=args.site,
                       concurrency=args.concurrency, token=args.token)


async def cmd_ring(c: CacheClient, args: argparse.Namespace, out: IO[str]) -> None:
    """Print the group's members, their state and share of the ring."""
    view = c.view
    assert view is not None
    up = {i: m.weight for i, m in view.members.items() if m.state == "up"}
    shares = Ring(up).shares() if up else {}
    if args.json:
        out.write(json.dumps({"epoch": view.epoch, "block_size": view.block_size, "members": [
            {"id": m.id, "http": m.http, "grpc": m.grpc, "weight": m.weight,
             "state": m.state, "share": shares.get(m.id, 0.0)}
            for m in sorted(view.members.values(), key=lambda m: m.id)]}) + "\n")
        return
    out.write(f"{'NODE':<24} {'STATE':<9} {'WEIGHT':>6} {'SHARE':>7}  HTTP / GRPC\n")
    for m in sorted(view.members.values(), key=lambda m: m.id):
        out.write(f"{m.id:<24} {m.state:<9} {m.weight:>6} {shares.get(m.id, 0.0):>7.1%}  "
                  f"{m.http} / {m.grpc}\n")
    out.write(f"{len(view.members)} nodes, {len(up)} up, ring epoch {view.epoch}, "
              f"block size {view.block_size}\n")


async def cmd_stat(c: CacheClient, args: argparse.Namespace, out: IO[str]) -> None:
    """Print an object's size, ETag and modification time as JSON."""
    info = await c.stat(*split_s3_url(args.url))
    out.write(json.dumps({"bucket": info.bucket, "key": info.key, "size": info.size,
                          "etag": info.etag, "last_modified": info.last_modified}) + "\n")


async def cmd_cat(c: CacheClient, args: argparse.Namespace, out: IO[str]) -> None:
    """Stream an object (or a byte range of it) to stdout, blocks read from their owners."""
    info = await c.stat(*split_s3_url(args.url))
    start, length = 0, -1
    if args.range:
        try:
            span = parse_range(f"bytes={args.range}", info.size)
        except CacheError as e:
            raise ClientError(str(e)) from None
        start, length = span.start, span.length
    sink: IO[bytes] = getattr(out, "buffer", out)  # type: ignore[arg-type]
    async for data in c.iter_range(info, start, length):
        sink.write(data)
    sink.flush()


async def cmd_get(c: CacheClient, args: argparse.Namespace, out: IO[str]) -> None:
    """Download every object under a prefix into a directory (resumable, sizes verified)."""
    bucket, prefix = split_s3_url(args.url, want_key=False)
    dest = Path(args.dir)
    objs = [o async for o in c.list_objects(bucket, prefix)
            # s3://b/llm/v1 means the object llm/v1 or the folder llm/v1/, not llm/v10/...
            if prefix.endswith("/") or not prefix or o.key == prefix
            or o.key.startswith(prefix + "/")]
    if not objs:
        raise ClientError(f"nothing under s3://{bucket}/{prefix}")
    progress = Progress(sum(o.size for o in objs), len(objs), sys.stderr)
    for o in objs:
        rel = o.key[len(prefix):].lstrip("/") if o.key != prefix else o.key.rsplit("/", 1)[-1]
        if not rel or rel.endswith("/"):
            progress.file_done(o.size)  # a directory marker, nothing to write
            continue
        try:
            await fetch_file(c, o, dest / rel, progress)
        except OSError as e:
            raise ClientError(f"cannot write {dest / rel}: {e}") from None
    progress.finish()
    out.write(json.dumps({"files": len(objs), "bytes": progress.total,
                          "fetched_bytes": progress.fetched, "seconds":
                          round(time.monotonic() - progress.t0, 3)}) + "\n")


async def fetch_file(c: CacheClient, info: ObjectInfo, path: Path, progress: Progress) -> None:
    """Write one object to `path` via `path.part`, resuming a part of the same ETag."""
    info = await c.stat(info.bucket, info.key)  # the listing's ETag may be stale
    if path.exists() and path.stat().st_size == info.size and _tag(path) == info.etag:
        progress.file_done(info.size)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    assert c.view is not None
    bs = c.view.block_size
    have = part.stat().st_size if part.exists() and _tag(part) == info.etag else 0
    have = min(have - have % bs, info.size)  # whole blocks only
    with open(part, "r+b" if have else "wb") as f:
        _set_tag(part, info.etag)
        f.truncate(have)
        f.seek(have)
        progress.advance(have, fetched=False)
        async for data in c.iter_range(info, have):
            f.write(data)
            progress.advance(len(data))
    if part.stat().st_size != info.size:
        raise ClientError(f"{path}: wrote {part.stat().st_size} of {info.size} bytes")
    os.replace(part, path)
    _set_tag(path, info.etag)
    _tag_file(part).unlink(missing_ok=True)
    progress.file_done(0)


def _tag_file(path: Path) -> Path:
    return path.with_name(f".{path.name}.etag")


def _tag(path: Path) -> str:
    try:
        return _tag_file(path).read_text().strip()
    except OSError:
        return ""


def _set_tag(path: Path, etag: str) -> None:
    _tag_file(path).write_text(etag + "\n")


class Progress:
    """A one-line progress report on stderr: files, bytes, rate, ETA."""

    def __init__(self, total: int, files: int, out: IO[str]) -> None:
        self.total, self.files, self.out = total, files, out
        self.done = self.fetched = self.files_done = 0
        self.t0 = self._shown = time.monotonic()
        self._tty = out.isatty()

    def advance(self, n: int, fetched: bool = True) -> None:
        """Count `n` more bytes done (fetched now, or already on disk)."""
        self.done += n
        self.fetched += n if fetched else 0
        self._show()

    def file_done(self, skipped_bytes: int) -> None:
        """Count a finished file (with its bytes, if it was already complete)."""
        self.files_done += 1
        self.advance(skipped_bytes, fetched=False)

    def _show(self, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._shown < (0.5 if self._tty else 5.0):
            return
        self._shown = now
        rate = self.fetched / max(now - self.t0, 1e-6)
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        line = (f"{self.files_done}/{self.files} files  {_gib(self.done)}/{_gib(self.total)} "
                f"GiB  {rate / 2**20:7.1f} MiB/s  ETA {eta:5.0f}s")
        self.out.write(("\r" + line) if self._tty else line + "\n")
        self.out.flush()

    def finish(self) -> None:
        """Show the final line."""
        self._show(final=True)
        if self._tty:
            self.out.write("\n")


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def build_parser() -> argparse.ArgumentParser:
    """Return the parser documenting every cachectl command."""
    env = os.environ.get
    p = argparse.ArgumentParser(prog="cachectl", description="Show and read through a "
                                "blockcache group. Blocks are read from their owners in "
                                "parallel; a failed node is skipped.")
    p.add_argument("--nodes", default=env("CACHECTL_NODES", DEFAULT_NODES),
                   help="seed nodes (host:port of their HTTP API, comma-separated); they "
                   f"tell the rest of the group [env CACHECTL_NODES; default {DEFAULT_NODES}]")
    p.add_argument("--node", help="one seed node URL (same as --nodes with one entry)")
    p.add_argument("--etcd", default=env("CACHECTL_ETCD", ""),
                   help="etcd URL(s) to learn the group from instead of seeds [env CACHECTL_ETCD]")
    p.add_argument("--cluster", default=env("CACHECTL_CLUSTER", "default"),
                   help="cluster name in etcd [env CACHECTL_CLUSTER; default default]")
    p.add_argument("--site", default=env("CACHECTL_SITE", "default"),
                   help="site (cache group) in etcd [env CACHECTL_SITE; default default]")
    p.add_argument("--concurrency", type=int, default=8,
                   help="blocks read in parallel (memory: this many blocks) [default 8]")
    p.add_argument("--coordinator", default=env("CACHECTL_COORDINATOR", ""), metavar="URL",
                   help="coordinator for warmup, jobs, job, models, pin, unpin, evict, policy "
                   "(host:port or http://host:port) [env CACHECTL_COORDINATOR]")
    p.add_argument("--token", default=env("CACHECTL_TOKEN", ""), metavar="TOKEN",
                   help="bearer token sent to the coordinator (the admin's or a tenant's) and "
                   "to the nodes (a tenant's) [env CACHECTL_TOKEN]")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("ring", help="list the group's nodes, state and share of the ring")
    r.add_argument("--json", action="store_true", help="print JSON")
    r.set_defaults(fn=cmd_ring)
    s = sub.add_parser("stat", help="show size, ETag and modification time of an object")
    s.add_argument("url", help="s3://bucket/key")
    s.set_defaults(fn=cmd_stat)
    c = sub.add_parser("cat", help="write an object (or --range) to stdout")
    c.add_argument("url", help="s3://bucket/key")
    c.add_argument("--range", help="byte range 'first-last', 'first-' or '-suffix'")
    c.set_defaults(fn=cmd_cat)
    g = sub.add_parser("get", help="download every object under a prefix into a directory "
                       "(resumable; complete files of the same ETag are skipped)")
    g.add_argument("url", help="s3://bucket/prefix")
    g.add_argument("dir", help="destination directory")
    g.set_defaults(fn=cmd_get)
    cli_mount.add_command(sub)
    cli_coordinator.add_commands(sub)
    return p


async def run(args: argparse.Namespace, out: IO[str]) -> int:
    """Run one command with a client for the group (or the coordinator); return the exit code."""
    if getattr(args, "coordinator_command", False):
        return await cli_coordinator.run(args, out)
    if getattr(args, "mount_command", False):
        return await cli_mount.run(args, out, make_client)
    async with make_client(args) as c:
        await args.fn(c, args, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run cachectl; exit 1 with a reason on failure (warmup --wait: 2 if the job was cancelled)."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # a background mount reruns it
    try:
        return asyncio.run(run(args, sys.stdout))
    except ClientError as e:
        print(f"cachectl: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `cachectl cat ... | head`
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`cachectl`: show a cache group and read through it from the shell (thin over CacheClient).

The commands that drive the coordinator (warmup, jobs, models, ...) are in cli_coordinator.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import IO

import aiohttp

from cachenode.errors import CacheError
from cachenode.ranges import parse_range
from cachenode.ring import Ring
from cachenode.version import version_line
from client import cli_coordinator, cli_get, cli_mount
from client.client import CacheClient
from client.errors import ClientError, connection_reason
from client.progress import format_bytes, format_time
from client.s3url import split_s3_url

DEFAULT_NODES = "127.0.0.1:8080"


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
    """Print an object's size, ETag and modification time (one line, or JSON)."""
    info = await c.stat(*split_s3_url(args.url))
    if args.json:
        out.write(json.dumps({"bucket": info.bucket, "key": info.key, "size": info.size,
                              "etag": info.etag, "last_modified": info.last_modified}) + "\n")
        return
    out.write(f"s3://{info.bucket}/{info.key}  {format_bytes(info.size)} ({info.size} bytes)  "
              f"etag {info.etag}  modified {format_time(info.last_modified)}\n")


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


def build_parser() -> argparse.ArgumentParser:
    """Return the parser documenting every cachectl command."""
    env = os.environ.get
    p = argparse.ArgumentParser(prog="cachectl", description="Show and read through a "
                                "blockcache group. Blocks are read from their owners in "
                                "parallel; a failed node is skipped.")
    p.add_argument("--version", action="version", version=version_line("cachectl"))
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
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(fn=cmd_stat)
    c = sub.add_parser("cat", help="write an object (or --range) to stdout")
    c.add_argument("url", help="s3://bucket/key")
    c.add_argument("--range", help="byte range 'first-last', 'first-' or '-suffix'")
    c.set_defaults(fn=cmd_cat)
    cli_get.add_command(sub)
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
    except (aiohttp.ClientError, ConnectionError, TimeoutError) as e:  # none escapes as noise
        print(f"cachectl: {connection_reason(e)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `cachectl cat ... | head`
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`cachectl mount`: the command line of the FUSE mount (client/mount/), thin.

Without --foreground the command starts itself again in the background and returns once the
mount is there (or says why it is not); the mount then lives until it is unmounted.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from cachenode.settings import parse_duration, parse_size
from client.client import CacheClient
from client.errors import ClientError

MOUNT_WAIT_S = 60.0


def add_command(sub: Any) -> None:
    """Add the `mount` command to cachectl's subparsers."""
    m = sub.add_parser("mount", help="mount s3://bucket/prefix/ read-only (FUSE): files read "
                       "through the group, shared by every process through the page cache")
    m.add_argument("url", help="s3://bucket/prefix/ (a folder; s3://bucket/ for all of it)")
    m.add_argument("mountpoint", help="an existing directory")
    m.add_argument("--memory", type=parse_size, default=parse_size("1GiB"),
                   help="most bytes of blocks the mount holds: read-ahead and reads in flight "
                   "[default 1GiB]")
    m.add_argument("--readahead", type=int, default=8, metavar="BLOCKS",
                   help="most blocks fetched ahead of a sequential reader (0 = none) [default 8]")
    m.add_argument("--read-timeout", type=parse_duration, default=parse_duration("30s"),
                   help="a read no node can serve gets EIO this long after the kernel asked "
                   "[default 30s]")
    m.add_argument("--list-ttl", type=parse_duration, default=parse_duration("30s"),
                   help="how often the prefix is listed again; also the kernel's entry "
                   "timeout [default 30s]")
    m.add_argument("--kernel-readahead", type=parse_size, default=parse_size("1MiB"),
                   help="the kernel's read-ahead on the mount (its bdi read_ahead_kb; needs "
                   "root; 0 = leave it; it is also what one mmap page fault reads around "
                   "itself) [default 1MiB]")
    m.add_argument("--metrics", default="", metavar="HOST:PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics")
    m.add_argument("--allow-other", action="store_true",
                   help="let other users (other pods' containers) read the mount")
    m.add_argument("--foreground", action="store_true",
                   help="stay in the foreground (logs on stderr) until unmounted")
    m.add_argument("--log-file", default="", help="the background mount's log "
                   "[default /tmp/cachectl-mount-<path hash>.log]")
    m.add_argument("--debug-fuse", action="store_true", help="log every FUSE request")
    m.set_defaults(mount_command=True)


async def run(args: argparse.Namespace, out: IO[str],
              make_client: Callable[[argparse.Namespace], CacheClient]) -> int:
    """Run `cachectl mount`: in the foreground, or start it in the background and wait."""
    from client.cli import split_s3_url

    bucket, prefix = split_s3_url(args.url, want_key=False)
    if prefix and not prefix.endswith("/"):
        prefix += "/"  # a mount is of a folder: s3://b/llm/v1 means llm/v1/, not llm/v10
    if not args.foreground:
        return await asyncio.to_thread(background, args, out)
    try:
        from client.mount.run import MountOptions, mount
    except ImportError as e:
        raise ClientError(f"cachectl mount needs pyfuse3 and libfuse3 (pip install "
                          f"'blockcache[mount]', apt-get install fuse3): {e}") from None
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    opts = MountOptions(bucket, prefix, args.mountpoint, args.memory, args.readahead,
                        args.read_timeout, args.list_ttl, args.kernel_readahead, args.metrics,
                        args.allow_other, args.debug_fuse)
    async with make_client(args) as c:
        return await mount(c, opts, sys.stderr)


def background(args: argparse.Namespace, out: IO[str]) -> int:
    """Start this command again with --foreground, detached; return once it has mounted."""
    from client.mount.mountpoint import is_live

    where = os.path.abspath(args.mountpoint)
    log_file = args.log_file or ("/tmp/cachectl-mount-"
                                 f"{hashlib.sha256(where.encode()).hexdigest()[:12]}.log")
    with open(log_file, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "client.cli", *args.argv, "--foreground"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + MOUNT_WAIT_S
    while time.monotonic() < deadline:
        if is_live(where):
            out.write(f"mounted {args.url} on {where} (pid {proc.pid}, log {log_file}); "
                      f"unmount with: fusermount3 -u {where}\n")
            return 0
        if proc.poll() is not None:
            tail = Path(log_file).read_text(errors="replace").strip().splitlines()[-3:]
            raise ClientError(f"mount failed (exit {proc.returncode}): " + " / ".join(tail))
        time.sleep(0.1)
    proc.terminate()
    raise ClientError(f"not mounted within {MOUNT_WAIT_S:g}s; see {log_file}")

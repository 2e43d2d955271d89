"""blockcache-stack: run SeaweedFS, etcd, N cache nodes and a coordinator on loopback until
Ctrl-C (SIGINT) or SIGTERM, then stop every one of them."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from cachenode.settings import ConfigError, parse_size
from cachenode.version import version_line
from client.stack.procs import die_with_parent
from client.stack.run import Stack, StackConfig

POLL_S = 1.0  # how often the stack checks that every part still runs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(prog="blockcache-stack", description=__doc__)
    p.add_argument("--nodes", type=int, default=3, help="cache nodes in the group [default 3]")
    p.add_argument("--site", default="local", help="the group's site [default local]")
    p.add_argument("--cluster", default="local", help="cluster name in etcd [default local]")
    p.add_argument("--bucket", action="append", metavar="NAME",
                   help="a bucket made in the origin at start (repeat) [default models]")
    p.add_argument("--capacity", default="2GiB", help="each node's disk budget [default 2GiB]")
    p.add_argument("--site-origin-rate", default="", metavar="RATE", help="cap on the origin "
                   "bytes/s a warmup causes per site, e.g. 100MB [default none]")
    p.add_argument("--auth", action="store_true", help="auth on: a cluster secret, an admin "
                   "token, and a tenant 'local' whose keys the export lines carry")
    p.add_argument("--dir", type=Path, help="keep the stack's data and logs here [default: a "
                   "temporary folder, removed at exit]")
    p.add_argument("--log-level", default="WARNING", help="the servers' log level "
                   "[default WARNING]")
    p.add_argument("--version", action="version", version=version_line("blockcache-stack"))
    args = p.parse_args(argv)
    if not 1 <= args.nodes <= 16:
        p.error("--nodes must be between 1 and 16")
    try:
        parse_size(args.capacity)
    except ConfigError as e:
        p.error(f"--capacity: {e}")
    return args


def interrupt(signum: int, frame: FrameType | None) -> None:
    """Raise what Ctrl-C raises, for SIGINT and SIGTERM alike, so one path stops everything."""
    raise KeyboardInterrupt


def serve(stack: Stack) -> int:
    """Start the stack, print how to use it, and wait; return the exit status."""
    t0 = time.monotonic()
    stack.start()
    print(stack.describe(), flush=True)
    print(f"\nstarted in {time.monotonic() - t0:.1f}s; Ctrl-C stops everything", flush=True)
    while (dead := stack.dead()) is None:
        time.sleep(POLL_S)
    print(f"blockcache-stack: {dead} exited; stopping the rest (logs under "
          f"{stack.config.base_dir})", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run the stack until interrupted."""
    args = parse_args(argv)
    base = args.dir or Path(tempfile.mkdtemp(prefix="blockcache-stack-"))
    config = StackConfig(base_dir=base.resolve(), nodes=args.nodes, site=args.site,
                         cluster=args.cluster, buckets=tuple(args.bucket or ["models"]),
                         auth=args.auth, capacity=args.capacity, log_level=args.log_level,
                         site_origin_rate=args.site_origin_rate)
    die_with_parent()  # a SIGKILLed stack leaves no server behind either
    stack = Stack(config)
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a shell's `cmd &` ignores it
        signal.signal(sig, interrupt)
    code = 0
    try:
        code = serve(stack)
    except KeyboardInterrupt:
        print("\nstopping ...", file=sys.stderr, flush=True)
    except (OSError, RuntimeError, TimeoutError) as e:
        print(f"blockcache-stack: {e}", file=sys.stderr)
        code = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not leave orphans
        stack.stop()
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    print("stopped", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())

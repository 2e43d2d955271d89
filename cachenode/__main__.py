"""`cachenode`: parse the configuration, run a CacheNode until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import uvloop

from cachenode.config import ConfigError, NodeConfig
from cachenode.node import CacheNode


async def serve(config: NodeConfig) -> None:
    """Run a node until a termination signal arrives, then shut it down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with CacheNode(config):
        await stop.wait()
        logging.getLogger("cachenode").info("signal received; shutting down")


def main(argv: list[str] | None = None) -> int:
    """Run the `cachenode` command."""
    try:
        config = NodeConfig.from_args(argv)
    except ConfigError as e:
        print(f"cachenode: invalid configuration: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        uvloop.run(serve(config))
    except OSError as e:
        print(f"cachenode: cannot start: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

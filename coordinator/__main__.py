"""`cachecoordinator`: parse the configuration, run a replica until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import uvloop

from cachenode.config import ConfigError
from coordinator import audit
from coordinator.app import Coordinator
from coordinator.config import CoordinatorConfig


async def serve(config: CoordinatorConfig) -> None:
    """Run a replica until a termination signal arrives, then hand over and stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Coordinator(config):
        await stop.wait()
        logging.getLogger("coordinator").info("signal received; shutting down")


def main(argv: list[str] | None = None) -> int:
    """Run the `cachecoordinator` command."""
    try:
        config = CoordinatorConfig.from_args(argv)
    except ConfigError as e:
        print(f"cachecoordinator: invalid configuration: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    audit.setup(config.audit_log)
    try:
        uvloop.run(serve(config))
    except ConfigError as e:  # a secret file that cannot be read or is too short
        print(f"cachecoordinator: invalid configuration: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"cachecoordinator: cannot start: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

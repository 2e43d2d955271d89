"""CacheNode: wires store, origin, fills, service and transports, and owns their lifecycle."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from types import TracebackType

from aiohttp import web

from cachenode.config import NodeConfig
from cachenode.fill import Filler
from cachenode.http_api import HttpApi
from cachenode.metrics import NodeMetrics
from cachenode.origin_s3 import S3Origin
from cachenode.ports import Origin
from cachenode.service import BlockService
from cachenode.store.disk import DiskStore

log = logging.getLogger(__name__)
SHUTDOWN_GRACE_S = 5.0


class CacheNode:
    """One cache node: `async with CacheNode(config) as node:` serves until the block ends."""

    def __init__(self, config: NodeConfig, origin: Origin | None = None) -> None:
        self.config = config
        self.metrics = NodeMetrics()
        self.store = DiskStore(config.data_dir, config.capacity_bytes, self.metrics,
                               fsync=config.fsync)
        self._s3 = None if origin is not None else S3Origin(config, self.metrics)
        self.origin: Origin = origin if origin is not None else self._s3  # type: ignore[assignment]
        self.filler = Filler(config, self.origin, self.store, self.metrics)
        self.service = BlockService(config, self.origin, self.filler, self.metrics)
        self._stack = AsyncExitStack()
        self.http_port = 0
        self.grpc_port = 0
        self._serving = False

    async def __aenter__(self) -> CacheNode:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def readiness(self) -> str | None:
        """Return why the node is not ready to serve, or None when it is."""
        if not self._serving:
            return "starting or stopping"
        return self.store.failed

    async def start(self) -> None:
        """Open the store, connect the origin and start listening; undo all on failure."""
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.store.open)
            self._stack.callback(self.store.close)
            if self._s3 is not None:
                await self._s3.start()
                self._stack.push_async_callback(self._s3.close)
            self._stack.push_async_callback(self.service.close)
            self._stack.push_async_callback(self.filler.close)
            await self._start_http()
            await self._start_grpc()
        except BaseException:
            await self._stack.aclose()
            raise
        self._serving = True
        log.info("cachenode serving HTTP on %s:%d, gRPC on %s:%d, data in %s (%d blocks, "
                 "%d of %d bytes)", self.config.http_addr[0], self.http_port,
                 self.config.grpc_addr[0], self.grpc_port, self.config.data_dir,
                 self.store.block_count, self.store.used_bytes, self.store.capacity)

    async def _start_http(self) -> None:
        api = HttpApi(self.service, self.metrics, self.readiness)
        runner = web.AppRunner(api.app(), access_log=None,
                               shutdown_timeout=SHUTDOWN_GRACE_S)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        host, port = self.config.http_addr
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        self.http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _start_grpc(self) -> None:
        from cachenode.grpc_api import start_grpc_server  # grpc stays out of pure imports

        server, self.grpc_port = await start_grpc_server(self.service, self.metrics,
                                                         self.config.grpc_addr)

        async def stop() -> None:
            await server.stop(SHUTDOWN_GRACE_S)

        self._stack.push_async_callback(stop)

    async def close(self) -> None:
        """Stop accepting, drain for a grace period, then close the store and origin."""
        self._serving = False
        await self._stack.aclose()

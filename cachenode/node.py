"""CacheNode: wires store, origin, fills, service and transports, and owns their lifecycle."""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import time
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any

from aiohttp import web

from cachenode.access import Authenticator, NoTenants, OpenAccess, TenantDirectory
from cachenode.auth.tenant_table import TenantTable
from cachenode.config import NodeConfig
from cachenode.fill import Filler
from cachenode.http_api import HttpApi
from cachenode.http_limits import ConnectionLimits, derive_limits
from cachenode.http_server import Gate, NodeRunner
from cachenode.limits import NodeLimits
from cachenode.metrics import NodeMetrics
from cachenode.origin_check import OriginCredentials
from cachenode.origin_s3 import S3Origin
from cachenode.peers_http import HttpPeerClient
from cachenode.ports import Origin
from cachenode.qos import TenantGate
from cachenode.routing import Router
from cachenode.s3_api import S3Api
from cachenode.s3_list import Lister
from cachenode.service import BlockService
from cachenode.store.disk import DiskStore
from cachenode.store.scrub import Scrubber
from cachenode.store.space import StoreSpace
from cachenode.warm import Admin

if TYPE_CHECKING:
    from cachenode.auth.sealing import Sealer
    from cachenode.membership import Membership, NodeRecord

log = logging.getLogger(__name__)
SHUTDOWN_GRACE_S = 5.0
LAG_PROBE_S, LAG_WARN_S = 0.25, 1.0  # event loop lag probe period, warning threshold
DRAIN_WAIT_S = 1.0  # after marking itself draining, before leaving the ring


class CacheNode:
    """One cache node: `async with CacheNode(config) as node:` serves until the block ends."""

    def __init__(self, config: NodeConfig, origin: Origin | None = None,
                 authenticator: Authenticator | None = None,
                 tenants: TenantDirectory | None = None) -> None:
        """Wire a node; `authenticator` overrides the one the config builds, `tenants` the
        directory of tenants' limits (else the --access-keys file's, else NoTenants)."""
        self.config = config
        self.authenticator: Authenticator = authenticator or OpenAccess()  # set at start
        self._given_auth, self._given_tenants = authenticator is not None, tenants is not None
        # The limits of each tenant at this site, for quotas and origin budgets: one object
        # for the node's life (a TenantTable is filled in place by the --tenants watch).
        self.tenants: TenantDirectory = (
            tenants if tenants is not None
            else TenantTable(config.site) if config.tenants else NoTenants())
        self.metrics = NodeMetrics()
        # Each tenant's site limits x this node's share of the ring (the router's, late bound).
        self.tenant_limits = NodeLimits(self.tenants, lambda: self.router.share)
        lim = self.tenant_limits
        space = StoreSpace(config.data_dir, config.capacity_bytes, config.min_free_disk,
                           config.disk_check_interval_s)
        self.store = DiskStore(config.data_dir, config.capacity_bytes, self.metrics,
                               fsync=config.fsync, space=space, quota=lim.quota_bytes)
        self.metrics.quota.rows = self.store.quota.rows
        self._s3 = None if origin is not None else S3Origin(config, self.metrics)
        self.origin: Origin = origin if origin is not None else self._s3  # type: ignore[assignment]
        self.filler = Filler(config, self.origin, self.store, self.metrics,
                             TenantGate(lim, config.block_size_bytes, self.metrics))
        grouped = bool(config.etcd_endpoints)
        self.peers = HttpPeerClient(self.metrics, config.peer_timeout_s) if grouped else None
        self.router = Router(config.node_id, self.filler, self.metrics, self.peers,
                             config.peer_memory_blocks, limited=lim.limited)
        self.service = BlockService(config, self.origin, self.filler, self.metrics, self.router,
                                    lim)
        self.lister = Lister(self.origin)
        self.credentials = OriginCredentials(self.origin, self.metrics)  # for /readyz
        self.membership: Membership | None = None
        self.limits: ConnectionLimits | None = None  # set at start, from the fd limit
        self._stack = AsyncExitStack()
        self.http_port = 0
        self.grpc_port = 0
        self.s3_port = 0  # 0 while the S3 listener is off (--s3 off)
        self.registered_at = 0.0  # when it first joined its group (0: alone)
        self.filled_since = 0.0  # when it first filled a block (1: it started with some)
        self._serving = False

    async def __aenter__(self) -> CacheNode:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def readiness(self) -> str | None:
        """Return why the node is not ready to serve, or None when it is.

        Disk trouble counts: a failed store, or a disk with no room for one block above its
        free-space floor even after eviction (reads then go to the origin uncached).
        """
        if not self._serving:
            return "starting or stopping"
        return self.store.disk_trouble(self.config.block_size_bytes) or self.credentials.problem

    async def start(self) -> None:
        """Open the store, connect the origin and start listening; undo all on failure."""
        try:
            await self._start_auth()
            await asyncio.get_running_loop().run_in_executor(None, self.store.open)
            self._stack.callback(self.store.close)
            if self._s3 is not None:
                await self._s3.start()
                self._stack.push_async_callback(self._s3.close)
            self._stack.push_async_callback(self.service.close)
            self._stack.push_async_callback(self.lister.close)
            self._stack.push_async_callback(self.filler.close)
            self._stack.push_async_callback(self.router.close)
            if self.peers is not None:  # closed after the servers drained (stack order)
                self._stack.push_async_callback(self.peers.close)
            gate = await self._start_http()
            await self._start_s3(gate)
            await self._start_grpc()
            if self.peers is not None:
                await self._join()
            lag = asyncio.ensure_future(self._watch_loop_lag())
            self._stack.callback(lag.cancel)
            await self.credentials.check()
            creds = asyncio.ensure_future(self.credentials.run())
            self._stack.callback(creds.cancel)
            if self.config.scrub_rate_bytes:
                scrub = asyncio.ensure_future(
                    Scrubber(self.store, self.metrics, self.config.scrub_rate_bytes).run())
                self._stack.callback(scrub.cancel)
        except BaseException:
            await self._stack.aclose()
            raise
        self._serving = True
        s3 = f"S3 on {self.config.s3_addr[0]}:{self.s3_port}" if self.config.s3_addr else "no S3"
        log.info("cachenode serving HTTP on %s:%d, gRPC on %s:%d, %s, data in %s (%d blocks, "
                 "%d of %d bytes)", self.config.http_addr[0], self.http_port,
                 self.config.grpc_addr[0], self.grpc_port, s3, self.config.data_dir,
                 self.store.block_count, self.store.used_bytes, self.store.space.limit)

    async def _start_auth(self) -> None:
        """Load access keys and the cluster secret (ConfigError if invalid); watch the keys
        and, with --tenants, the tenants in etcd (read once before the node serves)."""
        from cachenode.auth.edge import build_authenticator

        table = self.tenants if isinstance(self.tenants, TenantTable) else None
        counts = {"file": 0}

        def reloaded(result: str, keys: int) -> None:
            counts["file"] = keys
            self.metrics.access_key_reloads.labels(result).inc()
            self.metrics.access_keys.set(keys + (len(table) if table is not None else 0))

        auth, keys, cluster = build_authenticator(self.config, reloaded, table)
        if not self._given_auth:
            self.authenticator = auth
        if keys is not None and not self._given_tenants and table is None:
            self.tenant_limits.directory = keys  # the file's tenant= and limits
        if self.peers is not None:
            self.peers.cluster = cluster
        if table is not None and cluster is not None:
            await self._watch_tenants(table, cluster.sealer(), lambda: counts["file"])
        if keys is not None:
            watch = asyncio.ensure_future(keys.watch())
            self._stack.callback(watch.cancel)
        elif not self.authenticator.enabled:
            log.warning("no --access-keys: this node is open, anyone who reaches it reads "
                        "every object its origin credentials can read")
        if self.peers is not None and cluster is None:
            log.warning("no --cluster-secret-file: peer requests, /_warm and /_evict are "
                        "not authenticated (keep the nodes on a trusted network)")

    async def _watch_tenants(self, table: TenantTable, sealer: Sealer,
                             file_keys: Callable[[], int]) -> None:
        """Read the tenants from etcd and follow them (keys, tokens, scopes, limits)."""
        from cachenode.tenant_watch import TenantWatch

        table.sealer = sealer

        def changed(t: TenantTable) -> None:
            self.metrics.access_keys.set(len(t) + file_keys())

        watch = TenantWatch(list(self.config.etcd_endpoints), self.config.cluster, table,
                            connect_timeout_s=self.config.etcd_connect_timeout_s,
                            on_change=changed)
        await watch.start()
        self._stack.push_async_callback(watch.close)
        log.info("tenants: %d with %d keys, followed in etcd", len(table.tenants), len(table))

    async def _start_http(self) -> Gate:
        """Listen for the range API; return the connection gate the S3 listener shares."""
        admin = Admin(self.config.node_id, self.service, self.store, self.metrics)
        api = HttpApi(self.service, self.metrics, self.readiness, self.ring_view, admin,
                      body_timeout_s=self.config.header_timeout_s,
                      authenticator=self.authenticator, metrics_auth=self.config.metrics_auth)
        self.limits = node_limits(self.config)
        gate = Gate(self.limits, self.metrics)
        self._stack.callback(gate.close)  # after the runners' cleanup (stack order)
        self.http_port = await self._listen(api.app(), gate, self.config.http_addr)
        return gate

    async def _start_s3(self, gate: Gate) -> None:
        """Listen for the S3 API, under the same connection cap and deadlines as HTTP."""
        if self.config.s3_addr is None:
            return
        api = S3Api(self.service, self.metrics, self.lister, self.authenticator,
                    self.config.node_id, self.config.s3_domain)
        self.s3_port = await self._listen(api.app(), gate, self.config.s3_addr)

    async def _listen(self, app: web.Application, gate: Gate, addr: tuple[str, int]) -> int:
        """Serve `app` on host:port through a guarded runner; return the bound port."""
        runner = NodeRunner(app, gate, SHUTDOWN_GRACE_S)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, addr[0], addr[1], backlog=1024)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    def record(self, state: str = "up") -> NodeRecord:
        """Return this node's membership record (addresses as others reach them)."""
        from cachenode.membership import NodeRecord  # aetcd only for grouped nodes

        host = self.config.advertise_host or self.config.http_addr[0]
        if host in ("", "0.0.0.0", "::"):
            host = socket.getfqdn()
        return NodeRecord(id=self.config.node_id, http=f"{host}:{self.http_port}",
                          grpc=f"{host}:{self.grpc_port}", weight=self.config.weight,
                          state=state, block_size=self.config.block_size_bytes,
                          registered_at=self.registered_at, filled_since=self.filled_since)

    def ring_view(self) -> dict[str, Any]:
        """Return this node's view of its group, as /ring shows it."""
        m = self.membership
        members = m.members if m is not None else {self.config.node_id: self.record()}
        ring = self.router.ring
        shares = ring.shares() if ring is not None else {self.config.node_id: 1.0}
        return {
            "node_id": self.config.node_id, "cluster": self.config.cluster,
            "site": self.config.site, "epoch": self.router.epoch,
            "etcd_healthy": m.healthy if m is not None else None,
            "block_size": self.config.block_size_bytes,
            "members": [{"id": r.id, "http": r.http, "grpc": r.grpc, "weight": r.weight,
                         "state": r.state, "block_size": r.block_size,
                         "share": round(shares.get(r.id, 0.0), 6)}
                        for r in sorted(members.values(), key=lambda r: r.id)],
        }

    async def _join(self) -> None:
        """Register in etcd and follow the site's membership (the ring)."""
        from cachenode.membership import Membership

        def changed(members: Mapping[str, NodeRecord], epoch: int) -> None:
            self.router.update(members, epoch)

        self.registered_at = time.time()  # the group's nodes compare these: see handoff.py
        if self.store.used_bytes:
            self.filled_since = 1.0  # blocks from before: who knows which ring filled them
        else:
            self.filler.first_fill = self._first_fill

        self.membership = Membership(list(self.config.etcd_endpoints), self.config.cluster,
                                     self.config.site, self.record(),
                                     lease_ttl_s=self.config.lease_ttl_s, on_change=changed,
                                     connect_timeout_s=self.config.etcd_connect_timeout_s)
        await self.membership.start()
        self._stack.push_async_callback(self.membership.close)
        m = self.membership
        self.metrics.membership_healthy.set_function(lambda: float(m.healthy))
        self.router.update(self.membership.members, self.membership.epoch)

    def _first_fill(self, at: float) -> None:
        """Publish in this node's record when it first filled a block (see handoff.py)."""
        self.filled_since = at
        m = self.membership
        if m is None:
            return

        async def publish() -> None:
            assert m is not None
            try:
                await m.rewrite(filled_since=at)
            except Exception as e:  # written with the record when the session is back
                log.warning("could not publish the first fill: %s", e)

        task = asyncio.ensure_future(publish())
        self._stack.callback(task.cancel)

    async def _watch_loop_lag(self) -> None:
        """Measure how late the event loop runs a timer; warn when it stalls (leases!)."""
        warned = 0.0
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(LAG_PROBE_S)
            lag = time.monotonic() - t0 - LAG_PROBE_S
            self.metrics.loop_lag.observe(lag)
            if lag > LAG_WARN_S and time.monotonic() - warned > 10:
                warned = time.monotonic()
                log.warning("event loop stalled for %.2fs (lease TTL %gs)", lag,
                            self.config.lease_ttl_s)

    async def _start_grpc(self) -> None:
        from cachenode.grpc_api import start_grpc_server  # grpc stays out of pure imports

        assert self.limits is not None  # set by _start_http, which runs first
        server, self.grpc_port = await start_grpc_server(self.service, self.metrics,
                                                         self.config.grpc_addr, self.limits,
                                                         self.authenticator)

        async def stop() -> None:
            await server.stop(SHUTDOWN_GRACE_S)

        self._stack.push_async_callback(stop)

    async def close(self) -> None:
        """Leave the ring, stop accepting, drain for a grace period, close store and origin."""
        self._serving = False
        if self.membership is not None:
            try:  # peers stop routing here, while requests already sent still get answers
                await asyncio.wait_for(self.membership.set_state("draining"), DRAIN_WAIT_S)
                await asyncio.sleep(DRAIN_WAIT_S)
            except Exception as e:
                log.warning("could not mark %s draining: %s", self.config.node_id, e)
        await self._stack.aclose()


def node_limits(config: NodeConfig) -> ConnectionLimits:
    """Return the connection caps and deadlines for this process's open-files limit; log them."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    limits = derive_limits(nofile, max_connections=config.max_connections,
                           max_concurrent_fills=config.max_concurrent_fills,
                           grouped=bool(config.etcd_endpoints),
                           header_timeout_s=config.header_timeout_s,
                           idle_timeout_s=config.idle_timeout_s)
    log.info("connections: HTTP at most %d, gRPC at most %d; request heads within %gs, idle "
             "ones closed after %gs; open-files limit %d, %d fds kept for the node's own use",
             limits.http_connections, limits.grpc_connections, limits.header_timeout_s,
             limits.idle_timeout_s, nofile, limits.reserve_fds)
    if limits.fds_needed > nofile:
        log.warning("open-files limit %d is below the %d fds these connection caps can take: "
                    "raise it (ulimit -n) or lower --max-connections, else new connections "
                    "fail with resets", nofile, limits.fds_needed)
    return limits

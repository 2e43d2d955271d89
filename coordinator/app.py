"""Coordinator: one replica's lifecycle (HTTP API, election, the leader's scheduler)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Any

from aiohttp import web

from cachenode.auth.cluster import ClusterKey
from cachenode.auth.tenant_table import TenantTable
from cachenode.tenant_watch import TenantWatch
from coordinator.api import CoordinatorApi
from coordinator.auth import ApiAuth, read_admin_token
from coordinator.config import CoordinatorConfig
from coordinator.election import Election
from coordinator.metrics import CoordinatorMetrics
from coordinator.nodes import Nodes
from coordinator.origin import Lister
from coordinator.scheduler import Scheduler
from coordinator.state import EtcdStateStore
from coordinator.tenant_store import TenantStore

log = logging.getLogger("coordinator")


class Coordinator:
    """Serve the API on every replica; run jobs and eviction on the elected one."""

    def __init__(self, config: CoordinatorConfig) -> None:
        c = self.config = config
        self.metrics = CoordinatorMetrics()
        self.store = EtcdStateStore(c.etcd_hostports, c.cluster, c.replica_id)
        cluster = (ClusterKey.from_file(c.cluster_secret_file)
                   if c.cluster_secret_file is not None else None)
        self._sealer = cluster.sealer() if cluster is not None else None
        self.nodes = Nodes(self.store, c.node_timeout_s, cluster)
        admin = read_admin_token(c.admin_token_file) if c.admin_token_file else None
        self.tenants = TenantTable()  # tokens of the tenants, as this replica follows them
        self.auth = ApiAuth(admin, self.tenants, c.metrics_auth)
        self._watch = TenantWatch(list(c.etcd_endpoints), c.cluster, self.tenants) \
            if admin is not None else None
        self.lister = Lister(c.origin_endpoint_url, c.origin_region)
        self.scheduler = Scheduler(c, self.store, self.nodes, self.lister, self.metrics)
        # The election has its own etcd channel: a slow job write must not delay a refresh.
        self._election_store = EtcdStateStore(c.etcd_hostports, c.cluster, c.replica_id)
        self.election = Election(self._election_store, round(c.lease_ttl_s),
                                 on_change=self._leading)
        self._runner: web.AppRunner | None = None
        self._election_task: asyncio.Task[None] | None = None
        self.port = 0

    def _leading(self, on: bool) -> None:
        self.metrics.leader.set(int(on))
        if not on:
            self.metrics.not_leading()

    def health(self) -> dict[str, Any]:
        """Return this replica's id, who leads as etcd lately said, and whether it could tell."""
        leader_id, trouble = self.election.health()
        me = self.config.replica_id
        return {"ok": trouble is None, "id": me,
                "leader": self.election.leading and leader_id == me, "leader_id": leader_id,
                "etcd_healthy": trouble is None, "reason": trouble}

    async def start(self) -> None:
        """Start the API and join the election; close what opened if that fails."""
        try:
            if self._watch is not None:
                await self._watch.start()
            else:
                log.warning("no --admin-token-file: the coordinator API is open, anyone who "
                            "reaches it may warm, evict, pin, cancel and manage tenants")
            await self.lister.start()
            api = CoordinatorApi(self.config, self.store, self.nodes, self.lister, self.metrics,
                                 self.health, self.scheduler.wake.set, self.auth,
                                 TenantStore(self.store), self._sealer)
            self._runner = web.AppRunner(api.app(), access_log=None)
            await self._runner.setup()
            host, port = self.config.http_addr
            site = web.TCPSite(self._runner, host, port)
            await site.start()
            self.port = self._runner.addresses[0][1]
            self._election_task = asyncio.create_task(self.election.run(self.scheduler.lead))
            log.info("coordinator %s serving on %s:%d", self.config.replica_id, host, self.port)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop leading (handing over at once), stop serving, close connections."""
        if self._election_task is not None:
            self._election_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._election_task  # a leader revokes its lease: a standby takes over
        if self._runner is not None:
            await self._runner.cleanup()
        await self.nodes.close()
        if self._watch is not None:
            await self._watch.close()
        await self.lister.close()
        await self.store.close()
        await self._election_store.close()

    async def __aenter__(self) -> Coordinator:
        await self.start()
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

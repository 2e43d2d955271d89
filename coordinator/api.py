"""The coordinator's HTTP API (API.md): authenticate, validate, read or write etcd, answer JSON.

Any replica answers; requests only write etcd (a new job, a cancel or eviction request, a
pin, a policy, a tenant) and the leader acts on them. Validation happens here, before
anything is written: a bad prefix, site or pattern, a prefix with nothing in it, one outside
a tenant's scopes or past its quota, changes nothing. Job routes are here; versions and
policies in api_versions.py, tenants and keys in api_tenants.py; every route is audited
(audit.py) and authenticated (auth.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cachenode.auth.sealing import Sealer
from cachenode.blocks import ObjectMeta
from coordinator import audit
from coordinator.api_tenants import TenantRoutes
from coordinator.api_versions import VersionRoutes
from coordinator.auth import ApiAuth, Caller
from coordinator.config import CoordinatorConfig
from coordinator.errors import (
    BadPrefix,
    BadRequest,
    BadSite,
    Conflict,
    CoordinatorError,
    EmptyPrefix,
    Internal,
    NodesFailed,
    NotFound,
)
from coordinator.metrics import CoordinatorMetrics
from coordinator.model import DEFAULT_PATTERN, Job, job_of, same_warmup
from coordinator.nodes import NodeFailed, Nodes
from coordinator.origin import Lister
from coordinator.prefixes import too_high, version_folders
from coordinator.scoping import admit, require_scope, sees_job
from coordinator.state import StateStore
from coordinator.tenant_store import TenantStore
from coordinator.wire import MAX_BODY, caller_of, error_answer, read_body
from coordinator.wire import json_answer as _json

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_error = error_answer  # the answer of an error (tests call it by this name)


def as_answer(e: Exception) -> CoordinatorError:
    """Return the error a caller is told of for any exception a handler raised."""
    if isinstance(e, CoordinatorError):
        return e  # its class carries the status (errors.py)
    if isinstance(e, NodeFailed):
        return NodesFailed(str(e))
    return Internal(f"unexpected {type(e).__name__}: see the coordinator's log")


class CoordinatorApi:
    """aiohttp routes over the state store."""

    def __init__(self, config: CoordinatorConfig, store: StateStore, nodes: Nodes,
                 lister: Lister, metrics: CoordinatorMetrics,
                 health: Callable[[], dict[str, Any]], wake: Callable[[], None],
                 auth: ApiAuth | None = None, tenants: TenantStore | None = None,
                 sealer: Sealer | None = None) -> None:
        self._cfg, self._store, self._nodes, self._lister = config, store, nodes, lister
        self._metrics, self._health, self._wake = metrics, health, wake
        self._auth = auth or ApiAuth(None, None)
        self._tenant_store, self._sealer = tenants, sealer

    def app(self) -> web.Application:
        """Return the aiohttp application."""
        app = web.Application(client_max_size=MAX_BODY, middlewares=[
            audit.middleware(self._cfg.replica_id), self._errors, self._authenticate])
        r = app.router
        r.add_get("/healthz", self._healthz)
        r.add_get("/metrics", self._metrics_page)
        r.add_post("/v1/jobs", self._create_job)
        r.add_get("/v1/jobs", self._jobs)
        r.add_get("/v1/jobs/{id}", self._job)
        r.add_post("/v1/jobs/{id}/cancel", self._cancel)
        VersionRoutes(self._cfg, self._store, self._wake).add(r)
        if self._tenant_store is not None:
            TenantRoutes(self._tenant_store, self._store, self._cfg, self._sealer).add(r)
        return app

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler
                            ) -> web.StreamResponse:
        """Set the request's caller (auth.py) before any route that needs one runs."""
        if self._auth.needs_caller(request.path) or not self._auth.enabled:
            request["caller"] = self._auth.caller(request)
        return await handler(request)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Answer every error of every route through one mapping (as_answer, errors.py)."""
        try:
            return await handler(request)
        except web.HTTPException:
            raise  # aiohttp's own: no such route, wrong method
        except Exception as e:
            answer = as_answer(e)
            if isinstance(answer, Internal):
                log.exception("%s %s failed", request.method, request.path)
            request["error"] = answer  # for the audit line
            return _error(answer)

    async def _healthz(self, request: web.Request) -> web.Response:
        """Answer 200 while this replica can tell who leads, else 503 (a readiness probe)."""
        health = self._health()
        return _json(health, 200 if health["ok"] else 503)

    async def _metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self._metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- jobs -------------------------------------------------------------------------------

    async def _create_job(self, request: web.Request) -> web.Response:
        """Create a job; a body naming the id of an existing job gets that job back (200).

        A client that picks the id can send the request again after a lost answer (a 503,
        a timeout) without starting a second warmup. A tenant warms inside its read scopes
        only, and within its quota at each site (scoping.py).
        """
        caller = caller_of(request)
        body = await read_body(request)
        audit.note(request, prefix=body.get("prefix"), sites=body.get("sites"),
                   job=body.get("id"))
        job = job_of(body, self._cfg.model_pattern)
        audit.note(request, job=job.id)
        require_scope(caller, job.bucket, job.key_prefix)
        job.tenant = caller.name if caller.tenant is not None else ""
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise BadRequest("dry_run must be true or false")
        if not dry_run and (known := await self._store.get_job(job.id)) is not None:
            return await self._same_job(caller, known, job)
        for site in job.sites:
            await self._site_exists(site)
        await self._check_contents(job, explicit_pattern=bool(body.get("pattern")))
        if dry_run:
            return _json({"dry_run": await self._plan(job)})
        evict = await self._admit(request, caller, job)
        if not await self._store.create_job(job):  # the same id, created meanwhile
            known = await self._store.get_job(job.id)
            if known is not None:
                return await self._same_job(caller, known, job)
            raise Conflict(f"job id {job.id} was just taken and is gone: try again")
        for v in evict:
            await self._store.request_evict(v)
        log.info("job %s: warm %s onto %s (%s %s)%s", job.id, job.prefix, ",".join(job.sites),
                 job.model, job.version, f" for tenant {job.tenant}" if job.tenant else "")
        self._wake()
        return _json({"job": job.to_dict()}, 201)

    async def _admit(self, request: web.Request, caller: Caller, job: Job) -> list[Any]:
        """Check the prefix holds something and fits the tenant's quotas; return evictions."""
        t = caller.tenant
        if t is None or all(t.limits(s).quota_bytes is None for s in job.sites):
            return []
        manifest = await self._lister.manifest(job.bucket, job.key_prefix, self._cfg.max_objects)
        job.asked_bytes = sum(o.size for o in manifest)
        versions, jobs = await self._store.list_versions(), await self._store.list_jobs()
        evict = [v for site in job.sites for v in admit(caller, site, job.asked_bytes,
                                                        versions, jobs, job.bucket,
                                                        job.key_prefix)]
        audit.note(request, asked_bytes=job.asked_bytes,
                   evicted=[f"{v.site}:{v.prefix}" for v in evict])
        return evict

    async def _same_job(self, caller: Caller, known: Job, asked: Job) -> web.Response:
        """Answer a request for a job id that exists: that job if it is the same warmup."""
        if not sees_job(caller, known):
            raise Conflict(f"job id {known.id} is taken: choose another id")
        if not same_warmup(known, asked):
            raise Conflict(f"job id {known.id} already names a warmup of {known.prefix} onto "
                           f"{','.join(known.sites)}: choose another id")
        known.cancel_requested = known.id in await self._store.cancel_requests()
        return _json({"job": known.to_dict()}, 200)

    async def _site_exists(self, site: str) -> None:
        try:
            view = await self._nodes.view(site)
        except BadSite:
            known = await self._store.sites()
            raise BadSite(f"site {site!r} has no cache nodes registered in cluster "
                          f"{self._cfg.cluster!r} (sites with nodes: "
                          f"{', '.join(known) or 'none'})") from None
        if not any(m.state == "up" for m in view.members.values()):
            raise BadSite(f"site {site!r} has no cache node up")

    async def _check_contents(self, job: Job, explicit_pattern: bool) -> None:
        """Refuse an empty prefix, and a model's root under the default pattern (prefixes.py)."""
        page: list[ObjectMeta] = []
        async with contextlib.aclosing(self._lister.pages(job.bucket, job.key_prefix)) as pages:
            async for page in pages:
                break
        if not page:
            raise EmptyPrefix(f"no objects under {job.prefix}: nothing to warm")
        if explicit_pattern or self._cfg.model_pattern != DEFAULT_PATTERN:
            return
        if folders := version_folders(job.key_prefix, [o.key for o in page]):
            raise BadPrefix(too_high(job.bucket, job.key_prefix, folders))

    async def _plan(self, job: Job) -> dict[str, Any]:
        """Return what a job would record and warm per site (a dry run: nothing is written)."""
        manifest = await self._lister.manifest(job.bucket, job.key_prefix, self._cfg.max_objects)
        sites = {}
        for site in job.sites:
            view = await self._nodes.view(site)
            bs = view.block_size
            sites[site] = {"nodes": sum(m.state == "up" for m in view.members.values()),
                           "block_size": bs, "bytes": sum(o.size for o in manifest),
                           "blocks": sum(-(-o.size // bs) for o in manifest)}
        return {"prefix": job.prefix, "model": job.model, "version": job.version,
                "objects": len(manifest), "bytes": sum(o.size for o in manifest),
                "sites": sites}

    async def _jobs(self, request: web.Request) -> web.Response:
        try:
            limit = max(1, min(1000, int(request.query.get("limit", "50"))))
        except ValueError:
            raise BadRequest("limit must be a number") from None
        caller = caller_of(request)
        cancels = await self._store.cancel_requests()
        jobs = [j for j in await self._store.list_jobs() if sees_job(caller, j)][:limit]
        for j in jobs:
            j.cancel_requested = j.id in cancels
        return _json({"jobs": [j.to_dict() for j in jobs]})

    async def _get_job(self, request: web.Request, job_id: str) -> Job:
        job = await self._store.get_job(job_id)
        if job is None or not sees_job(caller_of(request), job):
            raise NotFound(f"no job {job_id!r}")  # another tenant's is no one's
        job.cancel_requested = job_id in await self._store.cancel_requests()
        return job

    async def _job(self, request: web.Request) -> web.Response:
        job = await self._get_job(request, request.match_info["id"])
        return _json({"job": job.to_dict()})

    async def _cancel(self, request: web.Request) -> web.Response:
        job = await self._get_job(request, request.match_info["id"])
        if job.finished_state:
            raise Conflict(f"job {job.id} already ended ({job.state})")
        await self._store.request_cancel(job.id)
        job.cancel_requested = True
        self._wake()
        return _json({"job": job.to_dict()})

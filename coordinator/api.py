"""The coordinator's HTTP API (API.md): validate, read or write etcd, answer JSON.

Any replica answers; requests only write etcd (a new job, a cancel or eviction request, a
pin, a policy) and the leader acts on them. Validation happens here, before anything is
written: a bad prefix, site or pattern, or a prefix with nothing in it, changes nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from coordinator.config import CoordinatorConfig
from coordinator.errors import (
    BadRequest,
    BadSite,
    Conflict,
    CoordinatorError,
    EmptyPrefix,
    Internal,
    NodesFailed,
    NotFound,
    UnknownVersion,
)
from coordinator.metrics import CoordinatorMetrics
from coordinator.model import Job, Version, check_site, job_of, parse_prefix, same_warmup
from coordinator.nodes import NodeFailed, Nodes
from coordinator.origin import Lister
from coordinator.planner import overlapping, versions_under
from coordinator.state import StateStore

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = 64 * 1024


def _error(err: CoordinatorError) -> web.Response:
    """Return the answer of an error: its status, Retry-After if it has one, JSON reason."""
    body = json.dumps({"error": type(err).__name__, "reason": str(err), **err.details()}) + "\n"
    headers = {} if err.retry_after_s is None else {"Retry-After": str(err.retry_after_s)}
    return web.Response(status=err.status, text=body, content_type="application/json",
                        headers=headers)


def as_answer(e: Exception) -> CoordinatorError:
    """Return the error a caller is told of for any exception a handler raised."""
    if isinstance(e, CoordinatorError):
        return e  # its class carries the status (errors.py)
    if isinstance(e, NodeFailed):
        return NodesFailed(str(e))
    return Internal(f"unexpected {type(e).__name__}: see the coordinator's log")


def _json(data: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data) + "\n",
                        content_type="application/json")


class CoordinatorApi:
    """aiohttp routes over the state store."""

    def __init__(self, config: CoordinatorConfig, store: StateStore, nodes: Nodes,
                 lister: Lister, metrics: CoordinatorMetrics,
                 health: Callable[[], dict[str, Any]], wake: Callable[[], None]) -> None:
        self._cfg, self._store, self._nodes, self._lister = config, store, nodes, lister
        self._metrics, self._health, self._wake = metrics, health, wake

    def app(self) -> web.Application:
        """Return the aiohttp application."""
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._errors])
        r = app.router
        r.add_get("/healthz", self._healthz)
        r.add_get("/metrics", self._metrics_page)
        r.add_post("/v1/jobs", self._create_job)
        r.add_get("/v1/jobs", self._jobs)
        r.add_get("/v1/jobs/{id}", self._job)
        r.add_post("/v1/jobs/{id}/cancel", self._cancel)
        r.add_get("/v1/models", self._models)
        r.add_post("/v1/pin", self._pin)
        r.add_post("/v1/unpin", self._unpin)
        r.add_post("/v1/evict", self._evict)
        r.add_get("/v1/sites/{site}/policy", self._policy)
        r.add_put("/v1/sites/{site}/policy", self._set_policy)
        return app

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
            return _error(answer)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError, RecursionError, LookupError):
            raise BadRequest("the body is not JSON") from None
        except web.HTTPRequestEntityTooLarge:
            raise BadRequest(f"the body is larger than {MAX_BODY} bytes") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        return body

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
        a timeout) without starting a second warmup.
        """
        job = job_of(await self._body(request), self._cfg.model_pattern)
        if (known := await self._store.get_job(job.id)) is not None:
            return await self._same_job(known, job)
        for site in job.sites:
            await self._site_exists(site)
        await self._not_empty(job.bucket, job.key_prefix)
        if not await self._store.create_job(job):  # the same id, created meanwhile
            known = await self._store.get_job(job.id)
            if known is not None:
                return await self._same_job(known, job)
            raise Conflict(f"job id {job.id} was just taken and is gone: try again")
        log.info("job %s: warm %s onto %s (%s %s)", job.id, job.prefix, ",".join(job.sites),
                 job.model, job.version)
        self._wake()
        return _json({"job": job.to_dict()}, 201)

    async def _same_job(self, known: Job, asked: Job) -> web.Response:
        """Answer a request for a job id that exists: that job if it is the same warmup."""
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

    async def _not_empty(self, bucket: str, prefix: str) -> None:
        async for page in self._lister.pages(bucket, prefix, limit=100):
            if page:
                return
        raise EmptyPrefix(f"no objects under s3://{bucket}/{prefix}: nothing to warm")

    async def _jobs(self, request: web.Request) -> web.Response:
        try:
            limit = max(1, min(1000, int(request.query.get("limit", "50"))))
        except ValueError:
            raise BadRequest("limit must be a number") from None
        cancels = await self._store.cancel_requests()
        jobs = (await self._store.list_jobs())[:limit]
        for j in jobs:
            j.cancel_requested = j.id in cancels
        return _json({"jobs": [j.to_dict() for j in jobs]})

    async def _get_job(self, job_id: str) -> Job:
        job = await self._store.get_job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        job.cancel_requested = job_id in await self._store.cancel_requests()
        return job

    async def _job(self, request: web.Request) -> web.Response:
        return _json({"job": (await self._get_job(request.match_info["id"])).to_dict()})

    async def _cancel(self, request: web.Request) -> web.Response:
        job = await self._get_job(request.match_info["id"])
        if job.finished_state:
            raise Conflict(f"job {job.id} already ended ({job.state})")
        await self._store.request_cancel(job.id)
        job.cancel_requested = True
        self._wake()
        return _json({"job": job.to_dict()})

    # -- versions ---------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        site = request.query.get("site")
        versions = await self._store.list_versions(check_site(site) if site else None)
        return _json({"versions": [v.to_dict() for v in versions]})

    async def _version_of(self, body: dict[str, Any]) -> Version:
        """Return the known version a {prefix, site} body names, else UnknownVersion."""
        bucket, prefix = parse_prefix(body.get("prefix"))  # type: ignore[arg-type]
        site = check_site(body.get("site"))
        versions = await self._store.list_versions(site)
        for v in versions:
            if (v.bucket, v.key_prefix) == (bucket, prefix):
                return v
        raise UnknownVersion(site, f"s3://{bucket}/{prefix}",
                             [(v.prefix, v.state) for v in versions_under(bucket, prefix,
                                                                          versions)])

    async def _pin(self, request: web.Request) -> web.Response:
        return await self._set_pin(request, True)

    async def _unpin(self, request: web.Request) -> web.Response:
        return await self._set_pin(request, False)

    async def _set_pin(self, request: web.Request, pinned: bool) -> web.Response:
        v = await self._version_of(await self._body(request))
        if pinned and v.state in ("evicting", "evicted"):
            raise Conflict(f"{v.prefix} is {v.state} at site {v.site}: warm it again, then pin "
                           "it")
        await self._store.set_pin(v.site, v.model, v.version, pinned)
        v.pinned = pinned
        return _json({"version": v.to_dict()})

    async def _evict(self, request: web.Request) -> web.Response:
        v = await self._version_of(await self._body(request))
        if v.pinned:
            raise Conflict(f"{v.prefix} is pinned at site {v.site}: unpin it first")
        if v.state == "warming":
            raise Conflict(f"{v.prefix} is being warmed at site {v.site}: cancel its job first")
        if nested := overlapping(v.bucket, v.key_prefix, await self._store.list_versions(v.site)):
            raise Conflict(f"evicting {v.prefix} would also evict "
                           f"{', '.join(n.prefix for n in nested[:5])} (nodes evict by prefix)")
        await self._store.request_evict(v)
        self._wake()
        return _json({"version": v.to_dict()}, 202)

    async def _policy(self, request: web.Request) -> web.Response:
        site = check_site(request.match_info["site"])
        keep = await self._store.get_keep(site) or self._cfg.keep_versions
        return _json({"site": site, "keep": keep})

    async def _set_policy(self, request: web.Request) -> web.Response:
        site = check_site(request.match_info["site"])
        keep = (await self._body(request)).get("keep")
        if not isinstance(keep, int) or isinstance(keep, bool) or not 1 <= keep <= 1000:
            raise BadRequest("keep must be a whole number from 1 to 1000")
        await self._store.set_keep(site, keep)
        self._wake()
        return _json({"site": site, "keep": keep})

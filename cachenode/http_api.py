"""The HTTP range API (aiohttp): parse the request, call BlockService, map errors."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cachenode import authorize
from cachenode.access import (
    AccessDenied,
    Authenticator,
    OpenAccess,
    Principal,
    require_list,
    require_read,
)
from cachenode.auth.cluster import BODY_SHA256, body_matches
from cachenode.blocks import ObjectMeta
from cachenode.conditions import evaluate, if_range_holds, pinned_etag
from cachenode.errors import (
    CacheError,
    ConditionFailed,
    MalformedRange,
    NotReady,
    ObjectChanged,
    PayloadTooLarge,
    PreconditionFailed,
    RangeNotSatisfiable,
)
from cachenode.http_body import BodySender
from cachenode.http_errors import error_response
from cachenode.http_headers import check_one_block, object_headers, parse_object_path, small_int
from cachenode.metrics import NodeMetrics
from cachenode.names import validate_name
from cachenode.peers_http import CACHED_ONLY, EPOCH, HOPS, SIZE, TENANT, TENANT_WAIT
from cachenode.qos import Charge, peer_charge
from cachenode.ranges import Span, parse_range
from cachenode.service import BlockService
from cachenode.warm import MAX_BODY_BYTES, Admin

log = logging.getLogger(__name__)
access_log = logging.getLogger("cachenode.access")


class HttpApi:
    """aiohttp routes for object reads, metrics and health."""

    def __init__(self, service: BlockService, metrics: NodeMetrics,
                 ready: Callable[[], str | None],
                 ring_view: Callable[[], dict[str, Any]] | None = None,
                 admin: Admin | None = None, body_timeout_s: float = 10.0,
                 authenticator: Authenticator | None = None, metrics_auth: bool = False
                 ) -> None:
        self._service, self._metrics, self._ready = service, metrics, ready
        self._metrics_auth = metrics_auth  # /metrics needs a credential when auth is on
        self._ring_view, self._admin = ring_view, admin
        self._body_timeout_s = body_timeout_s  # an admin body must arrive within this
        self._auth = authenticator or OpenAccess()
        self._body = BodySender(service, metrics)

    def _principal(self, request: web.Request) -> Principal:
        """Return who sent the request (cachenode/access.py), or raise AccessDenied."""
        return authorize.principal(self._auth, authorize.http_view(request, "http"))

    def _failed(self, err: CacheError) -> web.Response:
        """Return the error response of a cache error, counting refusals."""
        if isinstance(err, AccessDenied):
            self._metrics.auth_failures.labels("http", getattr(err, "code", "")).inc()
        return error_response(err)

    def app(self) -> web.Application:
        """Return the aiohttp application."""
        app = web.Application(middlewares=[self._measure], client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_page)
        app.router.add_get("/ring", self._ring)
        app.router.add_get("/_list/{bucket}", self._list)
        if self._admin is not None:  # the coordinator's warm and evict (cachenode/warm.py)
            app.router.add_post("/_warm", self._admin_call)
            app.router.add_post("/_evict", self._admin_call)
        app.router.add_route("GET", r"/{tail:[\s\S]*}", self._object)  # keys may hold \n
        app.router.add_route("HEAD", r"/{tail:[\s\S]*}", self._object)
        return app

    @web.middleware
    async def _measure(self, request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
        t0 = time.monotonic()
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as e:
            status = e.status
            raise
        except asyncio.CancelledError:
            status = 499  # the reader went away: aiohttp cancelled the handler
            raise
        finally:
            self._metrics.requests.labels("http", str(status)).inc()
            self._metrics.request_seconds.labels("http").observe(time.monotonic() - t0)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        problem = self._ready()
        if problem:
            return web.Response(status=503, text=f"not ready: {problem}\n")
        return web.Response(text="ready\n")

    def _require_credential(self, request: web.Request) -> web.Response | None:
        """Return a 403 unless the request carries a valid credential (when auth is on)."""
        if not self._auth.enabled:
            return None
        try:
            self._principal(request)
        except AccessDenied as e:
            return self._failed(e)
        return None

    async def _ring(self, request: web.Request) -> web.Response:
        if (refused := self._require_credential(request)) is not None:
            return refused  # the group's addresses are no one's business but a reader's
        if self._ring_view is None:
            return web.json_response({"error": "NoRing", "reason": "no group view"}, status=404)
        return web.json_response(self._ring_view())

    def _may(self, who: Principal, bucket: str, key: str, listing: bool = False) -> None:
        """Raise AccessDenied unless `who` may read (or list) it; count the tenant's request."""
        self._metrics.tenant_request(who.tenant, "http")
        try:
            (require_list if listing else require_read)(who, bucket, key)
        except AccessDenied:
            self._metrics.tenant_denial(who.tenant, "http")
            raise

    async def _list(self, request: web.Request) -> web.Response:
        """List objects under ?prefix= as JSON, a page at a time (?token=, ?max-keys=)."""
        q = request.query
        try:
            bucket, prefix = request.match_info["bucket"], q.get("prefix", "")
            self._may(self._principal(request), bucket, prefix, listing=True)
            limit = int(q.get("max-keys", "1000")) if q.get("max-keys", "1000").isdigit() else 0
            objs, token = await self._service.list_page(bucket, prefix, q.get("token", ""),
                                                        limit)
        except CacheError as e:
            return self._failed(e)
        return web.json_response({
            "objects": [{"key": o.key, "size": o.size, "etag": o.etag,
                         "last_modified": o.last_modified} for o in objs],
            "next_token": token})

    async def _admin_call(self, request: web.Request) -> web.Response:
        """Run POST /_warm or /_evict (JSON in, JSON out) on this node's own disk."""
        assert self._admin is not None  # the routes exist only with it
        try:
            if not self._principal(request).internal:
                raise AccessDenied("AccessDenied", f"{request.path} needs a request signed "
                                   "with the cluster secret")
            problem = self._ready()
            if problem:
                raise NotReady(problem)
            try:
                async with asyncio.timeout(self._body_timeout_s):  # no trickled bodies
                    body = await request.read()  # at most client_max_size bytes
            except web.HTTPRequestEntityTooLarge:
                raise PayloadTooLarge(request.client_max_size) from None
            except TimeoutError:
                resp = web.json_response({"error": "RequestTimeout", "reason": (
                    f"request body not complete within {self._body_timeout_s:g}s "
                    "(--header-timeout)")}, status=408, headers={"Connection": "close"})
                resp.force_close()
                return resp
            if BODY_SHA256 in request.headers and not body_matches(request.headers, body):
                raise AccessDenied("AccessDenied", f"the body does not match its signed "
                                   f"{BODY_SHA256}")
            run = self._admin.warm_json if request.path == "/_warm" else self._admin.evict_json
            return web.json_response(await run(body))
        except CacheError as e:
            return self._failed(e)

    async def _metrics_page(self, request: web.Request) -> web.Response:
        if self._metrics_auth and (refused := self._require_credential(request)) is not None:
            return refused
        resp = web.Response(body=generate_latest(self._metrics.registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def _object(self, request: web.Request) -> web.StreamResponse:
        try:
            principal = self._principal(request)
            bucket, key = parse_object_path(request.rel_url.raw_path)
            self._may(principal, bucket, key)  # before any lookup: nothing told, nothing asked
            for attempt in (1, 2):
                try:
                    return await self._serve(request, bucket, key, principal)
                except ObjectChanged as e:
                    if attempt == 2 or isinstance(e, PreconditionFailed):
                        raise  # changed twice in a row (let the reader retry), or If-Match
            raise AssertionError("unreachable")
        except CacheError as e:
            return self._failed(e)

    async def _serve(self, request: web.Request, bucket: str, key: str, who: Principal
                     ) -> web.StreamResponse:
        """Stream the object's range; peer headers count only on the cluster's own requests.

        Fills are charged to the principal's tenant, or on the cluster's own requests to the
        tenant a peer names (X-Blockcache-Tenant: whose read it forwards).
        """
        peer = who.internal
        charge = Charge(who.tenant)
        if peer and TENANT in request.headers:
            charge = peer_charge(request.headers.get(TENANT), request.headers.get(TENANT_WAIT))
        hops = small_int(request.headers.get(HOPS)) if peer else 0
        cached_only = peer and request.headers.get(CACHED_ONLY) == "1"
        meta = await self._pinned(request, bucket, key, hops, cached_only)
        epoch = small_int(request.headers.get(EPOCH), limit=2**63) if peer else 0
        if epoch and epoch != self._service.router.epoch:
            self._metrics.epoch_mismatches.inc()  # views differ: a ring change in flight
        headers = object_headers(meta)
        failed = evaluate(request.method, request.headers, meta)
        if failed is not None and failed.status == 304:
            return web.Response(status=304, headers={
                k: headers[k] for k in ("ETag", "Last-Modified")})
        if failed is not None:
            raise ConditionFailed(bucket, key, meta.etag, failed.condition)
        status, span = 200, Span(0, meta.size - 1)
        rng = request.headers.get("Range")
        if rng is not None and if_range_holds(request.headers.get("If-Range"), meta):
            try:
                span = parse_range(rng, meta.size)
            except MalformedRange as e:
                err = RangeNotSatisfiable(rng, meta.size)
                err.reason = e.reason
                raise err from None
            status = 206
            headers["Content-Range"] = span.content_range(meta.size)
        return await self._body.respond(request, meta, span, status, headers, hops,
                                        cached_only, charge)

    async def _pinned(self, request: web.Request, bucket: str, key: str, hops: int,
                      cached_only: bool) -> ObjectMeta:
        """Return the object's metadata; with If-Match, only if it still has that ETag.

        A peer's request names the version it pinned (If-Match + size): a handoff question
        is answered from disk without asking the origin, and while the origin is out of
        reach the pin is trusted, so blocks held here are still served to the group.
        """
        want = pinned_etag(request.headers.get("If-Match"))
        size = request.headers.get(SIZE, "")
        trusted = None
        if hops and want not in ("", "*") and size.isdigit() and len(size) < 20:
            validate_name(bucket, key, self._service.key_policy)
            trusted = ObjectMeta(bucket, key, int(size), want)
            check_one_block(request.headers.get("Range"), trusted, self._service.block_size)
            if cached_only:
                return trusted
        return await self._service.pinned(bucket, key, want, trusted)

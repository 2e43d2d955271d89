"""The S3-compatible read API (aiohttp, its own listener): route, authorize, call BlockService.

One more thin transport: GetObject and HeadObject read through `BlockService` exactly as a
range read does (owners, single-flight fills, failover, the pinned ETag, CRC checks, the
memory budget, sendfile for stored blocks: `http_body.BodySender`); listings, buckets and
locations come from the origin through `s3_list.Lister`. Writes never reach the origin.
Addressing is path-style (/bucket/key), and virtual-hosted (Host: bucket.<--s3-domain>)
when a domain is set.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from multidict import CIMultiDict

from cachenode import authorize, s3_xml
from cachenode.access import AccessDenied, Authenticator, Principal
from cachenode.blocks import ObjectMeta
from cachenode.conditions import evaluate, if_range_holds, pinned_etag
from cachenode.errors import (
    BadRequest,
    CacheError,
    ConditionFailed,
    MalformedRange,
    ObjectChanged,
    PreconditionFailed,
)
from cachenode.http_body import BodySender
from cachenode.http_headers import parse_object_path
from cachenode.http_limits import header_safe
from cachenode.meta_headers import OVERRIDES
from cachenode.metrics import NodeMetrics
from cachenode.names import validate_bucket
from cachenode.qos import Charge
from cachenode.ranges import Span, parse_range
from cachenode.s3_errors import S3Error, error_response, not_implemented
from cachenode.s3_list import Lister, parse_list
from cachenode.service import BlockService

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DEFAULT_TYPE = "binary/octet-stream"  # S3's Content-Type of an object stored without one
WRITES = ("PUT", "POST", "DELETE")
# Subresources this cache does not serve (reading an ACL, a version, a part...).
OBJECT_SUBRESOURCES = ("partNumber", "versionId", "acl", "tagging", "torrent", "attributes",
                       "legal-hold", "retention", "uploadId", "restore", "select")
BUCKET_SUBRESOURCES = ("acl", "analytics", "cors", "encryption", "intelligent-tiering",
                       "inventory", "lifecycle", "logging", "metrics", "notification",
                       "object-lock", "ownershipControls", "policy", "policyStatus",
                       "publicAccessBlock", "replication", "requestPayment", "tagging",
                       "uploads", "versioning", "versions", "website", "accelerate",
                       "metadataTable", "session")


class S3Api:
    """aiohttp routes of the S3 read API of one node."""

    def __init__(self, service: BlockService, metrics: NodeMetrics, lister: Lister,
                 authenticator: Authenticator, node_id: str, domain: str = "") -> None:
        self._service, self._metrics, self._lister = service, metrics, lister
        self._auth, self._domain = authenticator, domain
        self._body = BodySender(service, metrics)
        self._host_id = base64.b64encode(f"blockcache/{node_id}".encode()).decode()

    def app(self) -> web.Application:
        """Return the aiohttp application (one route: every method, every path)."""
        app = web.Application(middlewares=[self._measure])  # bodies are never read
        app.router.add_route("*", r"/{tail:[\s\S]*}", self._dispatch)  # keys may hold \n
        return app

    @web.middleware
    async def _measure(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        t0 = time.monotonic()
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except asyncio.CancelledError:
            status = 499  # the reader went away: aiohttp cancelled the handler
            raise
        finally:
            self._metrics.requests.labels("s3", str(status)).inc()
            self._metrics.request_seconds.labels("s3").observe(time.monotonic() - t0)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        """Authenticate, then route by method and by what the path names."""
        ids = {"x-amz-request-id": secrets.token_hex(8).upper(), "x-amz-id-2": self._host_id}
        resource = request.rel_url.raw_path
        who: Principal | None = None
        try:
            bucket, key = self._address(request)
            resource = f"/{bucket}/{key}" if bucket else "/"
            who = authorize.principal(self._auth, authorize.http_view(request, "s3"))
            self._metrics.tenant_request(who.tenant, "s3")
            if request.method in WRITES:
                raise not_implemented(f"{request.method} (a write)")
            if request.method not in ("GET", "HEAD"):
                raise S3Error(405, "MethodNotAllowed",
                              f"{request.method[:16]} is not allowed: this API only reads")
            if key:
                resp = await self._object(request, who, bucket, key, ids)
            elif bucket:
                resp = await self._bucket(request, who, bucket, ids)
            elif request.method == "GET":
                resp = await self._list_buckets(who, ids)
            else:
                raise S3Error(405, "MethodNotAllowed", "HEAD / names no bucket")
        except CacheError as e:
            if isinstance(e, AccessDenied) and who is not None:
                self._metrics.tenant_denial(who.tenant, "s3")
            resp = error_response(e, request.method, resource, ids)
            if request.method in WRITES:
                resp.force_close()  # do not drain an upload we refused
        return resp

    def _address(self, request: web.Request) -> tuple[str, str]:
        """Return (bucket, key) of a path-style or virtual-hosted request."""
        raw = request.rel_url.raw_path
        host = request.headers.get("Host", "").lower()
        host = host if host.startswith("[") else host.partition(":")[0]
        suffix = "." + self._domain
        if self._domain and host.endswith(suffix) and len(host) > len(suffix):
            bucket = host[:-len(suffix)]
            _, key = parse_object_path("/_" + raw)  # the whole path is the key
        else:
            bucket, key = parse_object_path(raw)
        if bucket:
            try:
                validate_bucket(bucket)
            except BadRequest as e:
                raise S3Error(400, "InvalidBucketName", str(e)) from None
        return bucket, key

    async def _object(self, request: web.Request, who: Principal, bucket: str, key: str,
                      ids: dict[str, str]) -> web.StreamResponse:
        """Serve GetObject/HeadObject; an object that changes during it is looked up once more."""
        authorize.require_read(who, bucket, key)
        query = request.rel_url.query
        for name in OBJECT_SUBRESOURCES:
            if name in query:
                raise not_implemented(f"GetObject with ?{name}")
        for attempt in (1, 2):
            try:
                return await self._get(request, bucket, key, ids, Charge(who.tenant))
            except ObjectChanged as e:
                if attempt == 2 or isinstance(e, PreconditionFailed):
                    raise
        raise AssertionError("unreachable")

    async def _get(self, request: web.Request, bucket: str, key: str,
                   ids: dict[str, str], charge: Charge) -> web.StreamResponse:
        meta = await self._service.pinned(bucket, key, pinned_etag(request.headers.get(
            "If-Match")))
        headers = object_headers(meta, ids)
        failed = evaluate(request.method, request.headers, meta)
        if failed is not None and failed.status == 304:
            keep = ("ETag", "Last-Modified", "x-amz-request-id", "x-amz-id-2")
            return web.Response(status=304, headers={k: headers[k] for k in keep})
        if failed is not None:
            raise ConditionFailed(bucket, key, meta.etag, failed.condition)
        status, span = 200, Span(0, meta.size - 1)
        rng = request.headers.get("Range")
        if rng is not None and if_range_holds(request.headers.get("If-Range"), meta):
            try:
                span = parse_range(rng, meta.size)
                status = 206
                headers["Content-Range"] = span.content_range(meta.size)
            except MalformedRange:
                pass  # S3 ignores a Range it cannot use (several ranges, bad syntax): 200
        if status == 200 and request.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED":
            headers.update(meta.checksums)  # the whole object, as the origin checksummed it
        headers.update(overrides(request.rel_url.query))
        return await self._body.respond(request, meta, span, status, headers, charge=charge)

    async def _bucket(self, request: web.Request, who: Principal, bucket: str,
                      ids: dict[str, str]) -> web.StreamResponse:
        """Serve HeadBucket, GetBucketLocation and ListObjects (v1, v2) of one bucket."""
        query = request.rel_url.query
        if request.method == "HEAD" or "location" in query:
            authorize.require_bucket(who, bucket)
            region = await self._lister.region(bucket)
            if request.method == "HEAD":
                return web.Response(headers={**ids, "x-amz-bucket-region": region or "us-east-1"})
            return _xml(s3_xml.location_xml(region), ids)
        for name in BUCKET_SUBRESOURCES:
            if name in query:
                raise not_implemented(f"bucket ?{name}")
        ask = parse_list(bucket, query, self._service.key_policy)
        q = ask.query
        authorize.require_list(who, bucket, q.prefix)
        page = await self._lister.page(q)
        if ask.version == 1:
            body = s3_xml.list_v1_xml(bucket, q.prefix, q.delimiter, ask.max_keys, ask.encode,
                                      ask.marker, page)
        else:
            body = s3_xml.list_v2_xml(bucket, q.prefix, q.delimiter, ask.max_keys, ask.encode,
                                      q.start_after, q.token, q.fetch_owner, page)
        return _xml(body, ids)

    async def _list_buckets(self, who: Principal, ids: dict[str, str]) -> web.StreamResponse:
        """Serve ListBuckets: the origin's buckets this principal may read in."""
        allowed = who.buckets()
        found = [b for b in await self._lister.buckets() if allowed is None or b.name in allowed]
        return _xml(s3_xml.buckets_xml(found, who.name, who.name), ids)


def object_headers(meta: ObjectMeta, ids: dict[str, str]) -> CIMultiDict[str]:
    """Return the headers of a GetObject/HeadObject answer, as the origin described it."""
    headers: CIMultiDict[str] = CIMultiDict(
        {"ETag": meta.etag, "Accept-Ranges": "bytes",
         "Last-Modified": email.utils.formatdate(meta.last_modified, usegmt=True),
         "Content-Type": meta.content_type or DEFAULT_TYPE})
    headers.update(meta.headers)
    headers.update(ids)
    return headers


def overrides(query: Mapping[str, str]) -> dict[str, str]:
    """Return the headers GetObject's response-* parameters set, or raise InvalidArgument."""
    out: dict[str, str] = {}
    for param, header in OVERRIDES.items():
        value = query.get(param)
        if value is None:
            continue
        if header_safe(value) != value:
            raise S3Error(400, "InvalidArgument", f"{param} must be printable ASCII "
                          "of at most 300 characters")
        out[header] = value
    return out


def _xml(body: bytes, ids: dict[str, str]) -> web.Response:
    return web.Response(body=body, headers=ids, content_type="application/xml")

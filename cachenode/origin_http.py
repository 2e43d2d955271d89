"""The origin's data path: block GETs through aiohttp, signed with SigV4, read in place.

aiobotocore's `get_object` costs 1.3-1.9 CPU-s per GiB on this box (its per-request
machinery: events, handlers, parsers, body wrappers), a bare aiohttp reader 0.6-0.7; so
block GETs skip it. Each GET is signed by botocore's `S3SigV4Auth` with the credentials of
the node's botocore session (its credential chain; refreshable credentials are frozen per
request, so they are refreshed as botocore itself would), sent with aiohttp, and its body is
copied piece by piece, as aiohttp hands the pieces over, into the fill's buffer: one copy out
of aiohttp's buffers, none between that buffer, the CRC-32C, the disk and the readers.
HEAD and LIST stay on aiobotocore (cachenode/origin_s3.py). One attempt per call: retries,
resuming where a cut body stopped, are the caller's (S3Origin._call).
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Callable
from typing import Any

import aiohttp
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError
from yarl import URL

from cachenode.blocks import ObjectMeta
from cachenode.errors import (
    CacheError,
    ObjectChanged,
    OriginDenied,
    OriginNotFound,
    OriginUnavailable,
)
from cachenode.metrics import NodeMetrics

log = logging.getLogger("cachenode.origin_s3")
READ_BUFFER_BYTES = 256 * 1024  # aiohttp's per-response buffer before it pauses the socket
ERROR_BODY_BYTES = 64 * 1024  # of an error answer, read for its S3 code
RETRYABLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                   "ServiceUnavailable", "InternalError", "RequestTimeTooSkewed"}
_CODE = re.compile(rb"<Code>([^<]{1,128})</Code>")
_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class Retryable(Exception):
    """Wraps an origin error worth another attempt (5xx, throttling, a cut body)."""

    def __init__(self, err: CacheError) -> None:
        super().__init__(str(err))
        self.err = err


class RangeReader:
    """Signed ranged GETs of pinned object versions, landed in the caller's buffer."""

    def __init__(self, endpoint_url: str, region: str, credentials: Any,
                 metrics: NodeMetrics, connect_timeout_s: float, read_timeout_s: float,
                 max_connections: int) -> None:
        """Describe a reader; `credentials` are botocore's (None: unsigned requests)."""
        self._base = endpoint_url.rstrip("/")
        self._region, self._credentials, self._metrics = region or "us-east-1", credentials, metrics
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s,
                                              sock_read=read_timeout_s)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0),
                timeout=self._timeout, auto_decompress=False, read_bufsize=READ_BUFFER_BYTES,
                skip_auto_headers=("User-Agent", "Accept-Encoding"))
        return self._session

    async def read(self, meta: ObjectMeta, start: int, into: memoryview,
                   landed: Callable[[int], None]) -> None:
        """GET `len(into)` bytes at `start` of the pinned version into `into`; call
        `landed(n)` as bytes [0, n) arrive. Raises a CacheError, Retryable, or botocore's
        connection errors (refused, timed out: the origin counts as down)."""
        url = f"{self._base}/{_quote(meta.bucket)}/{_quote(meta.key)}"
        headers = {"Range": f"bytes={start}-{start + len(into) - 1}", "If-Match": meta.etag}
        signed = await self._sign(url, headers)
        try:
            async with self._http().get(URL(url, encoded=True), headers=signed) as r:
                if r.status != 206:
                    raise await self._refused(r, meta)
                _check_range(r.headers.get("Content-Range", ""), meta, start)
                await _land(r.content, into, landed)
        except aiohttp.ClientConnectorError as e:
            raise EndpointConnectionError(endpoint_url=self._base, error=e) from e
        except aiohttp.ConnectionTimeoutError as e:
            raise ConnectTimeoutError(endpoint_url=self._base, error=e) from e
        except aiohttp.ServerTimeoutError as e:  # connected, then silent
            raise ReadTimeoutError(endpoint_url=self._base, error=e) from e
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as e:
            raise self._cut(meta, f"body cut: {e!r}") from e

    async def _sign(self, url: str, headers: dict[str, str]) -> dict[str, str]:
        """Return the headers with a SigV4 signature (from fresh credentials), if any."""
        if self._credentials is None:
            return headers
        frozen = await self._credentials.get_frozen_credentials()  # refreshed when due
        headers["Host"] = URL(url, encoded=True).host_port_subcomponent or ""
        request = AWSRequest(method="GET", url=url, headers=headers)
        S3SigV4Auth(frozen, "s3", self._region).add_auth(request)
        return dict(request.headers.items())

    async def _refused(self, r: aiohttp.ClientResponse, meta: ObjectMeta) -> Exception:
        """Return the error an origin answer other than 206 stands for, counted."""
        body = await r.content.read(ERROR_BODY_BYTES)
        m = _CODE.search(body)
        code = m.group(1).decode("ascii", "replace") if m else ""
        b, k, status = meta.bucket, meta.key, r.status
        err: CacheError
        if status == 404:
            err = OriginNotFound(b, k, "bucket") if code == "NoSuchBucket" else OriginNotFound(b, k)
        elif status in (412, 416):  # not that version any more, or not of that size
            err = ObjectChanged(b, k, meta.etag)
        elif status == 403:
            err = OriginDenied(b, k, code or "403")
        else:
            err = OriginUnavailable(b, k, f"get failed: HTTP {status} {code}")
        self._metrics.origin_errors.labels("get", code or str(status)).inc()
        if isinstance(err, (OriginNotFound, ObjectChanged)):
            return err
        log.warning("origin get s3://%s/%s failed: %s", b, k, err)
        return Retryable(err) if status >= 500 or status == 429 or code in RETRYABLE_CODES \
            else err

    def _cut(self, meta: ObjectMeta, why: str) -> Retryable:
        self._metrics.origin_errors.labels("get", "short_read").inc()
        log.warning("origin get s3://%s/%s: %s", meta.bucket, meta.key, why)
        return Retryable(OriginUnavailable(meta.bucket, meta.key, why))


async def _land(content: aiohttp.StreamReader, into: memoryview,
                landed: Callable[[int], None]) -> None:
    """Copy a body into `into` as it arrives; raise ClientPayloadError if it ends short."""
    pos, want = 0, len(into)
    while pos < want:
        piece, chunk_end = await content.readchunk()
        if not piece:
            if chunk_end:  # (b"", True): a chunked body's chunk boundary, not its end
                continue
            raise aiohttp.ClientPayloadError(f"body ended after {pos} of {want} bytes")
        n = min(len(piece), want - pos)
        into[pos:pos + n] = piece if n == len(piece) else piece[:n]
        pos += n
        landed(pos)


def _check_range(value: str, meta: ObjectMeta, start: int) -> None:
    """Raise ObjectChanged unless Content-Range starts at `start` of the pinned size."""
    m = _RANGE.fullmatch(value.strip())
    if m is None or int(m.group(1)) != start or m.group(3) != str(meta.size):
        raise ObjectChanged(meta.bucket, meta.key, meta.etag)  # the size decides every block


def _quote(name: str) -> str:
    """Return a bucket or key percent-encoded as botocore sends it (and signs it)."""
    return urllib.parse.quote(name, safe="/~")

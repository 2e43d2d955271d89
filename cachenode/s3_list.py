"""S3 listings: parse ListObjects v1/v2 parameters, and ask the origin once per listing.

Listings come from the origin with the node's credentials, one page per request (at most
1000 keys, as S3 caps max-keys). Identical listings in flight at once are one origin call
(single flight: a fleet of loaders listing one model's prefix at start-up costs the origin
one ListObjectsV2 per page). Nothing is cached beyond the flight: a listing must show an
upload the moment the origin does, and a page costs the origin little next to a block.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cachenode.listing import MAX_KEYS, BucketInfo, ListPage, ListQuery
from cachenode.names import MAX_KEY_BYTES, validate_bucket, validate_prefix
from cachenode.ports import Origin
from cachenode.s3_errors import invalid_argument
from cachenode.singleflight import SingleFlight

MAX_TOKEN_CHARS = 4096


@dataclass(frozen=True, slots=True)
class ListRequest:
    """A parsed ListObjects request: what to ask the origin, and what to echo back."""

    version: int  # 1 (marker) or 2 (list-type=2: continuation-token, start-after)
    query: ListQuery
    max_keys: int  # as echoed in MaxKeys
    encode: bool  # encoding-type=url
    marker: str = ""  # v1 Marker; v2 StartAfter is query.start_after


def parse_list(bucket: str, params: Mapping[str, str], key_policy: str) -> ListRequest:
    """Return the listing a request's query parameters ask for, or raise InvalidArgument."""
    validate_bucket(bucket)
    version = 2 if params.get("list-type") == "2" else 1
    if params.get("list-type", "2") != "2":
        raise invalid_argument(f"list-type {params['list-type'][:20]!r} is not 2")
    encoding = params.get("encoding-type")
    if encoding is not None and encoding.lower() != "url":
        raise invalid_argument("Invalid Encoding Method specified in Request")
    prefix, delimiter = params.get("prefix", ""), params.get("delimiter", "")
    validate_prefix(bucket, prefix, key_policy)
    max_keys = _max_keys(params.get("max-keys"))
    after = params.get("start-after", "") if version == 2 else params.get("marker", "")
    token = params.get("continuation-token", "") if version == 2 else ""
    if version == 2 and "continuation-token" in params and not token:
        raise invalid_argument("The continuation token provided is incorrect")
    for name, value, limit in (("delimiter", delimiter, MAX_KEY_BYTES),
                               ("start-after/marker", after, MAX_KEY_BYTES),
                               ("continuation-token", token, MAX_TOKEN_CHARS)):
        if len(value.encode("utf-8", "surrogatepass")) > limit:
            raise invalid_argument(f"{name} is longer than {limit} bytes")
    owner = params.get("fetch-owner", "false").lower() == "true"
    query = ListQuery(bucket, prefix, delimiter, after, token, min(max_keys, MAX_KEYS),
                      owner if version == 2 else True)
    return ListRequest(version, query, min(max_keys, MAX_KEYS), encoding is not None,
                       after if version == 1 else "")


def _max_keys(text: str | None) -> int:
    """Return max-keys (default 1000; more is capped at 1000 as S3 does)."""
    if text is None:
        return MAX_KEYS
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        raise invalid_argument("Provided max-keys not an integer or within integer range")
    return int(text)


class Lister:
    """Listings, buckets and bucket regions from the origin, one call per identical flight."""

    def __init__(self, origin: Origin) -> None:
        self._origin = origin
        self._pages: SingleFlight[ListPage] = SingleFlight(cancel_abandoned=True)
        self._buckets: SingleFlight[list[BucketInfo]] = SingleFlight(cancel_abandoned=True)
        self._regions: SingleFlight[str] = SingleFlight(cancel_abandoned=True)

    async def page(self, query: ListQuery) -> ListPage:
        """Return one listing page (an empty one for max-keys=0, without asking)."""
        if query.limit == 0:
            return ListPage(())
        page, _ = await self._pages.do(query, lambda: self._origin.list_objects(query))
        return page

    async def buckets(self) -> list[BucketInfo]:
        """Return the buckets the node's origin credentials can see."""
        found, _ = await self._buckets.do("buckets", self._origin.list_buckets)
        return found

    async def region(self, bucket: str) -> str:
        """Return a bucket's region ('' = us-east-1), or raise OriginNotFound."""
        validate_bucket(bucket)
        region, _ = await self._regions.do(bucket, lambda: self._origin.bucket_region(bucket))
        return region

    async def close(self) -> None:
        """Cancel origin calls in flight."""
        for flight in (self._pages, self._buckets, self._regions):
            await flight.close()

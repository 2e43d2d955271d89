"""What the HTTP read API parses from requests and puts in responses (pure, no I/O)."""

from __future__ import annotations

import email.utils
import urllib.parse

from cachenode.blocks import ObjectMeta
from cachenode.errors import BadRequest, MalformedRange, RangeNotSatisfiable
from cachenode.peers_http import SIZE
from cachenode.ranges import parse_range


def parse_object_path(raw_path: str) -> tuple[str, str]:
    """Return (bucket, key) from a raw, percent-encoded path '/<bucket>/<key>'."""
    bucket_raw, _, key_raw = raw_path.lstrip("/").partition("/")
    try:
        bucket = urllib.parse.unquote(bucket_raw, errors="strict")
        key = urllib.parse.unquote(key_raw, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("path is not valid percent-encoded UTF-8") from None
    return bucket, key


def object_headers(meta: ObjectMeta) -> dict[str, str]:
    """Return the validator and type headers of an object response."""
    return {
        "ETag": meta.etag,
        "Last-Modified": email.utils.formatdate(meta.last_modified, usegmt=True),
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
    }


def small_int(text: str | None, limit: int = 16) -> int:
    """Return a non-negative header integer capped at `limit` (0 if absent or not one)."""
    ok = text is not None and text.isascii() and text.isdigit() and len(text) < 20
    return min(int(text), limit) if ok else 0  # type: ignore[arg-type]


def check_one_block(rng: str | None, meta: ObjectMeta, block_size: int) -> None:
    """Raise BadRequest unless `rng` names exactly one whole block of `meta`.

    A peer's pin (If-Match + X-Blockcache-Size) is trusted without a HEAD only for what
    peers ask: one whole block. Anything else (no Range, a size with no blocks, a span
    across blocks) is no peer request.
    """
    span = None
    if rng is not None and meta.size > 0:
        try:
            span = parse_range(rng, meta.size)
        except (MalformedRange, RangeNotSatisfiable):
            span = None
    if span is None or span.start % block_size or span.length != min(
            block_size, meta.size - span.start):
        raise BadRequest(f"a forwarded read must name one whole block of the pinned version "
                         f"({SIZE}: {meta.size}, Range: {(rng or '')[:80]!r})")

"""Which object headers of an origin HEAD the cache keeps and sends on (pure, bounded).

An S3 GetObject/HeadObject answer carries the object's Content-Type, its user metadata
(x-amz-meta-*, at most 2 KB on S3) and the representation headers it was stored with
(Cache-Control, Content-Disposition, Content-Encoding, Content-Language, Expires). The cache
keeps exactly those, plus the whole-object checksums (x-amz-checksum-*), from the same HEAD
that gave the ETag, so they describe that version. What one object may keep is bounded
(MAX_HEADER_BYTES): an origin that is not S3 could send anything.
"""

from __future__ import annotations

from collections.abc import Mapping

from cachenode.blocks import Headers

REPRESENTATION = ("cache-control", "content-disposition", "content-encoding",
                  "content-language", "expires")
META_PREFIX = "x-amz-meta-"
CHECKSUM_PREFIX = "x-amz-checksum-"  # x-amz-checksum-crc32 ..., and x-amz-checksum-type
MAX_HEADER_BYTES = 8 * 1024  # names and values of one object's kept headers together
MAX_VALUE_BYTES = 2 * 1024
# GetObject's response-* query parameters and the header each one overrides (S3 API).
OVERRIDES = {"response-content-type": "Content-Type",
             "response-content-disposition": "Content-Disposition",
             "response-cache-control": "Cache-Control",
             "response-content-language": "Content-Language",
             "response-content-encoding": "Content-Encoding",
             "response-expires": "Expires"}


def kept_headers(raw: Mapping[str, str]) -> tuple[str, Headers, Headers]:
    """Return (content type, kept headers, checksums) of an origin HEAD's headers.

    Names are lower case; a header whose value is not printable ASCII is dropped (it could
    not be sent on unchanged), and so is everything past MAX_HEADER_BYTES.
    """
    budget = MAX_HEADER_BYTES
    content_type = ""
    headers: list[tuple[str, str]] = []
    checksums: list[tuple[str, str]] = []
    for name, value in raw.items():
        name = name.lower()
        if not _sendable(value):
            continue
        if name == "content-type":
            content_type = value
            continue
        if name.startswith(CHECKSUM_PREFIX):
            into = checksums
        elif name in REPRESENTATION or name.startswith(META_PREFIX):
            into = headers
        else:
            continue
        budget -= len(name) + len(value)
        if budget < 0:
            break
        into.append((name, value))
    return content_type, tuple(headers), tuple(checksums)


def _sendable(value: str) -> bool:
    """Return whether a header value can go out unchanged (printable ASCII, bounded)."""
    return len(value) <= MAX_VALUE_BYTES and all(" " <= c <= "~" or c == "\t" for c in value)

"""HTTP conditional requests (RFC 9110 section 13) against one object version, without I/O.

Both read APIs (the range API and the S3 API) evaluate the same preconditions here, in
RFC 9110's order (section 13.2.2), which is also S3's: If-Match (else If-Unmodified-Since)
decides 412, then If-None-Match (else If-Modified-Since) decides 304 for GET and HEAD.
S3 documents the pairs the same way: If-Match true with If-Unmodified-Since false is 200,
If-None-Match false (the ETag matches) with If-Modified-Since true is 304.

Dates compare at one-second resolution (HTTP-date has no more). An object whose
modification time is unknown (0) ignores the date conditions rather than guessing.
If-Range only ever trusts a strong ETag (see `if_range_holds`).
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC

from cachenode.blocks import ObjectMeta

MAX_FIELD_LEN = 4096  # longer validator lists are ignored, not parsed


@dataclass(frozen=True, slots=True)
class Outcome:
    """A precondition that stops the request: 304 Not Modified or 412 Precondition Failed."""

    status: int
    condition: str  # the header that decided, e.g. "If-None-Match"


def evaluate(method: str, headers: Mapping[str, str], meta: ObjectMeta) -> Outcome | None:
    """Return the 304/412 outcome of a request's preconditions, or None to serve it."""
    if_match = headers.get("If-Match")
    if if_match is not None:
        if not etag_matches(if_match, meta.etag, weak=False):
            return Outcome(412, "If-Match")
    else:
        since = http_date(headers.get("If-Unmodified-Since"))
        if since is not None and meta.last_modified and int(meta.last_modified) > since:
            return Outcome(412, "If-Unmodified-Since")
    safe = method in ("GET", "HEAD")
    if_none = headers.get("If-None-Match")
    if if_none is not None:
        if etag_matches(if_none, meta.etag, weak=True):
            return Outcome(304 if safe else 412, "If-None-Match")
    elif safe:
        since = http_date(headers.get("If-Modified-Since"))
        if since is not None and meta.last_modified and int(meta.last_modified) <= since:
            return Outcome(304, "If-Modified-Since")
    return None


def etag_matches(field: str, etag: str, weak: bool) -> bool:
    """Return whether an If-Match/If-None-Match list names `etag` ('*' names any).

    Strong comparison (If-Match) never matches a weak tag; weak comparison (If-None-Match)
    ignores the W/ prefix. An unquoted tag is read as quoted, as S3 and SeaweedFS do.
    """
    field = field.strip()
    if field == "*":
        return True
    if len(field) > MAX_FIELD_LEN:
        return False
    for tag in field.split(","):
        tag = tag.strip()
        is_weak = tag.startswith("W/")
        if is_weak:
            if not weak:
                continue
            tag = tag[2:]
        if tag and _quoted(tag) == _quoted(etag.removeprefix("W/")):
            return True
    return False


def pinned_etag(if_match: str | None) -> str:
    """Return the one strong ETag an If-Match names (quoted), '*', or '' for anything else."""
    if if_match is None:
        return ""
    value = if_match.strip()
    if value == "*" or not value or "," in value or value.startswith("W/"):
        return "*" if value == "*" else ""
    return _quoted(value)


def if_range_holds(value: str | None, meta: ObjectMeta) -> bool:
    """Return whether an If-Range validator still matches (absent counts as matching).

    Only a strong ETag can match. A date cannot: S3's Last-Modified has one-second
    resolution, so two versions written within a second would look the same and a reader
    could stitch their bytes (RFC 9110 section 13.1.5 requires a strong validator).
    """
    if value is None:
        return True
    value = value.strip()
    return value.startswith('"') and value == meta.etag


def http_date(value: str | None) -> int | None:
    """Return the unix seconds of an HTTP-date, or None if absent or not a valid date."""
    if value is None or len(value) > 64:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:  # HTTP-dates are GMT; an obsolete form without a zone too
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def _quoted(tag: str) -> str:
    return tag if tag.startswith('"') and tag.endswith('"') and len(tag) >= 2 else f'"{tag}"'

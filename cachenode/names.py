"""Object names the node accepts: S3 bucket names, and keys under the origin's key policy.

Every API (HTTP range reads, gRPC, /_warm, /_evict, /_list) checks names here, before any
block id is computed or the origin is asked. Two policies, one per kind of origin:

- ``strict`` (default): refuse keys an origin that stores keys as file paths reads as another
  key. SeaweedFS (measured, `tests/servers.py`) collapses empty segments (``a//b`` is ``a/b``,
  a leading ``/`` is dropped, ``d//`` is the directory ``d/``), reads ``\\`` as ``/`` (so
  ``..\\x`` is a ``..`` segment: HTTP 400, which a HEAD reports without a reason), and refuses
  segments over 255 bytes. Without this check each spelling would get its own block ids for
  the same bytes, each fetched again, and evict-by-prefix would miss them.
- ``verbatim``: pass every key through as is, for origins where ``a//b``, ``a/b/`` and ``a\\b``
  are distinct objects (AWS S3 itself, GCS).

Under both, ``.`` and ``..`` segments, NUL, empty keys and keys over 1024 bytes are refused.
"""

from __future__ import annotations

from cachenode.errors import BadRequest

MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255  # a file name, at origins that store keys as paths
KEY_POLICIES = ("strict", "verbatim")
_VERBATIM_HINT = ("--origin-keys verbatim passes such keys on, for origins that keep them "
                  "distinct (AWS S3)")


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _aliased(what: str, text: str, segments: list[str]) -> None:
    """Raise BadRequest if `segments` of `text` would alias under the strict policy."""
    if "\\" in text:
        raise BadRequest(f"{what} {text[:80]!r} contains a backslash, which an origin that "
                         f"stores keys as paths (SeaweedFS) reads as '/'; {_VERBATIM_HINT}")
    if "" in segments:
        raise BadRequest(f"{what} {text[:80]!r} has an empty path segment ('//', or a "
                         "leading or trailing '/'), which an origin that stores keys as paths "
                         f"(SeaweedFS) drops, reading another key; {_VERBATIM_HINT}")


def validate_bucket(bucket: str) -> None:
    """Raise BadRequest unless `bucket` is a plausible S3 bucket name."""
    if not (3 <= len(bucket) <= 63) or not all(c.isascii() and (c.isalnum() or c in ".-_")
                                                for c in bucket):
        raise BadRequest(f"invalid bucket name {bucket[:80]!r}")


def validate_name(bucket: str, key: str, policy: str = "strict") -> None:
    """Raise BadRequest unless bucket and key name one object safely under `policy`."""
    validate_bucket(bucket)
    if not key:
        raise BadRequest("missing object key: use /<bucket>/<key>")
    if _nbytes(key) > MAX_KEY_BYTES:
        raise BadRequest(f"object key longer than {MAX_KEY_BYTES} bytes")
    segments = key.split("/")
    if "\x00" in key or any(seg in (".", "..") for seg in segments):
        raise BadRequest("object key contains '.' or '..' segments or NUL")
    if policy == "verbatim":
        return
    _aliased("object key", key, segments)
    if any(_nbytes(seg) > MAX_SEGMENT_BYTES for seg in segments):
        raise BadRequest(f"object key has a path segment longer than {MAX_SEGMENT_BYTES} "
                         "bytes, which an origin that stores keys as paths cannot hold")


def validate_prefix(bucket: str, prefix: str, policy: str = "strict") -> None:
    """Raise BadRequest unless `prefix` can start keys that `validate_name` accepts."""
    validate_bucket(bucket)
    if _nbytes(prefix) > MAX_KEY_BYTES or "\x00" in prefix:
        raise BadRequest(f"prefix must be at most {MAX_KEY_BYTES} bytes, without NUL")
    whole = prefix.split("/")[:-1]  # segments a '/' ends; the last one may go on in a key
    if any(seg in (".", "..") for seg in whole):
        raise BadRequest("prefix contains '.' or '..' segments")
    if policy != "verbatim":
        _aliased("prefix", prefix, whole)

"""Pure: the s3://bucket/key URLs cachectl takes."""

from __future__ import annotations

from client.errors import ClientError


def split_s3_url(url: str, want_key: bool = True) -> tuple[str, str]:
    """Return (bucket, key-or-prefix) from 's3://bucket/key'."""
    if not url.startswith("s3://"):
        raise ClientError(f"{url!r} is not s3://<bucket>/<key>")
    bucket, _, key = url[5:].partition("/")
    if not bucket or (want_key and not key):
        raise ClientError(f"{url!r} is not s3://<bucket>/<key>")
    return bucket, key

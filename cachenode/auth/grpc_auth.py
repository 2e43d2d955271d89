"""SigV4 for gRPC calls: the same access keys sign a canonical form of the call.

A gRPC call has no URL, so both sides sign one they build alike: method POST, path
`/blockcache.v1.BlockCache/<Method>`, a query of every request field that says what is
read (bucket, key, offsets, ETag, block index, flags; URI-encoded, sorted), host
`grpc.blockcache` and the call metadata `x-amz-date`, `x-amz-content-sha256`
(UNSIGNED-PAYLOAD) and `authorization` (AWS4-HMAC-SHA256, service s3). So the secret never
travels, a signature covers exactly one read and is good for the 15-minute window, and the
verifier, key file, scopes and error codes are those of the HTTP and S3 APIs. Any SigV4
signer produces it (botocore's SigV4Auth over `http://grpc.blockcache/<path>?<query>`, see
tests/unit/test_grpc_auth.py). Pure: no grpc import.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field

from cachenode.access import RequestView
from cachenode.auth.sigv4 import UNSIGNED_PAYLOAD, Credential, sign

SIGNING_HOST = "grpc.blockcache"
SERVICE_PATH = "/blockcache.v1.BlockCache/"
FIELDS: dict[str, tuple[str, ...]] = {
    "Stat": ("bucket", "key"),
    "ReadRange": ("bucket", "key", "offset", "length", "etag"),
    "ReadBlock": ("bucket", "key", "etag", "object_size", "index", "hops", "ring_epoch",
                  "cached_only"),
}
SIGNED = ("host", "x-amz-content-sha256", "x-amz-date")


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def call_query(method: str, message: object) -> str:
    """Return the query string standing for a call's request fields, sorted by name."""
    return "&".join(f"{name}={urllib.parse.quote(_text(getattr(message, name)), safe='')}"
                    for name in sorted(FIELDS[method]))


def call_view(method: str, message: object, metadata: Iterable[tuple[str, object]]
              ) -> RequestView:
    """Return the request view of a gRPC call (text metadata only; host is fixed)."""
    pairs = [(k, v) for k, v in metadata if isinstance(v, str) and k.lower() != "host"]
    target = f"{SERVICE_PATH}{method}?{call_query(method, message)}"
    return RequestView.of("POST", target, [*pairs, ("host", SIGNING_HOST)], "grpc")


@dataclass(frozen=True)
class GrpcCredentials:
    """An access key a gRPC client signs its calls with."""

    key_id: str
    secret: str = field(repr=False)
    region: str = "us-east-1"

    def metadata(self, method: str, message: object, now: float | None = None
                 ) -> tuple[tuple[str, str], ...]:
        """Return the call metadata that authenticates one call of `method` with `message`."""
        ts = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        md = (("x-amz-date", ts), ("x-amz-content-sha256", UNSIGNED_PAYLOAD))
        view = call_view(method, message, md)
        cred = Credential(self.key_id, ts[:8], self.region, "s3")
        return (*md, ("authorization", sign(view, SIGNED, cred, self.secret, ts)))

"""Cluster trust: requests between nodes (and, later, from the coordinator) signed with a secret.

`--cluster-secret-file` holds one secret shared by the group. A node signs each peer read
and handoff question with HMAC-SHA256 over the method, raw path and query, the headers that
steer it (Range, If-Match and the X-Blockcache-* peer headers, among them the tenant a fill
is charged to; a body's SHA-256), the Unix time and a random nonce; the receiver accepts it
within +-5 minutes of its own clock. A captured request can be replayed inside that window:
for block reads that is acceptable (it reads again the block it carried, which the
eavesdropper saw already); POSTs (/_warm, /_evict) are kept from replays by the edge (each
nonce once). Pure: stdlib only; `from_file` reads a file.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from pathlib import Path

from cachenode.access import AccessDenied, RequestView
from cachenode.auth.sealing import Sealer
from cachenode.settings import ConfigError

HEADER = "X-Blockcache-Auth"
BODY_SHA256 = "X-Blockcache-Body-Sha256"  # hex SHA-256 of a POST body, signed with it
WINDOW_S = 300
MIN_SECRET_BYTES = 16
SIGNED = ("range", "if-match", "x-blockcache-size", "x-blockcache-hops",
          "x-blockcache-epoch", "x-blockcache-cached-only", BODY_SHA256.lower(),
          "x-blockcache-tenant", "x-blockcache-tenant-wait")  # whose fill it is, how patient
_VALUE = re.compile(r"t=([0-9]{1,12}),n=([0-9a-f]{16}),sig=([0-9a-f]{64})")


class ClusterKey:
    """The cluster secret: signs and verifies requests between the cluster's own processes."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(f"the cluster secret must be at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret

    def __repr__(self) -> str:
        return "ClusterKey(<secret>)"

    def sealer(self) -> Sealer:
        """Return the sealer of tenants' secrets keyed from this secret (auth/sealing.py)."""
        return Sealer(self._secret)

    @classmethod
    def from_file(cls, path: Path) -> ClusterKey:
        """Return the key in a file (surrounding white space dropped), or raise ConfigError."""
        try:
            secret = Path(path).read_bytes().strip()
        except OSError as e:
            raise ConfigError(f"--cluster-secret-file {path}: cannot read it: {e}") from None
        try:
            return cls(secret)
        except ConfigError as e:
            raise ConfigError(f"--cluster-secret-file {path}: {e}") from None

    def _mac(self, t: int, nonce: str, method: str, raw_path: str, raw_query: str,
             headers: Mapping[str, str]) -> str:
        lines = ["BLOCKCACHE-HMAC-SHA256", str(t), nonce, method, raw_path, raw_query]
        lines += [f"{h}:{' '.join(headers.get(h, '').split())}" for h in SIGNED]
        msg = "\n".join(lines).encode("utf-8", "surrogateescape")
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def sign(self, method: str, raw_path: str, raw_query: str, headers: Mapping[str, str],
             now: float) -> str:
        """Return the X-Blockcache-Auth value for a request with these headers (any case)."""
        lower = {k.lower(): v for k, v in headers.items()}
        t, nonce = int(now), os.urandom(8).hex()  # the nonce tells two equal requests apart
        return f"t={t},n={nonce},sig={self._mac(t, nonce, method, raw_path, raw_query, lower)}"

    def verify(self, view: RequestView, now: float) -> str:
        """Return the request's signature if it is valid now, else raise AccessDenied."""
        m = _VALUE.fullmatch(view.headers.get(HEADER.lower(), ""))
        if m is None:
            raise AccessDenied("AccessDenied", f"{HEADER} must be t=<unix time>,n=<nonce>,"
                               "sig=<hex>")
        t, nonce, sig = int(m.group(1)), m.group(2), m.group(3)
        want = self._mac(t, nonce, view.method, view.raw_path, view.raw_query, view.headers)
        if not hmac.compare_digest(want, sig):
            raise AccessDenied("AccessDenied", "the cluster signature does not match (is "
                               "--cluster-secret-file the same on every node?)")
        if abs(now - t) > WINDOW_S:
            raise AccessDenied("AccessDenied", f"the cluster signature is {now - t:+.0f}s "
                               f"old, outside +-{WINDOW_S}s (are the clocks in sync?)")
        if view.method not in ("GET", "HEAD") and not view.headers.get(BODY_SHA256.lower()):
            raise AccessDenied("AccessDenied", f"a signed {view.method} must sign its body "
                               f"({BODY_SHA256})")
        return sig


def body_matches(headers: Mapping[str, str], body: bytes) -> bool:
    """Return whether a body has the SHA-256 its signed X-Blockcache-Body-Sha256 names."""
    want = headers.get(BODY_SHA256, headers.get(BODY_SHA256.lower(), ""))
    return hmac.compare_digest(hashlib.sha256(body).hexdigest(), want.strip().lower())

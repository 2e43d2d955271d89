"""The node's Authenticator: access keys (SigV4) for readers, the cluster secret for peers.

Built from the config by `build_authenticator`: with neither `--access-keys` nor
`--cluster-secret-file` the node is open (OpenAccess), as before. Otherwise:

- A request signed with the cluster secret (X-Blockcache-Auth, HTTP only) is the cluster's
  own: `CLUSTER`, internal and unrestricted; a bad cluster signature is refused outright
  (a peer with another secret or a skewed clock should fail loudly, not read as a client).
- Peer headers (X-Blockcache-Hops, -Cached-Only, -Size) without a cluster signature: with
  keys, refused; without keys, the request is an ordinary client's (its principal is not
  internal, so the API ignores those headers).
- Otherwise SigV4 (header or presigned URL) with a key from the KeySource: its principal;
  no credentials at all: AccessDenied with keys, an open (not internal) principal without.

Issue 12 extends this by adding KeySources (tenants in etcd) and schemes (bearer tokens)
to `_client`, and the coordinator signing with ClusterKey; the transports stay as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from cachenode.access import AccessDenied, Authenticator, OpenAccess, Principal, RequestView
from cachenode.auth import claims
from cachenode.auth.cluster import HEADER, WINDOW_S, ClusterKey
from cachenode.auth.keys import AccessKey, KeyFile
from cachenode.auth.sigv4 import signature_matches
from cachenode.config import NodeConfig

log = logging.getLogger(__name__)
CLUSTER = Principal("cluster", (), unrestricted=True, internal=True)
ANONYMOUS = Principal("anonymous", (), unrestricted=True)  # no keys: open, yet not a peer
PEER_HEADERS = ("x-blockcache-hops", "x-blockcache-cached-only", "x-blockcache-size")
SEEN_MAX = 100_000  # signed POSTs remembered against replays (each at most WINDOW_S x 2)


class KeySource(Protocol):
    """Where access keys come from (a file today; tenants in etcd later)."""

    def get(self, key_id: str) -> AccessKey | None: ...


def has_peer_headers(request: RequestView) -> bool:
    """Return whether a request carries headers only the cluster's own requests may send."""
    h = request.headers
    return (h.get("x-blockcache-hops", "0") not in ("", "0")
            or any(name in h for name in PEER_HEADERS[1:]))


class EdgeAuthenticator:
    """Authenticate readers by access key and the cluster's own requests by its secret."""

    def __init__(self, keys: KeySource | None, cluster: ClusterKey | None = None) -> None:
        self._keys, self._cluster = keys, cluster
        self._seen: dict[str, float] = {}  # signature of a signed POST -> when it goes stale

    @property
    def enabled(self) -> bool:
        """Return whether readers need credentials (access keys are configured)."""
        return self._keys is not None

    def authenticate(self, request: RequestView, now: float) -> Principal:
        """Return the request's principal, or raise AccessDenied saying why."""
        if request.transport == "http":
            if HEADER.lower() in request.headers:
                return self._internal(request, now)
            if has_peer_headers(request) and self.enabled:
                raise AccessDenied("AccessDenied", "X-Blockcache peer headers are only "
                                   "accepted on requests signed with the cluster secret")
        return self._client(request, now)

    def _internal(self, request: RequestView, now: float) -> Principal:
        """Return CLUSTER for a valid cluster signature, else refuse."""
        if self._cluster is None:
            raise AccessDenied("AccessDenied", "this node has no --cluster-secret-file")
        sig = self._cluster.verify(request, now)
        if request.method not in ("GET", "HEAD"):
            self._once(sig, now)
        return CLUSTER

    def _once(self, sig: str, now: float) -> None:
        """Refuse a signed POST seen before (within the window it is valid in)."""
        if len(self._seen) > SEEN_MAX or (self._seen and next(iter(self._seen.values())) < now):
            self._seen = {s: t for s, t in self._seen.items() if t >= now}
        if sig in self._seen:
            raise AccessDenied("AccessDenied", "this signed request was seen before (replay)")
        self._seen[sig] = now + 2 * WINDOW_S

    def _client(self, request: RequestView, now: float) -> Principal:
        """Return the principal of a reader's SigV4 credentials."""
        if self._keys is None:
            return ANONYMOUS  # open node: credentials, if any, are not checked
        claim = claims.claim_of(request)
        if claim is None:
            raise AccessDenied("AccessDenied", "credentials required: sign the request "
                               "(AWS SigV4) or use a presigned URL")
        key = self._keys.get(claim.credential.key_id)
        if key is None:
            raise AccessDenied("InvalidAccessKeyId", f"the access key id "
                               f"{claim.credential.key_id} does not exist here")
        claims.check_signature_format(claim)
        if not signature_matches(request, claim, key.secret):
            raise AccessDenied("SignatureDoesNotMatch", "the request signature we calculated "
                               "does not match the signature you provided: check your key "
                               "and signing method")
        claims.check_time(claim, now)
        return key.principal


def build_authenticator(config: NodeConfig,
                        on_reload: Callable[[str, int], None] | None = None
                        ) -> tuple[Authenticator, KeyFile | None, ClusterKey | None]:
    """Return the authenticator the config asks for, its key file and cluster key (I/O)."""
    cluster = (ClusterKey.from_file(config.cluster_secret_file)
               if config.cluster_secret_file else None)
    keys = None
    if config.access_keys_file:
        keys = KeyFile(config.access_keys_file, on_reload)
        keys.load()
    if keys is None and cluster is None:
        return OpenAccess(), None, None
    return EdgeAuthenticator(keys, cluster), keys, cluster

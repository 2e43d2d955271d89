"""This node's part of each tenant's site limits: its share of the ring times the site's limit.

Pure (no I/O). A site's quota, origin rate and concurrent fills are enforced node by node:
blocks are spread over the ring by hash and only a block's owner fills it, so each node holds
and fills about its share of every tenant's bytes. The error of that split: a tenant holding
n blocks site-wide has about n x share of them on a node, give or take sqrt(n x share x
(1 - share)) (binomial); a node caps the tenant at its share, so the site never holds more than
the quota (plus one block per node, see store/quota.py), and a tenant can be capped on one
node while another still has room: with 2 TiB of 4 MiB blocks on 10 nodes that is ~0.4% of the
quota, with 1 GiB on 3 nodes ~9%. Concurrent fills are rounded to whole fills, at least one.
"""

from __future__ import annotations

from collections.abc import Callable

from cachenode.access import TenantDirectory


def node_share(shares: dict[str, float], node_id: str) -> float:
    """Return this node's share of the ring (1.0 alone; one more node's if it is not on it).

    A node off the ring (weight 0, draining) still fills blocks whose owners failed: it gets
    the share it would have as one more equal node, never 0 (which would refuse everything).
    """
    if not shares:
        return 1.0
    share = shares.get(node_id, 0.0)
    return share if share > 0 else 1.0 / (len(shares) + 1)


class NodeLimits:
    """Each tenant's limits on this node: the site's (from the directory) x this node's share."""

    def __init__(self, directory: TenantDirectory, share: Callable[[], float]) -> None:
        self.directory, self._share = directory, share

    def quota_bytes(self, tenant: str) -> int | None:
        """Return the bytes `tenant` may hold on this node, or None (no quota)."""
        if not tenant:
            return None
        q = self.directory.limits(tenant).quota_bytes
        return None if q is None else int(q * self._share())

    def origin_rate(self, tenant: str) -> float | None:
        """Return the origin bytes/s `tenant`'s fills may take on this node, or None."""
        if not tenant:
            return None
        r = self.directory.limits(tenant).origin_bytes_per_s
        return None if r is None else r * self._share()

    def origin_fills(self, tenant: str) -> int | None:
        """Return how many of `tenant`'s fills may be in flight at once here, or None."""
        if not tenant:
            return None
        f = self.directory.limits(tenant).origin_fills
        return None if f is None else max(1, round(f * self._share()))

    def limited(self, tenant: str) -> bool:
        """Return whether `tenant` has an origin budget here (rate or concurrent fills)."""
        if not tenant:
            return False
        lim = self.directory.limits(tenant)
        return lim.origin_bytes_per_s is not None or lim.origin_fills is not None

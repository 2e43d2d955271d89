"""Every Prometheus object of a cache node, named after the data flow (one registry per node).

Per-tenant series carry a `tenant` label from `NodeMetrics.tenant`: '' (no auth, the cluster
itself) is `_none`, the first MAX_TENANT_LABELS other tenants a node meets keep their name
for the life of the process, and any more are summed under `_other`, so a node's series stay
bounded however many tenants come and go.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
MAX_TENANT_LABELS = 64
NO_TENANT, OTHER_TENANTS = "_none", "_other"
# (tenant, warmed bytes, read-through bytes, this node's share of its quota or None)
QuotaRow = tuple[str, int, int, int | None]


def process_metrics(registry: CollectorRegistry, component: str) -> None:
    """Register process metrics (CPU, RSS, fds), python_info and blockcache_build_info."""
    from cachenode.version import version

    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    Gauge("blockcache_build_info", "1, labelled with what runs: the component, its version "
          "and Python's", ["component", "version", "python"], registry=registry).labels(
        component, version(), platform.python_version()).set(1)


class TenantLabels:
    """Map tenant names to a bounded set of label values."""

    def __init__(self, cap: int = MAX_TENANT_LABELS) -> None:
        self._cap = cap
        self._named: set[str] = set()

    def __call__(self, tenant: str) -> str:
        """Return the label value of `tenant`."""
        if not tenant:
            return NO_TENANT
        if tenant in self._named:
            return tenant
        if len(self._named) < self._cap:
            self._named.add(tenant)
            return tenant
        return OTHER_TENANTS


class _QuotaCollector(Collector):
    """The quota gauges, read from the store at scrape time (nothing on the fill path)."""

    def __init__(self, labels: TenantLabels) -> None:
        self._labels = labels
        self.rows: Callable[[], Iterable[QuotaRow]] = lambda: ()

    def collect(self) -> Iterator[Metric]:
        used: dict[tuple[str, str], float] = {}
        limit: dict[str, float] = {}
        for tenant, warmed, read, share in self.rows():
            t = self._labels(tenant)
            used[(t, "warmed")] = used.get((t, "warmed"), 0) + warmed
            used[(t, "read")] = used.get((t, "read"), 0) + read
            if share is not None:
                limit[t] = limit.get(t, 0) + share
        g = GaugeMetricFamily("blockcache_tenant_quota_used_bytes", "Bytes of blocks held "
                              "here per tenant, by class (warmed/read)", labels=["tenant", "class"])
        for (t, cls), v in sorted(used.items()):
            g.add_metric([t, cls], v)
        yield g
        g = GaugeMetricFamily("blockcache_tenant_quota_limit_bytes", "This node's share of "
                              "each tenant's site quota (site quota x share of the ring)",
                              labels=["tenant"])
        for t, v in sorted(limit.items()):
            g.add_metric([t], v)
        yield g


class NodeMetrics:
    """The counters, gauges and histograms of one node, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created is noise
        r = self.registry = registry or CollectorRegistry()
        p = "blockcache_"
        self.requests = Counter(p + "requests", "Requests served, by API and status",
                                ["api", "status"], registry=r)
        self.request_seconds = Histogram(p + "request_seconds", "Time to serve a request",
                                         ["api"], buckets=_LATENCY_BUCKETS, registry=r)
        self.http_connections = Gauge(p + "http_connections",
                                      "Open HTTP connections (admitted under the cap)",
                                      registry=r)
        self.http_refused = Counter(p + "http_connections_refused",
                                    "HTTP connections over --max-connections, answered 503",
                                    registry=r)
        self.http_header_timeouts = Counter(p + "http_header_timeouts",
                                            "HTTP connections closed because a request head "
                                            "did not arrive within --header-timeout",
                                            registry=r)
        self.hits = Counter(p + "block_hits", "Block reads served from local disk", registry=r)
        self.misses = Counter(p + "block_misses", "Block reads not found on local disk",
                              registry=r)
        self.stalled_readers = Counter(p + "stalled_readers",
                                       "Readers disconnected after taking no bytes for "
                                       "--send-timeout", registry=r)
        self.bytes_served = Counter(p + "served_bytes", "Bytes sent to readers, by source",
                                    ["source"], registry=r)
        self.fills = Counter(p + "fills", "Block fills started from origin", registry=r)
        self.fills_deduped = Counter(p + "singleflight_joins",
                                     "Block reads that joined a fill already in flight",
                                     registry=r)
        self.fill_seconds = Histogram(p + "fill_seconds", "Time to fill one block from origin",
                                      buckets=_LATENCY_BUCKETS, registry=r)
        self.origin_requests = Counter(p + "origin_requests", "Requests sent to the origin",
                                       ["op"], registry=r)
        self.origin_errors = Counter(p + "origin_errors", "Failed origin calls, by kind",
                                     ["op", "kind"], registry=r)
        self.origin_bytes = Counter(p + "origin_bytes", "Bytes read from the origin", registry=r)
        self.evictions = Counter(p + "evictions", "Blocks evicted to stay under capacity",
                                 registry=r)
        self.evicted_bytes = Counter(p + "evicted_bytes", "Bytes of blocks deleted, by reason: "
                                     "capacity (room for new blocks), quota (a tenant over "
                                     "its share here), evict (a /_evict of a prefix)",
                                     ["reason"], registry=r)
        self.read_seconds = Histogram(p + "read_seconds", "Time of an object read on the "
                                      "range or S3 API, from its first block asked for to "
                                      "its last byte sent, by the slowest source of its "
                                      "blocks (disk < peer < origin)", ["source"],
                                      buckets=_LATENCY_BUCKETS, registry=r)
        self.warm_blocks = Counter(p + "warm_blocks",
                                   "Blocks a warm request asked for, by result "
                                   "(present/filled/failed)", ["result"], registry=r)
        self.evict_prefix_blocks = Counter(p + "evict_prefix_blocks",
                                           "Blocks deleted by evict-prefix requests", registry=r)
        self.evict_prefix_bytes = Counter(p + "evict_prefix_bytes",
                                          "Bytes deleted by evict-prefix requests", registry=r)
        self.corrupt_blocks = Counter(p + "corrupt_blocks",
                                      "Blocks dropped because their bytes failed the recorded "
                                      "CRC-32C, or file and index disagreed", registry=r)
        self.scrubbed_bytes = Counter(p + "scrubbed_bytes",
                                      "Bytes of cold blocks checked by the background scrub",
                                      registry=r)
        self.scrub_passes = Counter(p + "scrub_passes",
                                    "Passes of the background scrub over the whole index",
                                    registry=r)
        self.store_bytes = Gauge(p + "store_bytes", "Bytes of blocks on local disk", registry=r)
        self.store_blocks = Gauge(p + "store_blocks", "Blocks on local disk", registry=r)
        self.capacity_bytes = Gauge(p + "store_capacity_bytes", "Configured disk capacity",
                                    registry=r)
        self.effective_capacity = Gauge(p + "store_effective_capacity_bytes",
                                        "Most bytes of blocks the store holds now: the "
                                        "configured capacity or what fits above the free-space "
                                        "floor, the lesser", registry=r)
        self.disk_free = Gauge(p + "store_disk_free_bytes",
                               "Free bytes on the data dir's filesystem (statvfs, kept up to "
                               "date with the store's own writes between looks)", registry=r)
        self.disk_floor = Gauge(p + "store_disk_floor_bytes",
                                "Free bytes the store keeps on its filesystem (--min-free-disk)",
                                registry=r)
        self.enospc = Counter(p + "store_enospc", "Block or index writes that found the disk "
                              "full (ENOSPC); each shrinks the store to what fits", registry=r)
        self.fills_in_flight = Gauge(p + "fills_in_flight", "Block fills running or queued",
                                     registry=r)
        self.metadata_lookups = Counter(p + "metadata_lookups",
                                        "Object metadata lookups, by result (hit/miss)",
                                        ["result"], registry=r)

        self.peer_reads = Counter(p + "peer_reads",
                                  "Blocks asked of their owner, by result (ok/failover)",
                                  ["result"], registry=r)
        self.peer_reads_in_flight = Gauge(p + "peer_reads_in_flight",
                                          "Block reads from other nodes holding a slot now",
                                          registry=r)
        self.peer_bytes = Counter(p + "peer_bytes", "Bytes received from other nodes",
                                  registry=r)
        self.peer_errors = Counter(p + "peer_errors",
                                   "Peer reads that failed in transport (peer skipped 2s)",
                                   registry=r)
        self.handoffs = Counter(p + "handoffs",
                                "Misses asked of the block's previous owner, by result",
                                ["result"], registry=r)
        self.loop_lag = Histogram(p + "loop_lag_seconds", "How late the event loop ran a "
                                  "timer (stalls delay etcd keepalives and every request)",
                                  buckets=_LATENCY_BUCKETS, registry=r)
        self.epoch_mismatches = Counter(p + "ring_epoch_mismatches",
                                        "Forwarded reads whose sender saw another ring epoch",
                                        registry=r)
        self.ring_nodes = Gauge(p + "ring_nodes", "Nodes on this node's ring (up)", registry=r)
        self.membership_healthy = Gauge(p + "membership_healthy",
                                        "1 while registered in etcd, 0 while etcd is out of "
                                        "reach (serving with the last ring seen)", registry=r)
        self.auth_failures = Counter(p + "auth_failures",
                                     "Requests refused for their credentials or scope (403), "
                                     "by API and S3 error code", ["api", "code"], registry=r)
        self.access_keys = Gauge(p + "access_keys", "Access keys loaded from --access-keys",
                                 registry=r)
        self.access_key_reloads = Counter(p + "access_key_reloads",
                                          "Reads of the --access-keys file after a change, by "
                                          "result (ok/invalid: the old keys kept)", ["result"],
                                          registry=r)

        self.tenant = TenantLabels()  # tenant -> label value, bounded
        self._tenant_metrics(r)
        self.origin_credentials_ok = Gauge(p + "origin_credentials_ok", "0 while the origin "
                                           "refuses this node's credentials (the last check "
                                           "of them), else 1", registry=r)
        self.origin_credentials_ok.set(1)
        process_metrics(r, "node")

    def _tenant_metrics(self, r: CollectorRegistry) -> None:
        p = "blockcache_tenant_"
        self.tenant_requests = Counter(p + "requests", "Requests per tenant (the principal's), "
                                       "by API", ["tenant", "api"], registry=r)
        self.tenant_served_bytes = Counter(p + "served_bytes", "Bytes sent to a tenant's "
                                           "readers, by source (disk/origin/peer)",
                                           ["tenant", "source"], registry=r)
        self.tenant_denied = Counter(p + "denied", "Requests of a tenant refused for their "
                                     "scope (403), by API", ["tenant", "api"], registry=r)
        self.tenant_fills = Counter(p + "fills", "Block fills from origin charged to a tenant "
                                    "(the one whose read or warmup started them)", ["tenant"],
                                    registry=r)
        self.tenant_origin_bytes = Counter(p + "origin_bytes", "Origin bytes of the fills "
                                           "charged to a tenant", ["tenant"], registry=r)
        self.tenant_throttled = Counter(p + "throttled", "Fills held back by their tenant's "
                                        "origin budget: waited, or refused (503 SlowDown)",
                                        ["tenant", "outcome"], registry=r)
        self.tenant_evicted_bytes = Counter(p + "evicted_bytes", "Bytes of a tenant's blocks "
                                            "evicted: for its quota (over its share here) or "
                                            "for capacity", ["tenant", "reason"], registry=r)
        self.quota = _QuotaCollector(self.tenant)  # .rows is set by the node
        r.register(self.quota)

    def tenant_request(self, tenant: str, api: str) -> None:
        """Count one request of `tenant` on `api`."""
        self.tenant_requests.labels(self.tenant(tenant), api).inc()

    def tenant_denial(self, tenant: str, api: str) -> None:
        """Count one request of `tenant` refused for its scope on `api`."""
        self.tenant_denied.labels(self.tenant(tenant), api).inc()

    def value(self, name: str, **labels: str) -> float:
        """Return the current value of a sample, for tests and the CLI (0 if absent)."""
        v = self.registry.get_sample_value(name, labels or None)
        return 0.0 if v is None else v

"""Every Prometheus object of the coordinator, in its own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class CoordinatorMetrics:
    """Counters and gauges named after the data flow: jobs, blocks warmed, versions evicted."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.leader = Gauge("blockcache_coordinator_leader",
                            "1 while this replica is the elected leader", registry=r)
        self.jobs = Counter("blockcache_coordinator_jobs",
                            "warmup jobs finished, by final state", ["state"], registry=r)
        self.jobs_running = Gauge("blockcache_coordinator_jobs_running",
                                  "warmup jobs this replica is running", registry=r)
        self.blocks = Counter("blockcache_coordinator_warm_blocks",
                              "blocks confirmed by owners, by result (filled from origin, "
                              "present already, failed after retries)", ["result"], registry=r)
        self.bytes = Counter("blockcache_coordinator_warm_bytes",
                             "bytes of blocks confirmed on their owners", registry=r)
        self.retries = Counter("blockcache_coordinator_warm_retries",
                               "block warm attempts repeated after a failure", registry=r)
        self.evictions = Counter("blockcache_coordinator_evicted_versions",
                                 "model versions evicted from a site", ["site"], registry=r)
        self.evicted_bytes = Counter("blockcache_coordinator_evicted_bytes",
                                     "bytes of blocks nodes deleted on eviction", registry=r)

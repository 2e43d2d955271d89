"""Every Prometheus object of the coordinator, in its own registry."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics

from cachenode.metrics import process_metrics
from coordinator.model import JOB_STATES, VERSION_STATES, Job, Version


class CoordinatorMetrics:
    """Counters and gauges named after the data flow: jobs, blocks warmed, versions evicted."""

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created is noise
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
        self.job_states = Gauge("blockcache_coordinator_jobs_by_state", "jobs in etcd by "
                                "state, as the leader last read them (0 on other replicas)",
                                ["state"], registry=r)
        self.version_states = Gauge("blockcache_coordinator_versions", "model versions by "
                                    "site and state, as the leader last read them",
                                    ["site", "state"], registry=r)
        self.bytes_left = Gauge("blockcache_coordinator_warm_bytes_left", "bytes the running "
                                "jobs have still to confirm, all sites", registry=r)
        self.rate = Gauge("blockcache_coordinator_warm_rate_bytes", "bytes/s the running jobs "
                          "confirm, over the last 10 s", registry=r)
        self.eta = Gauge("blockcache_coordinator_warm_eta_seconds", "the longest ETA of the "
                         "running jobs (0 when none runs or none can tell)", registry=r)
        process_metrics(r, "coordinator")

    def show_state(self, jobs: Iterable[Job], versions: Iterable[Version]) -> None:
        """Set the job and version gauges (and the running jobs' bytes, rate and ETA)."""
        counts = dict.fromkeys(JOB_STATES, 0)
        left = rate = eta = 0.0
        for j in jobs:
            counts[j.state] = counts.get(j.state, 0) + 1
            if j.state == "running":
                p = j.progress
                left += max(0, p.bytes_total - p.bytes_done)
                rate += p.rate_bytes_per_s
                eta = max(eta, p.eta_s or 0.0)
        for state, n in counts.items():
            self.job_states.labels(state).set(n)
        self.version_states.clear()
        for site, state in {(v.site, s) for v in versions for s in VERSION_STATES}:
            self.version_states.labels(site, state).set(0)
        for v in versions:
            self.version_states.labels(v.site, v.state).inc()
        self.bytes_left.set(left)
        self.rate.set(rate)
        self.eta.set(eta)

    def not_leading(self) -> None:
        """Clear what only the leader knows."""
        for state in JOB_STATES:
            self.job_states.labels(state).set(0)
        self.version_states.clear()
        for g in (self.bytes_left, self.rate, self.eta):
            g.set(0)

"""What the mount did: counters, their Prometheus form on --metrics, and the unmount summary."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

GiB = 2**30


@dataclass
class Stats:
    """Counters of one mount (touched only on its event loop)."""

    fuse_reads: int = 0  # read requests from the kernel: page-cache misses
    fuse_read_bytes: int = 0
    memory_hits: int = 0  # kernel reads whose blocks were all in memory already
    group_blocks: int = 0  # blocks fetched from the cache group
    group_bytes: int = 0
    group_retries: int = 0  # block fetches tried again after no node could serve them
    readahead_started: int = 0
    readahead_used: int = 0  # read-ahead blocks a reader then read
    readahead_unused: int = 0  # read-ahead blocks evicted before anyone read them
    readahead_skipped: int = 0  # read-ahead not started: no room in --memory
    opens: int = 0
    stale_opens: int = 0  # opens that found a newer version at the origin (ESTALE, retried)
    unvalidated_opens: int = 0  # opens pinned to the listed version: no node answered
    open_files: int = 0
    listings: Counter[str] = field(default_factory=Counter)  # ok | failed
    errors: Counter[str] = field(default_factory=Counter)  # EIO answers by cause
    files: int = 0
    bytes: int = 0
    memory_bytes: int = 0
    memory_peak_bytes: int = 0
    memory_budget_bytes: int = 0
    page_cache_bytes: int = -1  # the mount's files in the page cache (cachestat), -1 unknown
    started: float = field(default_factory=time.monotonic)

    def summary(self, where: str) -> str:
        """Return the one-line summary printed at unmount."""
        errors = sum(self.errors.values())
        cause = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items()))
        cached = (f", {self.page_cache_bytes / GiB:.2f} GiB in the page cache"
                  if self.page_cache_bytes >= 0 else "")
        return (f"unmounted {where} after {time.monotonic() - self.started:.0f}s: "
                f"{self.opens} opens, kernel read {self.fuse_read_bytes / GiB:.2f} GiB "
                f"({self.fuse_reads} reads, the rest came from the page cache{cached}); "
                f"{self.group_bytes / GiB:.2f} GiB from the group ({self.group_blocks} blocks, "
                f"{self.group_retries} retries); read-ahead {self.readahead_used}/"
                f"{self.readahead_started} blocks used, {self.readahead_skipped} skipped; "
                f"memory peak {self.memory_peak_bytes / 2**20:.0f} MiB of "
                f"{self.memory_budget_bytes / 2**20:.0f} MiB; "
                f"{errors} errors{' (' + cause + ')' if errors else ''}")


class StatsCollector(Collector):
    """Export a mount's Stats as blockcache_mount_* metrics."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Any]:
        """Yield every metric family, read from the counters at scrape time."""
        s = self.stats
        counters = {
            "fuse_reads": ("read requests from the kernel (page-cache misses)", s.fuse_reads),
            "fuse_read_bytes": ("bytes answered to kernel reads", s.fuse_read_bytes),
            "memory_hits": ("kernel reads served from blocks already in memory",
                            s.memory_hits),
            "group_blocks": ("blocks fetched from the cache group", s.group_blocks),
            "group_bytes": ("bytes fetched from the cache group", s.group_bytes),
            "group_retries": ("block fetches retried after no node served them",
                              s.group_retries),
            "opens": ("files opened", s.opens),
            "stale_opens": ("opens that found a newer version (ESTALE, retried by the kernel)",
                            s.stale_opens),
            "unvalidated_opens": ("opens pinned to the listed version, no node answered",
                                  s.unvalidated_opens),
        }
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(f"blockcache_mount_{name}", doc, value=value)
        ra = CounterMetricFamily("blockcache_mount_readahead_blocks",
                                 "read-ahead blocks by outcome", labels=["result"])
        for result, n in (("started", s.readahead_started), ("used", s.readahead_used),
                          ("unused", s.readahead_unused), ("skipped", s.readahead_skipped)):
            ra.add_metric([result], n)
        yield ra
        yield _labelled("blockcache_mount_errors", "EIO answers by cause", "cause", s.errors)
        yield _labelled("blockcache_mount_listings", "listings of the prefix", "result",
                        s.listings)
        gauges = {"open_files": s.open_files, "files": s.files, "bytes": s.bytes,
                  "memory_bytes": s.memory_bytes, "memory_budget_bytes": s.memory_budget_bytes,
                  "page_cache_bytes": s.page_cache_bytes}
        for name, value in gauges.items():
            yield GaugeMetricFamily(f"blockcache_mount_{name}", name.replace("_", " "),
                                    value=value)


def _labelled(name: str, doc: str, label: str, values: Counter[str]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for k, n in sorted(values.items()):
        family.add_metric([k], n)
    return family

"""The leader's loop: run unfinished jobs (resuming a dead leader's), honour cancels, evict.

Everything it knows comes from etcd on each pass, so a new leader needs no hand-over: a job
still `pending` or `running` is simply run (again). Blocks its predecessor warmed are
`present` on their owners and cost no origin read.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Sequence

from coordinator.config import CoordinatorConfig
from coordinator.errors import BadSite, CoordinatorError, NotLeader
from coordinator.metrics import CoordinatorMetrics
from coordinator.model import Job, Progress, Version
from coordinator.nodes import NodeFailed, Nodes
from coordinator.origin import Lister
from coordinator.planner import EvictVersion, evictions
from coordinator.state import StateStore
from coordinator.warmup import SiteWarmup

log = logging.getLogger(__name__)
KEEP_FINISHED_JOBS = 200  # older finished jobs are deleted from etcd
FLUSH_S = 1.0  # progress is written to etcd at most this often
RATE_WINDOW_S = 10.0


class Scheduler:
    """Runs while this replica leads; `lead()` is cancelled when leadership is lost."""

    def __init__(self, config: CoordinatorConfig, store: StateStore, nodes: Nodes,
                 lister: Lister, metrics: CoordinatorMetrics) -> None:
        self._cfg, self._store, self._nodes, self._lister = config, store, nodes, lister
        self._metrics = metrics
        self._running: dict[str, asyncio.Task[None]] = {}
        self._cancelling: set[str] = set()
        self.wake = asyncio.Event()

    async def lead(self) -> None:
        """Reconcile every `reconcile_s` (or when woken) until cancelled."""
        try:
            while True:
                try:
                    await self._pass()
                except CoordinatorError as e:
                    log.warning("reconcile pass failed: %s", e)
                    if isinstance(e, NotLeader):
                        raise
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self._cfg.reconcile_s)
                self.wake.clear()
        finally:
            tasks = list(self._running.values())
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _pass(self) -> None:
        cancels = await self._store.cancel_requests()
        finished = 0
        for job in await self._store.list_jobs():  # newest first
            if job.finished_state:
                finished += 1
                if finished > KEEP_FINISHED_JOBS:
                    await self._store.delete_job(job.id)
                continue
            if job.id in cancels:
                await self._cancel(job)
            elif job.id not in self._running:
                task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
                self._running[job.id] = task
                task.add_done_callback(self._forget)
        await self._evict_pass()

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._running = {i: t for i, t in self._running.items() if t is not task}

    async def _cancel(self, job: Job) -> None:
        task = self._running.get(job.id)
        if task is not None:
            self._cancelling.add(job.id)
            task.cancel()
            return
        job.state, job.finished = "cancelled", time.time()
        await self._store.put_job(job)
        self._metrics.jobs.labels("cancelled").inc()

    # -- one job ------------------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        """Run a job to its end (or until cancelled) and write its final state."""
        self._metrics.jobs_running.inc()
        carried = job.progress.retries
        job.state, job.runs, job.leader = "running", job.runs + 1, self._store.identity
        job.started = job.started or time.time()
        job.error, job.failed_objects = None, []
        runners: list[SiteWarmup] = []
        flusher: asyncio.Task[None] | None = None
        try:
            await self._store.put_job(job)
            manifest = await self._lister.manifest(job.bucket, job.key_prefix,
                                                   self._cfg.max_objects)
            runners = [SiteWarmup(s, manifest, job.verify, self._cfg, self._nodes)
                       for s in job.sites]
            for r in runners:
                await self._put_version(job, r.site, "warming", r.progress)
            flusher = asyncio.create_task(self._flush(job, runners, carried))
            outcomes = await asyncio.gather(*(r.run() for r in runners), return_exceptions=True)
            flusher.cancel()
            await self._finish(job, runners, outcomes, carried)
        except asyncio.CancelledError:
            if job.id not in self._cancelling:
                raise  # leadership lost: the next leader resumes the job
            self._summarize(job, runners, carried)
            job.state, job.finished = "cancelled", time.time()
            await asyncio.shield(self._final_write(job, runners, "failed"))
            self._metrics.jobs.labels("cancelled").inc()
        except NotLeader as e:
            log.warning("job %s left to the next leader: %s", job.id, e)
        except (CoordinatorError, NodeFailed) as e:
            log.warning("job %s failed: %s", job.id, e)
            job.state, job.finished, job.error = "failed", time.time(), str(e)
            await self._final_write(job, runners, "failed")
            self._metrics.jobs.labels("failed").inc()
        finally:
            self._cancelling.discard(job.id)
            self._metrics.jobs_running.dec()
            if flusher is not None:
                flusher.cancel()

    async def _finish(self, job: Job, runners: list[SiteWarmup],
                      outcomes: Sequence[bool | BaseException],
                      carried: int) -> None:
        """Write the final state of a job whose sites all ran."""
        self._summarize(job, runners, carried)
        errors = [f"site {r.site}: {o}" for r, o in zip(runners, outcomes, strict=True)
                  if isinstance(o, BaseException)]
        for r, o in zip(runners, outcomes, strict=True):
            if isinstance(o, BaseException) and not isinstance(o, CoordinatorError | NodeFailed):
                log.error("site %s of job %s crashed", r.site, job.id, exc_info=o)
        ok = not errors and all(o is True for o in outcomes)
        job.state, job.finished = ("complete" if ok else "failed"), time.time()
        job.error = "; ".join(errors) or (None if ok else
                                          f"{job.progress.blocks_failed} blocks failed")
        p = job.progress
        self._metrics.blocks.labels("filled").inc(p.origin_fills)
        self._metrics.blocks.labels("present").inc(p.present)
        self._metrics.blocks.labels("failed").inc(p.blocks_failed)
        self._metrics.bytes.inc(p.bytes_done)
        self._metrics.retries.inc(p.retries - carried)
        self._metrics.jobs.labels(job.state).inc()
        await self._final_write(job, runners, None)
        log.info("job %s %s: %d/%d blocks, %d from origin, %d present, %d retries",
                 job.id, job.state, p.blocks_done, p.blocks_total, p.origin_fills, p.present,
                 p.retries)
        self.wake.set()  # a version became ready: check the eviction policy now

    async def _final_write(self, job: Job, runners: list[SiteWarmup],
                           force: str | None) -> None:
        for r in runners:
            good = force is None and r.progress.blocks_failed == 0 and \
                r.progress.blocks_done == r.progress.blocks_total
            await self._put_version(job, r.site, "ready" if good else "failed", r.progress)
        await self._store.put_job(job)

    def _summarize(self, job: Job, runners: list[SiteWarmup], carried: int) -> None:
        """Fold the sites' live counts into the job (progress, per site, failed objects)."""
        total = Progress()
        for r in runners:
            total.add(r.progress)
        total.retries += carried
        if runners:
            total.objects = runners[0].progress.objects
        job.sites_progress = {r.site: Progress(**vars(r.progress)) for r in runners}
        job.failed_objects = [f for r in runners for f in r.failed][:100]
        job.progress = total

    async def _flush(self, job: Job, runners: list[SiteWarmup], carried: int) -> None:
        """Write progress (with rate and ETA) every FLUSH_S while the job runs."""
        samples: collections.deque[tuple[float, int]] = collections.deque()
        while True:
            await asyncio.sleep(FLUSH_S)
            now = time.monotonic()
            done = sum(r.progress.bytes_done for r in runners)
            samples.append((now, done))
            while samples and now - samples[0][0] > RATE_WINDOW_S:
                samples.popleft()
            t0, b0 = samples[0]
            rate = (done - b0) / (now - t0) if now > t0 else 0.0
            for r in runners:
                p = r.progress
                p.rate_bytes_per_s = rate * (p.bytes_done / done) if done else 0.0
                left = p.bytes_total - p.bytes_done
                p.eta_s = left / p.rate_bytes_per_s if p.rate_bytes_per_s > 0 else None
            self._summarize(job, runners, carried)
            try:
                await self._store.put_job(job)
            except CoordinatorError as e:
                log.warning("job %s: progress not written: %s", job.id, e)

    async def _put_version(self, job: Job, site: str, state: str, p: Progress) -> None:
        v = await self._store.get_version(site, job.model, job.version) or Version(
            site, job.model, job.version, job.bucket, job.key_prefix)
        v.state, v.bytes, v.objects, v.job = state, p.bytes_total, p.objects, job.id
        v.bucket, v.key_prefix, v.updated = job.bucket, job.key_prefix, time.time()
        if state == "ready":
            v.ready_at = v.updated
        await self._store.put_version(v)

    # -- eviction -----------------------------------------------------------------------------

    async def _evict_pass(self) -> None:
        """Turn eviction requests into `evicting` versions, then evict what policy says."""
        for req in await self._store.evict_requests():
            v = await self._store.get_version(req.site, req.model, req.version) or req
            v.state, v.updated = "evicting", time.time()
            await self._store.put_version(v)
            await self._store.clear_evict_request(req)
        versions = await self._store.list_versions()
        for site in sorted({v.site for v in versions}):
            keep = await self._store.get_keep(site) or self._cfg.keep_versions
            for action in evictions([v for v in versions if v.site == site], keep):
                await self._evict(action)

    async def _evict(self, a: EvictVersion) -> None:
        """Delete a version's blocks from every node of its site; `evicted` once all did."""
        v = await self._store.get_version(a.site, a.model, a.version)
        if v is None:
            return
        if v.state != "evicting":
            v.state, v.updated = "evicting", time.time()
            await self._store.put_version(v)
        try:
            members = list((await self._nodes.view(a.site)).members.values())
        except BadSite:
            members = []  # no node left at the site: nothing holds the blocks
        except NodeFailed as e:
            log.warning("evict %s at %s: cannot read the site's members: %s", a.key_prefix,
                        a.site, e)
            return
        results = await asyncio.gather(*(self._nodes.evict(m.http, a.bucket, a.key_prefix)
                                         for m in members), return_exceptions=True)
        failed = [str(r) for r in results if isinstance(r, BaseException)]
        if failed:
            log.warning("evict s3://%s/%s at %s: %d nodes did not answer (retrying): %s",
                        a.bucket, a.key_prefix, a.site, len(failed), failed[0])
            return
        freed = sum(r[1] for r in results if isinstance(r, tuple))
        v.state, v.updated = "evicted", time.time()
        await self._store.put_version(v)
        self._metrics.evictions.labels(a.site).inc()
        self._metrics.evicted_bytes.inc(freed)
        log.info("evicted %s %s from site %s: %d bytes of blocks freed", a.model, a.version,
                 a.site, freed)

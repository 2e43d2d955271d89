"""The leader's loop: run unfinished jobs (resuming a dead leader's), honour cancels, evict.

Everything it knows comes from etcd on each pass, so a new leader needs no hand-over: a job
still `pending` or `running` is simply run (again). Blocks its predecessor warmed are
`present` on their owners and cost no origin read. When etcd cannot be written, a job is
left as it is for the next pass (or the next leader) rather than marked failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from coordinator.config import CoordinatorConfig
from coordinator.errors import CoordinatorError, NotLeader, StateUnavailable
from coordinator.evictor import Evictor, overlaps
from coordinator.metrics import CoordinatorMetrics
from coordinator.model import MAX_FAILED_OBJECTS, Job, Progress, Version
from coordinator.nodes import NodeFailed, Nodes
from coordinator.origin import Lister
from coordinator.rate import eta_s
from coordinator.state import StateStore
from coordinator.warmup import SiteLimits, SiteWarmup

log = logging.getLogger(__name__)
KEEP_FINISHED_JOBS = 100  # older finished jobs are deleted from etcd
FLUSH_S = 1.0  # progress is written to etcd at most this often
FINAL_WRITE_S = 30.0  # how long a job's end is retried while etcd does not answer


class Scheduler:
    """Runs while this replica leads; `lead()` is cancelled when leadership is lost."""

    def __init__(self, config: CoordinatorConfig, store: StateStore, nodes: Nodes,
                 lister: Lister, metrics: CoordinatorMetrics) -> None:
        self._cfg, self._store, self._nodes, self._lister = config, store, nodes, lister
        self._metrics = metrics
        self._running: dict[str, tuple[Job, asyncio.Task[None]]] = {}
        self._cancelling: set[str] = set()
        self._limits: dict[str, SiteLimits] = {}
        self._evictor = Evictor(config, store, nodes, metrics, self._busy)
        self._sweep: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()

    async def lead(self) -> None:
        """Reconcile every `reconcile_s` (or when woken) until cancelled."""
        try:
            while True:
                try:
                    await self._pass()
                except NotLeader:
                    raise
                except CoordinatorError as e:
                    log.warning("reconcile pass failed: %s", e)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self._cfg.reconcile_s)
                self.wake.clear()
        finally:
            tasks = [t for _, t in self._running.values()]
            if self._sweep is not None:
                tasks.append(self._sweep)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _busy(self, site: str, bucket: str, prefix: str) -> bool:
        """Return whether a running job warms a prefix overlapping this one at this site."""
        return any(site in j.sites and j.bucket == bucket and overlaps(j.key_prefix, prefix)
                   for j, _ in self._running.values())

    async def _pass(self) -> None:
        cancels = await self._store.cancel_requests()
        jobs = await self._store.list_jobs()  # newest first
        finished = 0
        for job in jobs:
            if job.finished_state:
                finished += 1
                if finished > KEEP_FINISHED_JOBS:
                    await self._store.delete_job(job.id)
            elif job.id in cancels:
                await self._cancel(job)
        pending = [j for j in jobs if not j.finished_state and j.id not in self._running
                   and j.id not in cancels]
        for job in reversed(pending):  # oldest first
            if len(self._running) >= self._cfg.max_running_jobs:
                break
            if any(self._evictor.blocks(s, job.bucket, job.key_prefix) for s in job.sites):
                continue  # its prefix is being evicted right now: start it next pass
            task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
            self._running[job.id] = (job, task)
            task.add_done_callback(self._forget)
        self._metrics.show_state(jobs, await self._store.list_versions())
        if self._sweep is None or self._sweep.done():
            self._sweep = asyncio.create_task(self._evictor.sweep(), name="evict-sweep")
            self._sweep.add_done_callback(self._sweep_done)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._running = {i: jt for i, jt in self._running.items() if jt[1] is not task}
        if not task.cancelled() and task.exception() is not None:
            log.error("job task crashed", exc_info=task.exception())

    def _sweep_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            e = task.exception()
            if isinstance(e, CoordinatorError):
                log.warning("eviction sweep stopped: %s", e)
            else:
                log.error("eviction sweep crashed", exc_info=e)

    async def _cancel(self, job: Job) -> None:
        running = self._running.get(job.id)
        if running is not None:
            self._cancelling.add(job.id)
            running[1].cancel()
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
            runners = [SiteWarmup(s, manifest, job.verify, self._cfg, self._nodes,
                                  self._limits.setdefault(s, SiteLimits(self._cfg)),
                                  job.tenant)
                       for s in job.sites]
            for r in runners:
                await self._put_version(job, r.site, "warming", r.progress)
            flusher = asyncio.create_task(self._flush(job, runners, carried))
            outcomes = await asyncio.gather(*(r.run() for r in runners), return_exceptions=True)
            flusher.cancel()
            self._end(job, runners, outcomes, carried)
            await self._final_write(job, runners)
        except asyncio.CancelledError:
            if job.id not in self._cancelling:
                raise  # leadership lost: the next leader resumes the job
            job.state, job.finished = "cancelled", time.time()
            self._summarize(job, runners, carried)
            self._metrics.jobs.labels("cancelled").inc()
            await asyncio.shield(self._final_write(job, runners))
        except (NotLeader, StateUnavailable) as e:
            log.warning("job %s left for the next pass or leader: %s", job.id, e)
        except (CoordinatorError, NodeFailed) as e:
            log.warning("job %s failed: %s", job.id, e)
            job.state, job.finished, job.error = "failed", time.time(), str(e)
            self._metrics.jobs.labels("failed").inc()
            await self._final_write(job, runners)
        finally:
            self._cancelling.discard(job.id)
            self._metrics.jobs_running.dec()
            if flusher is not None:
                flusher.cancel()

    def _end(self, job: Job, runners: list[SiteWarmup],
             outcomes: Sequence[bool | BaseException], carried: int) -> None:
        """Set the final state of a job whose sites all ran, and count it."""
        errors = [f"site {r.site}: {o}" for r, o in zip(runners, outcomes, strict=True)
                  if isinstance(o, BaseException)]
        for r, o in zip(runners, outcomes, strict=True):
            if isinstance(o, BaseException) and not isinstance(o, CoordinatorError | NodeFailed):
                log.error("site %s of job %s crashed", r.site, job.id, exc_info=o)
        ok = not errors and all(o is True for o in outcomes)
        job.state, job.finished = ("complete" if ok else "failed"), time.time()
        self._summarize(job, runners, carried)
        job.error = "; ".join(errors)[:1000] or (
            None if ok else f"{job.progress.blocks_failed} blocks failed")
        p = job.progress
        self._metrics.blocks.labels("filled").inc(p.origin_fills)
        self._metrics.blocks.labels("present").inc(p.present)
        self._metrics.blocks.labels("failed").inc(p.blocks_failed)
        self._metrics.bytes.inc(p.bytes_done)
        self._metrics.retries.inc(max(0, p.retries - carried))
        self._metrics.jobs.labels(job.state).inc()
        log.info("job %s %s: %d/%d blocks, %d from origin, %d present, %d retries",
                 job.id, job.state, p.blocks_done, p.blocks_total, p.origin_fills, p.present,
                 p.retries)
        self.wake.set()  # a version became ready: check the eviction policy now

    async def _final_write(self, job: Job, runners: list[SiteWarmup]) -> None:
        """Write the versions' and the job's end, retrying while etcd does not answer."""
        deadline = time.monotonic() + FINAL_WRITE_S
        while True:
            try:
                for r in runners:
                    p = r.progress
                    await self._put_version(job, r.site, version_state(job, p), p)
                await self._store.put_job(job)
                return
            except StateUnavailable as e:
                if time.monotonic() > deadline:
                    raise  # left as running: the next pass or leader runs it again
                log.warning("job %s: cannot write its end yet: %s", job.id, e)
                await asyncio.sleep(1.0)

    def _summarize(self, job: Job, runners: list[SiteWarmup], carried: int) -> None:
        """Fold the sites' live counts into the job (progress, per site, failed objects)."""
        total = Progress()
        for r in runners:
            total.add(r.progress)
        total.retries += carried
        if runners:
            total.objects = runners[0].progress.objects
        job.sites_progress = {r.site: Progress(**vars(r.progress)) for r in runners}
        job.failed_objects = [f for r in runners for f in r.failed][:MAX_FAILED_OBJECTS]
        job.progress = total
        ran = (job.finished or time.time()) - (job.started or time.time())
        for p in (job.progress, *job.sites_progress.values()):
            p.average_bytes_per_s = p.bytes_done / ran if ran > 0 else 0.0
            if job.finished is not None:  # ended: the average is the rate, nothing is left
                p.rate_bytes_per_s, p.eta_s = p.average_bytes_per_s, None

    async def _flush(self, job: Job, runners: list[SiteWarmup], carried: int) -> None:
        """Write progress (with rate and ETA) every FLUSH_S while the job runs."""
        while True:
            await asyncio.sleep(FLUSH_S)
            now = time.monotonic()
            for r in runners:
                p = r.progress
                p.rate_bytes_per_s = r.window.rate(now)
                p.eta_s = eta_s(p.bytes_total - p.bytes_done, p.rate_bytes_per_s)
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
        if job.tenant and job.tenant not in v.tenants:
            v.tenants = [*v.tenants, job.tenant]
        if state == "ready":
            v.ready_at = v.updated
        await self._store.put_version(v)


def version_state(job: Job, p: Progress) -> str:
    """Return the state a finished job leaves its version in at one site."""
    if job.state == "complete" or (job.state == "failed" and p.blocks_total
                                   and p.blocks_failed == 0 and p.blocks_done == p.blocks_total):
        return "ready"  # every block of this site is on its owner (another site failed)
    return "cancelled" if job.state == "cancelled" else "failed"

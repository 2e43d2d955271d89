"""What a tenant may see and touch through the coordinator API, and its quota admission. Pure.

A tenant warms only prefixes inside its read scopes, and sees and acts on its own jobs (the
ones it created) and its own versions (the ones it warmed: `Version.tenants`) only; another
tenant's are invisible (404, as if they did not exist). A version several tenants warmed
counts in full against each one's quota, and only an admin evicts it.

Quota admission (before a warmup's job is written): per site where the tenant has a quota,
the bytes it holds (its versions there that are not evicted, plus the bytes listed for its
jobs not yet recorded as versions) plus the warmup's bytes must fit. Otherwise the warmup is
refused with the numbers (QuotaExceeded), or, with `over_quota: evict-oldest`, its own
oldest unpinned versions there (ready or failed, no other tenant's, not overlapping the
warmup) are evicted first, if that makes it fit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from coordinator.auth import Caller
from coordinator.errors import Forbidden, QuotaExceeded
from coordinator.evictor import overlaps
from coordinator.model import Job, Version

LIVE_JOB_STATES = ("pending", "running")


def require_scope(caller: Caller, bucket: str, prefix: str) -> None:
    """Raise Forbidden unless the caller may read every key under s3://bucket/prefix."""
    t = caller.tenant
    if t is not None and not any(s.covers_listing(bucket, prefix) for s in t.read):
        raise Forbidden(f"tenant {t.name} may not read s3://{bucket}/{prefix} (its read "
                        f"scopes: {', '.join(f's3://{s.bucket}/{s.prefix}' for s in t.read)})")


def sees_job(caller: Caller, job: Job) -> bool:
    """Return whether the caller may see a job."""
    return caller.admin or job.tenant == caller.name


def sees_version(caller: Caller, v: Version) -> bool:
    """Return whether the caller may see a version (it warmed it, or is the admin)."""
    return caller.admin or caller.name in v.tenants


def shown(caller: Caller, v: Version) -> Version:
    """Return the version as the caller may see it (a tenant sees no other tenant's name)."""
    if not caller.admin:
        v.tenants = [caller.name]
    return v


def held(tenant: str, site: str, versions: Iterable[Version], jobs: Iterable[Job],
         skip: tuple[str, str]) -> int:
    """Return the bytes a tenant holds at a site, the version at `skip` (bucket, prefix) aside."""
    at_site = [v for v in versions if v.site == site]
    known = {(v.bucket, v.key_prefix) for v in at_site}
    used = sum(v.bytes for v in at_site if tenant in v.tenants and v.state != "evicted"
               and (v.bucket, v.key_prefix) != skip)
    used += sum(j.asked_bytes for j in jobs if j.tenant == tenant and site in j.sites
                and j.state in LIVE_JOB_STATES and (j.bucket, j.key_prefix) != skip
                and (j.bucket, j.key_prefix) not in known)
    return used


def evictable(tenant: str, site: str, versions: Iterable[Version], bucket: str,
              prefix: str) -> list[Version]:
    """Return the tenant's own versions at a site it may evict to make room, oldest first."""
    mine = [v for v in versions if v.site == site and v.tenants == [tenant] and not v.pinned
            and v.state in ("ready", "failed", "cancelled")
            and not (v.bucket == bucket and overlaps(v.key_prefix, prefix))]
    return sorted(mine, key=lambda v: (v.ready_at or v.updated, v.model, v.version))


def admit(caller: Caller, site: str, asked: int, versions: Sequence[Version],
          jobs: Sequence[Job], bucket: str, prefix: str) -> list[Version]:
    """Return the versions to evict so a tenant's warmup fits its quota at a site.

    Raise QuotaExceeded with the numbers if it cannot fit.
    """
    t = caller.tenant
    quota = t.limits(site).quota_bytes if t is not None else None
    if t is None or quota is None:
        return []
    used = held(t.name, site, versions, jobs, (bucket, prefix))
    if used + asked <= quota:
        return []
    out, freed = [], 0
    if t.over_quota == "evict-oldest":
        for v in evictable(t.name, site, versions, bucket, prefix):
            out.append(v)
            freed += v.bytes
            if used - freed + asked <= quota:
                return out
    raise QuotaExceeded(t.name, site, quota, used, asked, freed)

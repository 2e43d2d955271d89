"""A small async client of the coordinator's HTTP API (coordinator/API.md, v1)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from client.errors import (
    ClientError,
    CoordinatorError,
    CoordinatorUnavailable,
    connection_reason,
)

RETRY_STATUSES = frozenset({502, 503, 504})  # a proxy without a replica, etcd down, a failover
RETRY_FIRST_S = 0.25  # the first pause between attempts; it doubles
RETRY_MAX_S = 4.0  # the longest pause, also the cap of a Retry-After
Job = dict[str, Any]  # the API's Job object
Version = dict[str, Any]  # the API's Version object
Policy = dict[str, Any]  # {"site": S, "keep": K}


def coordinator_url(url: str) -> str:
    """Return the coordinator's base URL from 'host:port' or 'http(s)://host:port[/path]'."""
    raw = url.strip()
    if "://" not in raw:
        raw = "http://" + raw
    try:
        u = URL(raw)
    except ValueError:
        u = URL()
    if u.scheme not in ("http", "https") or not u.host:
        raise ClientError(f"bad coordinator URL {url!r}: give host:port or http://host:port")
    return str(u.with_query(None).with_fragment(None)).rstrip("/")


def new_job_id() -> str:
    """Return a fresh job id (48 random bits: ids of concurrent clients do not meet)."""
    return "w-" + secrets.token_hex(6)


class CoordinatorClient:
    """Client of one coordinator URL: `async with CoordinatorClient("host:8081") as cc:`."""

    def __init__(self, base_url: str, *, timeout_s: float = 30.0, retry_s: float = 60.0,
                 note: Callable[[str], None] | None = None, token: str = "") -> None:
        self.base_url = coordinator_url(base_url)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s  # one request
        self.retry_s = retry_s  # how long a request failing for a passing reason is retried
        self.note = note or (lambda message: None)  # told when retrying starts and ends
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> CoordinatorClient:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s, sock_connect=min(3.0, self.timeout_s))
        self._session = aiohttp.ClientSession(timeout=timeout)
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def create_job(self, prefix: str, sites: Sequence[str], verify: bool = False,
                         pattern: str | None = None, job_id: str | None = None) -> Job:
        """Start a warmup job of every object under `prefix` at `sites`; return the job.

        The job's id is chosen here (`job_id`, else a fresh one), so the request can be sent
        again after a lost answer: the coordinator returns the job it already has.
        """
        body = {"id": job_id or new_job_id(), "prefix": prefix, "sites": list(sites),
                "verify": verify, "pattern": pattern}
        return dict(await self._call("POST", "/v1/jobs", "job", body=body))

    async def plan(self, prefix: str, sites: Sequence[str], pattern: str | None = None
                   ) -> dict[str, Any]:
        """Return what a warmup would record and warm per site, changing nothing (a dry run)."""
        body = {"prefix": prefix, "sites": list(sites), "pattern": pattern, "dry_run": True}
        return dict(await self._call("POST", "/v1/jobs", "dry_run", body=body))

    async def jobs(self, limit: int = 50) -> list[Job]:
        """Return up to `limit` jobs, newest first."""
        return list(await self._call("GET", "/v1/jobs", "jobs", params={"limit": str(limit)}))

    async def job(self, job_id: str) -> Job:
        """Return one job."""
        return dict(await self._call("GET", f"/v1/jobs/{_seg(job_id)}", "job"))

    async def cancel(self, job_id: str) -> Job:
        """Ask the coordinator to cancel a job; return the job (409 if it already finished)."""
        return dict(await self._call("POST", f"/v1/jobs/{_seg(job_id)}/cancel", "job"))

    async def models(self, site: str | None = None) -> list[Version]:
        """Return the model versions of one site, or of every site."""
        params = {"site": site} if site else None
        return list(await self._call("GET", "/v1/models", "versions", params=params))

    async def pin(self, prefix: str, site: str) -> Version:
        """Pin a model version at a site (it is never evicted); return the version."""
        return dict(await self._call("POST", "/v1/pin", "version",
                                     body={"prefix": prefix, "site": site}))

    async def unpin(self, prefix: str, site: str) -> Version:
        """Unpin a model version at a site; return the version."""
        return dict(await self._call("POST", "/v1/unpin", "version",
                                     body={"prefix": prefix, "site": site}))

    async def evict(self, prefix: str, site: str) -> Version:
        """Start evicting a model version from every node of a site; return the version."""
        return dict(await self._call("POST", "/v1/evict", "version",
                                     body={"prefix": prefix, "site": site}))

    async def forget(self, prefix: str, site: str) -> dict[str, Any]:
        """Delete a version's record at a site (its blocks stay); return {version, blocks_kept}."""
        return dict(await self._call("POST", "/v1/forget", None,
                                     body={"prefix": prefix, "site": site}))

    async def policy(self, site: str) -> Policy:
        """Return a site's eviction policy: how many ready versions of each model it keeps."""
        return dict(await self._call("GET", f"/v1/sites/{_seg(site)}/policy", None))

    async def set_policy(self, site: str, keep: int) -> Policy:
        """Set how many ready versions of each model a site keeps; return the policy."""
        return dict(await self._call("PUT", f"/v1/sites/{_seg(site)}/policy", None,
                                     body={"keep": keep}))

    async def create_tenant(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """Create a tenant; return {"tenant": ..., "key": ...} (the key's secrets, once)."""
        return dict(await self._call("POST", "/v1/tenants", None, body=doc, retry=False))

    async def tenants(self) -> list[dict[str, Any]]:
        """Return every tenant (scopes, limits, key ids)."""
        return list(await self._call("GET", "/v1/tenants", "tenants"))

    async def tenant(self, name: str) -> dict[str, Any]:
        """Return one tenant with its key ids and the bytes it holds per site."""
        return dict(await self._call("GET", f"/v1/tenants/{_seg(name)}", "tenant"))

    async def update_tenant(self, name: str, doc: Mapping[str, Any]) -> dict[str, Any]:
        """Change a tenant's scopes, limits or over-quota policy; return it."""
        return dict(await self._call("PATCH", f"/v1/tenants/{_seg(name)}", "tenant", body=doc))

    async def delete_tenant(self, name: str) -> dict[str, Any]:
        """Delete a tenant and all of its keys."""
        return dict(await self._call("DELETE", f"/v1/tenants/{_seg(name)}", None))

    async def add_key(self, name: str) -> dict[str, Any]:
        """Add a key to a tenant; return it with its secret and token (shown this once)."""
        return dict(await self._call("POST", f"/v1/tenants/{_seg(name)}/keys", "key",
                                     retry=False))

    async def revoke_key(self, name: str, key_id: str) -> dict[str, Any]:
        """Revoke one key of a tenant."""
        return dict(await self._call("DELETE", f"/v1/tenants/{_seg(name)}/keys/{_seg(key_id)}",
                                     None))

    async def health(self) -> dict[str, Any]:
        """Return the answering replica's health (CoordinatorError 503 if it cannot tell who
        leads: it is asked once, not retried)."""
        return dict(await self._call("GET", "/healthz", None, retry=False))

    async def _call(self, method: str, path: str, key: str | None, *,
                    params: Mapping[str, str] | None = None,
                    body: Mapping[str, Any] | None = None, retry: bool = True) -> Any:
        """Send a request, again while it fails for a passing reason (an unreachable
        coordinator, 502/503/504: etcd down, a failover) for up to `retry_s`; return the
        answer's `key` field (the whole answer if None).

        Every request of this API is safe to send twice: reads, writes of a state (cancel,
        pin, unpin, evict, policy) and job creation, whose id is chosen here.
        """
        window = self.retry_s if retry else 0.0
        deadline, pause, failing = time.monotonic() + window, RETRY_FIRST_S, False
        while True:
            try:
                answer = await self._once(method, path, key, params, body)
            except (CoordinatorUnavailable, CoordinatorError) as e:
                if isinstance(e, CoordinatorError) and e.status not in RETRY_STATUSES:
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    if not window:
                        raise
                    raise CoordinatorUnavailable(self._gave_up(e, method, path)) from None
                if not failing:
                    self.note(f"{e}; retrying for up to {window:g}s")
                    failing = True
                await asyncio.sleep(min(max(pause, _retry_after(e)), RETRY_MAX_S, left))
                pause = min(pause * 2, RETRY_MAX_S)
                continue
            if failing:
                self.note("the coordinator answers again")
            return answer

    def _gave_up(self, e: ClientError, method: str, path: str) -> str:
        """Return the message of a request that failed for the whole retry window."""
        what = str(e)
        if isinstance(e, CoordinatorError) and e.error != f"HTTP {e.status}":  # a JSON reason
            what = (f"the coordinator at {self.base_url} answered {method} {path} with "
                    f"{e.status} ({e.error}): {e.reason}")
        return f"gave up after retrying for {self.retry_s:g}s: {what}"

    async def _once(self, method: str, path: str, key: str | None,
                    params: Mapping[str, str] | None, body: Mapping[str, Any] | None) -> Any:
        """Send one request; return the answer's `key` field (the whole answer if None)."""
        if self._session is None:
            raise RuntimeError("use `async with CoordinatorClient(...)`")
        url = self.base_url + path
        try:
            async with self._session.request(method, url, params=params, json=body,
                                             headers=self._headers) as r:
                text = await r.text()
                status, retry_after = r.status, r.headers.get("Retry-After")
        except TimeoutError:
            raise CoordinatorUnavailable(f"the coordinator at {self.base_url} did not answer "
                                         f"{method} {path} within {self.timeout_s:g}s") from None
        except (aiohttp.ClientError, OSError) as e:
            raise CoordinatorUnavailable(f"cannot reach the coordinator at {self.base_url}: "
                                         f"{connection_reason(e)}") from None
        answer = _json(text)
        if status >= 400:
            if isinstance(answer, dict) and answer.get("reason"):
                raise CoordinatorError(status, str(answer.get("error") or f"HTTP {status}"),
                                       str(answer["reason"]), _seconds(retry_after))
            raise CoordinatorError(status, f"HTTP {status}", f"the coordinator at {self.base_url} "
                                   f"answered {method} {path} with {status}: {_snippet(text)}",
                                   _seconds(retry_after))
        if not isinstance(answer, dict) or (key is not None and key not in answer):
            raise ClientError(f"unexpected answer from the coordinator at {self.base_url} to "
                              f"{method} {path}: {_snippet(text)!r}")
        return answer if key is None else answer[key]


def _seconds(header: str | None) -> float | None:
    """Return a Retry-After header's seconds (None if absent, a date, or garbage)."""
    try:
        return max(0.0, float(header)) if header is not None else None
    except ValueError:
        return None


def _retry_after(e: ClientError) -> float:
    return (e.retry_after_s or 0.0) if isinstance(e, CoordinatorError) else 0.0


def _seg(s: str) -> str:
    return quote(s, safe="")


def _snippet(text: str) -> str:
    return " ".join(text.split())[:200]


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None

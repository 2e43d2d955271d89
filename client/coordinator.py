"""A small async client of the coordinator's HTTP API (coordinator/API.md, v1)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from client.errors import ClientError, CoordinatorError, CoordinatorUnavailable

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

    def __init__(self, base_url: str, *, timeout_s: float = 30.0) -> None:
        self.base_url = coordinator_url(base_url)
        self.timeout_s = timeout_s
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

    async def policy(self, site: str) -> Policy:
        """Return a site's eviction policy: how many ready versions of each model it keeps."""
        return dict(await self._call("GET", f"/v1/sites/{_seg(site)}/policy", None))

    async def set_policy(self, site: str, keep: int) -> Policy:
        """Set how many ready versions of each model a site keeps; return the policy."""
        return dict(await self._call("PUT", f"/v1/sites/{_seg(site)}/policy", None,
                                     body={"keep": keep}))

    async def health(self) -> dict[str, Any]:
        """Return the answering replica's health: id, whether it leads, the leader's id."""
        return dict(await self._call("GET", "/healthz", None))

    async def _call(self, method: str, path: str, key: str | None, *,
                    params: Mapping[str, str] | None = None,
                    body: Mapping[str, Any] | None = None) -> Any:
        """Send one request; return the answer's `key` field (the whole answer if None)."""
        if self._session is None:
            raise RuntimeError("use `async with CoordinatorClient(...)`")
        url = self.base_url + path
        try:
            async with self._session.request(method, url, params=params, json=body) as r:
                text = await r.text()
                status = r.status
        except TimeoutError:
            raise CoordinatorUnavailable(f"the coordinator at {self.base_url} did not answer "
                                         f"{method} {path} within {self.timeout_s:g}s") from None
        except (aiohttp.ClientError, OSError) as e:
            raise CoordinatorUnavailable(f"cannot reach the coordinator at {self.base_url}: "
                                         f"{e or type(e).__name__}") from None
        answer = _json(text)
        if status >= 400:
            if isinstance(answer, dict) and answer.get("reason"):
                raise CoordinatorError(status, str(answer.get("error") or f"HTTP {status}"),
                                       str(answer["reason"]))
            raise CoordinatorError(status, f"HTTP {status}", f"the coordinator at {self.base_url} "
                                   f"answered {method} {path} with {status}: {_snippet(text)}")
        if not isinstance(answer, dict) or (key is not None and key not in answer):
            raise ClientError(f"unexpected answer from the coordinator at {self.base_url} to "
                              f"{method} {path}: {_snippet(text)!r}")
        return answer if key is None else answer[key]


def _seg(s: str) -> str:
    return quote(s, safe="")


def _snippet(text: str) -> str:
    return " ".join(text.split())[:200]


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None

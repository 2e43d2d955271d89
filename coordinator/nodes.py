"""The coordinator's calls to cache nodes and etcd's member list: a site's view, warm, evict."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from client.errors import ClientError
from client.membership import GroupView, base_url, from_records
from coordinator.errors import BadSite
from coordinator.state import StateStore


class NodeFailed(Exception):
    """A node did not answer a warm or evict request (unreachable, timed out, 5xx)."""


class Nodes:
    """HTTP to the cache nodes of every site, with one bounded session; members from etcd."""

    def __init__(self, store: StateStore, timeout_s: float) -> None:
        self._store, self._timeout_s = store, timeout_s
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """Return the shared HTTP session (created on first use)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=512, limit_per_host=64),
                timeout=aiohttp.ClientTimeout(total=self._timeout_s, sock_connect=3.0))
        return self._session

    async def close(self) -> None:
        """Close the session."""
        if self._session is not None:
            await self._session.close()

    async def view(self, site: str) -> GroupView:
        """Return the site's registered members.

        Raise StateUnavailable if etcd cannot be read, BadSite if the site has no node, and
        NodeFailed if no node says the block size its records leave out.
        """
        records = await self._store.node_records(site)
        if not records:
            raise BadSite(f"site {site!r} has no cache nodes registered in cluster "
                          f"{self._store.cluster!r}")
        try:
            return await from_records(self.session, records, min(5.0, self._timeout_s))
        except ClientError as e:
            raise NodeFailed(f"site {site}: {e}") from None

    async def _post(self, addr: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self.session.post(base_url(addr) + path, json=body) as r:
                    text = await r.text()
                    if r.status != 200:
                        try:
                            reason = json.loads(text).get("reason", text)
                        except ValueError:
                            reason = text
                        raise NodeFailed(f"{addr}{path}: HTTP {r.status}: {str(reason)[:300]}")
                    answer: dict[str, Any] = json.loads(text)
                    return answer
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
            raise NodeFailed(f"{addr}{path}: {type(e).__name__}: {e}") from None

    async def warm(self, addr: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        """Ask a node to warm a batch of blocks; return its per-block results, in order."""
        answer = await self._post(addr, "/_warm", body)
        results = answer.get("results") if isinstance(answer, dict) else None
        want = sum(len(o["indices"]) for o in body["objects"])
        if not isinstance(results, list) or len(results) != want or not all(
                isinstance(r, dict) for r in results):
            raise NodeFailed(f"{addr}/_warm answered something else than {want} results")
        return results

    async def evict(self, addr: str, bucket: str, prefix: str) -> tuple[int, int]:
        """Ask a node to delete every block under a prefix; return (blocks, bytes) deleted."""
        r = await self._post(addr, "/_evict", {"bucket": bucket, "prefix": prefix})
        try:
            return int(r["blocks"]), int(r["bytes"])
        except (KeyError, TypeError, ValueError):
            raise NodeFailed(f"{addr}/_evict answered {str(r)[:200]}") from None

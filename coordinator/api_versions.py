"""The coordinator API's model version routes: list, pin, unpin, evict, keep policies.

A tenant sees and acts on its own versions only (coordinator/scoping.py); policies are the
admin's, since a site's keep count applies to every tenant's models.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from coordinator import audit
from coordinator.auth import Caller
from coordinator.config import CoordinatorConfig
from coordinator.errors import BadRequest, Conflict, UnknownVersion
from coordinator.model import Version, check_site, parse_prefix
from coordinator.planner import overlapping, versions_under
from coordinator.scoping import require_scope, sees_version, shown
from coordinator.state import StateStore
from coordinator.wire import caller_of, json_answer, read_body


class VersionRoutes:
    """Routes over the versions, pins and policies in the state store."""

    def __init__(self, config: CoordinatorConfig, store: StateStore, wake: Any) -> None:
        self._cfg, self._store, self._wake = config, store, wake

    def add(self, r: web.UrlDispatcher) -> None:
        """Register the routes."""
        r.add_get("/v1/models", self._models)
        r.add_post("/v1/pin", self._pin)
        r.add_post("/v1/unpin", self._unpin)
        r.add_post("/v1/evict", self._evict)
        r.add_post("/v1/forget", self._forget)
        r.add_get("/v1/sites/{site}/policy", self._policy)
        r.add_put("/v1/sites/{site}/policy", self._set_policy)

    async def _models(self, request: web.Request) -> web.Response:
        caller = caller_of(request)
        site = request.query.get("site")
        versions = await self._store.list_versions(check_site(site) if site else None)
        return json_answer({"versions": [shown(caller, v).to_dict() for v in versions
                                         if sees_version(caller, v)]})

    async def _version_of(self, request: web.Request) -> tuple[Caller, Version]:
        """Return the caller and the known version a {prefix, site} body names."""
        caller, body = caller_of(request), await read_body(request)
        audit.note(request, prefix=body.get("prefix"), site=body.get("site"))
        bucket, prefix = parse_prefix(body.get("prefix"))  # type: ignore[arg-type]
        site = check_site(body.get("site"))
        require_scope(caller, bucket, prefix)
        versions = [v for v in await self._store.list_versions(site) if sees_version(caller, v)]
        for v in versions:
            if (v.bucket, v.key_prefix) == (bucket, prefix):
                return caller, v
        raise UnknownVersion(site, f"s3://{bucket}/{prefix}",
                             [(v.prefix, v.state) for v in versions_under(bucket, prefix,
                                                                          versions)])

    async def _pin(self, request: web.Request) -> web.Response:
        return await self._set_pin(request, True)

    async def _unpin(self, request: web.Request) -> web.Response:
        return await self._set_pin(request, False)

    async def _set_pin(self, request: web.Request, pinned: bool) -> web.Response:
        caller, v = await self._version_of(request)
        if pinned and v.state in ("evicting", "evicted"):
            raise Conflict(f"{v.prefix} is {v.state} at site {v.site}: warm it again, then pin "
                           "it")
        await self._store.set_pin(v.site, v.model, v.version, pinned)
        v.pinned = pinned
        return json_answer({"version": shown(caller, v).to_dict()})

    async def _evict(self, request: web.Request) -> web.Response:
        caller, v = await self._version_of(request)
        if v.pinned:
            raise Conflict(f"{v.prefix} is pinned at site {v.site}: unpin it first")
        if v.state == "warming":
            raise Conflict(f"{v.prefix} is being warmed at site {v.site}: cancel its job first")
        if not caller.admin and v.tenants != [caller.name]:
            raise Conflict(f"{v.prefix} at site {v.site} was warmed by another tenant too: "
                           "only the admin may evict it")
        if nested := overlapping(v.bucket, v.key_prefix, await self._store.list_versions(v.site)):
            raise Conflict(f"evicting {v.prefix} would also evict "
                           f"{', '.join(n.prefix for n in nested[:5])} (nodes evict by prefix)")
        await self._store.request_evict(v)
        self._wake()
        return json_answer({"version": shown(caller, v).to_dict()}, 202)

    async def _forget(self, request: web.Request) -> web.Response:
        """Delete a version's record (its pin and eviction request too); blocks stay as they are.

        The way out of a version recorded by mistake (say a model's root warmed as a
        version), which no policy would ever evict and whose eviction would take its
        neighbours: the record goes, the blocks on the nodes do not.
        """
        caller, v = await self._version_of(request)
        if v.state in ("warming", "evicting"):
            raise Conflict(f"{v.prefix} is {v.state} at site {v.site}: "
                           + ("cancel its job first" if v.state == "warming"
                              else "wait until its eviction ends"))
        if v.pinned:
            raise Conflict(f"{v.prefix} is pinned at site {v.site}: unpin it first")
        if not caller.admin and v.tenants != [caller.name]:
            raise Conflict(f"{v.prefix} at site {v.site} was warmed by another tenant too: "
                           "only the admin may forget it")
        await self._store.clear_evict_request(v)
        await self._store.delete_version(v)
        return json_answer({"version": shown(caller, v).to_dict(),
                            "blocks_kept": v.state != "evicted"})

    async def _policy(self, request: web.Request) -> web.Response:
        site = check_site(request.match_info["site"])
        keep = await self._store.get_keep(site) or self._cfg.keep_versions
        return json_answer(await self._site_note({"site": site, "keep": keep}))

    async def _site_note(self, answer: dict[str, Any]) -> dict[str, Any]:
        """Add how many cache nodes the answer's site has, and a note if it has none."""
        site = answer["site"]
        answer["nodes"] = len(await self._store.node_records(site))
        if not answer["nodes"]:
            known = await self._store.sites()
            answer["note"] = (f"site {site!r} has no cache nodes registered in cluster "
                              f"{self._store.cluster!r} (sites with nodes: "
                              f"{', '.join(known) or 'none'}): the policy applies once it has")
        return answer

    async def _set_policy(self, request: web.Request) -> web.Response:
        caller_of(request).require_admin("changing a site's keep policy")
        site = check_site(request.match_info["site"])
        keep = (await read_body(request)).get("keep")
        audit.note(request, keep=keep)
        if not isinstance(keep, int) or isinstance(keep, bool) or not 1 <= keep <= 1000:
            raise BadRequest("keep must be a whole number from 1 to 1000")
        await self._store.set_keep(site, keep)
        self._wake()
        return json_answer(await self._site_note({"site": site, "keep": keep}))

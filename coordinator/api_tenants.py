"""The coordinator API's tenant routes: create, list, show, change, delete; keys add, revoke.

Admin only, but a tenant may show itself (its scopes, limits, key ids and quota use). A
new key's secret and token are in the answer that created it and nowhere else afterwards:
etcd holds the secret sealed with the cluster secret and the token's SHA-256
(cachenode/auth/tenants.py), so this replica needs `--cluster-secret-file` to make keys.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from cachenode.auth.sealing import Sealer
from cachenode.auth.tenants import KeyRecord, NewKey, Tenant, check_name, new_key
from coordinator import audit
from coordinator.config import CoordinatorConfig
from coordinator.errors import BadRequest, Conflict, NotFound
from coordinator.scoping import held
from coordinator.state import StateStore
from coordinator.tenant_store import TenantStore
from coordinator.wire import caller_of, json_answer, read_body

FIELDS = ("name", "read", "sites", "over_quota")


def tenant_of(doc: dict[str, Any], created: float) -> Tenant:
    """Return the tenant a request body describes, or raise BadRequest."""
    unknown = sorted(set(doc) - set(FIELDS))
    if unknown:
        raise BadRequest(f"unknown tenant field(s) {', '.join(unknown)[:100]} (known: "
                         f"{', '.join(FIELDS)})")
    try:
        return Tenant.from_json({**doc, "created": created})
    except ValueError as e:
        raise BadRequest(str(e)) from None


def key_json(k: KeyRecord) -> dict[str, Any]:
    """Return what the API shows of a key: its id and age, never its secret."""
    return {"access_key_id": k.id, "created": k.created}


def new_key_json(k: NewKey) -> dict[str, Any]:
    """Return a new key with its secret and token: shown this once."""
    return {"access_key_id": k.record.id, "secret_access_key": k.secret, "token": k.token,
            "tenant": k.record.tenant, "created": k.record.created}


class TenantRoutes:
    """Routes over the tenants in etcd."""

    def __init__(self, tenants: TenantStore, store: StateStore, config: CoordinatorConfig,
                 sealer: Sealer | None) -> None:
        self._tenants, self._store, self._cfg, self._sealer = tenants, store, config, sealer

    def add(self, r: web.UrlDispatcher) -> None:
        """Register the routes."""
        r.add_post("/v1/tenants", self._create)
        r.add_get("/v1/tenants", self._list)
        r.add_get("/v1/tenants/{name}", self._show)
        r.add_patch("/v1/tenants/{name}", self._update)
        r.add_delete("/v1/tenants/{name}", self._delete)
        r.add_post("/v1/tenants/{name}/keys", self._add_key)
        r.add_delete("/v1/tenants/{name}/keys/{key}", self._revoke)

    def _new_key(self, tenant: str) -> NewKey:
        if self._sealer is None:
            raise Conflict("this coordinator has no --cluster-secret-file: it cannot seal a "
                           "new key's SigV4 secret for the nodes")
        return new_key(tenant, self._sealer, time.time())

    async def _create(self, request: web.Request) -> web.Response:
        caller_of(request).require_admin("creating a tenant")
        body = await read_body(request)
        audit.note(request, tenant=body.get("name"), read=body.get("read"),
                   sites=body.get("sites"), over_quota=body.get("over_quota"))
        tenant = tenant_of(body, time.time())
        key = self._new_key(tenant.name)
        if not await self._tenants.create(tenant, key.record):
            raise Conflict(f"tenant {tenant.name} exists already")
        audit.note(request, key=key.record.id)
        return json_answer({"tenant": {**tenant.to_json(), "keys": [key_json(key.record)]},
                            "key": new_key_json(key)}, 201)

    async def _list(self, request: web.Request) -> web.Response:
        caller_of(request).require_admin("listing tenants")
        return json_answer({"tenants": [{**t.to_json(), "keys": [key_json(k) for k in ks]}
                                        for t, ks in await self._tenants.all()]})

    async def _found(self, name: str) -> tuple[Tenant, list[KeyRecord]]:
        try:
            check_name(name)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        got = await self._tenants.get(name)
        if got is None:
            raise NotFound(f"no tenant {name!r}")
        return got

    async def _show(self, request: web.Request) -> web.Response:
        name, caller = request.match_info["name"], caller_of(request)
        if caller.name != name:
            caller.require_admin("showing another tenant")
        tenant, keys = await self._found(name)
        versions, jobs = await self._store.list_versions(), await self._store.list_jobs()
        sites = sorted({v.site for v in versions} | set(tenant.sites))
        used = {s: held(name, s, versions, jobs, ("", "")) for s in sites}
        return json_answer({"tenant": {**tenant.to_json(), "keys": [key_json(k) for k in keys],
                                       "used_bytes": {s: n for s, n in used.items() if n}}})

    async def _update(self, request: web.Request) -> web.Response:
        caller_of(request).require_admin("changing a tenant")
        name = request.match_info["name"]
        body = await read_body(request)
        audit.note(request, tenant=name, **{k: body[k] for k in FIELDS[1:] if k in body})
        old, keys = await self._found(name)
        doc = old.to_json()
        doc.pop("created")
        doc.update({k: v for k, v in body.items() if k != "sites"})
        doc["sites"] = {**doc["sites"], **(body.get("sites") or {})}
        doc["sites"] = {s: v for s, v in doc["sites"].items() if v is not None}  # null: drop
        tenant = tenant_of({**doc, "name": name}, old.created)
        if not await self._tenants.update(tenant):
            raise NotFound(f"no tenant {name!r}")
        return json_answer({"tenant": {**tenant.to_json(), "keys": [key_json(k) for k in keys]}})

    async def _delete(self, request: web.Request) -> web.Response:
        caller_of(request).require_admin("deleting a tenant")
        name = request.match_info["name"]
        _, keys = await self._found(name)
        if not await self._tenants.delete(name):
            raise NotFound(f"no tenant {name!r}")
        audit.note(request, keys=[k.id for k in keys])
        return json_answer({"deleted": name, "keys_revoked": [k.id for k in keys]})

    async def _add_key(self, request: web.Request) -> web.Response:
        caller_of(request).require_admin("adding a key")
        name = request.match_info["name"]
        await self._found(name)
        key = self._new_key(name)
        if not await self._tenants.add_key(key.record):
            raise NotFound(f"no tenant {name!r}")
        audit.note(request, key=key.record.id)
        return json_answer({"key": new_key_json(key)}, 201)

    async def _revoke(self, request: web.Request) -> web.Response:
        caller_of(request).require_admin("revoking a key")
        name, key_id = request.match_info["name"], request.match_info["key"]
        await self._found(name)
        if not await self._tenants.revoke(name, key_id):
            raise NotFound(f"tenant {name} has no key {key_id[:40]!r}")
        return json_answer({"revoked": key_id, "tenant": name})

"""The audit log: one JSON line per action on the coordinator API, on its own logger.

Logger `blockcache.audit` (not propagated to the replica's log; stderr, or `--audit-log
FILE`): every warmup, cancel, pin, unpin, evict, policy change, tenant created, changed or
deleted, key created or revoked, whoever asked and whatever came of it: `time` (UTC, ISO
8601), `event`, `actor` (`admin`, `anonymous` with auth off, `unknown` without a valid
token, or the tenant's name) and `key_id` (the tenant key whose token was used), `result`
(`ok`, `refused` for a 4xx, `failed` for a 5xx), `status`, `replica`, what it was about
(`prefix`, `site`, `job`, `tenant`, `key`, ...) and, when not ok, `error` and `reason`.
Never a secret: credentials appear by key id only, and no reason holds a secret.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

audit_log = logging.getLogger("blockcache.audit")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
EVENTS = {
    ("POST", "/v1/jobs"): "warmup",
    ("POST", "/v1/jobs/{id}/cancel"): "cancel",
    ("POST", "/v1/pin"): "pin",
    ("POST", "/v1/unpin"): "unpin",
    ("POST", "/v1/evict"): "evict",
    ("PUT", "/v1/sites/{site}/policy"): "policy.set",
    ("POST", "/v1/tenants"): "tenant.create",
    ("PATCH", "/v1/tenants/{name}"): "tenant.update",
    ("DELETE", "/v1/tenants/{name}"): "tenant.delete",
    ("POST", "/v1/tenants/{name}/keys"): "key.create",
    ("DELETE", "/v1/tenants/{name}/keys/{key}"): "key.revoke",
}


def setup(path: Path | None) -> None:
    """Send audit lines, bare JSON, to `path` (appended) or stderr; keep them out of the log."""
    handler: logging.Handler = (logging.FileHandler(path, encoding="utf-8") if path
                                else logging.StreamHandler(sys.stderr))
    handler.setFormatter(logging.Formatter("%(message)s"))
    audit_log.handlers[:] = [handler]
    audit_log.setLevel(logging.INFO)
    audit_log.propagate = False


def note(request: web.Request, **fields: Any) -> None:
    """Add what a request is about to its audit line (call as soon as it is known)."""
    request.setdefault("audit", {}).update(fields)


def event_of(request: web.Request) -> str | None:
    """Return the audit event of a request's route, None for reads."""
    info = request.match_info
    route = info.route.resource.canonical if info.route.resource is not None else ""
    return EVENTS.get((request.method, route))


def line(request: web.Request, event: str, status: int, replica: str) -> dict[str, Any]:
    """Return the audit record of a finished request."""
    caller = request.get("caller")
    rec: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": event,
        "actor": caller.name if caller is not None else "unknown",
        "key_id": caller.key_id if caller is not None else "",
        "result": "ok" if status < 400 else "refused" if status < 500 else "failed",
        "status": status, "replica": replica, **request.get("audit", {})}
    err = request.get("error")
    if err is not None and status >= 400:
        rec["error"], rec["reason"] = type(err).__name__, str(err)[:500]
    for name in ("id", "site", "name", "key"):  # from the path, unless the handler said
        if name in request.match_info:
            rec.setdefault({"id": "job", "name": "tenant"}.get(name, name),
                           request.match_info[name])
    return rec


def middleware(replica: str) -> Middleware:
    """Return the outermost middleware: one audit line per audited request, however it ends."""
    @web.middleware
    async def audited(request: web.Request, handler: Handler) -> web.StreamResponse:
        event = event_of(request)
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as e:
            status = e.status
            raise
        finally:
            if event is not None:
                audit_log.info(json.dumps(line(request, event, status, replica),
                                          sort_keys=True))
    return audited

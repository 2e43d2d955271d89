"""What every coordinator API route shares: JSON bodies and answers, and the request's caller."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from coordinator.auth import Caller
from coordinator.errors import BadRequest, CoordinatorError, Unauthorized

MAX_BODY = 64 * 1024


def json_answer(data: dict[str, Any], status: int = 200) -> web.Response:
    """Return a JSON answer."""
    return web.Response(status=status, text=json.dumps(data) + "\n",
                        content_type="application/json")


def error_answer(err: CoordinatorError) -> web.Response:
    """Return the answer of an error: its status, Retry-After if it has one, JSON reason."""
    body = json.dumps({"error": type(err).__name__, "reason": str(err), **err.details()}) + "\n"
    headers = {} if err.retry_after_s is None else {"Retry-After": str(err.retry_after_s)}
    if err.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="blockcache"'
    return web.Response(status=err.status, text=body, content_type="application/json",
                        headers=headers)


async def read_body(request: web.Request) -> dict[str, Any]:
    """Return the request's JSON object body, or raise BadRequest."""
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError, RecursionError, LookupError):
        raise BadRequest("the body is not JSON") from None
    except web.HTTPRequestEntityTooLarge:
        raise BadRequest(f"the body is larger than {MAX_BODY} bytes") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def caller_of(request: web.Request) -> Caller:
    """Return who made the request (set by the API's auth middleware; none: refuse)."""
    caller = request.get("caller")
    if not isinstance(caller, Caller):
        raise Unauthorized("this route needs a token")  # fail closed: never an open default
    return caller

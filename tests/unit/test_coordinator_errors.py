"""The coordinator's one mapping from exceptions to answers, and its etcd call wrapper."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aetcd
import pytest

from coordinator.api import _error, as_answer
from coordinator.errors import (
    BadSite,
    CoordinatorError,
    Internal,
    NodesFailed,
    NotLeader,
    StateUnavailable,
    UnknownVersion,
)
from coordinator.nodes import NodeFailed
from coordinator.state import EtcdStateStore


def answer(e: Exception) -> tuple[int, str | None, dict[str, Any]]:
    r = _error(as_answer(e))
    assert r.content_type == "application/json" and r.text is not None
    return r.status, r.headers.get("Retry-After"), json.loads(r.text)


def test_every_exception_becomes_one_json_answer() -> None:
    assert answer(StateUnavailable("etcd at h:1 is unreachable")) == (
        503, "1", {"error": "StateUnavailable", "reason": "etcd at h:1 is unreachable"})
    assert answer(NotLeader("x"))[:2] == (503, "1")
    assert answer(BadSite("no site"))[:2] == (400, None)
    assert answer(NodeFailed("n1:80/_warm: HTTP 500")) == (
        502, None, {"error": "NodesFailed", "reason": "n1:80/_warm: HTTP 500"})
    assert answer(KeyError("boom")) == (
        500, None, {"error": "Internal", "reason": "unexpected KeyError: see the "
                    "coordinator's log"})
    assert answer(UnknownVersion("hz", "s3://b/m/", [("s3://b/m/v1/", "ready")]))[2][
        "versions"] == ["s3://b/m/v1/"]
    assert isinstance(as_answer(NodeFailed("x")), NodesFailed)
    assert isinstance(as_answer(RuntimeError()), Internal)
    e = CoordinatorError("plain")
    assert as_answer(e) is e


class FakeClient:
    """An aetcd client whose calls wait for a gate or fail as refused."""

    def __init__(self) -> None:
        self.closed = False
        self.gate = asyncio.Event()

    async def close(self) -> None:
        self.closed = True

    async def slow(self) -> str:
        await self.gate.wait()
        if self.closed:
            raise asyncio.CancelledError  # what a call on a closed gRPC channel raises
        return "ok"

    async def refused(self) -> str:
        raise aetcd.exceptions.ConnectionFailedError("connection refused")


def test_a_refused_call_leaves_its_client_without_cutting_the_calls_still_on_it() -> None:
    async def go() -> None:
        store = EtcdStateStore([("127.0.0.1", 1)], "c", "me")
        old = FakeClient()
        store._client = old
        slow = asyncio.create_task(store.call(lambda c: c.slow()))
        await asyncio.sleep(0)
        with pytest.raises(StateUnavailable, match="etcd at 127.0.0.1:1 is unreachable"):
            await store.call(lambda c: c.refused())
        assert not old.closed and store.client is not old  # the next call: a new channel
        old.gate.set()
        assert await slow == "ok"  # the call in flight ran to its end...
        assert old.closed  # ...and then the client left behind was closed
        await store.close()

    asyncio.run(go())

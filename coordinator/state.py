"""All coordinator state lives in etcd; this is the only module that knows the key layout.

`/blockcache/<cluster>/`
  `jobs/<id>`                               job spec and progress (JSON), written by the leader
  `cancel/<id>`                             a cancel request, written by any replica
  `models/<site>/versions/<model>/<ver>`    a version at a site (JSON), written by the leader
  `models/<site>/pins/<model>/<ver>`        a pin, written by any replica
  `evict/<site>/<model>/<ver>`              a manual eviction request, written by any replica
  `models/<site>/policy`                    `{"keep": K}`
  `coordinator/leader`                      the elected replica's id, under its lease
  `sites/<site>/nodes/<id>`                 cache nodes (cachenode.membership)

Writes that only the leader may make are fenced: a transaction that succeeds only while
the leader key still holds this replica's id, so a deposed leader cannot overwrite its
successor's progress. Requests from other replicas live under their own keys for the same
reason (a cancel flag inside the job record would be lost to the leader's next write).
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import aetcd
import grpc

from cachenode.membership import NodeRecord, site_prefix
from coordinator.errors import NotLeader, StateUnavailable
from coordinator.model import Job, Version

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_MESSAGE_BYTES = 64 * 2**20  # a listing of every job or version (gRPC's default is 4 MiB)


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


class StateStore(Protocol):
    """What the coordinator reads and writes (EtcdStateStore in production)."""

    identity: str
    cluster: str

    async def create_job(self, job: Job) -> bool: ...
    async def put_job(self, job: Job) -> None: ...
    async def get_job(self, job_id: str) -> Job | None: ...
    async def list_jobs(self) -> list[Job]: ...
    async def delete_job(self, job_id: str) -> None: ...
    async def request_cancel(self, job_id: str) -> None: ...
    async def delete_version(self, v: Version) -> None: ...
    async def cancel_requests(self) -> set[str]: ...
    async def put_version(self, v: Version) -> None: ...
    async def get_version(self, site: str, model: str, version: str) -> Version | None: ...
    async def list_versions(self, site: str | None = None) -> list[Version]: ...
    async def set_pin(self, site: str, model: str, version: str, pinned: bool) -> None: ...
    async def request_evict(self, v: Version) -> None: ...
    async def evict_requests(self) -> list[Version]: ...
    async def clear_evict_request(self, v: Version) -> None: ...
    async def get_keep(self, site: str) -> int | None: ...
    async def set_keep(self, site: str, keep: int) -> None: ...
    async def sites(self) -> list[str]: ...
    async def node_records(self, site: str) -> list[NodeRecord]: ...


class EtcdStateStore:
    """StateStore on etcd through aetcd; every call is bounded by the client's timeout."""

    def __init__(self, endpoints: Sequence[tuple[str, int]], cluster: str, identity: str,
                 timeout_s: float = 5.0) -> None:
        self._endpoints, self.identity, self.cluster = list(endpoints), identity, cluster
        self._timeout_s = timeout_s
        self.root = f"/blockcache/{cluster}/"
        self.leader_key = (self.root + "coordinator/leader").encode()
        self._client: Any = None
        self._at = 0  # index of the endpoint in use
        self._calls: dict[Any, int] = {}  # client -> calls running on it

    @property
    def client(self) -> Any:
        """Return the aetcd client (connected lazily by `call`)."""
        if self._client is None:
            host, port = self._endpoints[self._at % len(self._endpoints)]
            self._client = aetcd.Client(host, port, timeout=self._timeout_s, options={
                "grpc.max_receive_message_length": MAX_MESSAGE_BYTES})
        return self._client

    async def close(self) -> None:
        """Close the etcd connections (the one in use and any still being left)."""
        clients = {*self._calls, *([self._client] if self._client is not None else [])}
        self._client, self._calls = None, {}
        for client in clients:
            await client.close()

    async def call(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run one etcd call; raise StateUnavailable if it fails.

        Only a refused connection moves this store to the next endpoint, and only once per
        client. The client left behind is closed once no call runs on it: closing a channel
        cancels the calls in flight on it, and a CancelledError that no one asked for would
        drop an API request without an answer or end the leader's loop.
        """
        client = self.client
        host, port = self._endpoints[self._at % len(self._endpoints)]
        self._calls[client] = self._calls.get(client, 0) + 1
        try:
            return await fn(client)
        except (aetcd.exceptions.ConnectionFailedError, OSError) as e:
            if self._client is client:
                self._at += 1
                self._client = None  # the next call opens a channel to the next endpoint
            raise StateUnavailable(f"etcd at {host}:{port} is unreachable: {e}") from None
        except (aetcd.exceptions.ClientError, grpc.RpcError, TimeoutError) as e:
            raise StateUnavailable(f"etcd at {host}:{port} did not answer: "
                                   f"{type(e).__name__}: {e}") from None
        finally:
            await self._done(client)

    async def _done(self, client: Any) -> None:
        """Count a call on `client` as ended; close the client if it was left and is idle."""
        left = self._calls.get(client, 1) - 1
        if left or client is self._client:
            self._calls[client] = left
        elif self._calls.pop(client, None) is not None:
            await client.close()

    # -- raw helpers ------------------------------------------------------------------------

    async def _get(self, key: str) -> bytes | None:
        got = await self.call(lambda c: c.get(key.encode()))
        return None if got is None else bytes(got.value)

    async def _prefix(self, prefix: str) -> list[tuple[str, bytes]]:
        got = await self.call(lambda c: c.get_prefix(prefix.encode()))
        return [(kv.key.decode(), bytes(kv.value)) for kv in got.kvs]

    async def _put(self, key: str, value: bytes) -> None:
        await self.call(lambda c: c.put(key.encode(), value))

    async def _delete(self, key: str) -> None:
        await self.call(lambda c: c.delete(key.encode()))

    async def _fenced_put(self, key: str, value: bytes) -> None:
        async def txn(c: Any) -> bool:
            ok, _ = await c.transaction(
                compare=[c.transactions.value(self.leader_key) == self.identity.encode()],
                success=[c.transactions.put(key.encode(), value)], failure=[])
            return bool(ok)

        if not await self.call(txn):
            raise NotLeader(f"replica {self.identity} is no longer the leader; "
                            f"write of {key} refused")

    # -- jobs -------------------------------------------------------------------------------

    def _job_key(self, job_id: str) -> str:
        return f"{self.root}jobs/{_q(job_id)}"

    async def create_job(self, job: Job) -> bool:
        """Record a new job unless its id is taken; return whether it was (any replica may)."""
        key, value = self._job_key(job.id).encode(), json.dumps(job.to_dict()).encode()

        async def txn(c: Any) -> bool:
            ok, _ = await c.transaction(compare=[c.transactions.create(key) == 0],
                                        success=[c.transactions.put(key, value)], failure=[])
            return bool(ok)

        return await self.call(txn)

    async def put_job(self, job: Job) -> None:
        """Write a job's state and progress (leader only)."""
        await self._fenced_put(self._job_key(job.id), json.dumps(job.to_dict()).encode())

    async def get_job(self, job_id: str) -> Job | None:
        """Return one job, or None."""
        raw = await self._get(self._job_key(job_id))
        return None if raw is None else Job.from_dict(json.loads(raw))

    async def list_jobs(self) -> list[Job]:
        """Return every job, newest first (records this version cannot read are skipped)."""
        jobs = []
        for k, raw in await self._prefix(self.root + "jobs/"):
            try:
                jobs.append(Job.from_dict(json.loads(raw)))
            except (ValueError, TypeError, KeyError) as e:
                log.warning("skipping unreadable job record %s: %s", k, e)
        return sorted(jobs, key=lambda j: j.created, reverse=True)

    async def delete_job(self, job_id: str) -> None:
        """Forget a finished job and its cancel request."""
        await self._delete(self._job_key(job_id))
        await self._delete(f"{self.root}cancel/{_q(job_id)}")

    async def request_cancel(self, job_id: str) -> None:
        """Ask the leader to cancel a job."""
        await self._put(f"{self.root}cancel/{_q(job_id)}", b"1")

    async def cancel_requests(self) -> set[str]:
        """Return the ids of jobs whose cancellation was asked for."""
        n = len(self.root + "cancel/")
        return {urllib.parse.unquote(k[n:]) for k, _ in await self._prefix(self.root + "cancel/")}

    # -- versions, pins, policies -------------------------------------------------------------

    def _vkey(self, kind: str, site: str, model: str, version: str) -> str:
        return f"{self.root}models/{site}/{kind}/{_q(model)}/{_q(version)}"

    async def put_version(self, v: Version) -> None:
        """Write a version's state (leader only)."""
        await self._fenced_put(self._vkey("versions", v.site, v.model, v.version),
                               json.dumps(v.to_dict()).encode())

    async def get_version(self, site: str, model: str, version: str) -> Version | None:
        """Return one version at a site (with its pin), or None."""
        raw = await self._get(self._vkey("versions", site, model, version))
        if raw is None:
            return None
        v = Version.from_dict(json.loads(raw))
        v.pinned = await self._get(self._vkey("pins", site, model, version)) is not None
        return v

    async def delete_version(self, v: Version) -> None:
        """Forget a version record (long-evicted ones; `cachectl models forget`)."""
        await self._delete(self._vkey("versions", v.site, v.model, v.version))

    async def list_versions(self, site: str | None = None) -> list[Version]:
        """Return the versions of one site (or all), pins filled in, by site/model/version."""
        base = self.root + "models/" + (f"{site}/" if site else "")
        out, pins = [], set()
        for k, raw in await self._prefix(base):
            rest = k[len(self.root + "models/"):].split("/")
            if len(rest) == 4 and rest[1] == "versions":
                try:
                    out.append(Version.from_dict(json.loads(raw)))
                except (ValueError, TypeError, KeyError) as e:
                    log.warning("skipping unreadable version record %s: %s", k, e)
            elif len(rest) == 4 and rest[1] == "pins":
                pins.add((rest[0], urllib.parse.unquote(rest[2]), urllib.parse.unquote(rest[3])))
        for v in out:
            v.pinned = (v.site, v.model, v.version) in pins
        return sorted(out, key=lambda v: (v.site, v.model, v.ready_at or v.updated))

    async def set_pin(self, site: str, model: str, version: str, pinned: bool) -> None:
        """Pin or unpin a version at a site."""
        key = self._vkey("pins", site, model, version)
        await (self._put(key, b"1") if pinned else self._delete(key))

    def _evict_key(self, v: Version) -> str:
        return f"{self.root}evict/{v.site}/{_q(v.model)}/{_q(v.version)}"

    async def request_evict(self, v: Version) -> None:
        """Ask the leader to evict a version from a site."""
        await self._put(self._evict_key(v), json.dumps(v.to_dict()).encode())

    async def evict_requests(self) -> list[Version]:
        """Return the evictions asked for by hand."""
        return [Version.from_dict(json.loads(raw))
                for _, raw in await self._prefix(self.root + "evict/")]

    async def clear_evict_request(self, v: Version) -> None:
        """Forget a handled eviction request."""
        await self._delete(self._evict_key(v))

    async def get_keep(self, site: str) -> int | None:
        """Return a site's keep count, or None for the default."""
        raw = await self._get(f"{self.root}models/{site}/policy")
        return None if raw is None else int(json.loads(raw)["keep"])

    async def set_keep(self, site: str, keep: int) -> None:
        """Set how many ready versions per model a site keeps."""
        await self._put(f"{self.root}models/{site}/policy", json.dumps({"keep": keep}).encode())

    async def sites(self) -> list[str]:
        """Return the sites that have cache nodes registered."""
        base = self.root + "sites/"
        return sorted({k[len(base):].split("/")[0] for k, _ in await self._prefix(base)})

    async def node_records(self, site: str) -> list[NodeRecord]:
        """Return the records of a site's registered cache nodes (unreadable ones skipped)."""
        records = []
        for k, raw in await self._prefix(site_prefix(self.cluster, site)):
            try:
                records.append(NodeRecord.unpack(raw))
            except ValueError as e:
                log.warning("skipping unreadable node record %s: %s", k, e)
        return records

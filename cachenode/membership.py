"""Register this node in etcd under a lease and follow the live member list of its site.

`/blockcache/<cluster>/sites/<site>/nodes/<node-id>` -> msgpack `NodeRecord`, under a lease kept
alive here. `members` is the site's view (this node always included while it runs), `epoch` the
etcd revision of the view's last change.

Client: `aetcd` (asyncio, maintained); `etcd3` 0.12 no longer imports with current protobuf.
aetcd gives the channel, the unary calls and its generated stubs; the two long-lived streams
are driven here: aetcd's `refresh_lease()` opens a new LeaseKeepAlive stream per refresh, so
one stream per session carries a keepalive every TTL/3 (as clientv3 does); aetcd's `watch()`
buffers events in an unbounded queue and hides stream errors in callbacks, so one Watch
stream per session is read directly (bounded; compaction and cancel are seen).

Failures (DESIGN: "etcd down: nodes keep serving with the last ring they saw, and rejoin when
it returns"): a session is one channel with both streams, and any error ends it. The view is
kept, `healthy` turns False, and after a backoff (0.1 s doubling to 2 s, next endpoint) a new
session keeps the lease if etcd still has it (else grants one), puts the record again,
re-reads the prefix (`on_change` if the view differs) and watches from the read's revision+1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import aetcd
import msgpack
from aetcd import rpc
from aetcd.utils import prefix_range_end

log = logging.getLogger(__name__)

STATES = ("up", "draining")
MAX_WEIGHT = 10_000  # as cachenode.config: every process builds the ring of all weights
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 2.0


class MembershipError(Exception):
    """etcd could not be reached in time, or a membership write failed."""


@dataclass(frozen=True)
class NodeRecord:
    """How other nodes and clients reach one cache node, and whether it takes new work."""

    id: str
    http: str  # "host:port"
    grpc: str  # "host:port"
    weight: int = 100
    state: str = "up"  # "up" or "draining"
    block_size: int = 0  # bytes; 0 = unknown (a node with another block size is not a peer)
    registered_at: float = 0.0  # Unix time this process first registered; 0 = unknown
    filled_since: float = 0.0  # Unix time of its first fill (1: it started with blocks); 0: none

    def __post_init__(self) -> None:
        for name in ("id", "http", "grpc"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"node record field {name!r} is not a string")
        if not self.id or "/" in self.id:
            raise ValueError(f"bad node id {self.id!r}")
        if self.state not in STATES:
            raise ValueError(f"bad node state {self.state!r} (want one of {STATES})")
        if (isinstance(self.weight, bool) or not isinstance(self.weight, int)
                or not 0 <= self.weight <= MAX_WEIGHT):
            raise ValueError(f"bad node weight {self.weight!r} (want 0..{MAX_WEIGHT})")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) \
                or self.block_size < 0:
            raise ValueError(f"bad node block size {self.block_size!r}")
        for name in ("registered_at", "filled_since"):
            at = getattr(self, name)
            if isinstance(at, bool) or not isinstance(at, (int, float)) or not 0 <= at < 1e11:
                raise ValueError(f"bad node {name} {at!r}")

    def pack(self) -> bytes:
        """Return the record as a msgpack map."""
        return bytes(msgpack.packb(dataclasses.asdict(self)))

    @classmethod
    def unpack(cls, data: bytes) -> NodeRecord:
        """Parse a packed record, ignoring unknown fields; raise ValueError on anything else."""
        try:
            raw = msgpack.unpackb(data)
            if not isinstance(raw, dict):
                raise ValueError(f"not a map but {type(raw).__name__}")
            return cls(**{k: v for k, v in raw.items() if k in _FIELDS})
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            raise ValueError(f"bad node record: {e}") from e


_FIELDS = frozenset(f.name for f in dataclasses.fields(NodeRecord))


def site_prefix(cluster: str, site: str) -> str:
    """Return the key prefix under which the nodes of one site register (ends with "/")."""
    for what, value in (("cluster", cluster), ("site", site)):
        if not value or "/" in value:
            raise ValueError(f"bad {what} name {value!r}")
    return f"/blockcache/{cluster}/sites/{site}/nodes/"


def node_key(cluster: str, site: str, node_id: str) -> str:
    """Return the etcd key of one node's record."""
    if not node_id or "/" in node_id:
        raise ValueError(f"bad node id {node_id!r}")
    return site_prefix(cluster, site) + node_id


def _host_port(endpoint: str) -> tuple[str, int]:
    """Split "http://host:port" (or "host:port") into host and port."""
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"unsupported etcd endpoint {endpoint!r} (want http://host:port)")
    return parts.hostname, parts.port or 2379


class Membership:
    """This node's registration in etcd and its view of the site's members."""

    def __init__(self, endpoints: list[str], cluster: str, site: str, record: NodeRecord, *,
                 lease_ttl_s: float = 10.0,
                 on_change: Callable[[Mapping[str, NodeRecord], int], None] | None = None,
                 connect_timeout_s: float = 30.0, call_timeout_s: float = 5.0,
                 close_timeout_s: float = 3.0) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self.endpoints = list(endpoints)
        self._targets = [_host_port(e) for e in endpoints]
        self._prefix = site_prefix(cluster, site).encode()
        self._key = node_key(cluster, site, record.id).encode()
        self._record = record
        self._ttl_s = max(1, math.ceil(lease_ttl_s))  # etcd leases are whole seconds (min 2)
        self._on_change = on_change
        self._connect_timeout_s = connect_timeout_s
        self._call_timeout_s, self._close_timeout_s = call_timeout_s, close_timeout_s
        self._registered: dict[str, NodeRecord] = {}  # what etcd holds, as last read/watched
        self._members: Mapping[str, NodeRecord] = MappingProxyType({})  # replaced, never mutated
        self._epoch = 0
        self._healthy = False
        self._closing = False
        self._lease_id = 0  # 0: none granted yet
        self._next_target = 0
        # The current session (all None between sessions):
        self._client: Any = None  # aetcd.Client
        self._keepalive: Any = None  # LeaseKeepAlive stream
        self._watch: Any = None  # Watch stream
        self._task: asyncio.Task[None] | None = None

    @property
    def members(self) -> Mapping[str, NodeRecord]:
        """Return the current view: node id -> record, this node included (a snapshot)."""
        return self._members

    @property
    def epoch(self) -> int:
        """Return the etcd revision of the last change of the view (0 before start)."""
        return self._epoch

    @property
    def healthy(self) -> bool:
        """Return whether etcd is reachable and this node is registered in it."""
        return self._healthy and not self._closing

    async def start(self) -> None:
        """Register and load the members; raise MembershipError if etcd stays unreachable."""
        if self._task is not None or self._closing:
            raise RuntimeError("Membership already started")
        deadline = time.monotonic() + self._connect_timeout_s
        delay, error = BACKOFF_MIN_S, None
        while True:
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    await self._open_session()
                break
            except Exception as e:
                await self._end_session()
                error = e if error is None or not isinstance(e, TimeoutError) else error
                if (remaining := deadline - time.monotonic()) <= 0.01:
                    raise MembershipError(f"etcd at {self.endpoints} not reachable within "
                                          f"{self._connect_timeout_s:g}s: {_describe(error)}"
                                          ) from error
                await asyncio.sleep(min(delay, remaining))
                delay = min(2 * delay, BACKOFF_MAX_S)
            except BaseException:
                await self._end_session()
                raise
        self._task = asyncio.create_task(self._run(), name=f"membership-{self._record.id}")

    async def set_state(self, state: str) -> None:
        """Rewrite this node's record with `state` ("up" or "draining")."""
        await self.rewrite(state=state)

    async def rewrite(self, **fields: Any) -> None:
        """Rewrite this node's record with `fields` changed (kept for a reconnect if it fails)."""
        self._record = dataclasses.replace(self._record, **fields)
        client = self._client
        if client is None or not self._healthy:
            raise MembershipError(f"etcd unreachable; {fields} is written on reconnect")
        try:
            async with asyncio.timeout(self._call_timeout_s):
                await client.put(self._key, self._record.pack(), lease=self._lease_id)
        except Exception as e:
            raise MembershipError(f"could not write {fields}: {_describe(e)}") from e

    async def close(self) -> None:
        """Mark this node draining, delete its key, revoke its lease and stop (bounded)."""
        if self._closing:
            return
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        client, draining = self._client, dataclasses.replace(self._record, state="draining")
        try:
            if not self._lease_id:  # never registered
                return
            if client is None:
                raise MembershipError("etcd unreachable")
            async with asyncio.timeout(self._close_timeout_s):
                if self._record != draining:
                    self._record = draining
                    await client.put(self._key, draining.pack(), lease=self._lease_id)
                await client.delete(self._key)
                await client.revoke_lease(self._lease_id)
        except Exception as e:
            log.warning("could not deregister %s from etcd (%s); its lease expires in %ds",
                        self._record.id, _describe(e), self._ttl_s)
        finally:
            await self._end_session()

    async def _run(self) -> None:
        """Keep a session alive; on failure keep the view, back off and open a new one."""
        delay = BACKOFF_MIN_S
        while True:
            try:
                if self._client is None:
                    await self._open_session()
                    log.info("etcd session for %s back (%s, epoch %d)", self._record.id,
                             self.endpoints, self._epoch)
                    delay = BACKOFF_MIN_S
                await self._serve()
            except Exception as e:
                level = logging.WARNING if self._healthy else logging.INFO
                log.log(level, "etcd session for %s lost: %s; keeping %d members, retrying",
                        self._record.id, _describe(e), len(self._members))
                await self._end_session()
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(2 * delay, BACKOFF_MAX_S)

    async def _open_session(self) -> None:
        """Connect, keep or renew the lease, put the record, re-read the view, start watching."""
        host, port = self._targets[self._next_target % len(self._targets)]
        self._next_target += 1
        # A fresh channel per session: gRPC's own reconnect backoff (up to 120 s) never applies.
        self._client = client = aetcd.Client(host, port, timeout=self._call_timeout_s)
        await client.connect()
        self._keepalive = client.leasestub.LeaseKeepAlive(metadata=client.metadata)
        if not self._lease_id or await self._refresh() <= 0:
            self._lease_id = (await client.lease(self._ttl_s)).id
            log.info("granted etcd lease %x (ttl %ds) to %s", self._lease_id, self._ttl_s,
                     self._record.id)
        await client.put(self._key, self._record.pack(), lease=self._lease_id)
        got = await client.get_prefix(self._prefix)
        self._registered.clear()
        for kv in got.kvs:
            self._apply(kv.key, kv.value, deleted=False)
        self._publish(got.header.revision)
        self._watch = rpc.WatchStub(client.channel).Watch(metadata=client.metadata)
        create = rpc.WatchCreateRequest(key=self._prefix, start_revision=got.header.revision + 1,
                                        range_end=prefix_range_end(self._prefix))
        async with asyncio.timeout(self._call_timeout_s):
            await self._watch.write(rpc.WatchRequest(create_request=create))
            created = await self._watch.read()
        if not isinstance(created, rpc.WatchResponse) or not created.created or created.canceled:
            raise MembershipError(f"watch not created: {created}")
        self._healthy = True

    async def _serve(self) -> None:
        """Run the keepalive and watch loops of the session until either fails."""
        tasks = [asyncio.create_task(self._keepalive_loop()),
                 asyncio.create_task(self._watch_loop())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            t.result()
        raise MembershipError("session loop ended")

    async def _refresh(self) -> int:
        """Send one keepalive on the session's stream and return the lease's TTL (0: gone)."""
        async with asyncio.timeout(self._call_timeout_s):
            await self._keepalive.write(rpc.LeaseKeepAliveRequest(ID=self._lease_id))
            reply = await self._keepalive.read()
        if not isinstance(reply, rpc.LeaseKeepAliveResponse):
            raise MembershipError("etcd closed the keepalive stream")
        return int(reply.TTL)

    async def _keepalive_loop(self) -> None:
        """Refresh the lease every TTL/3; fail the session when it has expired."""
        while True:
            ttl = await self._refresh()
            if ttl <= 0:
                raise MembershipError(f"lease {self._lease_id:x} expired")
            await asyncio.sleep(ttl / 3)

    async def _watch_loop(self) -> None:
        """Apply watch events to the view; fail the session when the watch ends."""
        while True:
            resp = await self._watch.read()
            if not isinstance(resp, rpc.WatchResponse):
                raise MembershipError("etcd closed the watch stream")
            if resp.canceled or resp.compact_revision:
                raise MembershipError(f"watch canceled (compacted at {resp.compact_revision}):"
                                      f" {resp.cancel_reason}; re-reading")
            own_deleted = False
            for ev in resp.events:
                own_deleted |= self._apply(ev.kv.key, ev.kv.value, ev.type == rpc.Event.DELETE)
            if resp.events:  # in revision order
                self._publish(resp.events[-1].kv.mod_revision)
            if own_deleted and not self._closing:
                raise MembershipError("own key was deleted (lease expired?); registering again")

    def _apply(self, key: bytes, value: bytes, deleted: bool) -> bool:
        """Apply one key's new value (or deletion) to etcd's view; return if it was our own."""
        node_id = key[len(self._prefix):].decode(errors="replace")
        self._registered.pop(node_id, None)
        if not deleted:
            try:
                self._registered[node_id] = NodeRecord.unpack(value)
            except ValueError as e:
                log.warning("ignoring bad node record %r: %s", node_id, e)
        return deleted and key == self._key

    def _publish(self, revision: int) -> None:
        """Adopt etcd's view (plus this node) as of `revision`; notify if it changed."""
        view = dict(self._registered)
        view.setdefault(self._record.id, self._record)
        if view == self._members:
            return
        self._members = MappingProxyType(view)
        self._epoch = max(revision, self._epoch + 1)  # stays increasing if etcd was wiped
        if self._on_change is not None:
            try:
                self._on_change(self._members, self._epoch)
            except Exception:
                log.exception("membership on_change callback failed (epoch %d)", self._epoch)

    async def _end_session(self) -> None:
        """Drop the streams and the channel of the current session; keep the view and lease."""
        self._healthy = False
        client, self._client = self._client, None
        for call in (self._keepalive, self._watch):
            if call is not None:
                call.cancel()
        self._keepalive = self._watch = None
        if client is not None:
            try:
                async with asyncio.timeout(self._call_timeout_s):
                    await client.close()
            except Exception as e:
                log.debug("closing etcd channel: %s", _describe(e))


def _describe(e: BaseException) -> str:
    """Return "Type: message" (one line) for logs and errors."""
    if isinstance(e, rpc.AioRpcError):
        return f"{e.code().name}: {e.details()}"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__

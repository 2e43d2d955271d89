"""Tenants in etcd, as the coordinator API writes them (layout: cachenode/auth/tenants.py).

Any replica writes them (they are requests, not the leader's progress): each change is one
etcd transaction that checks the tenant's existence, so a key is never added to a tenant
being deleted, and deleting a tenant deletes its record and all of its keys at once. Every
node and replica follows the prefix with a watch (cachenode/tenant_watch.py).
"""

from __future__ import annotations

import json
from typing import Any

from aetcd.utils import prefix_range_end

from cachenode.auth.tenants import KeyRecord, Tenant, decode, split_key, tenants_prefix
from coordinator.state import EtcdStateStore


def _value(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True).encode()


class TenantStore:
    """Reads and writes tenant records and keys through the replica's etcd store."""

    def __init__(self, store: EtcdStateStore) -> None:
        self._store = store
        self.prefix = tenants_prefix(store.cluster)

    def _tkey(self, name: str) -> bytes:
        return (self.prefix + name).encode()

    def _kkey(self, name: str, key_id: str) -> bytes:
        return f"{self.prefix}{name}/keys/{key_id}".encode()

    async def create(self, tenant: Tenant, key: KeyRecord) -> bool:
        """Record a new tenant with its first key; return False if the name is taken."""
        tkey, kkey = self._tkey(tenant.name), self._kkey(tenant.name, key.id)

        async def txn(c: Any) -> bool:
            ok, _ = await c.transaction(
                compare=[c.transactions.create(tkey) == 0],
                success=[c.transactions.put(tkey, _value(tenant.to_json())),
                         c.transactions.put(kkey, _value(key.to_json()))], failure=[])
            return bool(ok)

        return await self._store.call(txn)

    async def update(self, tenant: Tenant) -> bool:
        """Rewrite an existing tenant's record; return False if there is no such tenant."""
        tkey = self._tkey(tenant.name)

        async def txn(c: Any) -> bool:
            ok, _ = await c.transaction(
                compare=[c.transactions.create(tkey) > 0],
                success=[c.transactions.put(tkey, _value(tenant.to_json()))], failure=[])
            return bool(ok)

        return await self._store.call(txn)

    async def delete(self, name: str) -> bool:
        """Delete a tenant and every key of it; return False if there was none."""
        tkey, keys = self._tkey(name), (self.prefix + name + "/").encode()

        async def txn(c: Any) -> bool:
            ok, _ = await c.transaction(
                compare=[c.transactions.create(tkey) > 0],
                success=[c.transactions.delete(tkey),
                         c.transactions.delete(keys, range_end=prefix_range_end(keys))],
                failure=[])
            return bool(ok)

        return await self._store.call(txn)

    async def add_key(self, key: KeyRecord) -> bool:
        """Record a new key of an existing tenant; return False if the tenant is gone."""
        tkey, kkey = self._tkey(key.tenant), self._kkey(key.tenant, key.id)

        async def txn(c: Any) -> bool:
            ok, _ = await c.transaction(
                compare=[c.transactions.create(tkey) > 0, c.transactions.create(kkey) == 0],
                success=[c.transactions.put(kkey, _value(key.to_json()))], failure=[])
            return bool(ok)

        return await self._store.call(txn)

    async def revoke(self, name: str, key_id: str) -> bool:
        """Delete one key of a tenant; return False if it had no such key."""
        kkey = self._kkey(name, key_id)
        got = await self._store.call(lambda c: c.delete(kkey))
        return bool(got)

    async def get(self, name: str) -> tuple[Tenant, list[KeyRecord]] | None:
        """Return a tenant and its keys (as etcd has them now), or None."""
        got = await self.all(self.prefix + name)
        return next(((t, ks) for t, ks in got if t.name == name), None)

    async def all(self, under: str | None = None) -> list[tuple[Tenant, list[KeyRecord]]]:
        """Return every tenant (or those whose key starts with `under`) with its keys."""
        raw = await self._store.call(lambda c: c.get_prefix((under or self.prefix).encode()))
        tenants: dict[str, Tenant] = {}
        keys: dict[str, list[KeyRecord]] = {}
        n = len(self.prefix)
        for kv in raw.kvs:
            where = split_key(bytes(kv.key).decode()[n:])
            try:
                if where is not None and where[1] is None:
                    t = Tenant.from_json(decode(bytes(kv.value)))
                    tenants[t.name] = t
                elif where is not None:
                    keys.setdefault(where[0], []).append(KeyRecord.from_json(
                        decode(bytes(kv.value))))
            except ValueError:
                continue  # cachenode's table logs bad records; the API lists the good ones
        return [(t, sorted(keys.get(name, []), key=lambda k: (k.created, k.id)))
                for name, t in sorted(tenants.items())]

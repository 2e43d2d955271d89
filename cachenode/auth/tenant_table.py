"""The tenants a process has seen in etcd: a KeySource for SigV4, tokens, and limits per site.

Fed by `apply` (cachenode/tenant_watch.py: the initial read, then each watch event); read
by the edge authenticator (`get`, `by_token`) and by quotas and origin budgets
(`limits`, the `TenantDirectory` of cachenode/access.py). Replaced dicts, never changed in
place, so a reader on the event loop always sees one consistent view. Pure.
"""

from __future__ import annotations

import logging
from types import MappingProxyType

from cachenode.access import NO_LIMITS, Principal, TenantLimits
from cachenode.auth.keys import AccessKey
from cachenode.auth.sealing import Sealer
from cachenode.auth.tenants import (
    KeyRecord,
    Tenant,
    decode,
    opened,
    principal_of,
    split_key,
    token_key_id,
    token_matches,
)

log = logging.getLogger(__name__)


class TenantTable:
    """Tenants and their keys, as last seen in etcd; `site` picks whose limits `limits` gives."""

    def __init__(self, site: str = "", sealer: Sealer | None = None) -> None:
        self.site, self.sealer = site, sealer  # sealer: set before the first read
        self.tenants: MappingProxyType[str, Tenant] = MappingProxyType({})
        self._records: dict[str, KeyRecord] = {}  # key id -> record
        self._usable: dict[str, AccessKey] = {}  # key id -> opened SigV4 key
        self.revision = 0  # etcd revision of the last change applied
        self.loaded = False  # the first full read is in

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key_id: str) -> AccessKey | None:
        """Return the SigV4 key with this id, if its tenant exists and it opens here."""
        key = self._usable.get(key_id)
        record = self._records.get(key_id)
        if key is None or record is None or record.tenant not in self.tenants:
            return None
        return key

    def by_token(self, token: str) -> Principal | None:
        """Return the principal of a bearer token, or None (unknown, revoked, malformed)."""
        key_id = token_key_id(token)
        record = self._records.get(key_id) if key_id else None
        if record is None or not token_matches(record, token):
            return None
        tenant = self.tenants.get(record.tenant)
        return principal_of(tenant, record.id) if tenant is not None else None

    def limits(self, tenant: str) -> TenantLimits:
        """Return the tenant's limits at this table's site (NO_LIMITS if unknown or '')."""
        t = self.tenants.get(tenant)
        return t.limits(self.site) if t is not None else NO_LIMITS

    def keys_of(self, tenant: str) -> list[KeyRecord]:
        """Return a tenant's key records, by creation time."""
        return sorted((r for r in self._records.values() if r.tenant == tenant),
                      key=lambda r: (r.created, r.id))

    def replace(self, items: list[tuple[str, bytes]], revision: int) -> None:
        """Adopt a full read of the tenants prefix (keys relative to it)."""
        tenants: dict[str, Tenant] = {}
        records: dict[str, KeyRecord] = {}
        for rest, raw in items:
            self._parse(rest, raw, tenants, records)
        self._adopt(tenants, records, revision)
        self.loaded = True

    def apply(self, rest: str, raw: bytes | None, revision: int) -> None:
        """Apply one put (`raw`) or delete (None) of a key relative to the tenants prefix."""
        tenants, records = dict(self.tenants), dict(self._records)
        where = split_key(rest)
        if where is None:
            return
        name, key_id = where
        if key_id is None:
            tenants.pop(name, None)
        else:
            records.pop(key_id, None)
        if raw is not None:
            self._parse(rest, raw, tenants, records)
        self._adopt(tenants, records, revision)

    def _parse(self, rest: str, raw: bytes, tenants: dict[str, Tenant],
               records: dict[str, KeyRecord]) -> None:
        where = split_key(rest)
        if where is None:
            return
        try:
            if where[1] is None:
                t = Tenant.from_json(decode(raw))
                tenants[t.name] = t
            else:
                r = KeyRecord.from_json(decode(raw))
                if (r.tenant, r.id) != where:
                    raise ValueError("its tenant or id differs from its etcd key")
                records[r.id] = r
        except ValueError as e:
            log.warning("ignoring the bad tenant record %s: %s", rest[:200], e)

    def _adopt(self, tenants: dict[str, Tenant], records: dict[str, KeyRecord],
               revision: int) -> None:
        usable = {}
        for key_id, r in records.items():
            t = tenants.get(r.tenant)
            if t is None:
                continue
            old, old_record = self._usable.get(key_id), self._records.get(key_id)
            if old is not None and old_record == r and self.tenants.get(r.tenant) == t:
                usable[key_id] = old  # unchanged: not opened again
            elif (key := opened(r, t, self.sealer)) is not None:
                usable[key_id] = key
        self.tenants = MappingProxyType(tenants)
        self._records, self._usable = records, usable
        self.revision = max(self.revision, revision)

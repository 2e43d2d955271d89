"""Tenants without I/O: sealed secrets, records, the watched table, bearer tokens at the edge,
and the coordinator's scoping and quota admission."""

from __future__ import annotations

import json

import pytest

from cachenode.access import AccessDenied, RequestView, Scope, TenantLimits
from cachenode.auth.edge import EdgeAuthenticator
from cachenode.auth.sealing import Sealer, SealError
from cachenode.auth.tenant_table import TenantTable
from cachenode.auth.tenants import Tenant, new_key, token_hash
from coordinator.auth import Caller
from coordinator.errors import QuotaExceeded
from coordinator.model import Version
from coordinator.scoping import admit

SEALER = Sealer(b"a-cluster-secret-0123456789")
MiB = 2**20


def test_a_sealed_secret_opens_only_with_its_key_and_for_its_record() -> None:
    sealed = SEALER.seal("s3cr3t-value", "team-a/BCKEY")
    assert "s3cr3t" not in sealed and SEALER.open(sealed, "team-a/BCKEY") == "s3cr3t-value"
    assert SEALER.seal("s3cr3t-value", "team-a/BCKEY") != sealed  # a fresh nonce each time
    with pytest.raises(SealError, match="another cluster secret"):
        Sealer(b"another-secret-0123456789").open(sealed, "team-a/BCKEY")
    with pytest.raises(SealError, match="tag"):
        SEALER.open(sealed, "team-b/BCKEY")  # moved to another tenant's record
    blob = sealed.rsplit(".", 1)
    flipped = blob[1][:5] + ("A" if blob[1][5] != "A" else "B") + blob[1][6:]
    with pytest.raises(SealError):
        SEALER.open(f"{blob[0]}.{flipped}", "team-a/BCKEY")


def _table() -> tuple[TenantTable, str, str]:
    t = Tenant("team-a", (Scope("models", "a/"),), {"hz": TenantLimits(10, 20, 3)})
    k = new_key("team-a", SEALER, 1.0)
    table = TenantTable("hz", SEALER)
    table.replace([("team-a", json.dumps(t.to_json()).encode()),
                   (f"team-a/keys/{k.record.id}", json.dumps(k.record.to_json()).encode())], 7)
    assert k.record.token_sha256 == token_hash(k.token) and k.secret not in str(k.record)
    return table, k.record.id, k.token


def test_the_table_gives_keys_tokens_and_limits_and_forgets_revoked_ones() -> None:
    table, key_id, token = _table()
    key = table.get(key_id)
    assert key is not None and key.principal.tenant == "team-a"
    who = table.by_token(token)
    assert who is not None and (who.name, who.tenant) == (key_id, "team-a")
    assert who.may_read("models", "a/x") and not who.may_read("models", "b/x")
    assert table.limits("team-a") == TenantLimits(10, 20, 3)
    assert table.limits("nobody") == table.limits("") == TenantLimits()
    assert table.by_token(token[:-1] + "0" if token[-1] != "0" else token[:-1] + "1") is None
    table.apply(f"team-a/keys/{key_id}", None, 8)  # revoked
    assert table.get(key_id) is None and table.by_token(token) is None
    table, key_id, token = _table()
    table.apply("team-a", None, 9)  # the tenant deleted first: its keys stop at once
    assert table.get(key_id) is None and table.by_token(token) is None
    table.apply("team-b", b"{not json", 10)  # a bad record is skipped, not fatal
    assert "team-b" not in table.tenants


def test_bearer_tokens_at_the_edge() -> None:
    table, key_id, token = _table()
    auth = EdgeAuthenticator(table, None, table)

    def view(headers: list[tuple[str, str]], target: str = "/models/a/x") -> RequestView:
        return RequestView.of("GET", target, headers)

    who = auth.authenticate(view([("Authorization", f"Bearer {token}")]), 0.0)
    assert who.tenant == "team-a"
    for bad in ("bct_x", token[:-2] + "00", ""):
        with pytest.raises(AccessDenied) as e:
            auth.authenticate(view([("Authorization", f"Bearer {bad}")]), 0.0)
        assert e.value.code == "InvalidToken"
    with pytest.raises(AccessDenied) as e:
        auth.authenticate(view([("Authorization", f"Bearer {token}")],
                               "/models/a/x?X-Amz-Signature=ab"), 0.0)
    assert e.value.code == "InvalidArgument"
    with pytest.raises(AccessDenied) as e:
        auth.authenticate(view([]), 0.0)
    assert e.value.code == "AccessDenied"


def _version(name: str, size: int, ready: float, tenants: list[str], pinned: bool = False
             ) -> Version:
    return Version("hz", "b/m", name, "b", f"m/{name}/", "ready", size, 1, pinned, ready,
                   ready, None, tenants)


def test_quota_admission_refuses_with_numbers_or_evicts_the_oldest_own_versions() -> None:
    t = Tenant("a", (Scope("b", "m/"),), {"hz": TenantLimits(quota_bytes=10 * MiB)})
    caller = Caller("a", t)
    versions = [_version("v1", 4 * MiB, 1.0, ["a"]), _version("v2", 4 * MiB, 2.0, ["a"]),
                _version("v0", 4 * MiB, 0.5, ["a", "b"]),  # shared: counted, not evictable
                _version("vp", 1 * MiB, 0.1, ["a"], pinned=True)]
    assert admit(caller, "hz", 1 * MiB, versions[:2], [], "b", "m/v3/") == []
    assert admit(caller, "elsewhere", 10**12, versions, [], "b", "m/v3/") == []  # no quota
    with pytest.raises(QuotaExceeded) as e:
        admit(caller, "hz", 3 * MiB, versions, [], "b", "m/v3/")
    assert (e.value.quota, e.value.used, e.value.asked) == (10 * MiB, 13 * MiB, 3 * MiB)
    assert str(10 * MiB) in str(e.value) and str(13 * MiB) in str(e.value)
    evicting = Caller("a", Tenant("a", t.read, t.sites, over_quota="evict-oldest"))
    out = admit(evicting, "hz", 3 * MiB, versions, [], "b", "m/v3/")
    assert [v.version for v in out] == ["v1", "v2"]  # oldest first, shared and pinned kept
    with pytest.raises(QuotaExceeded) as e:
        admit(evicting, "hz", 9 * MiB, versions, [], "b", "m/v3/")
    assert e.value.evictable == 8 * MiB
    assert admit(Caller("admin"), "hz", 10**15, versions, [], "b", "m/v3/") == []

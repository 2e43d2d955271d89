"""--access-keys lines with tenant options: tenant=, quota=, origin-rate=, origin-fills=."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachenode.access import NO_LIMITS, Scope, TenantLimits
from cachenode.auth.key_options import is_option
from cachenode.auth.keys import KeyFile, KeyFileError, parse_keys

SECRET = "s3cr3t-s3cr3t-s3cr3t-0123"


def test_options_name_the_tenant_and_its_site_limits() -> None:
    keys = parse_keys(f"""
AKIAA1 {SECRET} models/team-a/ tenant=team-a quota=2GiB origin-rate=50MB/s origin-fills=8
AKIAA2 {SECRET} tenant=team-a models/team-a/x=y
AKIAB1 {SECRET} models tenant=team-b origin-rate=1MiB
AKIAOLD {SECRET} models/old/
""")
    a1, a2, b1, old = (keys[k] for k in ("AKIAA1", "AKIAA2", "AKIAB1", "AKIAOLD"))
    assert a1.principal.tenant == a2.principal.tenant == "team-a"
    assert a1.principal.scopes == (Scope("models", "team-a/"),)
    assert a2.principal.scopes == (Scope("models", "team-a/x=y"),)  # '/' before '=': a scope
    assert a1.limits == TenantLimits(2 * 2**30, 50 * 10**6, 8)
    assert b1.limits == TenantLimits(None, 2**20, None)
    assert old.principal.tenant == "AKIAOLD" and old.limits == NO_LIMITS  # a line is a tenant
    assert is_option("quota=1") and not is_option("bkt/p=q") and not is_option("bkt")


@pytest.mark.parametrize("line, why", [
    ("quota=1GiB", "need a tenant="),
    ("tenant=a quota=lots", "quota=:"),
    ("tenant=a quota=0", "more than 0"),
    ("tenant=a origin-fills=0", "whole number"),
    ("tenant=a origin-fills=2.5", "whole number"),
    ("tenant=a tenant=b", "twice"),
    ("tenant=-a", "tenant= must be"),
    ("colour=red", "unknown option 'colour'"),
])
def test_bad_options_name_the_line_and_why(line: str, why: str) -> None:
    with pytest.raises(KeyFileError) as e:
        parse_keys(f"# keys\nAKIA1 {SECRET} {line}\n")
    assert e.value.line == 2 and why in e.value.reason and SECRET not in str(e.value)


def test_one_tenant_has_one_set_of_limits() -> None:
    with pytest.raises(KeyFileError) as e:
        parse_keys(f"KEY1 {SECRET} tenant=a quota=1GiB\nKEY2 {SECRET} tenant=a quota=2GiB\n")
    assert e.value.line == 2 and "other limits" in e.value.reason
    same = parse_keys(f"KEY1 {SECRET} tenant=a quota=1GiB\nKEY2 {SECRET} tenant=a quota=1GiB\n")
    assert len(same) == 2


def test_the_key_file_is_a_tenant_directory_and_reloads_it(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"KEY2 {SECRET} tenant=a\nKEY1 {SECRET} tenant=a quota=1GiB\n")
    f = KeyFile(path)
    f.load()
    assert f.limits("a") == TenantLimits(quota_bytes=2**30)  # given on a later line
    assert f.limits("b") == NO_LIMITS and f.limits("") == NO_LIMITS
    path.write_text(f"KEY1 {SECRET} tenant=a quota=3GiB origin-fills=2\n")
    assert f.poll()
    assert f.limits("a") == TenantLimits(quota_bytes=3 * 2**30, origin_fills=2)

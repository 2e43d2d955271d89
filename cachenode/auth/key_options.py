"""The optional tenant words of an --access-keys line: whose key it is, and that tenant's limits.

    ACCESS_KEY_ID SECRET [SCOPE ...] [tenant=NAME] [quota=SIZE] [origin-rate=SIZE[/s]]
                                     [origin-fills=N]

A word is an option when it has a '=' and no '/' before it (a scope is `bucket` or
`bucket/prefix`, and bucket names hold no '='). `tenant=` makes the key's requests that
tenant's (`Principal.tenant`: its quota, its origin budget, its metrics); without it a key is
nobody's (''), as before. The limits are the tenant's per site, as tenants in etcd would give
them: each node enforces its share of the ring of them (cachenode/limits.py). Several keys
may name one tenant; its limits are given on one line, or repeated alike. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cachenode.access import NO_LIMITS, TenantLimits
from cachenode.errors import BadRequest
from cachenode.qos import check_tenant
from cachenode.settings import ConfigError, parse_size

OPTIONS = ("tenant", "quota", "origin-rate", "origin-fills")


@dataclass(frozen=True, slots=True)
class KeyOptions:
    """The tenant a key belongs to and the limits its line gives that tenant."""

    tenant: str = ""
    limits: TenantLimits = NO_LIMITS


def is_option(word: str) -> bool:
    """Return whether a word of a key line is an option (name=value) rather than a scope."""
    name, eq, _ = word.partition("=")
    return bool(eq) and "/" not in name


def parse_options(words: list[str]) -> KeyOptions:
    """Return the options of a line's `name=value` words, or raise ValueError saying why."""
    found: dict[str, str] = {}
    for word in words:
        name, _, value = word.partition("=")
        if name not in OPTIONS:
            raise ValueError(f"unknown option {name[:40]!r} (known: {', '.join(OPTIONS)})")
        if name in found:
            raise ValueError(f"{name}= is given twice")
        found[name] = value
    try:
        tenant = check_tenant(found.get("tenant", ""), "tenant=")
    except BadRequest as e:
        raise ValueError(e.reason) from None
    limits = TenantLimits(_size(found, "quota"), _size(found, "origin-rate", "/s"),
                          _count(found, "origin-fills"))
    if limits != NO_LIMITS and not tenant:
        raise ValueError("quota=, origin-rate= and origin-fills= need a tenant=")
    return KeyOptions(tenant, limits)


def merge(limits: Mapping[str, TenantLimits], opts: KeyOptions) -> TenantLimits:
    """Return the tenant's limits after one more line of it, or raise ValueError."""
    before = limits.get(opts.tenant, NO_LIMITS)
    if opts.limits == NO_LIMITS or before == opts.limits:
        return before
    if before != NO_LIMITS:
        raise ValueError(f"tenant {opts.tenant} has other limits on an earlier line")
    return opts.limits


def _size(found: Mapping[str, str], name: str, suffix: str = "") -> int | None:
    if name not in found:
        return None
    text = found[name].removesuffix(suffix) if suffix else found[name]
    try:
        n = parse_size(text)
    except ConfigError as e:
        raise ValueError(f"{name}=: {e}") from None
    if n <= 0:
        raise ValueError(f"{name}= must be more than 0")
    return n


def _count(found: Mapping[str, str], name: str) -> int | None:
    if name not in found:
        return None
    text = found[name]
    if not (text.isascii() and text.isdigit() and 0 < int(text) <= 100_000):
        raise ValueError(f"{name}= must be a whole number from 1 to 100000")
    return int(text)

"""cachectl commands that manage tenants on the coordinator: tenant create|list|show|update|delete,
key add|revoke (thin; the admin token, or a tenant's own for `tenant show`)."""

from __future__ import annotations

import argparse
import json
from typing import IO, Any

from cachenode.settings import ConfigError, format_size, parse_size
from client.coordinator import CoordinatorClient
from client.errors import ClientError
from client.progress import format_bytes

SECRET_NOTE = ("the secret and token are shown this once: the coordinator keeps the secret "
               "sealed and only a hash of the token")


def site_values(values: list[str] | None, what: str, parse: Any) -> dict[str, int]:
    """Return {site: number} of repeated `SITE=VALUE` options (e.g. --quota hz=2TiB)."""
    out: dict[str, int] = {}
    for v in values or []:
        site, sep, amount = v.partition("=")
        if not sep or not site.strip():
            raise ClientError(f"{what} {v!r}: give SITE=VALUE (e.g. hz=2TiB)")
        try:
            out[site.strip()] = parse(amount.strip())
        except (ConfigError, ValueError) as e:
            raise ClientError(f"{what} {v!r}: {e}") from None
    return out


def _rate(text: str) -> int:
    return parse_size(text.removesuffix("/s"))


def sites_doc(args: argparse.Namespace) -> dict[str, dict[str, int]]:
    """Return the per-site limits the options give."""
    sites: dict[str, dict[str, int]] = {}
    for field, values, parse in (("quota_bytes", args.quota, parse_size),
                                 ("origin_bytes_per_s", args.origin_rate, _rate),
                                 ("origin_fills", args.origin_fills, int)):
        for site, n in site_values(values, "--" + field, parse).items():
            sites.setdefault(site, {})[field] = n
    return sites


def _key_lines(key: dict[str, Any]) -> list[str]:
    return [f"access_key_id      {key['access_key_id']}",
            f"secret_access_key  {key['secret_access_key']}",
            f"token              {key['token']}", f"({SECRET_NOTE})"]


def tenant_lines(t: dict[str, Any]) -> list[str]:
    """Return a tenant as lines of text: scopes, limits per site, keys, bytes held."""
    lines = [f"tenant {t['name']}  (over quota: {t.get('over_quota', 'refuse')})"]
    lines += [f"  read   {r}" for r in t.get("read", [])]
    used = t.get("used_bytes", {})
    for site in sorted(set(t.get("sites", {})) | set(used)):
        lim = t.get("sites", {}).get(site, {})
        q, rate, fills = (lim.get(f) for f in ("quota_bytes", "origin_bytes_per_s",
                                               "origin_fills"))
        lines.append(f"  site {site}: quota {format_size(q) if q is not None else 'none'}"
                     f" (holds {format_bytes(used.get(site, 0))}), origin "
                     f"{format_size(rate) + '/s' if rate is not None else 'unlimited'}, "
                     f"fills {fills if fills is not None else 'unlimited'}")
    lines += [f"  key    {k['access_key_id']}" for k in t.get("keys", [])]
    return lines


async def cmd_tenant(cc: CoordinatorClient, args: argparse.Namespace, out: IO[str]) -> int:
    """Create, list, show, update or delete tenants."""
    if args.action == "create":
        doc: dict[str, Any] = {"name": args.name, "read": args.read or [],
                               "sites": sites_doc(args), "over_quota": args.over_quota}
        got = await cc.create_tenant(doc)
        text = tenant_lines(got["tenant"]) + _key_lines(got["key"])
    elif args.action == "update":
        change: dict[str, Any] = {"sites": sites_doc(args)}
        if args.read:
            change["read"] = args.read
        if args.over_quota:
            change["over_quota"] = args.over_quota
        got = {"tenant": await cc.update_tenant(args.name, change)}
        text = tenant_lines(got["tenant"])
    elif args.action == "list":
        got = {"tenants": await cc.tenants()}
        text = [line for t in got["tenants"] for line in tenant_lines(t)] or ["no tenants"]
    elif args.action == "show":
        got = {"tenant": await cc.tenant(args.name)}
        text = tenant_lines(got["tenant"])
    else:
        got = await cc.delete_tenant(args.name)
        text = [f"deleted tenant {args.name} and its keys "
                f"{', '.join(got.get('keys_revoked', [])) or '(none)'}"]
    out.write(json.dumps(got) + "\n" if args.json else "\n".join(text) + "\n")
    return 0


async def cmd_key(cc: CoordinatorClient, args: argparse.Namespace, out: IO[str]) -> int:
    """Add a key to a tenant (secret and token printed once), or revoke one."""
    if args.action == "add":
        got = {"key": await cc.add_key(args.name)}
        text = _key_lines(got["key"])
    else:
        if not args.key_id:
            raise ClientError("key revoke needs the tenant and the ACCESS_KEY_ID")
        got = await cc.revoke_key(args.name, args.key_id)
        text = [f"revoked {args.key_id} of tenant {args.name} (every node refuses it within "
                "seconds)"]
    out.write(json.dumps(got) + "\n" if args.json else "\n".join(text) + "\n")
    return 0


def add_commands(add: Any) -> None:
    """Add `tenant` and `key` through cli_coordinator's `add(name, fn, help)`."""
    t = add("tenant", cmd_tenant, "manage tenants (admin token; a tenant may show itself)")
    t.add_argument("action", choices=("create", "list", "show", "update", "delete"))
    t.add_argument("name", nargs="?", default="", help="tenant name (not for list)")
    t.add_argument("--read", action="append", metavar="s3://BUCKET/PREFIX",
                   help="a read scope (repeat); create needs one, update replaces them all")
    t.add_argument("--quota", action="append", metavar="SITE=SIZE",
                   help="bytes it may hold at a site (warmed, pinned, read-through), e.g. "
                   "hz=2TiB (repeat per site)")
    t.add_argument("--origin-rate", action="append", metavar="SITE=RATE",
                   help="origin bytes/s its fills may use at a site, e.g. hz=500MB/s")
    t.add_argument("--origin-fills", action="append", metavar="SITE=N",
                   help="origin fills it may have in flight at a site")
    t.add_argument("--over-quota", choices=("refuse", "evict-oldest"), default=None,
                   help="a warmup past the quota is refused (default), or its own oldest "
                   "unpinned versions at that site are evicted first")
    k = add("key", cmd_key, "add a key (SigV4 pair and bearer token) to a tenant, or revoke one")
    k.add_argument("action", choices=("add", "revoke"))
    k.add_argument("name", help="tenant name")
    k.add_argument("key_id", nargs="?", default="", help="ACCESS_KEY_ID to revoke")


def check(args: argparse.Namespace) -> None:
    """Reject a tenant command without the name it needs (before any request)."""
    if getattr(args, "action", "") in ("create", "show", "update", "delete") and not args.name:
        raise ClientError(f"tenant {args.action} needs a tenant name")
    if getattr(args, "action", "") == "create":
        if not args.read:
            raise ClientError("tenant create needs at least one --read s3://bucket/prefix")
        args.over_quota = args.over_quota or "refuse"

"""cachectl commands on model versions: models (and models forget), pin, unpin, evict, policy."""

from __future__ import annotations

import argparse
import json
import os
from typing import IO, Any

from client.coordinator import CoordinatorClient
from client.errors import ClientError
from client.progress import format_bytes, models_table


def check_prefix(url: str) -> str:
    """Return `url` if it is s3://<bucket>/<prefix>, else raise ClientError."""
    if not url.startswith("s3://") or not url[5:].partition("/")[0]:
        raise ClientError(f"{url!r} is not s3://<bucket>/<prefix>")
    return url


def dump(out: IO[str], key: str, value: Any) -> None:
    """Write {key: value} as one JSON line."""
    out.write(json.dumps({key: value}) + "\n")


async def cmd_models(cc: CoordinatorClient, args: argparse.Namespace, out: IO[str]) -> int:
    """List model versions and their state at one site or every site (or forget one)."""
    if args.words:
        return await cmd_forget(cc, args, out)
    versions = await cc.models(args.site_name)
    if args.json:
        dump(out, "versions", versions)
    else:
        out.write("\n".join(models_table(versions)) + "\n" if versions else "no model versions\n")
    return 0


async def cmd_forget(cc: CoordinatorClient, args: argparse.Namespace, out: IO[str]) -> int:
    """Delete one version's record at a site (`models forget s3://... --site S`)."""
    if len(args.words) != 2 or args.words[0] != "forget":
        raise ClientError("give `models forget s3://bucket/model/version/ --site SITE`, or no "
                          "words to list the versions")
    args.site_name = args.site_name or os.environ.get("CACHECTL_SITE", "")
    if not args.site_name:
        raise ClientError("models forget needs --site (or CACHECTL_SITE)")
    got = await cc.forget(check_prefix(args.words[1]), args.site_name)
    if args.json:
        out.write(json.dumps(got) + "\n")
        return 0
    v = got.get("version") or {}
    out.write(f"forgot {v.get('prefix', args.words[1])} at {v.get('site', args.site_name)} "
              f"(was {v.get('state', '?')})"
              + ("; its blocks stay on the nodes until evicted for room\n"
                 if got.get("blocks_kept") else "\n"))
    return 0


async def cmd_version(cc: CoordinatorClient, args: argparse.Namespace, out: IO[str]) -> int:
    """Pin, unpin or evict one model version at a site."""
    op = {"pin": cc.pin, "unpin": cc.unpin, "evict": cc.evict}[args.command]
    v = await op(check_prefix(args.url), args.site_name)
    if args.json:
        dump(out, "version", v)
        return 0
    what = (f"{v.get('prefix', args.url)} at {v.get('site', args.site_name)}: "
            f"{v.get('state', '?')}, {format_bytes(v.get('bytes') or 0)}")
    out.write({"pin": f"pinned {what}\n", "unpin": f"unpinned {what}\n",
               "evict": f"evicting {what} (in the background: see `cachectl models "
                        f"--site {args.site_name}`)\n"}[args.command])
    return 0


async def cmd_policy(cc: CoordinatorClient, args: argparse.Namespace, out: IO[str]) -> int:
    """Show a site's keep count, or set it with --keep."""
    if args.keep is None:
        p = await cc.policy(args.site_name)
    else:
        p = await cc.set_policy(args.site_name, args.keep)
    if args.json:
        out.write(json.dumps(p) + "\n")
    else:
        out.write(f"site {p.get('site', args.site_name)} keeps the {p.get('keep', '?')} newest "
                  "ready versions of each model, and every pinned one\n")
        if p.get("note"):
            out.write(f"note: {p['note']}\n")
    return 0

"""Consistent-hash ring simulation: balance, and keys moved when one node joins or leaves.

    .venv/bin/python loadtest/ring_sim.py [--keys 1000000] [--nodes 10,100,1000] [--seed 1]

For each cluster size N (nodes node-0 .. node-{N-1}, default weight and virtual nodes), places
--keys random block ids (32 hex digits, as cachenode.blocks.block_id makes) and reports max/mean
and min/mean keys per node (and max/mean of the exact hash-space shares, free of sampling noise).
Then one node joins (ideal: 1/(N+1) of the keys move, all to it) and one node, picked with --seed,
leaves (ideal: 1/N move, all from it); "stray" counts keys that moved between two nodes that stayed,
which consistent hashing forbids. Prints a table, writes loadtest/results/ring-sim-<UTC stamp>.json.
About 10 s with the defaults (1,000,000 keys) on one core.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import random
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cachenode.ring import DEFAULT_WEIGHT, VNODES_PER_WEIGHT, Ring


def block_ids(n: int, seed: int) -> list[str]:
    """Return `n` reproducible random block ids."""
    return [hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=16).hexdigest() for i in range(n)]


def movement(before: list[str], after: list[str], node: str, joined: bool) -> tuple[float, int]:
    """Return the fraction of keys whose owner changed and how many moves did not involve `node`."""
    moved = stray = 0
    for b, a in zip(before, after, strict=True):
        if b != a:
            moved += 1
            stray += (a if joined else b) != node
    return moved / len(before), stray


def simulate(n: int, keys: list[str], rng: random.Random) -> dict[str, Any]:
    """Return balance and join/leave movement figures for a ring of `n` equal nodes."""
    names = [f"node-{i}" for i in range(n)]
    t0 = time.perf_counter()
    ring = Ring(names)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    base = list(map(ring.owner, keys))
    lookup_us = (time.perf_counter() - t0) / len(keys) * 1e6
    load = Counter(base)
    mean = len(keys) / n
    joiner, leaver = f"node-{n}", rng.choice(names)
    join, join_stray = movement(base, list(map(Ring([*names, joiner]).owner, keys)), joiner, True)
    left = Ring([x for x in names if x != leaver])
    leave, leave_stray = movement(base, list(map(left.owner, keys)), leaver, False)
    return {
        "nodes": n,
        "points": n * DEFAULT_WEIGHT * VNODES_PER_WEIGHT,
        "build_s": round(build_s, 3),
        "lookup_us": round(lookup_us, 2),
        "keys_per_node": mean,
        "max_over_mean": max(load.values()) / mean,
        "min_over_mean": min(load.get(x, 0) for x in names) / mean,
        "share_max_over_mean": max(ring.shares().values()) * n,
        "join_moved": join,
        "join_ideal": 1 / (n + 1),
        "join_stray": join_stray,
        "leave_node": leaver,
        "leave_moved": leave,
        "leave_ideal": 1 / n,
        "leave_stray": leave_stray,
    }


def main() -> None:
    """Run the simulation for each cluster size, print a table and write the JSON results."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--keys", type=int, default=1_000_000, help="block ids to place")
    ap.add_argument("--nodes", default="10,100,1000", help="comma-separated cluster sizes")
    ap.add_argument("--seed", type=int, default=1, help="seed for the keys and the leaving node")
    args = ap.parse_args()
    keys = block_ids(args.keys, args.seed)
    rng = random.Random(args.seed)
    print(f"{args.keys:,} keys, {DEFAULT_WEIGHT * VNODES_PER_WEIGHT} points per node")
    print("    N  build s  max/mean  min/mean  share max/mean | join moved  ideal   ratio stray"
          " | leave moved  ideal   ratio stray")
    rows = []
    for n in (int(x) for x in args.nodes.split(",")):
        r = simulate(n, keys, rng)
        rows.append(r)
        print(f"{n:5d}  {r['build_s']:7.3f}  {r['max_over_mean']:8.3f}  {r['min_over_mean']:8.3f}"
              f"  {r['share_max_over_mean']:14.3f} | {r['join_moved']:10.5f} {r['join_ideal']:.5f}"
              f" {r['join_moved'] / r['join_ideal']:6.3f} {r['join_stray']:5d} | {r['leave_moved']:11.5f}"
              f" {r['leave_ideal']:.5f} {r['leave_moved'] / r['leave_ideal']:6.3f} {r['leave_stray']:5d}")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = ROOT / "loadtest" / "results" / f"ring-sim-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"stamp": stamp, "keys": args.keys, "seed": args.seed, "python": platform.python_version()}
    out.write_text(json.dumps({**meta, "vnodes_per_weight": VNODES_PER_WEIGHT,
                               "default_weight": DEFAULT_WEIGHT, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

"""Consistent-hash ring: which cache node owns a block id (pure: stdlib + mmh3, no I/O).

A node of weight w > 0 gets w * vnodes_per_weight points; replica i of node n sits at
hash_fn(f"{n}#{i}".encode()) mod 2^64, and a key belongs to the first point at or after its hash,
wrapping around. Equal hashes are ordered by node id, so placement depends only on the mapping,
not its insertion order; weight 0 keeps a node off the ring. The default hash, 64-bit MurmurHash3,
is stable across processes (built-in hash() is salted), so nodes and clients agree on owners.

Virtual nodes: VNODES_PER_WEIGHT = 3 per unit of weight, so an ordinary node (DEFAULT_WEIGHT = 100)
has 300 points. Over 200 random sets of 10 equal node names, max/mean share is 1.09 at the median
and 1.13 at p90 (100 points: 1.15 / 1.23; 200: 1.10 / 1.15); a 1000-node ring builds in ~0.35 s."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping

import mmh3

HashFn = Callable[[bytes], int]

DEFAULT_WEIGHT = 100
VNODES_PER_WEIGHT = 3
_SPACE = 1 << 64
_MASK = _SPACE - 1


class EmptyRing(LookupError):
    """Raised when a key is looked up on a ring that has no node with weight > 0."""


def default_hash(data: bytes) -> int:
    """Return the unsigned 64-bit MurmurHash3 (x64 variant, seed 0) of `data`."""
    return mmh3.hash64(data, signed=False)[0]


class Ring:
    """Map keys to weighted nodes; immutable, so build a new ring when membership changes."""

    def __init__(
        self,
        nodes: Mapping[str, int] | Iterable[str] = (),
        *,
        vnodes_per_weight: int = VNODES_PER_WEIGHT,
        hash_fn: HashFn = default_hash,
    ) -> None:
        """Build the ring from `{node_id: weight}`, or from node ids that all get DEFAULT_WEIGHT."""
        if isinstance(nodes, str):
            raise TypeError("nodes must be a mapping or an iterable of node ids, not a str")
        if vnodes_per_weight < 1:
            raise ValueError(f"vnodes_per_weight must be >= 1, got {vnodes_per_weight}")
        weights: dict[str, int] = (
            dict(nodes) if isinstance(nodes, Mapping) else dict.fromkeys(nodes, DEFAULT_WEIGHT)
        )
        for node, weight in weights.items():
            if weight < 0:
                raise ValueError(f"weight of node {node!r} must be >= 0, got {weight}")
        self._weights = weights
        self._hash = hash_fn
        self._nodes = frozenset(n for n, w in weights.items() if w > 0)
        # Sort (hash << 32 | rank of node id) ints: equal hashes end up ordered by node id, and
        # sorting ints is 3x faster than sorting (hash, node) tuples.
        ranked = sorted(self._nodes)
        points = sorted(
            (hash_fn(f"{n}#{i}".encode()) & _MASK) << 32 | rank
            for rank, n in enumerate(ranked)
            for i in range(weights[n] * vnodes_per_weight)
        )
        self._points = [p >> 32 for p in points]  # ascending
        self._owners = [ranked[p & 0xFFFFFFFF] for p in points]  # owns (_points[j-1], _points[j]]

    @property
    def nodes(self) -> frozenset[str]:
        """Return the nodes that own part of the ring (weight > 0)."""
        return self._nodes

    @property
    def weights(self) -> dict[str, int]:
        """Return a copy of the `{node_id: weight}` mapping, weight-0 nodes included."""
        return dict(self._weights)

    def __len__(self) -> int:
        """Return the number of nodes that own part of the ring."""
        return len(self._nodes)

    def _index(self, key: str) -> int:
        if not self._points:
            raise EmptyRing("the ring has no nodes with weight > 0")
        i = bisect_left(self._points, self._hash(key.encode()) & _MASK)
        return i if i < len(self._points) else 0

    def owner(self, key: str) -> str:
        """Return the node that owns `key`, or raise EmptyRing."""
        return self._owners[self._index(key)]

    def owners(self, key: str, k: int) -> list[str]:
        """Return the owner of `key` then the next distinct nodes clockwise, at most `k` in all."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        start, n = self._index(key), len(self._owners)
        want = min(k, len(self._nodes))
        found: dict[str, None] = {}  # insertion-ordered set
        for j in range(start, start + n):
            found.setdefault(self._owners[j % n])
            if len(found) == want:
                break
        return list(found)

    def shares(self) -> dict[str, float]:
        """Return the fraction of the 2^64 hash space each node owns (the fractions sum to 1.0)."""
        arcs = dict.fromkeys(sorted(self._nodes), 0)
        prev = self._points[-1] - _SPACE if self._points else 0
        for point, node in zip(self._points, self._owners, strict=True):
            arcs[node] += point - prev
            prev = point
        return {node: arc / _SPACE for node, arc in arcs.items()}


def moved_fraction(old: Ring, new: Ring, keys: Iterable[str]) -> float:
    """Return the fraction of `keys` whose owner differs between `old` and `new` (0.0 if none)."""
    total = moved = 0
    for key in keys:
        total += 1
        moved += old.owner(key) != new.owner(key)
    return moved / total if total else 0.0

"""Consistent-hash ring: placement, minimal movement on join/leave, balance, weights, ties."""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachenode.ring import (
    DEFAULT_WEIGHT,
    EmptyRing,
    HashFn,
    Ring,
    default_hash,
    moved_fraction,
)


def block_ids(n: int, seed: int) -> list[str]:
    """Return `n` reproducible random block ids (32 hex digits, like cachenode.blocks.block_id)."""
    rng = random.Random(seed)
    return [hashlib.blake2b(rng.randbytes(16), digest_size=16).hexdigest() for _ in range(n)]


KEYS_20K = block_ids(20_000, seed=20)
KEYS_50K = block_ids(50_000, seed=50)

node_ids = st.text(min_size=1, max_size=8)
small_keys = st.lists(st.text(max_size=12), min_size=1, max_size=20)


def collide_mod_8(data: bytes) -> int:
    """Hash into only 8 values, so that points collide all the time."""
    return default_hash(data) % 8


def digits_after_hash(data: bytes) -> int:
    """Hash "node#7" and "7" both to 7: every node's replica i lands on the same point i."""
    return int(data.decode().rpartition("#")[2])


# --- placement is a function of the mapping only -------------------------------------------


@given(
    weights=st.dictionaries(node_ids, st.integers(0, 3), min_size=1, max_size=8),
    keys=small_keys,
    rnd=st.randoms(use_true_random=False),
    hash_fn=st.sampled_from([default_hash, collide_mod_8]),
)
def test_owner_is_independent_of_insertion_order(
    weights: dict[str, int], keys: list[str], rnd: random.Random, hash_fn: HashFn
) -> None:
    items = list(weights.items())
    rnd.shuffle(items)
    a, b = Ring(weights, hash_fn=hash_fn), Ring(dict(items), hash_fn=hash_fn)
    assert a.shares() == b.shares()
    if not a.nodes:
        return
    for key in keys:
        assert a.owner(key) == b.owner(key)
        assert a.owners(key, len(a)) == b.owners(key, len(b))


@given(
    weights=st.dictionaries(node_ids, st.integers(0, 3), min_size=1, max_size=8),
    keys=small_keys,
    k=st.integers(1, 10),
)
def test_owners_are_distinct_start_with_owner_and_have_min_k_n(
    weights: dict[str, int], keys: list[str], k: int
) -> None:
    ring = Ring(weights)
    assert ring.nodes == {n for n, w in weights.items() if w > 0}
    assert len(ring) == len(ring.nodes)
    if ring.nodes:
        assert math.isclose(sum(ring.shares().values()), 1.0)
    for key in keys:
        if not ring.nodes:
            with pytest.raises(EmptyRing):
                ring.owners(key, k)
            continue
        got = ring.owners(key, k)
        assert got[0] == ring.owner(key)
        assert len(got) == len(set(got)) == min(k, len(ring))
        assert set(got) <= ring.nodes


# --- minimal movement --------------------------------------------------------------------------

MOVE = settings(max_examples=15, deadline=None)


@MOVE
@given(names=st.lists(node_ids, min_size=2, max_size=16, unique=True))
def test_join_moves_about_one_over_n_plus_1_and_only_to_the_new_node(names: list[str]) -> None:
    *members, joiner = names
    old, new = Ring(members), Ring(names)
    moved = [key for key in KEYS_20K if old.owner(key) != new.owner(key)]
    assert all(new.owner(key) == joiner for key in moved)  # nothing moves between old members
    fraction = len(moved) / len(KEYS_20K)
    assert fraction == moved_fraction(old, new, KEYS_20K)
    # Key-sampling noise only: the binomial sd is <= 0.0036 for 20,000 keys.
    assert abs(fraction - new.shares()[joiner]) < 0.02
    # A 300-point node's share has a relative sd of <= 1/sqrt(300) ~ 6%: allow 5 sd.
    ideal = 1 / len(names)
    assert abs(fraction - ideal) < 0.3 * ideal, (fraction, ideal)


@MOVE
@given(names=st.lists(node_ids, min_size=2, max_size=16, unique=True), data=st.data())
def test_leave_moves_only_the_leaving_nodes_keys(names: list[str], data: st.DataObject) -> None:
    leaver = data.draw(st.sampled_from(names))
    old, new = Ring(names), Ring([n for n in names if n != leaver])
    for key in KEYS_20K[:10_000]:
        before, after = old.owner(key), new.owner(key)
        assert (before != after) == (before == leaver)


def test_weight_zero_is_the_same_as_absent() -> None:
    drained = Ring({"a": 100, "b": 0, "c": 100})
    assert drained.nodes == {"a", "c"} and drained.weights["b"] == 0
    assert moved_fraction(drained, Ring({"a": 100, "c": 100}), KEYS_20K) == 0.0


@given(
    weights=st.dictionaries(node_ids, st.integers(0, 2), min_size=1, max_size=8),
    keys=small_keys,
)
def test_weight_zero_node_never_owns(weights: dict[str, int], keys: list[str]) -> None:
    ring = Ring(weights)
    zero = {n for n, w in weights.items() if w == 0}
    assert not zero & set(ring.shares())
    if ring.nodes:
        for key in keys:
            assert not zero & set(ring.owners(key, len(weights)))


# --- balance and weights -----------------------------------------------------------------------

NAME_SETS = [
    [f"node-{i}" for i in range(10)],
    [f"10.0.0.{i}:7070" for i in range(1, 11)],
    [f"cache-{c}" for c in "abcdefghij"],
]


@pytest.mark.parametrize("names", NAME_SETS, ids=lambda names: names[0])
def test_ten_equal_nodes_are_balanced(names: list[str]) -> None:
    # Measured with 300 points per node: max/mean 1.107, 1.052, 1.082 and min/mean 0.901, 0.904,
    # 0.883. 1.15 is the target the default vnode count was chosen for (90% of random sets of 10
    # names meet it); 100 points per node gives 1.17 on the first set, 10 gives 1.5 or more.
    ring = Ring(names)
    load = Counter(map(ring.owner, KEYS_50K))
    mean = len(KEYS_50K) / len(names)
    assert max(load.values()) / mean < 1.15
    assert min(load.values()) / mean > 0.85
    assert max(ring.shares().values()) * len(names) < 1.15


@pytest.mark.parametrize("names", NAME_SETS, ids=lambda names: names[0])
def test_weight_200_gets_about_twice_the_keys_of_weight_100(names: list[str]) -> None:
    heavy, *light = names[:6]  # measured ratios: 1.94, 2.01, 2.04
    ring = Ring({heavy: 200, **dict.fromkeys(light, 100)})
    load = Counter(map(ring.owner, KEYS_20K))
    ratio = load[heavy] / (sum(load[n] for n in light) / len(light))
    assert 1.7 < ratio < 2.3, ratio


# --- ties, empty ring, validation, stability ---------------------------------------------------


def test_collisions_go_to_the_smallest_node_id_whatever_the_order() -> None:
    for order in (["b", "a", "c"], ["c", "b", "a"], ["a", "b", "c"]):
        ring = Ring(dict.fromkeys(order, 1), vnodes_per_weight=1, hash_fn=digits_after_hash)
        assert [ring.owner(k) for k in ("0", "5")] == ["a", "a"]  # all three points sit at 0
        assert ring.owners("3", 3) == ["a", "b", "c"]
        assert ring.shares() == {"a": 1.0, "b": 0.0, "c": 0.0}
    ring = Ring({"b": 2, "a": 1}, vnodes_per_weight=1, hash_fn=digits_after_hash)  # b: 0, 1; a: 0
    assert [ring.owner(k) for k in ("0", "1", "2")] == ["a", "b", "a"]


@given(names=st.sets(node_ids, min_size=1, max_size=8), key=st.text(), k=st.integers(1, 9))
def test_constant_hash_orders_everything_by_node_id(names: set[str], key: str, k: int) -> None:
    ring = Ring(names, hash_fn=lambda data: 42)
    assert ring.owner(key) == min(names)
    assert ring.owners(key, k) == sorted(names)[:k]


@pytest.mark.parametrize("nodes", [{}, (), {"a": 0, "b": 0}])
def test_empty_ring_raises(nodes: dict[str, int]) -> None:
    ring = Ring(nodes)
    assert len(ring) == 0 and ring.shares() == {}
    with pytest.raises(EmptyRing):
        ring.owner("k")
    with pytest.raises(LookupError):
        ring.owners("k", 2)


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError):
        Ring({"a": -1})
    with pytest.raises(ValueError):
        Ring({"a": 1}, vnodes_per_weight=0)
    with pytest.raises(ValueError):
        Ring({"a": 1}).owners("k", 0)
    with pytest.raises(TypeError):
        Ring("abc")


def test_node_ids_alone_get_the_default_weight() -> None:
    assert Ring(["a", "b"]).weights == {"a": DEFAULT_WEIGHT, "b": DEFAULT_WEIGHT}
    assert Ring(["a", "b"]).shares() == Ring({"a": 100, "b": 100}).shares()


def test_moved_fraction_counts_changed_owners() -> None:
    ring = Ring(["a", "b"])
    assert moved_fraction(ring, ring, KEYS_20K) == 0.0
    assert moved_fraction(ring, Ring(["a", "b"]), iter(KEYS_20K)) == 0.0
    assert moved_fraction(ring, ring, []) == 0.0
    only_a = Ring(["a"])
    assert moved_fraction(ring, only_a, KEYS_20K) == sum(
        ring.owner(k) == "b" for k in KEYS_20K
    ) / len(KEYS_20K)


def test_placement_is_pinned() -> None:
    # Pinned: nodes, clients and the coordinator must agree across versions; a change here
    # reshuffles every cluster during a rolling upgrade.
    assert default_hash(b"node-0#0") == PINNED_HASH
    ring = Ring(["a", "b", "c"])
    assert [ring.owner(k) for k in KEYS_20K[:8]] == PINNED_OWNERS


PINNED_HASH = 10710173889247322827
PINNED_OWNERS = ["a", "c", "a", "b", "b", "c", "c", "c"]

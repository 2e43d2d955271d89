"""Block ids and byte-range to block-slice math."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachenode.blocks import BlockRef, ObjectMeta, block_count, block_id, slices

BS = 1024


def obj(size: int, etag: str = '"e1"') -> ObjectMeta:
    return ObjectMeta("bkt", "models/a.bin", size, etag)


def test_block_id_is_stable() -> None:
    a = block_id("bkt", "k", '"e"', 9000, 3, BS)
    assert a == block_id("bkt", "k", '"e"', 9000, 3, BS)
    # Pinned: the id is persisted in indexes and shared between nodes, so it must not drift.
    assert a == "9d2f36af9f99f24a1bcdeda614411e0f"


def test_block_id_is_distinct_per_component() -> None:
    base = ("bkt", "k", '"e"', 9000, 3, BS)
    variants = [
        ("bkt2", "k", '"e"', 9000, 3, BS),
        ("bkt", "k2", '"e"', 9000, 3, BS),
        ("bkt", "k", '"f"', 9000, 3, BS),
        # The size decides the block's length: a wrong size must never name the same block.
        ("bkt", "k", '"e"', 9001, 3, BS),
        ("bkt", "k", '"e"', 9000, 4, BS),
        ("bkt", "k", '"e"', 9000, 3, 2 * BS),
        # Field boundaries must not blur: ("ab", "c") differs from ("a", "bc").
        ("bk", "tk", '"e"', 9000, 3, BS),
        ("bkt", "k\"e", '"', 9000, 3, BS),
        ("bkt", "k", '"e"3', 9000, 0, BS),
        ("bkt", "k", '"e"', 900, 3, BS),
    ]
    ids = {block_id(*base)} | {block_id(*v) for v in variants}
    assert len(ids) == len(variants) + 1


@given(
    a=st.tuples(st.text(max_size=8), st.text(max_size=8), st.text(max_size=8),
                st.integers(0, 2**40), st.integers(0, 10**6),
                st.sampled_from([64 * 1024, 4 * 2**20])),
    b=st.tuples(st.text(max_size=8), st.text(max_size=8), st.text(max_size=8),
                st.integers(0, 2**40), st.integers(0, 10**6),
                st.sampled_from([64 * 1024, 4 * 2**20])),
)
def test_block_id_injective(a: tuple[str, str, str, int, int, int],
                            b: tuple[str, str, str, int, int, int]) -> None:
    if a != b and not any("\x00" in s for s in a[:3] + b[:3]):
        assert block_id(*a) != block_id(*b)


def test_block_ref_id_matches_function() -> None:
    ref = BlockRef(obj(5000), 2, BS)
    assert ref.block_id == block_id("bkt", "models/a.bin", '"e1"', 5000, 2, BS)
    assert BlockRef(obj(5000, '"e2"'), 2, BS).block_id != ref.block_id


@pytest.mark.parametrize(
    ("size", "count", "last_len"),
    [(0, 0, None), (1, 1, 1), (BS, 1, BS), (BS + 1, 2, 1), (3 * BS - 5, 3, BS - 5)],
)
def test_block_count_and_last_block(size: int, count: int, last_len: int | None) -> None:
    assert block_count(size, BS) == count
    if last_len is not None:
        last = BlockRef(obj(size), count - 1, BS)
        assert last.length == last_len
        assert last.start == (count - 1) * BS
        assert BlockRef(obj(size), count, BS).length == 0  # past the end


def test_slices_zero_byte_object() -> None:
    assert list(slices(obj(0), 0, -1, BS)) == []


def test_slices_one_byte_object() -> None:
    (s,) = slices(obj(1), 0, 0, BS)
    assert (s.ref.index, s.offset, s.length, s.ref.length) == (0, 0, 1, 1)


def test_slices_exactly_one_block() -> None:
    (s,) = slices(obj(BS), 0, BS - 1, BS)
    assert (s.ref.index, s.offset, s.length) == (0, 0, BS)


def test_slices_block_plus_one() -> None:
    a, b = slices(obj(BS + 1), 0, BS, BS)
    assert (a.ref.index, a.offset, a.length) == (0, 0, BS)
    assert (b.ref.index, b.offset, b.length, b.ref.length) == (1, 0, 1, 1)
    (only,) = slices(obj(BS + 1), BS, BS, BS)
    assert (only.ref.index, only.offset, only.length) == (1, 0, 1)


def test_slices_inside_one_block_and_across_boundary() -> None:
    (s,) = slices(obj(5 * BS), BS + 10, BS + 19, BS)
    assert (s.ref.index, s.offset, s.length) == (1, 10, 10)
    a, b = slices(obj(5 * BS), BS - 1, BS, BS)
    assert (a.ref.index, a.offset, a.length) == (0, BS - 1, 1)
    assert (b.ref.index, b.offset, b.length) == (1, 0, 1)


def test_slices_last_partial_block() -> None:
    size = 3 * BS + 100
    got = list(slices(obj(size), 2 * BS + 50, size - 1, BS))
    assert [(s.ref.index, s.offset, s.length) for s in got] == [(2, 50, BS - 50), (3, 0, 100)]
    assert got[-1].ref.length == 100


@given(
    size=st.integers(1, 50 * BS),
    block_size=st.sampled_from([1, 7, BS, 4096]),
    data=st.data(),
)
def test_slices_cover_range_exactly(size: int, block_size: int, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, size - 1), label="start")
    end = data.draw(st.integers(start, min(size - 1, start + 200 * block_size)), label="end")
    got = list(slices(obj(size), start, end, block_size))
    pos = start
    for prev, s in zip([None, *got], got):
        if prev is not None:
            assert s.ref.index == prev.ref.index + 1  # in order, no gaps or repeats
        assert s.ref.block_size == block_size
        assert 0 <= s.offset and s.length > 0
        assert s.offset + s.length <= s.ref.length <= block_size  # within its block
        assert s.ref.start + s.offset == pos  # contiguous with the previous slice
        pos += s.length
    assert pos == end + 1
    assert sum(s.length for s in got) == end - start + 1
    # Round trip: the slices map back onto exactly the bytes of the range.
    payload = bytes(i % 251 for i in range(size))
    rebuilt = b"".join(
        payload[s.ref.start:s.ref.start + s.ref.length][s.offset:s.offset + s.length]
        for s in got)
    assert rebuilt == payload[start:end + 1]

"""parse_range: one RFC 9110 byte range against an object size, or a clear error."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachenode.errors import MalformedRange, RangeNotSatisfiable
from cachenode.ranges import MAX_HEADER_LEN, Span, parse_range


@pytest.mark.parametrize(
    ("header", "size", "start", "end"),
    [
        ("bytes=0-0", 10, 0, 0),
        ("bytes=0-9", 10, 0, 9),
        ("bytes=3-", 10, 3, 9),
        ("bytes=9-", 10, 9, 9),
        ("bytes=-1", 10, 9, 9),
        ("bytes=-4", 10, 6, 9),
        ("bytes=-10", 10, 0, 9),
        ("bytes=-11", 10, 0, 9),  # suffix larger than the object: the whole object
        ("bytes=-99999999999", 10, 0, 9),
        ("bytes=2-100", 10, 2, 9),  # last-byte-pos past the end is clamped
        ("bytes=0-18446744073709551615", 10, 0, 9),
        ("bytes=0-0", 1, 0, 0),
        ("BYTES=1-2", 10, 1, 2),  # the unit is case-insensitive
        (" bytes = 1 - 2 ", 10, 1, 2),
    ],
)
def test_valid_ranges(header: str, size: int, start: int, end: int) -> None:
    span = parse_range(header, size)
    assert span == Span(start, end)
    assert span.length == end - start + 1


def test_content_range() -> None:
    assert parse_range("bytes=2-5", 10).content_range(10) == "bytes 2-5/10"
    assert parse_range("bytes=-3", 10).content_range(10) == "bytes 7-9/10"


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=10-", 10),  # start == size
        ("bytes=10-20", 10),
        ("bytes=11-11", 10),
        ("bytes=-0", 10),  # an empty suffix selects nothing
        ("bytes=0-", 0),  # nothing exists in an empty object
        ("bytes=0-0", 0),
        ("bytes=-5", 0),
        ("bytes=-0", 0),
    ],
)
def test_not_satisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        parse_range(header, size)
    assert info.value.size == size
    assert str(size) in str(info.value)


@pytest.mark.parametrize(
    "header",
    [
        "bytes=a-b",
        "bytes=1-b",
        "bytes=a-1",
        "items=0-1",
        "bytes 0-1",
        "=0-1",
        "bytes=5-1",  # last before first
        "bytes=",
        "bytes=-",
        "bytes=5",
        "bytes=1-2,3-4",  # multi-range
        "bytes=0-1,",
        "bytes=1-2-3",
        "bytes=+1-2",
        "bytes=-+1",
        "bytes=1.5-2",
        "bytes=0x1-2",
        "bytes=" + "9" * 21 + "-",  # absurdly large position
        "bytes=0-" + "9" * 21,
        "bytes=-" + "9" * 21,
        "bytes=１-２",  # fullwidth digits
        "bytes=٣-",  # Arabic-Indic digit
        "bytes=0-" + "0" * 300,  # overlong header
        "",
    ],
)
def test_malformed(header: str) -> None:
    with pytest.raises(MalformedRange) as info:
        parse_range(header, 1000)
    assert "Range" in str(info.value)


def test_overlong_header_reason_is_truncated() -> None:
    header = "bytes=0-" + "1" * (MAX_HEADER_LEN + 100)
    with pytest.raises(MalformedRange) as info:
        parse_range(header, 10)
    assert "too long" in str(info.value)
    assert len(str(info.value)) < 200  # the reason does not echo the whole header


def test_malformed_is_checked_even_for_empty_objects() -> None:
    with pytest.raises(MalformedRange):
        parse_range("bytes=a-", 0)


@given(
    size=st.integers(min_value=1, max_value=2**50),
    data=st.data(),
)
def test_span_within_object(size: int, data: st.DataObject) -> None:
    start = data.draw(st.integers(min_value=0, max_value=size - 1), label="start")
    end = data.draw(st.integers(min_value=start, max_value=2**62), label="end")
    span = parse_range(f"bytes={start}-{end}", size)
    assert 0 <= span.start <= span.end < size
    assert span.start == start
    assert span.end == min(end, size - 1)
    assert span.length == min(end, size - 1) - start + 1


@given(size=st.integers(min_value=1, max_value=2**50), suffix=st.integers(1, 2**62))
def test_suffix_within_object(size: int, suffix: int) -> None:
    span = parse_range(f"bytes=-{suffix}", size)
    assert 0 <= span.start <= span.end == size - 1
    assert span.length == min(suffix, size)


@given(size=st.integers(min_value=1, max_value=2**40), start=st.integers(0, 2**40))
def test_open_ended(size: int, start: int) -> None:
    if start >= size:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(f"bytes={start}-", size)
    else:
        span = parse_range(f"bytes={start}-", size)
        assert (span.start, span.end, span.length) == (start, size - 1, size - start)

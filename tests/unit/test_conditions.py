"""Conditional requests (RFC 9110 section 13) against one object version."""

from __future__ import annotations

import email.utils

import pytest

from cachenode.blocks import ObjectMeta
from cachenode.conditions import etag_matches, evaluate, http_date, if_range_holds, pinned_etag

T = 1_700_000_000.0
META = ObjectMeta("b", "k", 10, '"abc"', T)
BEFORE, AT, AFTER = (email.utils.formatdate(t, usegmt=True) for t in (T - 60, T, T + 60))


def outcome(headers: dict[str, str], method: str = "GET",
            meta: ObjectMeta = META) -> tuple[int, str] | None:
    got = evaluate(method, headers, meta)
    return None if got is None else (got.status, got.condition)


@pytest.mark.parametrize("headers,want", [
    ({}, None),
    ({"If-Match": '"abc"'}, None),
    ({"If-Match": 'abc'}, None),  # unquoted, as S3 and SeaweedFS accept it
    ({"If-Match": '"x", "abc"'}, None),
    ({"If-Match": "*"}, None),
    ({"If-Match": '"x"'}, (412, "If-Match")),
    ({"If-Match": 'W/"abc"'}, (412, "If-Match")),  # strong comparison: weak never matches
    ({"If-Unmodified-Since": AT}, None),
    ({"If-Unmodified-Since": AFTER}, None),
    ({"If-Unmodified-Since": BEFORE}, (412, "If-Unmodified-Since")),
    # S3: If-Match true and If-Unmodified-Since false is 200 (RFC: the date is ignored)
    ({"If-Match": '"abc"', "If-Unmodified-Since": BEFORE}, None),
    ({"If-None-Match": '"abc"'}, (304, "If-None-Match")),
    ({"If-None-Match": 'W/"abc"'}, (304, "If-None-Match")),  # weak comparison
    ({"If-None-Match": '"x", "abc"'}, (304, "If-None-Match")),
    ({"If-None-Match": "*"}, (304, "If-None-Match")),
    ({"If-None-Match": '"x"'}, None),
    ({"If-Modified-Since": AT}, (304, "If-Modified-Since")),
    ({"If-Modified-Since": AFTER}, (304, "If-Modified-Since")),
    ({"If-Modified-Since": BEFORE}, None),
    ({"If-Modified-Since": "not a date"}, None),
    # S3: If-None-Match false (it matches) with If-Modified-Since true is 304
    ({"If-None-Match": '"abc"', "If-Modified-Since": BEFORE}, (304, "If-None-Match")),
    # RFC 9110: If-Modified-Since is ignored once If-None-Match is there
    ({"If-None-Match": '"x"', "If-Modified-Since": AFTER}, None),
    # 412 before 304
    ({"If-Match": '"x"', "If-None-Match": '"abc"'}, (412, "If-Match")),
])
def test_preconditions_in_rfc_9110_order(headers: dict[str, str],
                                         want: tuple[int, str] | None) -> None:
    assert outcome(headers) == want
    assert outcome(headers, "HEAD") == want


def test_if_none_match_on_other_methods_is_412_and_dates_only_guard_reads() -> None:
    assert outcome({"If-None-Match": '"abc"'}, "DELETE") == (412, "If-None-Match")
    assert outcome({"If-Modified-Since": AFTER}, "DELETE") is None


def test_an_unknown_modification_time_ignores_the_date_conditions() -> None:
    unknown = ObjectMeta("b", "k", 10, '"abc"')  # a peer's pin: no Last-Modified
    assert outcome({"If-Modified-Since": AFTER}, meta=unknown) is None
    assert outcome({"If-Unmodified-Since": BEFORE}, meta=unknown) is None


def test_pinned_etag_is_one_strong_tag_or_nothing() -> None:
    assert pinned_etag(None) == ""
    assert pinned_etag('"abc"') == '"abc"'
    assert pinned_etag("abc") == '"abc"'
    assert pinned_etag(" * ") == "*"
    assert pinned_etag('"a", "b"') == ""  # a list is evaluated, not pinned
    assert pinned_etag('W/"a"') == ""


def test_if_range_trusts_only_the_strong_etag() -> None:
    assert if_range_holds(None, META)
    assert if_range_holds('"abc"', META)
    assert not if_range_holds('"x"', META)
    assert not if_range_holds(AFTER, META)  # a date is a weak validator
    assert not if_range_holds('W/"abc"', META)


def test_http_date_forms_and_garbage() -> None:
    assert http_date(AT) == int(T)
    assert http_date("Tuesday, 14-Nov-23 22:13:20 GMT") == int(T)  # RFC 850
    assert http_date("Tue Nov 14 22:13:20 2023") == int(T)  # asctime
    assert http_date("") is None and http_date("x" * 100) is None and http_date(None) is None


def test_overlong_lists_do_not_match() -> None:
    assert not etag_matches('"x", ' * 2000 + '"abc"', '"abc"', weak=True)

"""Pure rules of the connection layer: caps from the fd limit, refused heads, canned answers."""

from __future__ import annotations

import json

import pytest

from cachenode.http_limits import (
    MIN_HTTP_CONNECTIONS,
    Throttle,
    canned_response,
    derive_limits,
    head_problem,
    parse_error_reply,
)


def limits(nofile: int, max_connections: int = 0, grouped: bool = False):  # type: ignore[no-untyped-def]
    return derive_limits(nofile, max_connections=max_connections, max_concurrent_fills=16,
                         grouped=grouped, header_timeout_s=10.0, idle_timeout_s=75.0)


@pytest.mark.parametrize("nofile", [256, 1024, 4096, 65536, 1048576])
@pytest.mark.parametrize("grouped", [False, True])
def test_derived_caps_fit_under_the_fd_limit(nofile: int, grouped: bool) -> None:
    lim = limits(nofile, grouped=grouped)
    if nofile - lim.reserve_fds >= 2 * 2 * MIN_HTTP_CONNECTIONS:
        assert lim.fds_needed <= nofile
    assert lim.http_connections >= MIN_HTTP_CONNECTIONS
    assert lim.grpc_connections >= 8 and lim.grpc_connections <= lim.http_connections
    assert lim.nofile == nofile


def test_derived_caps_grow_with_the_limit_and_a_group_needs_more_reserve() -> None:
    assert limits(256).http_connections == 57  # (256 - 112) // 2 * 4 // 5
    assert limits(256).reserve_fds == 112
    assert limits(1024, grouped=True).reserve_fds == 112 + 256
    assert limits(65536).http_connections > limits(4096).http_connections
    assert limits(4096, grouped=True).http_connections < limits(4096).http_connections


def test_an_explicit_cap_is_kept_even_when_it_does_not_fit() -> None:
    lim = limits(256, max_connections=1000)
    assert lim.http_connections == 1000 and lim.grpc_connections == 250
    assert lim.fds_needed > 256  # the node warns at start


@pytest.mark.parametrize(("version", "status"), [((1, 1), None), ((1, 0), None),
                                                 ((2, 0), 505), ((0, 9), 505), ((3, 0), 505)])
def test_only_http_1_is_served(version: tuple[int, int], status: int | None) -> None:
    got = head_problem(version, "/bkt/key")
    assert (got and got[0]) == status
    if got:
        assert f"HTTP/{version[0]}.{version[1]}" in got[1]


@pytest.mark.parametrize("target", ["/bkt/%ZZ", "/bkt/a%2", "/bkt/a%", "/bkt/k?prefix=%g0",
                                    "/bkt/%%41", "/%zz/x"])
def test_invalid_percent_escapes_are_refused(target: str) -> None:
    status, reason = head_problem((1, 1), target) or (0, "")
    assert status == 400 and "percent-escape" in reason and "%25" in reason


@pytest.mark.parametrize("target", ["/bkt/a%20b", "/bkt/%2e%2E", "/bkt/100%25", "/bkt/k?x=%41",
                                    "/bkt/plain"])
def test_valid_escapes_pass(target: str) -> None:
    assert head_problem((1, 1), target) is None


@pytest.mark.parametrize(("message", "limit", "status", "reason"), [
    ("Invalid header token:\n\n  b'Bad Header: y'\n       ^", None, 400,
     "malformed request: Invalid header token"),
    ("Bad status line:\n  Invalid HTTP version:\n\n  b'GET / HTTP/1.2'\n  ^", None, 505,
     "HTTP version not supported"),
    ("Invalid method encountered:\n\n  b'GARBAGE'\n     ^", None, 400,
     "malformed request: Invalid method encountered"),
    ("Got more than 8190 bytes when reading: b'aaa...'.", 8190, 400, "longer than 8190 bytes"),
    ("", None, 400, "malformed request: unparseable request head"),
    ("Missing 'Host' header in request.", None, 400, "Missing 'Host' header in request"),
])
def test_parse_errors_get_one_line(message: str, limit: int | None, status: int,
                                   reason: str) -> None:
    got_status, got_reason = parse_error_reply(message, limit)
    assert got_status == status and reason in got_reason
    assert "\n" not in got_reason and "b'" not in got_reason and len(got_reason) < 200


def test_canned_response_is_whole_and_closes() -> None:
    raw = canned_response(503, "Overloaded", "too many connections\r\nX: y", retry_after_s=1)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Connection"] == "close" and headers["Retry-After"] == "1"
    assert int(headers["Content-Length"]) == len(body)
    assert json.loads(body) == {"error": "Overloaded", "reason": "too many connections\r\nX: y"}
    assert headers["X-Blockcache-Reason"] == "too many connections??X: y"  # no header injection
    assert b"Retry-After" not in canned_response(408, "RequestTimeout", "late")


def test_throttle_allows_one_line_per_period_and_counts_the_rest() -> None:
    t = Throttle(every_s=3600)
    assert t.due() == ""  # the first event is logged
    assert t.due() is None and t.due() is None  # then skipped, and counted
    t._next = 0.0  # the period has passed
    assert t.due() == " (2 more since the last such line)"
    assert Throttle(every_s=0).due() == ""

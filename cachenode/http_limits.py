"""Rules of the connection layer: caps from the fd limit, refused heads, canned answers."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from http import HTTPStatus

# File descriptors a node needs besides its client connections (measured at rest: ~28 with
# rocksdb, the loop, logs and both listeners), then what the node itself opens.
BASE_RESERVE_FDS = 64
ORIGIN_POOL_EXTRA_FDS = 16  # the origin pool is --max-concurrent-fills + 16 (origin_s3.py)
PEER_POOL_FDS = 256  # HttpPeerClient's connector limit, on a node in a group
REFUSING_MAX = 16  # connections over the cap held at once until their 503 is sent
MIN_HTTP_CONNECTIONS = 16
MIN_GRPC_CONNECTIONS = 8
MAX_REASON_CHARS = 160
LOG_EVERY_S = 10.0  # at most one line per kind of refusal in this long
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SUPPORTED_VERSIONS = ((1, 0), (1, 1))


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How many connections each API may hold open, and how long a head or an idle one waits."""

    http_connections: int
    grpc_connections: int
    header_timeout_s: float
    idle_timeout_s: float
    nofile: int  # the open-files limit (RLIMIT_NOFILE soft) the caps were derived from
    reserve_fds: int  # fds kept for what the node opens itself

    @property
    def fds_needed(self) -> int:
        """Return the fds the caps can take: the reserve, plus two per connection."""
        return self.reserve_fds + 2 * (self.http_connections + self.grpc_connections)


def derive_limits(nofile: int, *, max_connections: int, max_concurrent_fills: int,
                  grouped: bool, header_timeout_s: float,
                  idle_timeout_s: float) -> ConnectionLimits:
    """Return the connection caps for an open-files limit (`max_connections` 0 = derive).

    The fds left after the reserve are halved: one for each connection's socket, one for
    what it opens while served (block files, the sendfile dup). Of those connections 4/5
    go to HTTP, 1/5 to gRPC; an explicit HTTP cap gives gRPC a quarter of it.
    """
    reserve = (BASE_RESERVE_FDS + max_concurrent_fills + ORIGIN_POOL_EXTRA_FDS + REFUSING_MAX
               + (PEER_POOL_FDS if grouped else 0))
    http = max_connections or max(MIN_HTTP_CONNECTIONS, (nofile - reserve) // 2 * 4 // 5)
    grpc = max(MIN_GRPC_CONNECTIONS, http // 4)
    return ConnectionLimits(http, grpc, header_timeout_s, idle_timeout_s, nofile, reserve)


def header_safe(text: str) -> str:
    """Return `text` shortened to printable ASCII, fit for a response header."""
    return "".join(c if " " <= c < "\x7f" else "?" for c in text[:MAX_REASON_CHARS])


def head_problem(version: tuple[int, int], target: str) -> tuple[int, str] | None:
    """Return (status, reason) if a parsed request head is refused, else None.

    llhttp parses HTTP/0.9 (a request line without a version) and HTTP/2.0 request lines,
    and aiohttp would answer them in that version; `%ZZ` is no percent-escape (RFC 3986
    pct-encoded is '%' HEXDIG HEXDIG) but every decoder here leaves it as literal text.
    """
    if tuple(version) not in _SUPPORTED_VERSIONS:
        return 505, (f"HTTP/{version[0]}.{version[1]} is not supported: this port speaks "
                     "HTTP/1.1 (gRPC has its own port)")
    bad = _BAD_ESCAPE.search(target)
    if bad is not None:
        escape = target[bad.start():bad.start() + 3]
        return 400, (f"invalid percent-escape {header_safe(escape)!r} in the request target: "
                     "'%' must be followed by two hex digits (send '%' as %25)")
    return None


def parse_error_reply(message: str, line_limit: int | None) -> tuple[int, str]:
    """Return (status, one-line reason) for a request head aiohttp's parser refused.

    `message` is the parser's text (its first line names the problem, then it dumps the
    bytes); `line_limit` is set when a line was longer than the parser allows.
    """
    if line_limit is not None:
        return 400, f"the request line or a header is longer than {line_limit} bytes"
    lines = [ln.strip().rstrip(":.") for ln in message.splitlines()]
    named = [ln for ln in lines if ln and ln != "Bad status line"
             and not ln.startswith(("b'", 'b"', "^"))]
    what = header_safe(named[0] if named else "unparseable request head")
    if what.startswith("Invalid HTTP version"):
        return 505, "HTTP version not supported: this port speaks HTTP/1.1"
    return 400, f"malformed request: {what}"


def canned_response(status: int, error: str, reason: str, retry_after_s: int = 0) -> bytes:
    """Return a whole HTTP/1.1 error response that closes the connection (JSON body)."""
    body = (json.dumps({"error": error, "reason": reason}) + "\n").encode()
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
             "Content-Type: application/json", f"Content-Length: {len(body)}",
             "Connection: close", f"X-Blockcache-Error: {error}",
             f"X-Blockcache-Reason: {header_safe(reason)}"]
    if retry_after_s:
        lines.append(f"Retry-After: {retry_after_s}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Throttle:
    """Allow one log line per `every_s`, counting the events skipped in between."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self._every_s, self._next, self._skipped = every_s, 0.0, 0

    def due(self) -> str | None:
        """Return a note on the events skipped if a line is due now, else None (one skipped)."""
        now = time.monotonic()
        if now < self._next:
            self._skipped += 1
            return None
        skipped, self._skipped, self._next = self._skipped, 0, now + self._every_s
        return f" ({skipped} more since the last such line)" if skipped else ""

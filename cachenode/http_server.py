"""The HTTP connection layer (aiohttp): head deadline, connection cap with 503, quiet 4xx.

What aiohttp 3.14's server gives, and what this adds (aiohttp/web_protocol.py):

- ``keepalive_timeout`` (default 3630 s) is armed at the accept and after each response, and
  closes a connection still waiting for a request head (``_process_keepalive``). It is the
  idle timeout here (--idle-timeout): a kept-alive connection's next head must be complete
  before it runs out too. Nothing bounded how long a head takes once it began, so a head
  must now be complete within --header-timeout of the accept or of its first byte on a
  kept-alive connection (nginx's client_header_timeout), or the connection gets 408 (if a
  byte came) and is closed.
- No cap on connections: past the fd limit uvloop's accept fails and libuv accepts and drops
  connections (its EMFILE trick), so clients see resets and nothing is logged. Connections
  over the cap (http_limits.derive_limits) get 503 with Retry-After and a WARNING line.
- A head the parser refuses is answered 400 with the parser's dump of the bytes and logged
  at ERROR with a traceback (``handle_error`` calls ``log_exception`` on the
  ``aiohttp.server`` logger; only a bad method on a first request is logged at DEBUG). Here
  it gets a one-line JSON reason, logged at INFO at most every 10 s, without a traceback.
- llhttp parses HTTP/0.9 and HTTP/2.0 request lines and aiohttp answers in that version;
  ``%ZZ`` passes as literal text. Both are refused (505, 400) before any handler runs.

``handler_cancellation`` is on: a reader that disconnects cancels its handler, and with it
the fills and peer reads only it waited for (single flights cancel abandoned calls), counted
as 499 by the API's middleware. Internals relied on (checked against 3.14.5, each covered
by tests): ``RequestHandler`` ``_messages``, ``_request_count`` and ``_waiter``;
``AppRunner._make_server``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import _ErrInfo

from cachenode.http_limits import (
    REFUSING_MAX,
    ConnectionLimits,
    Throttle,
    canned_response,
    head_problem,
    header_safe,
    parse_error_reply,
)
from cachenode.metrics import NodeMetrics

log = logging.getLogger(__name__)
REFUSE_WAIT_S = 1.0  # a connection over the cap gets its 503 at its head's end, or after this
REFUSE_READ_MAX = 64 * 1024  # bytes read from it while waiting for that end
MAX_LINE_BYTES = 8190  # request line, and one header field (aiohttp's defaults, made explicit)
MAX_HEADERS = 128


class RefusedHead(HttpProcessingError):
    """A parsed request head this server will not serve (version, percent-escapes)."""


class Gate:
    """Admit HTTP connections up to the cap; count, refuse and report the rest."""

    def __init__(self, limits: ConnectionLimits, metrics: NodeMetrics) -> None:
        self.limits, self.metrics = limits, metrics
        self.open = 0  # admitted connections not yet lost
        self.refusals: set[Refusal] = set()  # refused connections not yet closed
        self.busy = canned_response(503, "Overloaded", (
            f"too many connections: this node holds at most {limits.http_connections} "
            "(--max-connections); retry later or another node"), retry_after_s=1)
        self._warn, self._bad, self._slow = Throttle(), Throttle(), Throttle()
        metrics.http_connections.set_function(lambda: float(self.open))

    def admit(self) -> bool:
        """Return whether a new connection may be served (and count it if so)."""
        if self.open < self.limits.http_connections:
            self.open += 1
            return True
        self.metrics.http_refused.inc()
        note = self._warn.due()
        if note is not None:
            log.warning("HTTP connection refused with 503: %d open, the cap (--max-connections "
                        "%d, open-files limit %d)%s", self.open, self.limits.http_connections,
                        self.limits.nofile, note)
        return False

    def release(self) -> None:
        """Count an admitted connection as closed."""
        self.open -= 1

    def bad_head(self, status: int, reason: str, peer: str | None) -> None:
        """Count and log (at most every LOG_EVERY_S, no traceback) a refused request head."""
        self.metrics.requests.labels("http", str(status)).inc()
        note = self._bad.due()
        log.log(logging.DEBUG if note is None else logging.INFO,
                "%d for a request head from %s: %s%s", status, peer, reason, note or "")

    def head_timed_out(self, started: bool) -> None:
        """Count and log (at most every LOG_EVERY_S) a connection cut for a late head."""
        self.metrics.http_header_timeouts.inc()
        note = self._slow.due()
        log.log(logging.DEBUG if note is None else logging.INFO,
                "closed a connection whose request head was %s within --header-timeout %gs%s",
                "not complete" if started else "not started", self.limits.header_timeout_s,
                note or "")

    def close(self) -> None:
        """Close the refused connections still waiting for their 503."""
        for refusal in list(self.refusals):
            refusal.answer()


class Refusal(asyncio.Protocol):
    """A connection over the cap: 503 once its request head is in (or soon), then closed.

    Reading the head first means the close is a FIN, not a reset that could destroy the 503
    before the client reads it. At most REFUSING_MAX wait at once; the rest are answered
    at once.
    """

    def __init__(self, transport: asyncio.Transport, gate: Gate) -> None:
        self._transport, self._gate = transport, gate
        self._tail, self._read, self._answered = b"", 0, False
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Wait for the head (answer at once if REFUSING_MAX already wait)."""
        if len(self._gate.refusals) >= REFUSING_MAX:
            self.answer()
            return
        self._gate.refusals.add(self)
        self._timer = asyncio.get_running_loop().call_later(REFUSE_WAIT_S, self.answer)

    def data_received(self, data: bytes) -> None:
        """Answer once the request head has ended."""
        self._read += len(data)
        window = self._tail + data
        if b"\r\n\r\n" in window or self._read > REFUSE_READ_MAX:
            self.answer()
        self._tail = window[-3:]

    def eof_received(self) -> bool:
        """Answer a client that finished sending."""
        self.answer()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection."""
        if self._timer is not None:
            self._timer.cancel()
        self._gate.refusals.discard(self)

    def answer(self) -> None:
        """Send the 503 and close (once)."""
        if self._answered:
            return
        self._answered = True
        if self._timer is not None:
            self._timer.cancel()
        self._gate.refusals.discard(self)
        self._transport.write(self._gate.busy)
        self._transport.close()


class GuardedHandler(web.RequestHandler):
    """aiohttp's protocol for one connection, under the cap and the head deadline."""

    def __init__(self, manager: HttpServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._gate = manager.gate
        self._admitted = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_started = False  # bytes of the awaited request head have arrived

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Serve the connection if it fits under the cap, else hand it to a Refusal."""
        if not self._gate.admit():
            refusal = Refusal(cast(asyncio.Transport, transport), self._gate)
            transport.set_protocol(refusal)
            refusal.start()
            return
        self._admitted = True
        self._arm_head_deadline()
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        """Release the connection's place under the cap."""
        self._disarm_head_deadline()
        if self._admitted:
            self._admitted = False
            self._gate.release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Parse as aiohttp does; time the head, and refuse heads this server does not serve."""
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:  # one or more heads are complete
            self._disarm_head_deadline()
            self._head_started = False
            self._refuse_unserved_heads()
        elif data and self._waiting_for_head():
            self._head_started = True
            if self._head_timer is None:  # a kept-alive connection's next request began
                self._arm_head_deadline()

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """Answer a refused request head with a short JSON reason; leave 5xx to aiohttp."""
        if isinstance(exc, RefusedHead):
            status, reason = exc.code, exc.message
        elif isinstance(exc, BadHttpMessage):
            limit = exc.args[1] if isinstance(exc, LineTooLong) else None
            status, reason = parse_error_reply(exc.message, limit)
        else:
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:  # a body error after the headers went out
            return super().handle_error(request, status, exc, message)
        self._gate.bad_head(status, reason, request.remote)
        error = "HttpVersionNotSupported" if status == 505 else "BadRequest"
        resp = web.json_response({"error": error, "reason": reason}, status=status, headers={
            "X-Blockcache-Error": error, "X-Blockcache-Reason": header_safe(reason)})
        resp.force_close()
        return resp

    def _waiting_for_head(self) -> bool:
        """Return whether aiohttp waits for the next request head (none is in progress)."""
        return self._waiter is not None and not self._waiter.done()

    def _refuse_unserved_heads(self) -> None:
        """Turn queued heads of unsupported versions or bad escapes into error messages."""
        for i, (msg, _payload) in enumerate(self._messages):
            if isinstance(msg, _ErrInfo):
                continue
            problem = head_problem(msg.version, msg.path)
            if problem is not None:
                exc = RefusedHead(code=problem[0], message=problem[1])
                self._messages[i] = (_ErrInfo(status=problem[0], exc=exc, message=problem[1]),
                                     EMPTY_PAYLOAD)

    def _arm_head_deadline(self) -> None:
        self._head_timer = asyncio.get_running_loop().call_later(self._gate.limits.header_timeout_s,
                                                 self._head_expired)

    def _disarm_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        """Close a connection whose head is late: 408 if it began, silently if it did not."""
        self._head_timer = None
        if self.transport is None or not self._waiting_for_head():
            return
        self._gate.head_timed_out(self._head_started)
        if self._head_started:
            self.transport.write(canned_response(408, "RequestTimeout", (
                "request head not complete within "
                f"{self._gate.limits.header_timeout_s:g}s (--header-timeout)")))
        self.force_close()


class HttpServer(web.Server):
    """aiohttp's low-level server, making a GuardedHandler for each connection."""

    def __init__(self, handler: Any, *, gate: Gate, request_factory: Any,
                 handler_cancellation: bool = False, **handler_kwargs: Any) -> None:
        super().__init__(handler, request_factory=request_factory,
                         handler_cancellation=handler_cancellation, **handler_kwargs)
        self.gate = gate
        self._handler_kwargs = handler_kwargs
        self._event_loop = asyncio.get_running_loop()

    def __call__(self) -> web.RequestHandler:
        """Return the protocol of a newly accepted connection."""
        return GuardedHandler(self, loop=self._event_loop, **self._handler_kwargs)


class NodeRunner(web.AppRunner):
    """An AppRunner whose connections are guarded (cap, deadlines, quiet 4xx)."""

    def __init__(self, app: web.Application, gate: Gate, shutdown_timeout_s: float) -> None:
        super().__init__(app, access_log=None, shutdown_timeout=shutdown_timeout_s)
        self._gate = gate

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # runs the app's startup and freezes it
        return HttpServer(server.request_handler, gate=self._gate,
                          request_factory=server.request_factory, access_log=None,
                          handler_cancellation=True,
                          keepalive_timeout=self._gate.limits.idle_timeout_s,
                          # a body the handler did not read is drained this long at most
                          # after the response (aiohttp's lingering close, default 10 s)
                          lingering_time=self._gate.limits.header_timeout_s,
                          max_line_size=MAX_LINE_BYTES, max_field_size=MAX_LINE_BYTES,
                          max_headers=MAX_HEADERS)

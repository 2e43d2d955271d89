"""Watch whether the origin accepts this node's credentials, for /readyz.

A node whose origin refuses its keys (a rotated or mistyped secret) still serves its hits,
but every miss fails: it should leave the Service until its credentials work. The node
lists the buckets its credentials see (one small origin call) at start, again whenever an
origin call has failed with a credentials code since (`blockcache_origin_errors_total`,
read locally: no origin traffic while all is well), and every DENIED_CHECK_S while refused.
A refusal of the credentials themselves (not of one object, nor of listing) makes the node
unready with the origin's code; an unreachable origin does not: hits still serve.
"""

from __future__ import annotations

import asyncio
import logging

from cachenode.errors import CacheError, OriginDenied
from cachenode.metrics import NodeMetrics
from cachenode.ports import Origin

log = logging.getLogger(__name__)
LOOK_S, DENIED_CHECK_S, CHECK_TIMEOUT_S = 1.0, 2.0, 2.0
CREDENTIAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                              "InvalidToken", "TokenRefreshRequired", "InvalidClientTokenId",
                              "AuthorizationHeaderMalformed"})


class OriginCredentials:
    """The verdict of the last check: `problem` is why the origin refuses us, or None."""

    def __init__(self, origin: Origin, metrics: NodeMetrics) -> None:
        self._origin, self._metrics = origin, metrics
        self.problem: str | None = None
        self._refusals = 0.0  # origin errors with a credentials code, at the last look

    def _refused_calls(self) -> float:
        """Return how many origin calls failed with a credentials code so far."""
        return sum(s.value for m in self._metrics.origin_errors.collect() for s in m.samples
                   if s.name.endswith("_total") and s.labels.get("kind") in CREDENTIAL_CODES)

    async def check(self) -> None:
        """List the buckets once (at most CHECK_TIMEOUT_S) and record a refusal of our keys."""
        self._refusals = self._refused_calls()
        try:
            await asyncio.wait_for(self._origin.list_buckets(), CHECK_TIMEOUT_S)
            problem = None
        except OriginDenied as e:
            code = str(e.args[2]) if len(e.args) > 2 else ""
            problem = (f"the origin refuses this node's credentials ({code}): check "
                       "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY") if (
                code in CREDENTIAL_CODES) else None
        except (CacheError, OSError, TimeoutError):
            problem = None  # unreachable or failing: not a credentials problem
        if problem != self.problem:
            (log.warning if problem else log.info)(
                "%s", problem or "the origin accepts this node's credentials again")
        self.problem = problem
        self._metrics.origin_credentials_ok.set(0 if problem else 1)

    async def run(self) -> None:
        """Check again while refused, or once an origin call was refused since (cancel: stop)."""
        while True:
            await asyncio.sleep(DENIED_CHECK_S if self.problem else LOOK_S)
            if self.problem or self._refused_calls() > self._refusals:
                await self.check()

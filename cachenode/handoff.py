"""Whom a new owner asks for a block before the origin, after the ring changed (pure).

Candidates are the nodes that held the block before (the owner on the previous ring, and
the owner if this node were not on the ring; routing.py finds them). Two rules keep the
questions down to the ones that can be answered with a block:

- A node that cannot hold such a block is not asked. A node fills only the blocks it owns,
  and while two nodes both stay on the ring with the same weights one never owns a block of
  the other's; so another node holds blocks this node owns only if it filled them before this
  node registered. Each record carries when its process registered and when it first filled
  a block, from the origin or by a handoff (0: not yet; 1: it started with blocks on disk):
  a node on the ring whose first fill is not before this node's registration is not asked.
  So a group that formed together and then warmed asks nothing, and a node that joins
  later asks the ones that were serving.
  Asked all the same: a member off the ring (draining: it still holds what it owned), a
  record without times (an older version), and everyone once this node has left the ring or
  a weight changed (blocks moved between nodes that stayed).
- A node that answered HANDOFF_GIVE_UP questions "not here" and none with a block is not
  asked for HANDOFF_RETRY_S, or until the ring changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

HANDOFF_GIVE_UP = 64  # "not here" answers (and no hit) before a node is no longer asked...
HANDOFF_RETRY_S = 60.0  # ...for this long (or until the ring changes)


class HandoffPlan:
    """This node's record of who is worth a handoff question."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        # node on the ring -> (registered, first filled), Unix times (0, 0: an older version)
        self._times: dict[str, tuple[float, float]] = {}
        self._moved = False  # blocks moved between nodes that stayed: ask everyone from now on
        # "not here" answers since the last ring change, or -1 once a node answered with one
        self._misses: dict[str, int] = {}
        self._reset_at = 0.0

    def ring_changed(self, before: Mapping[str, int], after: Mapping[str, int]) -> None:
        """Adopt a new ring (node id -> weight): forget the answers, since blocks moved."""
        self._misses.clear()
        left = self.node_id in before and self.node_id not in after
        reweighted = any(after.get(n, w) != w for n, w in before.items())
        self._moved = self._moved or left or reweighted

    def registered(self, times: Mapping[str, tuple[float, float]]) -> None:
        """Learn when the nodes on the ring registered and first filled (see above)."""
        self._times = dict(times)

    def worth_asking(self, nodes: Iterable[str], now: float) -> list[str]:
        """Return the nodes of `nodes` (in order, once each, not this one) worth asking."""
        if now > self._reset_at:  # what moved may have changed: ask again now and then
            self._reset_at = now + HANDOFF_RETRY_S
            self._misses = {n: m for n, m in self._misses.items() if m < 0}
        return [n for n in dict.fromkeys(nodes) if n != self.node_id
                and self._misses.get(n, 0) < HANDOFF_GIVE_UP and not self.holds_none_of_mine(n)]

    def holds_none_of_mine(self, node: str) -> bool:
        """Return whether `node` is on the ring and first filled after this node registered."""
        mine, _ = self._times.get(self.node_id, (0.0, 0.0))
        registered, filled = self._times.get(node, (0.0, 0.0))
        if self._moved or not mine or not registered:
            return False
        return not filled or filled >= mine

    def answered(self, node: str, had_it: bool) -> None:
        """Note a node's answer: a block keeps it asked, "not here" counts towards giving up."""
        if had_it:
            self._misses[node] = -1
        elif (misses := self._misses.get(node, 0)) >= 0:
            self._misses[node] = misses + 1

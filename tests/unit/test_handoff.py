"""HandoffPlan: who a new owner asks for a block before the origin."""

from __future__ import annotations

from cachenode.handoff import HANDOFF_GIVE_UP, HANDOFF_RETRY_S, HandoffPlan

T = 1_700_000_000.0  # when the group formed
RING = {"a": 100, "b": 100, "c": 100}


def plan(times: dict[str, tuple[float, float]], me: str = "a") -> HandoffPlan:
    p = HandoffPlan(me)
    p.ring_changed({}, {n: 100 for n in times})
    p.registered(times)
    return p


def test_nodes_that_filled_nothing_before_this_one_registered_are_not_asked() -> None:
    p = plan({"a": (T + 5, 0.0), "b": (T, 0.0), "c": (T + 1, T + 5)})
    assert p.worth_asking(["b", "c"], 0.0) == []  # b never filled; c only once a was there


def test_a_later_node_asks_the_ones_that_were_serving_and_they_do_not_ask_it() -> None:
    times = {"a": (T, T + 9), "b": (T, 1.0), "d": (T + 600, T + 601)}
    assert plan(times, "d").worth_asking(["a", "b"], 0.0) == ["a", "b"]  # b: blocks from before
    assert plan(times, "a").worth_asking(["d", "b"], 0.0) == ["b"]


def test_unknown_times_and_members_off_the_ring_are_asked() -> None:
    p = plan({"a": (T, 0.0), "b": (0.0, 0.0)})
    assert p.worth_asking(["b", "c", "c", "a"], 0.0) == ["b", "c"]  # c: draining, not on it
    assert plan({"a": (0.0, 0.0), "b": (T, 0.0)}).worth_asking(["b"], 0.0) == ["b"]


def test_leaving_the_ring_or_a_weight_change_means_asking_everyone() -> None:
    together = {n: (T, T + 9) for n in RING}
    for before, after in ((RING, {"b": 100, "c": 100}), (RING, {**RING, "c": 200})):
        p = plan(together)
        p.ring_changed(before, after)
        assert p.worth_asking(["b", "c"], 0.0) == ["b", "c"]
    p = plan(together)
    p.ring_changed(RING, {"a": 100, "b": 100})  # another node left: nothing moved between us
    assert p.worth_asking(["b"], 0.0) == []


def test_a_node_that_never_has_it_is_dropped_for_a_while_unless_it_had_one() -> None:
    p = plan({"a": (T, 0.0), "b": (0.0, 0.0), "c": (0.0, 0.0)})
    for _ in range(HANDOFF_GIVE_UP):
        p.answered("b", had_it=False)
        p.answered("c", had_it=False)
    p.answered("c", had_it=True)
    assert p.worth_asking(["b", "c"], 0.0) == ["c"]
    assert p.worth_asking(["b", "c"], 2.0 + HANDOFF_RETRY_S) == ["b", "c"]  # time to ask again
    for _ in range(HANDOFF_GIVE_UP):
        p.answered("b", had_it=False)
    p.ring_changed(RING, {**RING, "d": 100})
    assert p.worth_asking(["b"], 3.0 + HANDOFF_RETRY_S) == ["b"]  # the ring changed

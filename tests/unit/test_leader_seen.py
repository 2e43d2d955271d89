"""What /healthz says about the leader: only what etcd said lately enough."""

from __future__ import annotations

from coordinator.election import LeaderSeen


def test_nothing_is_known_before_etcd_answers() -> None:
    assert LeaderSeen().health(0.0, 2.0) == (None, "etcd not reached yet")


def test_an_answer_counts_until_it_is_older_than_the_bound() -> None:
    seen = LeaderSeen()
    seen.saw("c1", 100.0)
    assert seen.health(101.9, 2.0) == ("c1", None)
    assert seen.health(102.5, 2.0) == (
        None, "etcd has not answered the election for 2.5s (more than 2s)")
    seen.saw(None, 103.0)  # etcd says no one leads: that is known, and healthy
    assert seen.health(103.0, 2.0) == (None, None)


def test_a_failure_hides_what_was_seen_until_etcd_answers_again() -> None:
    seen = LeaderSeen()
    seen.saw("c1", 100.0)
    seen.lost("etcd at 127.0.0.1:2379 is unreachable: refused")
    assert seen.health(100.1, 2.0) == (None, "etcd at 127.0.0.1:2379 is unreachable: refused")
    seen.saw("c2", 101.0)
    assert seen.health(101.0, 2.0) == ("c2", None)

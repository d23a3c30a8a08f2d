"""Traffic routing: weighted splits, sticky sessions that move only as far as weights require,
and the traffic policy's record."""

from __future__ import annotations

import random

import pytest

from modelgate.core.store.traffic import PolicyError, TrafficPolicy, from_body
from modelgate.gateway.serving import pick


def test_a_split_without_sessions_follows_the_weights() -> None:
    random.seed(3)
    counts = {"1": 0, "2": 0}
    for _ in range(20_000):
        counts[pick([("1", 90), ("2", 10)], None)] += 1
    assert abs(counts["2"] / 20_000 - 0.10) < 0.01


def test_sessions_split_by_weight_and_keep_their_version() -> None:
    sessions = [f"session-{i}" for i in range(20_000)]
    first = {s: pick([("1", 90), ("2", 10)], s) for s in sessions}
    assert abs(sum(v == "2" for v in first.values()) / len(sessions) - 0.10) < 0.01
    assert first == {s: pick([("1", 90), ("2", 10)], s) for s in sessions}  # stable


def test_growing_a_version_moves_nobody_off_it_and_only_the_minimum_onto_it() -> None:
    sessions = [f"s{i}" for i in range(20_000)]
    before = {s: pick([("1", 90), ("2", 10)], s) for s in sessions}
    after = {s: pick([("1", 80), ("2", 20)], s) for s in sessions}
    assert all(after[s] == "2" for s in sessions if before[s] == "2")  # 100% stay
    moved = sum(before[s] != after[s] for s in sessions) / len(sessions)
    assert abs(moved - 0.10) < 0.01  # the 10 points that changed hands, no more


def test_a_third_version_takes_its_share_from_both_in_proportion() -> None:
    sessions = [f"s{i}" for i in range(20_000)]
    before = {s: pick([("1", 50), ("2", 50)], s) for s in sessions}
    after = {s: pick([("1", 50), ("2", 50), ("3", 100)], s) for s in sessions}
    moved = [s for s in sessions if before[s] != after[s]]
    assert all(after[s] == "3" for s in moved)  # nobody moves between 1 and 2


def test_weight_zero_takes_no_call() -> None:
    assert {pick([("1", 100), ("2", 0)], f"s{i}") for i in range(1000)} == {"1"}


def test_policy_round_trip_and_validation() -> None:
    policy = from_body({"weights": {"1": 90, "2": 10}, "shadow": {"version": "3",
                                                                 "percent": 100},
                        "sticky_header": "X-Session-Id", "default": "1"}, by="key:ab")
    assert TrafficPolicy.decode(policy.encode()) == policy
    assert policy.sticky_header == "x-session-id"
    for bad in ({"weights": {"1": -1}}, {"weights": {"1": 0}}, {"weights": {"one": 1}},
                {"shadow": {"version": "2", "percent": 150}}, {"sticky_header": "bad header"},
                {"weights": [1]}, {"bogus": 1}, []):
        with pytest.raises(PolicyError):
            from_body(bad)

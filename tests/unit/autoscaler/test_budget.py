"""The cost budget shared across pools."""

from __future__ import annotations

from modelgate.autoscaler.budget import Ask, allocate


def test_no_budget_grants_every_ask() -> None:
    asks = [Ask("a", 5, 1, 2.0), Ask("b", 3, 1, 1.0)]
    assert allocate(asks, None) == {"a": (5, False), "b": (3, False)}


def test_budget_is_never_exceeded_and_says_who_was_capped() -> None:
    asks = [Ask("a", 6, 1, 2.0), Ask("b", 6, 1, 1.0)]
    granted = allocate(asks, 10.0)
    cost = granted["a"][0] * 2.0 + granted["b"][0] * 1.0
    assert cost <= 10.0
    assert granted["a"][1] and granted["b"][1]
    assert granted["a"][0] >= 1 and granted["b"][0] >= 1


def test_workers_go_where_the_shortfall_and_slo_pressure_are_highest() -> None:
    # Equal shortfall; b is further over its SLO, so it gets the one worker the budget allows.
    asks = [Ask("a", 2, 1, 1.0, slo_pressure=1.1), Ask("b", 2, 1, 1.0, slo_pressure=3.0)]
    assert allocate(asks, 3.0) == {"a": (1, True), "b": (2, False)}
    # A pool at 1 of 8 has a larger relative shortfall than one at 4 of 6.
    asks = [Ask("a", 8, 1, 1.0), Ask("b", 6, 4, 1.0)]
    assert allocate(asks, 6.0)["a"][0] == 2


def test_the_serving_version_is_served_before_a_candidate() -> None:
    """A candidate under more pressure still waits for the default version's workers."""
    asks = [Ask("m:1", 4, 1, 1.0, slo_pressure=1.0, priority=0),
            Ask("m:2", 4, 1, 1.0, slo_pressure=5.0, priority=1)]
    granted = allocate(asks, 5.0)
    assert granted["m:1"] == (4, False)
    assert granted["m:2"] == (1, True)


def test_batch_jobs_get_workers_only_after_every_online_need() -> None:
    # Online: a wants 3, b wants 2 (5 of a budget of 6); b's job asks 3 more: 1 fits.
    asks = [Ask("a", 3, 1, 1.0), Ask("b", 2, 1, 1.0, job_extra=3)]
    assert allocate(asks, 6.0) == {"a": (3, False), "b": (3, False)}
    # With a budget only for the online needs, the job gets nothing and caps no one.
    assert allocate(asks, 5.0) == {"a": (3, False), "b": (2, False)}
    # Without a budget, every job worker is granted.
    assert allocate(asks, None) == {"a": (3, False), "b": (5, False)}
    # Online needs come first even when a job's pool was asked about first.
    asks = [Ask("job", 0, 0, 1.0, job_extra=2), Ask("online", 4, 1, 1.0)]
    assert allocate(asks, 4.0) == {"job": (0, False), "online": (4, False)}

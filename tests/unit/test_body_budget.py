"""Admission in bytes: gateway/body.py BodyBudget. No Redis, no process."""

from __future__ import annotations

import pytest

from modelgate.core.errors import Overloaded
from modelgate.gateway.body import BodyBudget
from modelgate.gateway.metrics import Metrics


def held(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("modelgate_body_bytes_in_flight")


def test_bodies_are_held_until_given_back_and_shown() -> None:
    metrics = Metrics()
    budget = BodyBudget(100, metrics)
    budget.take(60)
    budget.take(40)
    assert (budget.held, held(metrics)) == (100, 100)
    budget.give(60)
    assert (budget.held, held(metrics)) == (40, 40)


def test_a_body_past_the_limit_is_refused_with_a_retry_and_nothing_taken() -> None:
    budget = BodyBudget(100, Metrics())
    budget.take(60)
    with pytest.raises(Overloaded) as refused:
        budget.take(41)
    assert refused.value.retry_after_s == 1
    assert "60 bytes" in str(refused.value) and "100" in str(refused.value)
    assert budget.held == 60


def test_one_body_larger_than_the_limit_is_taken_when_nothing_else_is_held() -> None:
    """The largest body allowed (--max-body-bytes) is always served alone."""
    budget = BodyBudget(100, Metrics())
    budget.take(150)
    with pytest.raises(Overloaded):
        budget.take(1)
    budget.give(150)
    budget.take(1)

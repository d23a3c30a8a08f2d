"""What a gateway asks its worker to store for feedback, and what it stores itself: only the
answers its worker did not (a worker of an earlier release stores none)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import redis.asyncio as aioredis

from modelgate.core import wire
from modelgate.core.prediction import spec_for
from modelgate.core.repository import Model, ModelVersion
from modelgate.gateway.feedback import Feedback
from modelgate.gateway.metrics import Metrics


def feedback() -> Feedback:
    # Never connects: keep and record only queue in memory.
    return Feedback(aioredis.Redis(), Metrics(), spec_for, lambda name: {})


@pytest.fixture
def iris(unit_repository: dict[str, Model]) -> ModelVersion:
    return unit_repository["iris"].default


def reply(stored: bool) -> wire.Reply:
    return wire.Reply(("c1",), wire.ReplyStatus.OK,
                      {"output_label": wire.tensor(np.array([1]))}, stored=stored)


def test_a_kept_call_is_stored_by_the_gateway_only_when_its_worker_did_not(
        iris: ModelVersion) -> None:
    gateway = feedback()
    key = gateway.keep(iris, "call-1")
    assert key == "call-1"
    gateway.record(iris, key, reply(stored=True))
    assert gateway.pending == []
    gateway.record(iris, key, reply(stored=False))
    assert [(call, r.stored) for _, call, _, r in gateway.pending] == [("call-1", False)]


def test_calls_sampled_out_or_of_ids_no_label_can_name_are_not_kept(
        iris: ModelVersion) -> None:
    gateway = feedback()
    assert gateway.keep(iris, "x" * 257) == ""
    assert gateway.keep(iris, "lone-\ud800") == ""
    unsampled = dataclasses.replace(
        iris, config=dataclasses.replace(iris.config, feedback_sample_share=0.0))
    assert gateway.keep(unsampled, "call-1") == ""
    gateway.record(iris, "", reply(stored=False))
    assert gateway.pending == []

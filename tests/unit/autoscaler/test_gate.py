"""The promotion gate, evaluation by evaluation: steps, rollbacks, waiting for the budget."""

from __future__ import annotations

from modelgate.autoscaler.gate import Figures, decide_gate
from modelgate.core.promotion import PromotionConfig, Rules, Step

CONFIG = PromotionConfig(
    steps=(Step(shadow=100, min_s=10, min_calls=100), Step(weight=10, min_s=10, min_calls=50),
           Step(weight=100, min_s=10, min_calls=50)),
    rules=Rules(min_agreement=0.98, min_samples=100, max_error_rate_increase=0.001,
                max_p99_ratio=1.2))
GOOD = Figures(agreement_n=500, top1=0.995, candidate_calls=200, serving_calls=2000,
               candidate_p99_ms=10.0, serving_p99_ms=10.0)


def test_a_good_candidate_goes_through_every_step_to_the_default() -> None:
    start = decide_gate(CONFIG, None, "1", "2", Figures(), None, now=0.0)
    assert start.state is not None and start.state.step == 0
    assert start.policy is not None and start.policy.shadow is not None
    assert start.policy.weights == {} and start.policy.default == "1"
    too_soon = decide_gate(CONFIG, start.state, "1", "2", GOOD, None, now=5.0)
    assert too_soon.state == start.state and too_soon.policy is None
    canary = decide_gate(CONFIG, start.state, "1", "2", GOOD, None, now=11.0)
    assert canary.state is not None and canary.state.step == 1
    assert canary.policy is not None and canary.policy.weights == {"1": 90, "2": 10}
    last = decide_gate(CONFIG, canary.state, "1", "2", GOOD, None, now=22.0)
    assert last.state is not None and last.state.step == 2
    promoted = decide_gate(CONFIG, last.state, "1", "2", GOOD, None, now=33.0)
    assert promoted.state is not None and promoted.state.status == "promoted"
    assert promoted.policy is not None and promoted.policy.default == "2"
    assert promoted.policy.weights == {} and promoted.policy.shadow is None


def test_a_disagreeing_candidate_is_rolled_back_once_there_are_enough_samples() -> None:
    start = decide_gate(CONFIG, None, "1", "2", Figures(), None, now=0.0)
    few = Figures(agreement_n=50, top1=0.2)
    assert decide_gate(CONFIG, start.state, "1", "2", few, None, now=1.0).policy is None
    bad = Figures(agreement_n=150, top1=0.4)
    decision = decide_gate(CONFIG, start.state, "1", "2", bad, None, now=2.0)
    assert decision.state is not None and decision.state.status == "rolled_back"
    assert decision.policy is not None and decision.policy.default == "1"
    assert decision.policy.shadow is None and decision.policy.weights == {}
    assert "agreement 0.4000 < 0.98" in decision.event and "step 1" in decision.event
    # Rolled back: the gate never starts that candidate again on its own.
    again = decide_gate(CONFIG, decision.state, "1", "2", GOOD, None, now=100.0)
    assert again.policy is None and again.state == decision.state


def test_errors_and_latency_are_judged_against_the_serving_version() -> None:
    start = decide_gate(CONFIG, None, "1", "2", Figures(), None, now=0.0)
    erring = Figures(agreement_n=500, top1=1.0, candidate_calls=200, candidate_errors=10,
                     serving_calls=2000, serving_errors=2)
    decision = decide_gate(CONFIG, start.state, "1", "2", erring, None, now=1.0)
    assert decision.state is not None and decision.state.status == "rolled_back"
    assert "error rate 5.00%" in decision.event
    slow = Figures(agreement_n=500, top1=1.0, candidate_calls=200, serving_calls=2000,
                   candidate_p99_ms=30.0, serving_p99_ms=10.0)
    assert "p99" in decide_gate(CONFIG, start.state, "1", "2", slow, None, now=1.0).event


def test_the_gate_waits_while_the_budget_caps_the_candidate() -> None:
    start = decide_gate(CONFIG, None, "1", "2", Figures(), None, now=0.0)
    capped = Figures(
        agreement_n=500, top1=0.995, candidate_calls=200, serving_calls=2000, capped=True)
    decision = decide_gate(CONFIG, start.state, "1", "2", capped, None, now=50.0)
    assert decision.policy is None and decision.state is not None
    assert decision.state.step == 0 and "budget" in decision.state.reason


def test_a_newer_candidate_restarts_the_gate() -> None:
    start = decide_gate(CONFIG, None, "1", "2", Figures(), None, now=0.0)
    newer = decide_gate(CONFIG, start.state, "1", "3", Figures(), None, now=5.0)
    assert newer.state is not None and newer.state.candidate == "3" and newer.state.step == 0


QUALITY = PromotionConfig(steps=CONFIG.steps, rules=Rules(
    min_agreement=0.98, min_samples=100, max_error_rate_increase=0.001, max_p99_ratio=1.2,
    max_accuracy_drop=0.02, min_labelled=300))


def test_a_weight_step_waits_for_labels_and_a_worse_candidate_is_rolled_back() -> None:
    start = decide_gate(QUALITY, None, "1", "2", Figures(), None, now=0.0)
    # The shadow step needs no labels (mirrored answers get none).
    canary = decide_gate(QUALITY, start.state, "1", "2", GOOD, None, now=11.0)
    assert canary.state is not None and canary.state.step == 1
    waiting = decide_gate(QUALITY, canary.state, "1", "2", GOOD, None, now=30.0)
    assert waiting.policy is None and waiting.state == canary.state  # no labels yet
    good = Figures(agreement_n=500, top1=0.995, candidate_calls=200, serving_calls=2000,
                   candidate_p99_ms=10.0, serving_p99_ms=10.0, candidate_labelled=400,
                   candidate_correct=364, serving_labelled=4000, serving_correct=3680)
    passed = decide_gate(QUALITY, canary.state, "1", "2", good, None, now=31.0)
    assert passed.state is not None and passed.state.step == 2
    assert "labelled accuracy 0.9100 vs 0.9200" in passed.event
    worse = Figures(agreement_n=500, top1=0.995, candidate_calls=200, serving_calls=2000,
                    candidate_p99_ms=10.0, serving_p99_ms=10.0, candidate_labelled=400,
                    candidate_correct=340, serving_labelled=4000, serving_correct=3680)
    rolled = decide_gate(QUALITY, passed.state, "1", "2", worse, None, now=32.0)
    assert rolled.state is not None and rolled.state.status == "rolled_back"
    assert "labelled accuracy 0.8500 < the serving version's 0.9200 - 0.02" in rolled.event

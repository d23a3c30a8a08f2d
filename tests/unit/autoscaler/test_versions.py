"""The version decider, step by step: the swap that loses nothing, failed loads, unloads."""

from __future__ import annotations

from modelgate.autoscaler.versions import PoolStatus, Wanted, decide_model
from modelgate.core.store.models import ModelState, VersionStatus

LOADING, READY, UNLOADING, UNAVAILABLE = (VersionStatus.LOADING, VersionStatus.READY,
                                          VersionStatus.UNLOADING, VersionStatus.UNAVAILABLE)
SHA = {"1": "a" * 64, "2": "b" * 64, "3": "c" * 64}


def wanted(*versions: str, default: str | None = None, **broken: str) -> Wanted:
    return Wanted(tuple(versions), default or (versions[0] if versions else None),
                  {v: SHA[v] for v in versions},
                  {k.removeprefix("v"): reason for k, reason in broken.items()})


def statuses(state: ModelState | None) -> dict[str, str]:
    return {v: s.status.value for v, s in state.versions.items()} if state else {}


def serving_v1() -> ModelState:
    first = decide_model("m", wanted("1"), None, {}, 0, 1, now=0.0).state
    state = decide_model("m", wanted("1"), first, {"1": PoolStatus(live_workers=1)}, 1, 2,
                         now=1.0).state
    assert state is not None and statuses(state) == {"1": "READY"} and state.default == "1"
    return state


def test_a_new_version_loads_then_becomes_ready_and_the_default() -> None:
    decision = decide_model("m", wanted("1"), None, {}, 0, 1, now=0.0)
    assert statuses(decision.state) == {"1": "LOADING"}
    assert decision.state is not None and decision.state.default is None  # nothing READY yet
    ready = decide_model("m", wanted("1"), decision.state, {"1": PoolStatus(live_workers=1)},
                         1, 2, now=1.0)
    assert ready.state is not None and ready.state.default == "1"
    assert ready.state.generation == 2
    assert [c.change for c in ready.changes] == ["READY", "default"]


def test_a_swap_keeps_the_old_default_until_the_new_one_is_ready_then_drains_it() -> None:
    state = serving_v1()
    loading = decide_model("m", wanted("2"), state, {"1": PoolStatus(live_workers=1)}, 2, 3,
                           now=2.0).state
    assert statuses(loading) == {"1": "READY", "2": "LOADING"}
    assert loading is not None and loading.default == "1"  # v2 is not ready: v1 answers

    pools = {"1": PoolStatus(live_workers=1, entries=3, pending=1),
             "2": PoolStatus(live_workers=1)}
    swapped = decide_model("m", wanted("2"), loading, pools, 3, 4, now=3.0).state
    assert statuses(swapped) == {"1": "UNLOADING", "2": "READY"}
    assert swapped is not None and swapped.default == "2"
    # The default moved and v1 stopped taking calls in the same generation.
    assert swapped.versions["1"].generation == swapped.versions["2"].generation == 4

    # Not removed while a gateway may still send to it, nor while it holds calls.
    still = decide_model("m", wanted("2"), swapped, pools, applied_generation=3, generation=5,
                         now=4.0)
    assert "1" in statuses(still.state) and not still.removed
    drained = {"1": PoolStatus(live_workers=1), "2": PoolStatus(live_workers=1)}
    waiting_for_gateways = decide_model("m", wanted("2"), swapped, drained, 3, 5, now=4.0)
    assert not waiting_for_gateways.removed
    done = decide_model("m", wanted("2"), swapped, drained, 4, 5, now=5.0)
    assert done.removed == ["1"] and statuses(done.state) == {"2": "READY"}


def test_a_version_whose_workers_cannot_load_it_is_unavailable_and_nothing_else_moves() -> None:
    state = serving_v1()
    loading = decide_model("m", wanted("2"), state, {"1": PoolStatus(live_workers=1)}, 2, 3,
                           now=2.0).state
    failed = decide_model("m", wanted("2"), loading,
                          {"1": PoolStatus(live_workers=1),
                           "2": PoolStatus(load_error="ONNX Runtime: invalid graph")}, 3, 4,
                          now=3.0).state
    assert failed is not None
    assert statuses(failed) == {"1": "READY", "2": "UNAVAILABLE"}
    assert failed.default == "1" and "invalid graph" in failed.versions["2"].reason


def test_a_version_no_worker_serves_in_time_is_unavailable() -> None:
    loading = decide_model("m", wanted("1"), None, {}, 0, 1, now=0.0).state
    late = decide_model("m", wanted("1"), loading, {}, 1, 2, now=200.0, load_timeout_s=120)
    assert statuses(late.state) == {"1": "UNAVAILABLE"}
    assert "within 120 s" in late.state.versions["1"].reason if late.state else False


def test_a_truncated_newer_version_shows_its_reason_and_the_serving_one_stays() -> None:
    state = serving_v1()
    decision = decide_model("m", wanted("1", v3="not a readable ONNX model"), state,
                            {"1": PoolStatus(live_workers=1)}, 2, 3, now=2.0)
    assert statuses(decision.state) == {"1": "READY", "3": "UNAVAILABLE"}
    assert decision.state is not None and decision.state.default == "1"


def test_unloading_a_model_drains_every_version_then_forgets_it() -> None:
    state = serving_v1()
    leaving = decide_model("m", None, state, {"1": PoolStatus(live_workers=1, entries=2)}, 2, 3,
                           now=2.0).state
    assert statuses(leaving) == {"1": "UNLOADING"}
    assert leaving is not None and leaving.default is None
    gone = decide_model("m", None, leaving, {"1": PoolStatus(live_workers=1)}, 3, 4, now=3.0)
    assert gone.state is None and gone.removed == ["1"]


def test_a_bad_config_keeps_what_serves_and_says_why() -> None:
    state = serving_v1()
    decision = decide_model("m", Wanted((), None, {}, error="config.yaml: unknown setting"),
                            state, {"1": PoolStatus(live_workers=1)}, 2, 3, now=2.0)
    assert decision.state is not None and statuses(decision.state) == {"1": "READY"}
    assert decision.state.reason == "config.yaml: unknown setting"


def test_a_file_changed_in_place_is_reloaded_under_the_same_version() -> None:
    state = serving_v1()
    changed = Wanted(("1",), "1", {"1": "f" * 64})
    decision = decide_model("m", changed, state, {"1": PoolStatus(live_workers=1)}, 2, 3,
                            now=2.0)
    assert decision.state is not None
    assert decision.state.versions["1"].sha256 == "f" * 64
    assert [c.change for c in decision.changes] == ["reloaded"]


def test_a_version_wanted_again_while_unloading_comes_back() -> None:
    state = serving_v1()
    swapped = decide_model("m", wanted("2"), state,
                           {"1": PoolStatus(live_workers=1), "2": PoolStatus(live_workers=1)},
                           2, 3, now=2.0).state
    swapped = decide_model("m", wanted("2"), swapped,
                           {"1": PoolStatus(live_workers=1, entries=1),
                            "2": PoolStatus(live_workers=1)}, 3, 4, now=3.0).state
    assert statuses(swapped) == {"1": "UNLOADING", "2": "READY"}
    back = decide_model("m", wanted("2", "1", default="2"), swapped,
                        {"1": PoolStatus(live_workers=1, entries=1),
                         "2": PoolStatus(live_workers=1)}, 4, 5, now=4.0).state
    assert statuses(back)["1"] in ("LOADING", "READY")


def test_nothing_changed_keeps_the_generation() -> None:
    state = serving_v1()
    decision = decide_model("m", wanted("1"), state, {"1": PoolStatus(live_workers=1)}, 2, 9,
                            now=5.0)
    assert not decision.changed and decision.state == state

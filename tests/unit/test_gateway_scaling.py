"""``up --gateway-procs auto``: the count of gateway processes, stepped tick by tick."""

from __future__ import annotations

from modelgate.cli.gateways import GatewayScaling, GatewayState, decide

CONFIG = GatewayScaling(max_procs=2, up_after_s=5.0, down_after_s=60.0)


def run(ticks: list[tuple[float, float]], procs: int = 1) -> list[int]:
    """Counts after each (now, cpus) tick."""
    state, counts = GatewayState(), []
    for now, cpus in ticks:
        decision = decide(procs, cpus, state, now, CONFIG)
        procs, state = decision.procs, decision.state
        counts.append(procs)
    return counts


def test_a_gateway_busy_for_a_while_gets_a_second_one_and_no_more_than_the_cpus() -> None:
    busy = [(float(t), 0.95) for t in range(7)]
    assert run(busy) == [1, 1, 1, 1, 1, 2, 2]
    assert run([(float(t), 1.9) for t in range(20)], procs=2) == [2] * 20  # at max_procs


def test_a_short_burst_adds_none() -> None:
    assert run([(0.0, 0.95), (1.0, 0.95), (2.0, 0.3), (3.0, 0.95), (4.0, 0.95)]) == [1] * 5


def test_work_that_fits_one_fewer_removes_one_after_the_delay() -> None:
    idle = [(float(t), 0.3) for t in range(0, 62, 2)]
    counts = run(idle, procs=2)
    assert counts[-1] == 1 and counts.count(2) == 30
    # Two processes each half busy (1.0 core in all) would not fit in one: both stay.
    assert run([(float(t), 1.0) for t in range(0, 122, 2)], procs=2)[-1] == 2

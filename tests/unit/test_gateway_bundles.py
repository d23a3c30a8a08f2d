"""How a gateway cuts its outbox into bundles (one stream entry each): gateway.dispatch.bundles.

A bundle is only sound when the worker can run it as one request: same pool, inputs that
concatenate along dim 0 and the same output selection, and no more rows than the model batches.
"""

from __future__ import annotations

import numpy as np

from modelgate.core import wire
from modelgate.gateway.dispatch import _Outgoing, bundles

DEADLINE_MS = 2**62


def item(correlation: str, rows: int = 1, *, pool: str = "mlp", width: int = 4,
         dtype: type = np.float32, name: str = "input", outputs: tuple[str, ...] | None = None,
         max_rows: int = 8) -> _Outgoing:
    array: np.ndarray = np.zeros((rows, width), dtype)
    return _Outgoing(pool, wire.Request({name: wire.tensor(array)}, outputs), correlation,
                     DEADLINE_MS, max_rows)


def cut(outbox: list[_Outgoing]) -> list[list[str]]:
    return [[i.correlation for i in bundle] for bundle in bundles(outbox)]


def test_compatible_requests_share_one_bundle_in_arrival_order() -> None:
    outbox = [item(str(i)) for i in (5, 1, 3, 2)]
    assert cut(outbox) == [["5", "1", "3", "2"]]
    assert cut([]) == []


def test_requests_for_other_pools_go_apart() -> None:
    outbox = [item("1", pool="a"), item("2", pool="b"), item("3", pool="a"), item("4", pool="b")]
    assert sorted(cut(outbox)) == [["1", "3"], ["2", "4"]]


def test_requests_whose_inputs_do_not_concatenate_go_apart() -> None:
    outbox = [
        item("1", width=4),
        item("2", width=5),  # other shape past dim 0
        item("3", rows=3, width=4),  # other rows only: same bundle
        item("4", dtype=np.float64),  # other datatype
        item("5", name="other"),  # other input name
        item("6", width=5),
    ]
    assert sorted(cut(outbox)) == [["1", "3"], ["2", "6"], ["4"], ["5"]]


def test_requests_selecting_other_outputs_go_apart() -> None:
    outbox = [item("1"), item("2", outputs=("probabilities",)), item("3"),
              item("4", outputs=("probabilities",)), item("5", outputs=("label",))]
    assert sorted(cut(outbox)) == [["1", "3"], ["2", "4"], ["5"]]


def test_rows_are_capped_at_max_rows() -> None:
    outbox = [item(str(i), rows=3, max_rows=8) for i in range(5)]  # 15 rows, 3 per request
    cuts = bundles(outbox)
    assert [[i.correlation for i in b] for b in cuts] == [["0", "1"], ["2", "3"], ["4"]]
    assert all(sum(i.request.rows for i in b) <= 8 for b in cuts)

    singles = [item(str(i), max_rows=4) for i in range(10)]
    assert [len(b) for b in bundles(singles)] == [4, 4, 2]


def test_a_request_larger_than_max_rows_goes_alone() -> None:
    outbox = [item("1"), item("2"), item("big", rows=9), item("3"), item("4")]
    assert cut(outbox) == [["1", "2"], ["big"], ["3", "4"]]


def test_max_rows_0_sends_every_request_alone() -> None:
    outbox = [item(str(i), max_rows=0) for i in range(3)]
    assert cut(outbox) == [["0"], ["1"], ["2"]]

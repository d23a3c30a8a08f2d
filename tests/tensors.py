"""Comparing wire requests in tests: the same outputs, parameters and input tensors."""

from __future__ import annotations

import numpy as np

from modelgate.core import wire


def assert_same_request(found: wire.Request, expected: wire.Request) -> None:
    """``found`` carries what ``expected`` does: outputs, parameters, and every input's
    datatype, shape and values (BYTES compared item by item)."""
    assert found.outputs == expected.outputs
    assert found.parameters == expected.parameters
    assert found.inputs.keys() == expected.inputs.keys()
    for name, tensor in expected.inputs.items():
        got = found.inputs[name]
        assert (got.datatype, got.shape) == (tensor.datatype, tensor.shape)
        if tensor.datatype == wire.BYTES:
            assert list(got.data.reshape(-1)) == list(tensor.data.reshape(-1))
        else:
            np.testing.assert_array_equal(got.data, tensor.data)

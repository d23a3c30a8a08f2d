"""Cutting a request body into its JSON header and binary section: gateway.binary.split_body.

``Inference-Header-Content-Length`` is the byte length of the JSON part; every value that is
not a length within the body is the caller's mistake (InvalidInput, a 400), never a crash.
"""

from __future__ import annotations

import pytest

from modelgate.core.errors import InvalidInput
from modelgate.gateway.binary import decode_tensor, split_body

JSON = b'{"inputs": []}'
DATA = b"\x00\x00\x80?\x00\x00\x00@"  # two little-endian FP32 values: 1.0, 2.0
BODY = JSON + DATA


def test_without_the_header_the_whole_body_is_json() -> None:
    header, binary = split_body(BODY, None)
    assert header == BODY
    assert binary is None


def test_the_header_length_cuts_json_from_binary_data() -> None:
    header, binary = split_body(BODY, str(len(JSON)))
    assert header == JSON
    assert binary is not None
    assert bytes(binary.take("input", len(DATA))) == DATA
    binary.check_consumed()  # nothing left over


def test_a_header_as_long_as_the_body_leaves_an_empty_binary_section() -> None:
    header, binary = split_body(BODY, str(len(BODY)))
    assert header == BODY
    assert binary is not None and len(binary.data) == 0
    binary.check_consumed()
    with pytest.raises(InvalidInput, match="runs past the binary data"):
        binary.take("input", 1)


def test_a_header_of_zero_makes_the_whole_body_binary() -> None:
    header, binary = split_body(BODY, "0")
    assert header == b""
    assert binary is not None and bytes(binary.data) == BODY


def test_a_header_one_byte_longer_than_the_body_is_refused() -> None:
    with pytest.raises(InvalidInput) as refused:
        split_body(BODY, str(len(BODY) + 1))
    message = str(refused.value)
    assert f"'{len(BODY) + 1}'" in message and f"{len(BODY)} bytes" in message


@pytest.mark.parametrize("value", [
    "", " ", "abc", "12a", "1.5", "0x10", "1e3", "+12", "-1", "-0",
    "\u00b2", "1\u00b9",  # superscript digits: str.isdigit() says yes, int() says no
])
def test_a_header_that_is_not_a_whole_number_of_bytes_is_refused(value: str) -> None:
    with pytest.raises(InvalidInput, match="Inference-Header-Content-Length"):
        split_body(BODY, value)


def test_a_shape_whose_element_count_overflows_int64_is_a_400_not_a_crash() -> None:
    # 2**32 x 2**32 elements: numpy's product wraps to 0, which matched an empty data section.
    with pytest.raises(InvalidInput, match="needs 73786976294838206464 bytes"):
        decode_tensor("x", "FP32", (2**32, 2**32), memoryview(b""))

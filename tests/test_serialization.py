"""Records back into events: what every consumer reads, and what it dead-letters."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.serialization import PoisonEvent, from_record

HEADERS = [("ce_specversion", b"1.0"), ("ce_id", b"e1"), ("ce_source", b"test"), ("ce_type", b"t")]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_a_record_reads_as_the_standard_library_reads_it(data: object) -> None:
    value = json.dumps({"data": data}, ensure_ascii=False).encode()
    assert from_record(value, HEADERS).data == json.loads(value)


def test_json_the_fast_parser_refuses_still_reads() -> None:
    assert math.isnan(from_record(b'{"grade": NaN}', HEADERS).data["grade"])
    assert from_record('{"grade": 1}'.encode("utf-16"), HEADERS).data == {"grade": 1}
    assert from_record(b'{"note": "\\ud800"}', HEADERS).data == {"note": "\ud800"}


@pytest.mark.parametrize("value", [b"\x00\xffnot json at all", b"", b'{"a": 1'])
def test_a_value_that_is_not_json_is_poison_with_the_reason(value: bytes) -> None:
    with pytest.raises(PoisonEvent, match="value is not JSON"):
        from_record(value, HEADERS)

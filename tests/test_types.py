from __future__ import annotations

import re

import numpy as np
import pytest

from inferforge.errors import SpecError
from inferforge.types import BATCH, Dim, ModelSpec, TensorMeta, TensorSpec, check_inputs


def test_parse_token_ids_spec_with_batch_and_range() -> None:
    spec = TensorSpec.parse("input_ids:int64[B,128]:0..30521")
    assert spec.name == "input_ids" and spec.dtype == "int64"
    assert spec.shape == (Dim(BATCH), 128)
    assert spec.value_range == (0.0, 30521.0)
    assert spec.batch_axis == 0
    assert str(spec) == "input_ids:int64[B,128]:0..30521"


def test_parse_dynamic_sequence_dim_and_alias_dtype() -> None:
    spec = TensorSpec.parse("tokens:long[B,S=64]")
    assert spec.dtype == "int64"
    assert spec.shape == (Dim(BATCH), Dim("S", 64))
    assert spec.concrete_shape(3) == (3, 64)


@pytest.mark.parametrize("text, fragment", [
    ("x[B,3]", "expected name:dtype[dims]"),
    ("x:floaty[B,3]", "unknown dtype"),
    ("x:float32[B,S]", "needs the size"),
    ("x:int64[B]:5..1", "empty"),
    ("x:float32[B,-3]", "is negative"),
])
def test_bad_specs_say_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(SpecError, match=re.escape(fragment)):
        TensorSpec.parse(text)


def test_spec_json_roundtrip() -> None:
    spec = ModelSpec((TensorSpec.parse("a:float32[B,3,S=5]"), TensorSpec.parse("m:int64[B,5]:0..1")),
                     (TensorSpec.parse("out:float32[B,2]"),))
    assert ModelSpec.from_json(spec.to_json()) == spec


def test_check_inputs_lists_every_problem_at_once() -> None:
    spec = (TensorSpec.parse("a:float32[B,3]"), TensorSpec.parse("b:int64[B,4]"))
    with pytest.raises(SpecError) as info:
        check_inputs(spec, {"a": np.zeros((2, 5), np.float32), "c": np.zeros(1)})
    message = str(info.value)
    assert "missing input(s) b" in message
    assert "unknown input(s) c" in message
    assert "dimension 1 is 5, expected 3" in message


def test_check_inputs_refuses_mismatched_batch_sizes() -> None:
    spec = (TensorSpec.parse("a:float32[B,3]"), TensorSpec.parse("b:float32[B,3]"))
    with pytest.raises(SpecError, match="batch size"):
        check_inputs(spec, {"a": np.zeros((2, 3), np.float32), "b": np.zeros((3, 3), np.float32)})


TOKENS = TensorSpec.parse("ids:int64[B,S=4]:0..9")


def test_check_inputs_returns_the_batch_size_and_caps_it() -> None:
    ids = np.zeros((3, 4), np.int64)
    assert check_inputs((TOKENS,), {"ids": ids}) == 3
    assert check_inputs((TensorSpec.parse("x:float32[3]"),), {"x": np.zeros(3, np.float32)}) == 1  # no batch axis
    with pytest.raises(SpecError, match="above this model's max_batch_size 2"):
        check_inputs((TOKENS,), {"ids": ids}, max_batch_size=2)


def test_value_ranges_and_empty_dims_are_a_served_request_s_rules_only() -> None:
    """A runner takes what the model takes (a range inferred from example data is no contract); a server
    refuses what it promised its clients it would not run."""
    outside, empty = {"ids": np.full((2, 4), 12, np.int64)}, {"ids": np.zeros((2, 0), np.int64)}
    assert check_inputs((TOKENS,), outside) == 2 and check_inputs((TOKENS,), empty) == 2
    with pytest.raises(SpecError, match=re.escape("values must lie in 0..9, got 12..12")):
        check_inputs((TOKENS,), outside, client_request=True)
    with pytest.raises(SpecError, match="dimension 1 is empty"):
        check_inputs((TOKENS,), empty, client_request=True)
    meta = TensorMeta.from_spec(TOKENS)  # the same rules in the server's vocabulary
    with pytest.raises(SpecError, match=re.escape("values must lie in 0..9")):
        check_inputs((meta,), outside, client_request=True)


def test_bf16_travels_as_float32_in_both_vocabularies() -> None:
    spec = TensorSpec.parse("h:bf16[B,2]")
    x = np.zeros((1, 2), np.float32)
    assert check_inputs((spec,), {"h": x}) == 1
    assert check_inputs((TensorMeta.from_spec(spec),), {"h": x}, client_request=True) == 1
    with pytest.raises(SpecError, match="datatype FP64, expected FP32"):
        check_inputs((TensorMeta.from_spec(spec),), {"h": x.astype(np.float64)}, client_request=True)


def test_the_server_s_vocabulary_names_datatypes_and_takes_bytes() -> None:
    text = TensorMeta("text", "BYTES", (-1,))
    assert check_inputs((text,), {"text": np.array([b"a", b"b"], dtype=object)}, client_request=True) == 2
    with pytest.raises(SpecError) as info:
        check_inputs((text, TensorMeta.from_spec(TOKENS)),
                     {"text": np.zeros(2, np.float32), "ids": np.zeros((3, 5), np.int32)}, client_request=True)
    message = str(info.value)
    assert "input 'text': datatype FP32, expected BYTES" in message
    assert "input 'ids': datatype INT32, expected INT64" in message
    assert "dimension 1 is 5, expected 4" not in message  # S is dynamic: any length
    assert "disagree on the batch size: [2, 3]" in message

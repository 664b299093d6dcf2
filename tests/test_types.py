from __future__ import annotations

import re

import numpy as np
import pytest

from inferforge.errors import SpecError
from inferforge.types import BATCH, Dim, ModelSpec, TensorSpec, check_inputs


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

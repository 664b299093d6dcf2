from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from models import export_mlp_onnx, make_mlp

from inferforge.errors import SourceError, SpecError
from inferforge.source import SourceKind, load_source
from inferforge.types import BATCH, Dim


def test_factory_file_reference_infers_spec_from_examples(models_file: str) -> None:
    source = load_source(f"{models_file}:make_two_inputs")
    assert source.kind is SourceKind.TORCH
    assert source.spec.input_names == ["input_ids", "attention_mask"]
    ids = source.spec.inputs[0]
    assert ids.dtype == "int64" and ids.shape == (Dim(BATCH), Dim("S", 7))  # eager takes other lengths
    assert ids.value_range is not None and 0 <= ids.value_range[0] <= ids.value_range[1] < 50
    # dict and nested tuple outputs are flattened and named by their path
    assert source.spec.output_names == ["pooled", "extra.0", "extra.1"]
    assert source.spec.outputs[0].shape == (Dim(BATCH), 8)


def test_module_path_reference_and_input_override() -> None:
    source = load_source("models:make_two_inputs", inputs=["input_ids:int64[B,7]:0..49"])
    assert source.spec.inputs[0].value_range == (0.0, 49.0)


def test_torchscript_file_needs_and_uses_input_spec(tmp_path: Path) -> None:
    model, (x,) = make_mlp()
    path = tmp_path / "mlp.pt"
    torch.jit.save(torch.jit.trace(model, x), str(path))
    source = load_source(path, inputs=["x:float32[B,16]"])
    assert source.kind is SourceKind.TORCHSCRIPT
    assert source.spec.outputs[0].shape == (Dim(BATCH), 5)
    with pytest.raises(SpecError, match="--input"):
        load_source(path)


def test_exported_program_file(tmp_path: Path) -> None:
    model, (x,) = make_mlp()
    path = tmp_path / "mlp.pt2"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: batch},)), str(path))
    source = load_source(path)
    assert source.kind is SourceKind.EXPORTED
    assert source.spec.inputs[0].shape == (Dim(BATCH), 16)
    out = source.module(torch.randn(3, 16))[0]
    assert out.shape == (3, 5)


def test_onnx_file_reads_its_spec(tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    export_mlp_onnx(str(path))
    source = load_source(path)
    assert source.kind is SourceKind.ONNX and source.module is None
    assert str(source.spec.inputs[0]) == "x:float32[B,16]"
    assert source.spec.output_names == ["y"]


@pytest.mark.parametrize("ref, fragment", [
    ("does/not/exist.onnx", "does not exist"),
    ("missing_file.py:make", "does not exist"),
    ("models:no_such_factory", "no callable named 'no_such_factory'"),
    ("no_such_module_xyz:make", "importing no_such_module_xyz failed"),
    ("models:make_raises", "raised RuntimeError: weights file corrupted"),
    ("models:make_not_a_model", "expected an nn.Module"),
    ("justaword", "expected 'path/to/file.py:function'"),
])
def test_bad_sources_give_one_clear_message(ref: str, fragment: str) -> None:
    with pytest.raises(SourceError, match=re.escape(fragment)):
        load_source(ref)


def test_spec_that_does_not_fit_the_model_is_named() -> None:
    with pytest.raises(SpecError, match="rejected inputs built from the spec x:float32"):
        load_source("models:make_mlp", inputs=["x:float32[B,99]"])


def test_unknown_override_name_is_refused() -> None:
    with pytest.raises(SpecError, match="match no example input"):
        load_source("models:make_mlp", inputs=["pixels:float32[B,16]"])


def test_example_inputs_become_arrays() -> None:
    source = load_source("models:make_cnn")
    assert isinstance(source.example_inputs["image"], np.ndarray)
    assert source.spec.input_names == ["image"]


def test_a_length_eager_accepts_is_kept_dynamic_and_said(models_file: str) -> None:
    source = load_source(f"{models_file}:make_two_inputs")
    assert any("kept dynamic as S" in note for note in source.notes)
    assert source.spec.outputs[1].shape == (Dim(BATCH), Dim("S", 7))  # extra.0 follows the length


def test_image_sides_stay_fixed_and_the_note_gives_the_input_that_keeps_them_dynamic() -> None:
    source = load_source("models:make_cnn")
    assert source.spec.inputs[0].shape == (Dim(BATCH), 3, 16, 16)
    assert any("--input image:float32[B,3,S=16,S=16]" in note for note in source.notes)


def test_the_exporters_suggested_range_is_read() -> None:
    from inferforge.source import suggested_dim_ranges
    from inferforge.types import ModelSpec, TensorSpec

    spec = ModelSpec((TensorSpec.parse("ids:int64[B,S=128]"),))
    message = "Constraints violated (S)! ...\nSuggested fixes:\n  S = Dim('S', max=512)\n"
    assert suggested_dim_ranges(message, spec) == {"S": (1, 512)}
    assert suggested_dim_ranges("Suggested fixes:\n  S = 37\n", spec) == {}

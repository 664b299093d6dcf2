"""ONNX Runtime INT8: dynamic and static QDQ builds, keep_fp32, sensitivity, and the accuracy-aware fallback.

Numerics are checked against the PyTorch model on held-out generated inputs (random weights, so this checks
the quantization machinery, not task accuracy): mean cosine >= 0.999 and max abs error <= 5% of the
output's largest magnitude. Measured: dynamic WideMLP cosine 0.9999, max abs 1.3% of scale; static
SmallCNN cosine 0.99999, 1.5%.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import fast_options

import inferforge
from inferforge.backends.base import Artifact, BuildConfig
from inferforge.backends.onnx_common import MODEL, OnnxRuntimeOptions
from inferforge.backends.onnxruntime import OnnxRuntimeBackend
from inferforge.backends.onnxruntime_int8 import quantized_nodes
from inferforge.candidate import Status
from inferforge.data import Dataset, generated_dataset
from inferforge.errors import BuildError, SpecError
from inferforge.source import ModelSource, load_source
from inferforge.types import Precision

MIN_COSINE = 0.999
MAX_ABS_OF_SCALE = 0.05
DYNAMIC = BuildConfig("onnxruntime", Precision.INT8, "cpu", OnnxRuntimeOptions(mode="dynamic"))
STATIC = BuildConfig("onnxruntime", Precision.INT8, "cpu", OnnxRuntimeOptions(mode="static"))
FP32 = BuildConfig("onnxruntime", Precision.FP32, "cpu", OnnxRuntimeOptions())


class Built:
    """One model's source, data and builds, shared by the tests of a module (builds take seconds)."""

    def __init__(self, factory: str, root: Path) -> None:
        self.source: ModelSource = load_source(f"models:{factory}")
        self.calibration = generated_dataset(self.source.spec, 32, seed=3)
        self.validation = generated_dataset(self.source.spec, 64, seed=4)
        self.backend = OnnxRuntimeBackend()
        self.root = root
        self._artifacts: dict[str, Artifact] = {}

    def build(self, config: BuildConfig, calibration: Dataset | None = None) -> Artifact:
        key = config.key()
        if key not in self._artifacts:
            (self.root / key).mkdir()
            self._artifacts[key] = self.backend.build(self.source, config, self.root / key,
                                                      calibration=calibration or self.calibration)
        return self._artifacts[key]

    def agreement(self, config: BuildConfig) -> tuple[float, float]:
        """(mean cosine, max abs error / output scale) of the build against the PyTorch model."""
        runner = self.backend.load(self.build(config), self.source.spec, threads=2)
        got = runner(dict(self.validation.inputs))[self.source.spec.output_names[0]]
        with torch.inference_mode():
            want = self.source.module(*[torch.from_numpy(v) for v in self.validation.inputs.values()])[0].numpy()
        cosine = np.sum(got * want, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        return float(cosine.mean()), float(np.abs(got - want).max() / np.abs(want).max())

    def graph(self, config: BuildConfig) -> onnx.GraphProto:
        return onnx.load(str(self.build(config).directory / MODEL)).graph


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built("make_wide_mlp", tmp_path_factory.mktemp("mlp"))


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built("make_small_cnn", tmp_path_factory.mktemp("cnn"))


@pytest.fixture(scope="module")
def fragile(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built("make_one_fragile_layer", tmp_path_factory.mktemp("fragile"))


def _reading(graph: onnx.GraphProto, weight: str) -> str:
    """The name (as keep_fp32 takes it) of the node that multiplies by a weight named like ``weight``."""
    return next(n.name.removesuffix("_quant") for n in graph.node
                if n.op_type in ("Gemm", "MatMul", "MatMulInteger") and any(weight in i for i in n.input))


def test_the_backend_proposes_fp32_and_both_int8_modes() -> None:
    keys = [c.key() for c in OnnxRuntimeBackend().configs("cpu")]
    assert keys == ["onnxruntime-fp32", "onnxruntime-int8-mode-dynamic", "onnxruntime-int8-mode-static"]


def test_dynamic_int8_matches_fp32_in_a_quarter_of_the_bytes(mlp: Built) -> None:
    cosine, max_abs = mlp.agreement(DYNAMIC)
    assert cosine >= MIN_COSINE and max_abs <= MAX_ABS_OF_SCALE
    artifact = mlp.build(DYNAMIC)
    assert artifact.size_bytes < 0.35 * mlp.build(FP32).size_bytes  # measured 96 kB against 349 kB
    assert artifact.details["quantization"] == "dynamic" and artifact.details["quantized_nodes"] == 3
    assert sum(n.op_type == "MatMulInteger" for n in mlp.graph(DYNAMIC).node) == 3


def test_static_int8_matches_fp32_and_records_its_calibration(cnn: Built) -> None:
    cosine, max_abs = cnn.agreement(STATIC)
    assert cosine >= MIN_COSINE and max_abs <= MAX_ABS_OF_SCALE
    artifact = cnn.build(STATIC)
    assert artifact.size_bytes < 0.5 * cnn.build(FP32).size_bytes  # measured 40 kB against 112 kB
    details = artifact.details
    assert details["quantization"] == "static" and details["calibrate"] == "minmax"
    assert details["calibration_samples"] == 32 and details["calibration"].startswith("generated")
    assert details["keep_fp32"] == [] and details["quantized_nodes"] >= 4  # three Conv and the Gemm at least
    assert "shape inference" in details["quant_pre_process"]


def test_static_int8_without_calibration_data_says_what_to_pass(cnn: Built, tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="static INT8 needs calibration samples.*calibration="):
        cnn.backend.build(cnn.source, STATIC, tmp_path, calibration=None)


def test_options_that_contradict_the_precision_are_refused() -> None:
    """Refused where the config is written, before any build."""
    with pytest.raises(SpecError, match="mode 'static' does not fit precision fp32"):
        replace(STATIC, precision=Precision.FP32)


def test_keep_fp32_leaves_those_nodes_unquantized(cnn: Built, mlp: Built) -> None:
    first_conv = next(n.name for n in cnn.graph(STATIC).node if n.op_type == "Conv")
    kept = replace(STATIC, options=replace(STATIC.options, keep_fp32=(first_conv,)))
    graph = cnn.graph(kept)
    producers = {out: n.op_type for n in graph.node for out in n.output}
    node = next(n for n in graph.node if n.name == first_conv)
    assert node.input[0] == "image"  # FP32 activations, not a DequantizeLinear output
    assert all(producers.get(i) != "DequantizeLinear" for i in node.input)  # FP32 weights too
    assert first_conv not in quantized_nodes(onnx.load(str(cnn.build(FP32).directory / MODEL)), onnx.load(
        str(cnn.build(kept).directory / MODEL)))
    assert cnn.build(kept).details["keep_fp32"] == [first_conv]
    assert cnn.build(kept).details["quantized_nodes"] == cnn.build(STATIC).details["quantized_nodes"] - 1

    matmul = next(n.name for n in mlp.graph(DYNAMIC).node if n.op_type == "MatMulInteger").removesuffix("_quant")
    graph = mlp.graph(replace(DYNAMIC, options=replace(DYNAMIC.options, keep_fp32=(matmul,))))
    assert [n.op_type for n in graph.node if n.name == matmul] == ["MatMul"]
    assert sum(n.op_type == "MatMulInteger" for n in graph.node) == 2


def test_keep_fp32_refuses_names_the_model_does_not_have(cnn: Built, tmp_path: Path) -> None:
    config = replace(STATIC, options=replace(STATIC.options, keep_fp32=("conv_that_is_not_there",)))
    with pytest.raises(BuildError, match="keep_fp32 names nodes the model does not have: conv_that_is_not_there"):
        cnn.backend.build(cnn.source, config, tmp_path, calibration=cnn.calibration)


@pytest.mark.parametrize("config", [STATIC, DYNAMIC], ids=lambda c: c.key())
def test_sensitivity_ranks_the_fragile_layer_first(fragile: Built, config: BuildConfig) -> None:
    ranked = fragile.backend.sensitive_layers(fragile.source, config, fragile.build(config), fragile.calibration)
    assert len(ranked) == 3 and ranked[0] == _reading(fragile.graph(config), "fragile")
    cosine, _ = fragile.agreement(config)
    assert cosine < 0.9  # the whole point of the model: INT8 breaks it (measured 0.46)
    kept = replace(config, options=replace(config.options, keep_fp32=tuple(ranked[:1])))
    assert fragile.agreement(kept)[0] >= 0.998  # measured 0.9990 static, 0.99995 dynamic


def test_a_rejected_int8_candidate_passes_with_its_fragile_layer_kept_in_fp32(fragile: Built,
                                                                               tmp_path: Path) -> None:
    result = inferforge.optimize("models:make_one_fragile_layer", data=fragile.validation,
                                 calibration=fragile.calibration, workdir=tmp_path,
                                 options=fast_options(backends=("onnxruntime",)))
    by_key = {c.key: c for c in result.search.candidates}
    assert by_key["onnxruntime-fp32"].status is Status.PASSED
    assert by_key["onnxruntime-int8-mode-static"].status is Status.REJECTED
    mixed = by_key["onnxruntime-int8-keep-fp32-1-mode-static"]
    assert mixed.status is Status.PASSED, mixed.reason
    assert mixed.artifact is not None and mixed.accuracy is not None and mixed.accuracy.cosine >= 0.99
    assert _reading(fragile.graph(STATIC), "fragile") in mixed.artifact.details["keep_fp32"]
    assert by_key["onnxruntime-int8-keep-fp32-1-mode-dynamic"].status is Status.PASSED

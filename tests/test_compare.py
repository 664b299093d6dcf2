"""``inferforge compare``: outputs compared on the same inputs, and the first divergent layer found."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FP32_EXACT, fast_options
from torch import nn

import inferforge
from inferforge.cli.measure import run_compare
from inferforge.compare import compare_models, output_diff
from inferforge.errors import InferforgeError


class ThreeLayers(nn.Module):
    """Three named Linear layers: a perturbed ``fc2`` must be found at fc2, not at fc1 or fc3."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _model(perturb: str | None = None) -> ThreeLayers:
    torch.manual_seed(0)
    model = ThreeLayers().eval()
    if perturb is not None:
        with torch.no_grad():
            layer = getattr(model, perturb)
            layer.weight += 0.5 * torch.randn_like(layer.weight)
    return model


def _package(model: nn.Module, out: Path) -> Path:
    result = inferforge.optimize(model, inputs=["x:float32[B,8]"], out=out,
                                 options=fast_options(backends=("onnxruntime",), precisions=("fp32",),
                                                      budget=FP32_EXACT))
    assert result.package is not None
    return result.package


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("compare")
    return _package(_model(), root / "base.inferforge"), _package(_model("fc2"), root / "perturbed.inferforge")


def _args(a: object, b: object, **kwargs: object) -> argparse.Namespace:
    values: dict[str, object] = {"data": None, "samples": 32, "rtol": 1e-3, "input": [], "json": False}
    values.update(kwargs)
    return argparse.Namespace(a=str(a), b=str(b), **values)


def test_planted_divergence_is_found_at_the_perturbed_layer(packages: tuple[Path, Path]) -> None:
    base, perturbed = packages
    result = compare_models(str(base), str(perturbed), samples=32)
    assert not result.within_tolerance
    (output,) = result.outputs
    assert output.name == "output" and not output.within_tolerance and output.rel_l2 > 1e-2
    first = result.first_divergent_layer
    assert first is not None
    assert (first.op_type, first.scope) == ("Gemm", "fc2"), first
    # fc1 and the ReLU after it come first in the graph and stay identical
    before = result.layers.layers[: result.layers.layers.index(first)]
    assert [layer.scope for layer in before if layer.op_type == "Gemm"] == ["fc1"]
    assert all(layer.within_tolerance and layer.max_abs == 0.0 for layer in before)
    assert result.layers.matched == len(result.layers.layers) >= 5
    assert result.layers.only_in_a == result.layers.only_in_b == 0


def test_command_returns_1_for_different_and_prints_json(packages: tuple[Path, Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    base, perturbed = packages
    assert run_compare(_args(base, perturbed, json=True)) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["within_tolerance"] is False
    assert report["first_divergent_layer"]["scope"] == "fc2"
    assert report["samples"] == 32 and report["outputs"][0]["within_tolerance"] is False
    assert run_compare(_args(base, perturbed)) == 1  # the table says which figure failed, and by how much
    text = capsys.readouterr().out
    assert "relative L2 error" in text and "x the tolerance (--rtol 0.001)" in text and "Raise --rtol" in text


def test_identical_packages_agree(packages: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base, _ = packages
    assert run_compare(_args(base, base)) == 0
    text = capsys.readouterr().out
    assert "every matched layer is within" in text
    result = compare_models(str(base), str(base), samples=8)
    assert result.within_tolerance and result.first_divergent_layer is None
    assert result.outputs[0].max_abs == 0.0 and result.outputs[0].cosine == pytest.approx(1.0)


@pytest.fixture(scope="module")
def mlp_onnx_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TinyMLP packaged with onnxruntime only, so the loaded artifact is sure to be an ONNX graph."""
    out = tmp_path_factory.mktemp("compare-mlp") / "mlp.inferforge"
    package = inferforge.optimize("models:make_mlp", out=out,
                                  options=fast_options(backends=("onnxruntime",), precisions=("fp32",),
                                                       budget=FP32_EXACT)).package
    assert package is not None
    return package


def test_package_against_its_own_source(mlp_onnx_package: Path) -> None:
    package = mlp_onnx_package
    result = compare_models(str(package), "models:make_mlp", samples=16)
    assert result.within_tolerance and result.samples == 16
    (output,) = result.outputs
    assert output.max_abs < 1e-5 and output.top1_agreement == 1.0
    assert result.layers.note is not None and "B has no ONNX graph" in result.layers.note
    assert run_compare(_args(package, "models:make_mlp", samples=8)) == 0


def test_graphs_with_external_data_and_without_common_names(tmp_path: Path, mlp_onnx_package: Path) -> None:
    import onnx
    from models import export_mlp_onnx

    export_mlp_onnx(str(tmp_path / "inline.onnx"))
    external = tmp_path / "external" / "mlp.onnx"
    external.parent.mkdir()
    onnx.save_model(onnx.load(str(tmp_path / "inline.onnx")), str(external), save_as_external_data=True,
                    location="mlp.weights", size_threshold=0)
    same = compare_models(str(tmp_path / "inline.onnx"), str(external), samples=8)
    assert same.within_tolerance and same.layers.matched >= 3 and same.first_divergent_layer is None
    # the TorchScript-based exporter names tensors "/net/net.0/Gemm_output_0", the package's exporter "linear"
    other = compare_models(str(mlp_onnx_package), str(external), samples=8)
    assert other.within_tolerance and other.layers.matched == 0
    assert other.layers.note is not None and "share no intermediate tensor names" in other.layers.note


def test_onnx_file_with_other_output_names_pairs_outputs_by_position(tmp_path: Path) -> None:
    from models import export_mlp_onnx

    path = tmp_path / "mlp.onnx"
    export_mlp_onnx(str(path))
    result = compare_models("models:make_mlp", str(path), samples=8)
    (output,) = result.outputs
    assert (output.name, output.other_name) == ("output", "y")
    assert result.within_tolerance and output.max_abs < 1e-5


def test_different_input_names_are_refused() -> None:
    with pytest.raises(InferforgeError, match=r"A takes inputs \['x'\], B takes \['image'\]"):
        compare_models("models:make_mlp", "models:make_cnn")


def test_folder_that_is_not_a_package_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InferforgeError, match="not an inferforge package"):
        compare_models(str(tmp_path), "models:make_mlp")


def test_output_diff_statistics() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    b = np.array([[1.0, 0.0], [0.0, -2.0]], dtype=np.float32)
    diff = output_diff("scores", a, b)
    assert diff.max_abs == 4.0 and diff.mean_abs == 1.0
    assert diff.rel_l2 == pytest.approx(4.0 / np.sqrt(5.0))
    assert diff.cosine == pytest.approx(0.0)  # one sample agrees (1), one is reversed (-1)
    assert diff.top1_agreement == 0.5 and not diff.within_tolerance
    assert output_diff("scores", a, a.copy()).within_tolerance
    assert not output_diff("scores", a, a[:1]).within_tolerance

"""inferforge profile: stage breakdown, top operators from each runtime's profiler, roofline."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from conftest import fast_options
from torch import nn

import inferforge
from inferforge.backends.base import Artifact, BuildConfig, Runner
from inferforge.cli.measure import run_profile
from inferforge.data import generate_inputs
from inferforge.errors import InferforgeError
from inferforge.profile import ProfileReport, profile_package
from inferforge.profile.roofline import count_flops
from inferforge.types import ModelSpec, TensorSpec

# Enough runs for stable medians of a ~0.1 ms call (the loop costs tens of milliseconds). One thread: two
# OpenMP threads on a 2-core machine shared with other work give bimodal latencies (a preempted thread
# stalls the other at its barrier), and medians of a bimodal sample can land in different modes.
RUNS = 200


@pytest.fixture(scope="module")
def cnn_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("profile") / "cnn"
    inferforge.optimize("models:make_cnn", out=out, options=fast_options(backends=("eager",), precisions=("fp32",)))
    return out


@pytest.fixture(scope="module")
def ort_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("profile") / "mlp-ort"
    inferforge.optimize("models:make_mlp", out=out,
                        options=fast_options(backends=("onnxruntime",), precisions=("fp32",)))
    return out


@pytest.fixture(scope="module")
def cnn_report(cnn_package: Path, tmp_path_factory: pytest.TempPathFactory) -> ProfileReport:
    trace = tmp_path_factory.mktemp("trace") / "cnn-trace.json"
    return profile_package(cnn_package, batch_size=1, runs=RUNS, trace_path=trace, threads=1)


def _trace_events(path: str | None) -> list:
    assert path is not None
    data = json.loads(Path(path).read_text())
    return data["traceEvents"] if isinstance(data, dict) else data


def test_stages_add_up_to_the_whole_call(cnn_report: ProfileReport) -> None:
    stages = cnn_report.stages
    assert [s.name for s in stages.stages] == ["prepare inputs", "compute", "convert outputs"]  # CPU: no copies
    assert stages.runs == RUNS
    assert stages.stage_sum_ms == pytest.approx(sum(s.median_ms for s in stages.stages))
    assert 0.9 <= stages.sum_to_whole <= 1.1, stages


def test_torch_top_operators_name_the_models_ops(cnn_report: ProfileReport) -> None:
    ops = cnn_report.operators
    assert ops.profiler == "torch.profiler" and ops.unavailable is None
    assert 0 < len(ops.operators) <= 15
    names = [o.name for o in ops.operators]
    assert any("conv" in n for n in names), names  # TinyCNN has one Conv2d
    assert any(n in ("aten::addmm", "aten::linear") for n in names), names  # and one Linear
    assert _trace_events(ops.trace_path)


def test_roofline_counts_flops_from_the_packaged_program(cnn_report: ProfileReport) -> None:
    r = cnn_report.roofline
    # TinyCNN at batch 1: Conv2d(3, 8, 3, padding=1) on 16x16 is 2*8*16*16*3*3*3, Linear(8, 4) is 2*8*4.
    assert r.flops_per_call == 2 * 8 * 16 * 16 * 27 + 2 * 8 * 4
    params = (8 * 3 * 3 * 3 + 8 + 8 * 4 + 4) * 4
    assert r.bytes_per_call == params + (3 * 16 * 16 + 4) * 4
    assert r.peak.matmul_flops_per_s["float32"] > 0 and r.peak.copy_bytes_per_s > 0
    assert r.bound in ("compute", "memory")
    assert r.arithmetic_intensity == pytest.approx(r.flops_per_call / r.bytes_per_call)


def test_flops_equal_the_hand_count_for_one_linear_layer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(16, 32).eval()
    assert count_flops(layer, [torch.randn(4, 16)]) == 2 * 4 * 16 * 32
    package = inferforge.optimize(layer, (torch.randn(2, 16),), out=tmp_path / "linear",
                                  options=fast_options(backends=("eager",), precisions=("fp32",))).package
    assert package is not None
    report = profile_package(package, batch_size=4, runs=3)
    assert report.roofline.flops_per_call == 4096
    assert report.operators.trace_path is None  # no trace asked for, none written


def test_onnxruntime_operators_come_from_its_own_profiler(ort_package: Path, tmp_path: Path) -> None:
    report = profile_package(ort_package, batch_size=4, runs=RUNS, trace_path=tmp_path / "ort.json", threads=1)
    ops = report.operators
    assert report.backend == "onnxruntime"
    assert ops.profiler == "onnxruntime" and ops.unavailable is None
    assert any("Gemm" in o.name or "MatMul" in o.name for o in ops.operators), ops.operators
    events = _trace_events(ops.trace_path)
    assert any(e.get("cat") == "Node" for e in events)
    # No torch program in this package: FLOPs come from the ONNX graph, 2*B*(16*32 + 32*5) for the MLP.
    assert report.roofline.flops_per_call == 2 * 4 * (16 * 32 + 32 * 5)
    assert "model.onnx" in report.roofline.flops_source
    assert 0.9 <= report.stages.sum_to_whole <= 1.1, report.stages


def _args(package: Path, **overrides: object) -> argparse.Namespace:
    values: dict[str, object] = {"package": package, "batch_size": 1, "runs": 5, "trace": None, "threads": None,
                                 "json": False, **overrides}
    return argparse.Namespace(**values)


def test_command_prints_the_breakdown_and_writes_the_trace(cnn_package: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_profile(_args(cnn_package)) == 0
    out = capsys.readouterr().out
    for text in ("compute", "whole call", "top operators", "arithmetic intensity", "FLOPs per call"):
        assert text in out
    assert _trace_events(str(tmp_path / "cnn-profile-trace.json"))


def test_command_json(cnn_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_profile(_args(cnn_package, json=True, trace=tmp_path / "t.json")) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["stages"]["runs"] == 5 and data["roofline"]["flops_per_call"] > 0
    assert data["operators"]["trace_path"] == str(tmp_path / "t.json")


def test_missing_package_is_an_inferforge_error(tmp_path: Path) -> None:
    with pytest.raises(InferforgeError, match="does not exist"):
        run_profile(_args(tmp_path / "nothing-here"))


def test_openvino_operators_come_from_its_performance_counters(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    package = tmp_path / "mlp-ov"
    inferforge.optimize("models:make_mlp", out=package, options=fast_options(backends=("openvino",),
                                                                             precisions=("fp32",)))
    report = profile_package(package, batch_size=2, runs=10, trace_path=tmp_path / "ov.json")
    ops = report.operators
    assert ops.profiler == "openvino" and ops.unavailable is None
    assert ops.operators and all(o.self_ms_per_run >= 0 for o in ops.operators)
    assert _trace_events(ops.trace_path)
    # No torch program or ONNX graph in an OpenVINO-only package: FLOPs are unknown, and say why.
    assert report.roofline.flops_per_call is None and report.roofline.bound == "unknown"
    assert "unknown" in report.roofline.flops_source
    assert "model.bin" in report.roofline.bytes_counted


class _NumpyEcho(Runner):
    native = "numpy"

    def run_native(self, args: list) -> list:
        return args

    def threads(self) -> int:
        return 1


def test_a_runtime_without_a_profiler_says_so() -> None:
    spec = ModelSpec((TensorSpec.parse("x:float32[B,4]"),), (TensorSpec.parse("y:float32[B,4]"),))
    runner = _NumpyEcho(spec, Artifact(BuildConfig("echo"), Path("."), ()))
    ops = runner.profile_operators(generate_inputs(spec, 2), runs=2, trace_path=None)
    assert ops.operators == () and ops.unavailable and "_NumpyEcho" in ops.unavailable


def test_quantized_onnx_products_are_counted_and_int8_is_judged_against_an_int8_peak(ort_package: Path,
                                                                                     tmp_path: Path) -> None:
    """An INT8 artifact compared with the FP32 matmul peak read "145% of peak" (issue 18)."""
    from onnxruntime.quantization import quantize_dynamic

    from inferforge.manifest import read_manifest
    from inferforge.profile.roofline import PEAK_DTYPE, count_onnx_flops, measure_peak
    from inferforge.types import ModelSpec, Precision

    fp32 = next(ort_package.rglob("model.onnx"))
    int8 = tmp_path / "int8.onnx"
    quantize_dynamic(str(fp32), str(int8))
    spec = ModelSpec.from_json(read_manifest(ort_package)["spec"])
    assert count_onnx_flops(int8, spec, 4)[0] == count_onnx_flops(fp32, spec, 4)[0] == 2 * 4 * (16 * 32 + 32 * 5)
    peak = measure_peak("cpu", 1)
    assert PEAK_DTYPE[Precision.INT8.value] in peak.matmul_flops_per_s
    assert peak.matmul_flops_per_s["int8"] > peak.matmul_flops_per_s["float32"]

"""CUDA candidates: build, load and numerics for each, on the GPU (skipped without one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fast_options

from inferforge.backends import get_backend
from inferforge.backends.base import BuildConfig
from inferforge.backends.inductor import InductorOptions
from inferforge.bench import time_calls
from inferforge.source import ModelSource, load_source
from inferforge.types import Precision

pytestmark = pytest.mark.gpu

# ||out - ref|| / ||ref|| against the FP32 CPU module: what each precision's rounding allows.
TOLERANCE = {Precision.FP32: 1e-5, Precision.TF32: 5e-3, Precision.FP16: 5e-3, Precision.BF16: 3e-2,
             Precision.FP8: 1e-1, Precision.INT8: 1e-1}


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got.astype(np.float64) - want) / np.linalg.norm(want))


def _check(backend: str, config: BuildConfig, factory: str | ModelSource, tmp_path: Path,
           batches: tuple[int, ...] = (1, 3, 8)):
    source = load_source(factory) if isinstance(factory, str) else factory
    chosen = get_backend(backend)
    assert chosen.unavailable_reason(config, source) is None
    out_dir = tmp_path / config.key()
    out_dir.mkdir()
    artifact = chosen.build(source, config, out_dir)
    runner = chosen.load(artifact, source.spec, threads=2)
    assert runner.device == "cuda"
    rng = np.random.default_rng(7)
    for batch in batches:  # fresh random inputs at several sizes, compared with the FP32 CPU module
        inputs = {s.name: rng.standard_normal(s.concrete_shape(batch)).astype(np.float32) for s in source.spec.inputs}
        name = source.spec.outputs[0].name
        with torch.inference_mode():
            want = dict(source.module.named_outputs(*[torch.from_numpy(v) for v in inputs.values()]))[name]
        want = want.double().numpy()
        got = runner(inputs)[name]
        assert isinstance(got, np.ndarray) and got.shape == want.shape
        assert np.all(np.isfinite(got))
        assert _relative_error(got, want) < TOLERANCE[config.precision], (config.key(), batch)
    return runner, source


@pytest.mark.parametrize("precision", [Precision.FP32, Precision.TF32, Precision.FP16, Precision.BF16])
@pytest.mark.parametrize("factory", ["models:make_small_cnn", "models:make_wide_mlp"])
def test_eager_cuda_precisions(precision: Precision, factory: str, tmp_path: Path) -> None:
    _check("eager", BuildConfig("eager", precision, "cuda"), factory, tmp_path)


def test_fp32_candidate_is_not_tf32(tmp_path: Path) -> None:
    """cuDNN allows TF32 by default: the fp32 candidate must switch it off, and restore the setting."""
    torch.backends.cudnn.allow_tf32 = True
    runner, _ = _check("eager", BuildConfig("eager", Precision.FP32, "cuda"), "models:make_small_cnn", tmp_path)
    assert torch.backends.cudnn.allow_tf32 is True


def test_inductor_cuda_graphs_pad_to_buckets(tmp_path: Path) -> None:
    config = BuildConfig("inductor", Precision.FP16, "cuda", InductorOptions(cuda_graphs=True))
    # 300: padded up to the 512 bucket; 3 again: bucket 4 replayed after bucket 8 shared its memory pool.
    runner, source = _check("inductor", config, "models:make_small_cnn", tmp_path, batches=(1, 3, 5, 300, 3))
    assert runner.artifact.details["static_batch_sizes"][:4] == [1, 2, 4, 8]
    # CUDA graph replays reuse their output buffers: what a caller holds must not change on the next call.
    x = np.ones((2, *source.spec.inputs[0].shape[1:]), np.float32)
    first = runner.run_native(runner.to_native({"image": x}))[0]
    kept = first.clone()
    runner.run_native(runner.to_native({"image": -x}))
    assert torch.equal(first, kept)


class _Bottleneck(torch.nn.Module):
    """conv-BN-ReLU, conv-BN, + identity, ReLU, and a downsampling conv-BN beside it: the ResNet patterns."""

    def __init__(self) -> None:
        super().__init__()
        bn = torch.nn.BatchNorm2d
        self.conv1, self.bn1 = torch.nn.Conv2d(8, 16, 3, padding=1, bias=False), bn(16)
        self.conv2, self.bn2 = torch.nn.Conv2d(16, 16, 3, padding=1, stride=2, bias=False), bn(16)
        self.down, self.bn3 = torch.nn.Conv2d(8, 16, 1, stride=2), bn(16)
        self.head = torch.nn.Linear(16, 10)
        for norm in (self.bn1, self.bn2, self.bn3):  # statistics that are not the identity: folding must show
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.data.uniform_(0.5, 1.5)
            norm.bias.data.uniform_(-0.3, 0.3)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(image)))
        out = self.bn2(self.conv2(out))
        out += self.bn3(self.down(image))
        return self.head(torch.relu(out).mean((2, 3)))


@pytest.mark.parametrize("precision", [Precision.FP16, Precision.BF16])
def test_cudnn_fused_folds_bn_and_fuses_relu(precision: Precision, tmp_path: Path) -> None:
    from inferforge.backends.cudnn_fused import CudnnFusedOptions

    torch.manual_seed(0)
    source = load_source(_Bottleneck().eval(), inputs=["image:float32[B,8,16,16]"], name="bottleneck")
    config = BuildConfig("cudnn-fused", precision, "cuda", CudnnFusedOptions())
    # 300 pads up to the 512 bucket; 3 again replays bucket 4 after larger buckets shared the memory pool
    runner, _ = _check("cudnn-fused", config, source, tmp_path, batches=(1, 3, 300, 3))
    details = runner.artifact.details
    assert (details["folded_batch_norms"], details["fused_conv_relu"], details["fused_conv_add_relu"]) == (3, 1, 1)
    assert details["static_batch_sizes"][-2:] == [512, 1024]


def test_cudnn_fused_refuses_a_model_without_convolutions() -> None:
    reason = get_backend("cudnn-fused").unavailable_reason(BuildConfig("cudnn-fused", Precision.FP16, "cuda"),
                                                           load_source("models:make_wide_mlp"))
    assert reason is not None and "convolution" in reason


@pytest.mark.parametrize("scheme", ["fp8-rowwise", "int8-dynamic", "int8-weight-only"])
def test_torchao_linear_layers(scheme: str, tmp_path: Path) -> None:
    from inferforge.backends.torchao_cuda import SCHEMES, TorchaoOptions

    config = BuildConfig("torchao", SCHEMES[scheme], "cuda", TorchaoOptions(scheme))
    runner, _ = _check("torchao", config, "models:make_token_mlp", tmp_path, batches=(1, 3, 16))
    # int8-dynamic leaves the 256->10 layer in BF16: torch._int_mm takes only multiples of 8
    assert runner.artifact.details["quantized_linear_layers"] == (2 if scheme == "int8-dynamic" else 3)
    assert runner.artifact.requires["cuda_capability"] == (">=8.9" if scheme.startswith("fp8") else ">=8.0")


def test_aoti_cuda_says_why_it_is_not_built() -> None:
    reason = get_backend("aoti").unavailable_reason(BuildConfig("aoti", Precision.FP16, "cuda"),
                                                    load_source("models:make_wide_mlp"))
    assert reason is not None and "segfault" in reason


def test_cuda_timing_waits_for_the_gpu() -> None:
    """Events around queued work: a 4096^3 matmul cannot take under 0.05 ms on any GPU (137 GFLOP)."""
    a = torch.randn(4096, 4096, device="cuda")
    stats = time_calls(lambda: a @ a, 1, warmup=2, min_runs=5, max_runs=5, min_seconds=0, max_seconds=10,
                       device="cuda")
    assert stats.p50_ms > 0.05


def test_optimize_for_cuda_keeps_a_cpu_fallback(tmp_path: Path) -> None:
    import inferforge
    from inferforge.manifest import read_manifest

    out = tmp_path / "pkg"
    result = inferforge.optimize("models:make_small_cnn", out=out, name="cnn",
                                 options=fast_options(device="cuda", backends=("eager", "onnxruntime")))
    assert result.best is not None, result.leaderboard()
    devices = [a["config"]["device"] for a in read_manifest(out)["artifacts"]]
    assert {"cuda", "cpu"} <= set(devices), result.leaderboard()  # the ranking decides the order
    assert inferforge.load(out).device == devices[0]

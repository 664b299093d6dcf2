"""CUDA candidates: build, load and numerics for each, on the GPU (the ``gpu`` tests skip without one), and
what a CUDA backend says on a machine that cannot run it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import fast_options

from inferforge.backends import get_backend
from inferforge.backends.base import BuildConfig
from inferforge.backends.inductor import InductorOptions
from inferforge.bench import time_calls
from inferforge.data import Dataset, generated_dataset
from inferforge.errors import BuildError, SpecError
from inferforge.source import ModelSource, load_source
from inferforge.types import Precision

gpu = pytest.mark.gpu  # on every test that needs a CUDA device; the rest run anywhere

# ||out - ref|| / ||ref|| against the FP32 CPU module: what each precision's rounding allows.
TOLERANCE = {Precision.FP32: 1e-5, Precision.TF32: 5e-3, Precision.FP16: 5e-3, Precision.BF16: 3e-2,
             Precision.FP8: 1e-1, Precision.INT8: 1e-1}


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got.astype(np.float64) - want) / np.linalg.norm(want))


def _check(backend: str, config: BuildConfig, factory: str | ModelSource, tmp_path: Path,
           batches: tuple[int, ...] = (1, 3, 8), calibration: Dataset | None = None):
    source = load_source(factory) if isinstance(factory, str) else factory
    chosen = get_backend(backend)
    assert chosen.unavailable_reason(config, source) is None
    out_dir = tmp_path / config.key()
    out_dir.mkdir()
    artifact = chosen.build(source, config, out_dir, calibration=calibration)
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


@gpu
@pytest.mark.parametrize("precision", [Precision.FP32, Precision.TF32, Precision.FP16, Precision.BF16])
@pytest.mark.parametrize("factory", ["models:make_small_cnn", "models:make_wide_mlp"])
def test_eager_cuda_precisions(precision: Precision, factory: str, tmp_path: Path) -> None:
    _check("eager", BuildConfig("eager", precision, "cuda"), factory, tmp_path)


@gpu
def test_fp32_candidate_is_not_tf32(tmp_path: Path) -> None:
    """cuDNN allows TF32 by default: the fp32 candidate must switch it off, and restore the setting."""
    torch.backends.cudnn.allow_tf32 = True
    runner, _ = _check("eager", BuildConfig("eager", Precision.FP32, "cuda"), "models:make_small_cnn", tmp_path)
    assert torch.backends.cudnn.allow_tf32 is True


@gpu
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


@gpu
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


@gpu
def test_cudnn_fused_refuses_a_model_without_convolutions() -> None:
    reason = get_backend("cudnn-fused").unavailable_reason(BuildConfig("cudnn-fused", Precision.FP16, "cuda"),
                                                           load_source("models:make_wide_mlp"))
    assert reason is not None and "convolution" in reason


@gpu
@pytest.mark.parametrize("scheme", ["fp8-rowwise", "int8-dynamic", "int8-weight-only"])
def test_torchao_linear_layers(scheme: str, tmp_path: Path) -> None:
    from inferforge.backends.torchao_cuda import SCHEMES, TorchaoOptions

    config = BuildConfig("torchao", SCHEMES[scheme], "cuda", TorchaoOptions(scheme))
    runner, _ = _check("torchao", config, "models:make_token_mlp", tmp_path, batches=(1, 3, 16))
    # int8-dynamic leaves the 256->10 layer in BF16: torch._int_mm takes only multiples of 8
    assert runner.artifact.details["quantized_linear_layers"] == (2 if scheme == "int8-dynamic" else 3)
    assert runner.artifact.requires["cuda_capability"] == (">=8.9" if scheme.startswith("fp8") else ">=8.0")


@gpu
def test_aoti_cuda_says_why_it_is_not_built() -> None:
    reason = get_backend("aoti").unavailable_reason(BuildConfig("aoti", Precision.FP16, "cuda"),
                                                    load_source("models:make_wide_mlp"))
    assert reason is not None and "segfault" in reason


@gpu
def test_cuda_timing_waits_for_the_gpu() -> None:
    """Events around queued work: a 4096^3 matmul cannot take under 0.05 ms on any GPU (137 GFLOP)."""
    a = torch.randn(4096, 4096, device="cuda")
    stats = time_calls(lambda: a @ a, 1, warmup=2, min_runs=5, max_runs=5, min_seconds=0, max_seconds=10,
                       device="cuda")
    assert stats.p50_ms > 0.05


@gpu
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


class _TinyEncoder(torch.nn.Module):
    """One transformer block as BERT has it (separate Q, K and V projections, SDPA, post-LayerNorm, GELU
    feed-forward) and a 10-class head, a size ``torch._scaled_mm`` cannot take (not a multiple of 16)."""

    def __init__(self, width: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.out = (torch.nn.Linear(width, width) for _ in range(4))
        self.norm1, self.norm2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.up, self.down = torch.nn.Linear(width, 4 * width), torch.nn.Linear(4 * width, width)
        self.head = torch.nn.Linear(width, 10)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, s, w = tokens.shape
        q, k, v = (p(tokens).view(b, s, self.heads, w // self.heads).transpose(1, 2)
                   for p in (self.query, self.key, self.value))
        attended = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, w)
        x = self.norm1(tokens + self.out(attended))
        x = self.norm2(x + self.down(torch.nn.functional.gelu(self.up(x))))
        return self.head(x.mean(1))


def _fp8_config(**options: Any) -> BuildConfig:
    from inferforge.backends.fp8_static import Fp8StaticOptions

    return BuildConfig("fp8-static", Precision.FP8, "cuda", Fp8StaticOptions(**options))


def _tiny_encoder() -> ModelSource:
    torch.manual_seed(0)
    return load_source(_TinyEncoder().eval(), inputs=["tokens:float32[B,16,64]"], name="tiny-encoder")


@gpu
@pytest.mark.parametrize("options", [{}, {"dtype": "float16"}, {"weight_scale": "channel"}])
def test_fp8_static_linear_layers(options: dict, tmp_path: Path) -> None:
    from inferforge.backends.fp8_static import PROGRAM

    source = _tiny_encoder()
    config = _fp8_config(**options)
    # 300 pads up to the 512 bucket; 3 again replays bucket 4 after larger buckets shared the memory pool
    runner, _ = _check("fp8-static", config, source, tmp_path, batches=(1, 3, 16, 300, 3),
                       calibration=generated_dataset(source.spec, 64, seed=3))
    details = runner.artifact.details
    assert details["quantized_linear_layers"] == 6
    assert list(details["kept_layers"]) == ["head"]
    assert details["shared_input_groups"] == [["query", "key", "value"]]
    assert runner.artifact.requires["cuda_capability"] == ">=8.9"
    # The saved program computes those six products in FP8 (what load reads, not only what build said), and
    # casts four inputs to FP8: Q, K and V read one quantized copy of their shared input.
    program = torch.export.load(str(runner.artifact.directory / PROGRAM))
    nodes = [n for n in program.graph.nodes if n.op == "call_function"]
    assert sum(n.target is torch.ops.aten._scaled_mm.default for n in nodes) == 6
    casts = [n for n in nodes if n.target is torch.ops.aten.to.dtype and n.meta["val"].dtype == torch.float8_e4m3fn]
    assert len(casts) == 4


@gpu
def test_fp8_static_saturates_past_the_calibrated_range() -> None:
    """Inputs 20x larger than any calibration sample: e4m3 has no infinity and PyTorch casts an overflow to
    NaN, so the quantized layers must clamp to e4m3's range (saturate). Run eagerly: Triton's cast saturates
    by itself, so the compiled runner would hide a missing clamp."""
    import copy

    from inferforge.backends.fp8_static import Fp8StaticOptions, calibrate, quantize_linears

    source = _tiny_encoder()
    module = copy.deepcopy(source.module).to("cuda")
    small = Dataset({"tokens": 0.05 * generated_dataset(source.spec, 32, seed=3).inputs["tokens"]}, None, "small")
    quantize_linears(module, calibrate(module, source.spec, small), Fp8StaticOptions())
    x = torch.randn(4, 16, 64, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        assert bool(torch.isfinite(module(x)[0]).all())


@gpu
def test_optimize_validates_and_packages_fp8_static(tmp_path: Path) -> None:
    import inferforge
    from inferforge.candidate import Status
    from inferforge.validate import Task

    source = _tiny_encoder()
    result = inferforge.optimize(source.module.model, inputs=["tokens:float32[B,16,64]"], out=tmp_path / "pkg",
                                 name="tiny-encoder", calibration=generated_dataset(source.spec, 64, seed=3),
                                 options=fast_options(device="cuda", task=Task.EMBED, cpu_fallback=False,
                                                      backends=("eager", "fp8-static")))
    fp8 = [c for c in result.search.candidates if c.config.backend == "fp8-static"]
    assert [c.status for c in fp8] == [Status.PASSED], result.leaderboard()
    assert fp8[0].accuracy is not None and fp8[0].accuracy.cosine >= 0.99



@gpu
def test_fp8_fused_runs_gemm_gelu_quantize_as_one_kernel(tmp_path: Path) -> None:
    """The feed-forward's first product, its GELU and the second product's quantization become one op at load;
    the runner still matches the FP32 module within FP8's tolerance at batch sizes that pad."""
    source = _tiny_encoder()
    config = BuildConfig("fp8-fused", Precision.FP8, "cuda", _fp8_config().options)
    runner, _ = _check("fp8-fused", config, source, tmp_path, batches=(1, 3, 16, 300, 3),
                       calibration=generated_dataset(source.spec, 64, seed=3))
    assert runner.artifact.details["fused_gemm_gelu_quantize"] == 1
    assert runner.artifact.details["quantized_linear_layers"] == 6


@gpu
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize(("rows", "inner", "cols"), [(48, 96, 160), (300, 96, 160), (1024, 128, 256)])
def test_fp8_fused_kernel_computes_the_chain_it_replaces(approximate: str, rows: int, inner: int,
                                                         cols: int) -> None:
    """The Triton kernel against the ops it replaces, on fresh random data, at sizes its tiles do not divide:
    FP8 outputs agree to one e4m3 step (the chain rounds to BF16 on the way); past the range it saturates
    at +-448, never NaN. The last shape fills whole tiles (the kernel's unmasked loop)."""
    from inferforge.backends.fp8_fused import _fused_op

    op = _fused_op()
    torch.manual_seed(rows)
    a = (torch.randn(rows, inner, device="cuda") * 4).to(torch.float8_e4m3fn)
    w = (torch.randn(cols, inner, device="cuda") * 4).to(torch.float8_e4m3fn)
    scale_a, scale_b = torch.tensor(0.03, device="cuda"), torch.tensor(0.02, device="cuda")
    bias = torch.randn(cols, device="cuda", dtype=torch.bfloat16)
    inv_scale = torch.tensor(200.0, device="cuda")
    got = op(a, w.t(), scale_a, scale_b, bias, inv_scale, approximate == "tanh").float()
    product = torch._scaled_mm(a, w.t(), scale_a, scale_b, bias=bias, out_dtype=torch.bfloat16)
    gelu = torch.nn.functional.gelu(product.float(), approximate=approximate)
    want = (gelu * inv_scale).clamp(-448, 448).to(torch.float8_e4m3fn).float()
    assert got.shape == want.shape and bool(torch.isfinite(got).all())
    step = want.abs().clamp(min=2.0**-6) / 8  # e4m3 keeps 3 mantissa bits
    assert bool(((got - want).abs() <= step * 1.01).all())
    assert float(got.abs().max()) == 448.0  # inputs this large saturate

def test_fp8_static_needs_calibration(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="calibration"):
        get_backend("fp8-static").build(_tiny_encoder(), _fp8_config(), tmp_path)


def test_fp8_static_says_why_it_cannot_run_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without CUDA, and on a GPU older than Ada/Hopper (compute capability 8.9), a reason and no build."""
    import inferforge.backends.torch_common as torch_common

    backend = get_backend("fp8-static")
    config = _fp8_config()
    source = _tiny_encoder()
    monkeypatch.setattr(torch_common, "cuda_unavailable_reason", lambda: "no CUDA GPU here")
    assert backend.unavailable_reason(config, source) == "no CUDA GPU here"
    monkeypatch.setattr(torch_common, "cuda_unavailable_reason", lambda: None)
    monkeypatch.setattr(torch_common, "cuda_capability", lambda: "8.0")
    reason = backend.unavailable_reason(config, source)
    assert reason is not None and "8.9" in reason and "8.0" in reason
    assert backend.configs("cpu") == []


def test_fp8_static_options_refuse_what_cannot_run() -> None:
    from inferforge.backends.fp8_static import Fp8StaticOptions

    with pytest.raises(SpecError, match="weight_scale 'row' is not one of tensor, channel"):
        Fp8StaticOptions(weight_scale="row")
    with pytest.raises(SpecError, match="bfloat16 only"):
        Fp8StaticOptions(weight_scale="channel", dtype="float16")
    with pytest.raises(SpecError, match="fp8-static builds fp8, not fp16"):
        BuildConfig("fp8-static", Precision.FP16, "cuda", Fp8StaticOptions())


def test_fp8_static_refuses_a_model_it_would_not_change(monkeypatch: pytest.MonkeyPatch) -> None:
    import inferforge.backends.torch_common as torch_common

    monkeypatch.setattr(torch_common, "cuda_unavailable_reason", lambda: None)
    monkeypatch.setattr(torch_common, "cuda_capability", lambda: "9.0")
    torch.manual_seed(0)
    odd = load_source(torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Linear(30, 5)),
                      inputs=["x:float32[B,20]"], name="odd")
    reason = get_backend("fp8-static").unavailable_reason(_fp8_config(), odd)
    assert reason is not None and "multiples of 16" in reason
    assert get_backend("fp8-static").unavailable_reason(_fp8_config(), _tiny_encoder()) is None

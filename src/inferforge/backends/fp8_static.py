"""FP8 linear layers with static, calibrated activation scales, compiled by Inductor, in CUDA graphs.

torchao's ``fp8-rowwise`` candidate (``torchao_cuda.py``) scales every activation row
from the data at run time: each matrix product first reads its input to find the
row maxima, then quantizes it, and on BERT-base that cost what the FP8 tensor cores
saved (it tied FP16 at batch 256; docs/benchmarks.md). Here the scales are fixed at build
time instead, the way TensorRT's calibrated INT8/FP8 engines do it:

- activations: one scale per layer input (per tensor), ``amax / 448`` over the
  calibration samples (``calibration.py``), measured on the FP32 model; at run time
  an input is multiplied by the stored reciprocal, clamped to e4m3's range (so a value
  beyond the calibrated range saturates instead of becoming NaN) and cast. That is a
  pointwise tail which Inductor fuses into the kernel producing the input (LayerNorm,
  GELU, the residual add), so quantizing costs no extra pass over memory;
- weights: e4m3 with one scale per matrix (``weight_scale="tensor"``: cuBLASLt's
  per-tensor FP8 GEMM, bias fused) or per output channel (``"channel"``: the row-wise
  kernel, BF16 out), stored transposed (column-major), as ``torch._scaled_mm`` wants;
- the products: ``torch._scaled_mm`` with FP32 scales and FP16/BF16 output. Layers it
  cannot take (a size not a multiple of 16) stay in FP16/BF16 and are listed in the
  artifact's details. Everything else (embeddings, attention through SDPA, layer norms)
  computes in ``dtype``.

The quantized module is exported with torch.export (plain aten ops, FP8 tensors as
constants), so the artifact loads with torch alone: no pickle of the user's code. Load
compiles it with Inductor and replays CUDA graphs per batch bucket, as the ``inductor``
GPU candidates do.

Why this shape (static per-tensor scales, the default config only, no max-autotune) and what bounds it
(the GELU pass, the masked attention and the layer norms, not the FP8 products): the fp8-static figures
and kernel profile in docs/benchmarks.md's GPU section.
"""

from __future__ import annotations

import copy
import functools
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inferforge.backends.base import (
    PROGRAM,
    SEARCH_ORDER,
    Artifact,
    BackendOptions,
    BuildConfig,
    Runner,
    artifact_from_dir,
    one_of,
)
from inferforge.backends.cuda_graphs import BUCKETS
from inferforge.backends.inductor import (
    InductorOptions,
    graphed_program_runner,
)
from inferforge.backends.torch_common import (
    TorchBackend,
    compute_dtype,
    device_requirement,
    tf32_mode,
)
from inferforge.capture import export_dynamic_shapes
from inferforge.data import Dataset
from inferforge.environment import torch_requirement
from inferforge.errors import BuildError
from inferforge.source import ModelSource, SourceKind
from inferforge.types import ModelSpec, Precision

E4M3_MAX = 448.0  # the largest finite float8_e4m3fn
GEMM_MULTIPLE = 16  # torch._scaled_mm takes inner and output sizes that are multiples of 16
CALIBRATION_BATCH = 16
WEIGHT_SCALES = ("tensor", "channel")
DTYPES = ("bfloat16", "float16")
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")  # not the modes with torch's own CUDA graphs: ours replay
_ROOT = "model."  # ModelSource wraps the user's module as ``model``: layer names are reported without it


@dataclass(frozen=True)
class Fp8StaticOptions(BackendOptions):
    """``weight_scale``: "tensor" (one scale per weight matrix) or "channel" (one per output channel).
    ``dtype``: what the products output and everything else computes in: "bfloat16" or "float16"
    ("channel" needs "bfloat16": the row-wise kernel outputs BF16 only).
    ``fast_accum``: Hopper's faster FP8 accumulation (``use_fast_accum``), as torchao uses for inference.
    ``compile_mode``: torch.compile's mode at load; "max-autotune-no-cudagraphs" times Triton's FP8 GEMM
    templates (which can take the next pointwise op into their epilogue) against cuBLAS."""

    weight_scale: str = "tensor"
    dtype: str = "bfloat16"
    fast_accum: bool = True
    compile_mode: str = "default"

    def problems(self) -> list[str]:
        problems = (one_of("weight_scale", self.weight_scale, WEIGHT_SCALES) + one_of("dtype", self.dtype, DTYPES)
                    + one_of("compile_mode", self.compile_mode, COMPILE_MODES))
        if self.weight_scale == "channel" and self.dtype != "bfloat16":
            problems.append("weight_scale 'channel' runs on the row-wise FP8 kernel, which outputs bfloat16 only")
        return problems

    def precision_problems(self, precision: Precision) -> list[str]:
        return [] if precision is Precision.FP8 else [f"fp8-static builds fp8, not {precision.value}"]


class Fp8StaticBackend(TorchBackend):
    name = "fp8-static"
    accepts = frozenset({SourceKind.TORCH})
    refusals = {SourceKind.EXPORTED: "fp8-static replaces nn.Linear modules; an exported program has none left",
                SourceKind.TORCHSCRIPT: "fp8-static replaces nn.Linear modules, not TorchScript"}
    devices = frozenset({"cuda"})
    options_type = Fp8StaticOptions

    def configs(self, device: str) -> list[BuildConfig]:
        if device != "cuda":
            return []
        return [BuildConfig(self.name, Precision.FP8, device, Fp8StaticOptions())]

    def needs_calibration(self, config: BuildConfig) -> bool:
        return True

    def search_order(self, config: BuildConfig) -> int:
        return SEARCH_ORDER["default"]  # an Inductor compile, like the FP16 candidates it competes with

    def unavailable_reason(self, config: BuildConfig, source: ModelSource) -> str | None:
        """Source kind, device and an FP8-capable GPU (compute capability 8.9: Ada, Hopper) as every torch
        backend checks them; then this torch's ``_scaled_mm`` and a layer it can take."""
        reason = super().unavailable_reason(config, source)
        if reason:
            return reason
        import torch

        if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
            return f"this torch ({torch.__version__}) has no torch._scaled_mm or float8_e4m3fn"
        if not fitting_linears(source.module):
            return (f"the model has no nn.Linear whose sizes are both multiples of {GEMM_MULTIPLE} (what "
                    "torch._scaled_mm takes): FP8 would change nothing")
        return None

    def build(self, source: ModelSource, config: BuildConfig, out_dir: Path, *,
              calibration: Dataset | None = None) -> Artifact:
        """Calibrate on the FP32 model, quantize, export. Raises BuildError without calibration samples."""
        import torch

        if calibration is None:
            raise BuildError("fp8-static sets activation scales from calibration samples, and none were given: "
                             "pass calibration data (--calibration, or --data with real samples), or use the "
                             "torchao fp8-rowwise candidate, which scales at run time")
        options = Fp8StaticOptions.of(config)
        module = copy.deepcopy(source.module).to("cuda", torch.float32).eval()
        ranges = calibrate(module, source.spec, calibration)
        quantized, kept = quantize_linears(module, ranges, options)
        args = tuple(a.to("cuda") for a in source.export_args())
        feed = compute_dtype(config.precision, config.device)  # what the runner casts float inputs to
        args = tuple(a.to(feed) if a.is_floating_point() else a for a in args)
        with torch.no_grad():
            program = torch.export.export(_cast_inputs(module, getattr(torch, options.dtype)), args, strict=False,
                                          dynamic_shapes=(export_dynamic_shapes(source.spec, source.dim_ranges),))
        torch.export.save(program, str(out_dir / PROGRAM))
        requires = {**torch_requirement(same_series=True), **device_requirement(config)}
        return artifact_from_dir(config, out_dir, requires, {
            "format": "torch.export (FP8 linear layers as torch._scaled_mm)",
            "quantized_linear_layers": len(quantized), "kept_layers": kept,
            "shared_input_groups": [[n.removeprefix(_ROOT) for n in g] for g in ranges.shared_inputs],
            "calibration": calibration.origin, "calibration_samples": len(calibration),
            "static_batch_sizes": list(BUCKETS),
            "note": "CUDA graphs: each batch bucket is captured at its first use"})

    def load(self, artifact: Artifact, spec: ModelSpec, threads: int) -> Runner:
        mode = Fp8StaticOptions.of(artifact.config).compile_mode
        return graphed_program_runner(artifact, spec, threads, InductorOptions(mode=mode))


def fitting_linears(module: Any) -> list[str]:
    """Names of the nn.Linear layers ``torch._scaled_mm`` can compute (both sizes multiples of 16)."""
    import torch

    return [name for name, m in module.named_modules()
            if isinstance(m, torch.nn.Linear) and m.in_features % GEMM_MULTIPLE == 0
            and m.out_features % GEMM_MULTIPLE == 0]


@dataclass(frozen=True)
class Ranges:
    """What calibration saw: the largest absolute input of each nn.Linear, and the groups of layers that read
    one same tensor in every call (a transformer's Q, K and V projections take the same hidden states)."""

    amax: dict[str, float]
    shared_inputs: list[tuple[str, ...]]


def calibrate(module: Any, spec: ModelSpec, calibration: Dataset) -> Ranges:
    """Run ``module`` (FP32, on its device) over the calibration samples in batches of CALIBRATION_BATCH,
    TF32 off, watching the input of every nn.Linear."""
    import torch

    device = next(module.parameters()).device
    peaks: dict[str, Any] = {}
    reads: dict[str, list[int]] = {}  # per layer, per call: which distinct tensor of its batch it read
    batch_inputs: list[Any] = []  # kept alive for one batch, so that identity means the same tensor

    def record(name: str) -> Any:
        def hook(_module: Any, args: tuple[Any, ...]) -> None:
            x = args[0]
            peak = x.detach().abs().amax().float()
            peaks[name] = torch.maximum(peaks[name], peak) if name in peaks else peak
            position = next((i for i, seen in enumerate(batch_inputs) if seen is x), None)
            if position is None:
                batch_inputs.append(x)
                position = len(batch_inputs) - 1
            reads.setdefault(name, []).append(position)
        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in module.named_modules()
             if isinstance(m, torch.nn.Linear)]
    try:
        with torch.inference_mode(), tf32_mode(Precision.FP32, device.type):
            for batch in calibration.batches(CALIBRATION_BATCH):
                module(*[torch.from_numpy(np.ascontiguousarray(batch[s.name])).to(device) for s in spec.inputs])
                batch_inputs.clear()
    finally:
        for hook in hooks:
            hook.remove()
    groups: dict[tuple[int, ...], list[str]] = {}
    for name, positions in reads.items():
        groups.setdefault(tuple(positions), []).append(name)
    return Ranges({name: float(peak) for name, peak in peaks.items()},
                  [tuple(names) for names in groups.values() if len(names) > 1])


def quantize_linears(module: Any, ranges: Ranges, options: Fp8StaticOptions) -> tuple[list[str], dict[str, str]]:
    """Cast ``module`` (FP32) to ``options.dtype`` and replace each nn.Linear that fits by an Fp8Linear,
    its weights quantized from their FP32 values; layers that read one same tensor share one input scale
    (the largest of theirs) and one quantization of it. Returns (quantized names, {kept name: why})."""
    import torch

    fits = set(fitting_linears(module))
    plans: dict[str, tuple[Any, ...]] = {}
    kept: dict[str, str] = {}
    for name, m in module.named_modules():
        if not isinstance(m, torch.nn.Linear):
            continue
        shown = name.removeprefix(_ROOT)
        if name not in fits:
            kept[shown] = f"{m.in_features}x{m.out_features}: not multiples of {GEMM_MULTIPLE}"
        elif not ranges.amax.get(name):
            kept[shown] = "no calibration sample reached it (or its input was all zeros)"
        else:
            plans[name] = _quantized_weight(m.weight.detach(), options.weight_scale)
    peaks, shared = dict(ranges.amax), {}
    for group in ranges.shared_inputs:
        members = [name for name in group if name in plans]
        quantization = _SharedQuantization()
        for name in members:
            peaks[name] = max(ranges.amax[n] for n in members)
            shared[name] = quantization
    dtype = getattr(torch, options.dtype)
    module.to(dtype)  # before the swap: Module.to casts float8 buffers too
    for name, (weight, weight_scale) in plans.items():
        parent, _, leaf = name.rpartition(".")
        owner = module.get_submodule(parent) if parent else module
        linear = getattr(owner, leaf)
        setattr(owner, leaf, _fp8_linear()(weight, weight_scale, peaks[name], linear.bias, dtype, options.fast_accum,
                                           shared.get(name)))
    return [n.removeprefix(_ROOT) for n in plans], kept


class _SharedQuantization:
    """The FP8 copy of an input several layers read: the first layer to see a tensor quantizes it and the
    others reuse that, so the traced graph writes one FP8 copy, not one per layer. Keyed by identity (a
    weak reference: it keeps no activation alive), so another input is quantized anew."""

    def __init__(self) -> None:
        self._last: tuple[Any, Any] | None = None

    def __call__(self, x: Any, quantize: Any) -> Any:
        if self._last is not None and self._last[0]() is x:
            return self._last[1]
        q = quantize(x)
        self._last = (weakref.ref(x), q)
        return q


def _quantized_weight(weight: Any, scaling: str) -> tuple[Any, Any]:
    """(e4m3 weight (out, in), FP32 scale: shape () per tensor, (1, out) per channel) of an FP32 weight."""
    import torch

    w = weight.float()
    peak = w.abs().amax() if scaling == "tensor" else w.abs().amax(dim=1, keepdim=True)
    scale = peak.clamp(min=torch.finfo(torch.float32).tiny) / E4M3_MAX
    fp8 = (w / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return fp8.contiguous(), (scale if scaling == "tensor" else scale.reshape(1, -1)).contiguous()


@functools.cache
def _fp8_linear() -> type:
    """The Fp8Linear class, made on first use so that importing this module does not import torch."""
    import torch

    class Fp8Linear(torch.nn.Module):
        """y = x W^T + b with x quantized by a fixed scale and W stored in e4m3; shapes as nn.Linear's."""

        weight: torch.Tensor
        weight_scale: torch.Tensor
        input_scale: torch.Tensor
        input_inv_scale: torch.Tensor
        bias: torch.Tensor | None

        def __init__(self, weight: Any, weight_scale: Any, input_amax: float, bias: Any, dtype: Any,
                     fast_accum: bool, shared: _SharedQuantization | None = None) -> None:
            super().__init__()
            input_scale = torch.tensor(input_amax / E4M3_MAX, dtype=torch.float32, device=weight.device)
            self.register_buffer("weight", weight)  # (out, in) row-major: its transpose is column-major
            self.register_buffer("weight_scale", weight_scale)
            self.register_buffer("input_scale", input_scale)
            self.register_buffer("input_inv_scale", 1.0 / input_scale)
            self.register_buffer("bias", bias.detach().to(dtype) if bias is not None else None)
            self.out_dtype = dtype
            self.fast_accum = fast_accum
            self.rowwise = weight_scale.dim() == 2
            self.shared = shared

        def quantize(self, x: Any) -> Any:
            """x as (rows, in_features) e4m3: scaled, clamped (e4m3 has no infinity: saturate) and cast."""
            rows = x.reshape(-1, x.shape[-1])
            return (rows.float() * self.input_inv_scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)

        def forward(self, x: Any) -> Any:
            q = self.shared(x, self.quantize) if self.shared is not None else self.quantize(x)
            scale_a = self.input_scale.expand(q.shape[0], 1).contiguous() if self.rowwise else self.input_scale
            out = torch._scaled_mm(q, self.weight.t(), scale_a, self.weight_scale, bias=self.bias,
                                   out_dtype=self.out_dtype, use_fast_accum=self.fast_accum)
            return out.reshape(*x.shape[:-1], out.shape[-1])

    return Fp8Linear


def _cast_inputs(module: Any, dtype: Any) -> Any:
    """``module`` behind a cast of its float inputs to ``dtype``: the runner feeds BF16 (FP8's compute dtype),
    and an FP16 variant must not mix the two."""
    import torch

    class CastInputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = module

        def forward(self, *args: Any) -> Any:
            return self.model(*[a.to(dtype) if a.is_floating_point() else a for a in args])

    return CastInputs()

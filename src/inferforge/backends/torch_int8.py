"""PyTorch INT8 on CPU: quantized in PyTorch, compiled by AOTInductor (freezing on) into a .pt2 package.

- ``dynamic``: int8 Linear weights, activations quantized per call, no calibration. torch 2.14
  deprecates ``torch.ao.quantization.quantize_dynamic`` for torchao, so a live module gets torchao's
  ``quantize_(Int8DynamicActivationInt8WeightConfig())``; an exported-program source (no nn.Linear
  left) or a torch without torchao gets PT2E with ``X86InductorQuantizer(is_dynamic=True)``, which
  measured 2-3x slower at batch 1. LSTMs stay FP32 (compiled by Inductor): quantize_dynamic's int8
  LSTM leaves Python only as TorchScript, and ran slower here than Inductor's FP32 LSTM.
- ``static``: PT2E: torch.export program -> ``prepare_pt2e`` with the X86 Inductor quantizer (u8
  activations per tensor, s8 weights per channel) -> calibration samples -> ``convert_pt2e``.

PT2E lives in ``torchao.quantization.pt2e``: torch 2.10+ dropped ``torch.ao.quantization.quantize_pt2e``,
which torch <= 2.9 still has and which is used there when torchao is missing. ``keep_fp32`` takes
module names as the user's model has them (``net.2``).

Why an AOTInductor package: quantized patterns fuse into oneDNN int8 kernels only when Inductor
freezes the weights, and compiling ahead of time ships those kernels, so a package loads in about
1 s with torch alone (no torchao, compiler or Python model). Saving the converted program and
compiling at load took 4.6-10.6 s to load (and its kernels ran slower in that try); TorchScript of
quantize_dynamic loads fastest but both APIs are deprecated. Measured on the 2-core EPYC (torch
2.14.1, torchao 0.18, 2 threads, fresh process per row, median of 200 runs, 3 repeats, host shared
with other jobs), a 4-layer 1024-wide MLP: eager FP32 0.20 ms at batch 1 / 0.90 ms at batch 16;
dynamic 0.054 / 0.15; static 0.12 / 0.16; build 6-17 s (all but ~1 s the AOTInductor compile), load
1.0-1.1 s, 4.9 MB against 12.7 MB of FP32 weights. The price, as for ``aoti``: a package runs only on
the torch X.Y series and vector ISA that built it.
"""

from __future__ import annotations

import copy
import logging
import platform
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

from inferforge.backends.aoti import PACKAGE, AotInductorBackend, compile_package, vector_isa
from inferforge.backends.base import (
    SEARCH_ORDER,
    Artifact,
    Backend,
    BackendOptions,
    BuildConfig,
    Runner,
    artifact_from_dir,
    one_of,
)
from inferforge.capture import at_least_batch_2, export_dynamic_shapes, make_flat_module
from inferforge.data import Dataset
from inferforge.environment import cpu_flags, version_of
from inferforge.errors import BuildError, Unavailable, one_line
from inferforge.source import ModelSource, SourceKind
from inferforge.types import ModelSpec, Precision

MODES = ("dynamic", "static")
CALIBRATION_BATCH = 16
SENSITIVITY_SAMPLES = 32
# ModelSource wraps the user's module as the attribute ``model``: users name layers without it.
_ROOT = "model."
_NEEDS_TORCHAO = ("INT8 through PT2E needs torchao (pip install torchao): torch 2.10 and later no longer "
                  "carry torch.ao.quantization.quantize_pt2e")


@dataclass(frozen=True)
class TorchInt8Options(BackendOptions):
    mode: str = "dynamic"  # "dynamic" (weights int8, activations per call) or "static" (calibrated)
    keep_fp32: tuple[str, ...] = ()  # module names left unquantized, e.g. "encoder.layer.0.output.dense"

    def problems(self) -> list[str]:
        return one_of("mode", self.mode, MODES)

    def precision_problems(self, precision: Precision) -> list[str]:
        return [] if precision is Precision.INT8 else [f"torch-int8 builds int8, not {precision.value}"]

    def with_fp32_layers(self, layers: tuple[str, ...]) -> TorchInt8Options:
        return replace(self, keep_fp32=layers)


class TorchInt8Backend(Backend):
    name = "torch-int8"
    accepts = frozenset({SourceKind.TORCH, SourceKind.EXPORTED})
    options_type = TorchInt8Options

    def search_order(self, config: BuildConfig) -> int:
        return SEARCH_ORDER["slow"]  # quantize, then an AOTInductor compile with freezing: minutes
    refusals = {SourceKind.TORCHSCRIPT: "PT2E quantizes torch.export programs; TorchScript cannot be exported"}

    def configs(self, device: str) -> list[BuildConfig]:
        return [BuildConfig(self.name, Precision.INT8, device, TorchInt8Options(mode)) for mode in MODES]

    def unavailable_reason(self, config: BuildConfig, source: ModelSource) -> str | None:
        reason = super().unavailable_reason(config, source)
        options = TorchInt8Options.of(config)
        if reason:
            return reason
        if platform.machine() not in ("x86_64", "AMD64"):
            return f"the X86 Inductor quantizer targets x86-64 CPUs, this machine is {platform.machine()}"
        if options.mode == "dynamic" and source.kind is SourceKind.TORCH and _torchao_dynamic() is not None:
            return None
        try:
            _pt2e_api()
        except Unavailable as exc:
            return str(exc)
        return None

    def build(self, source: ModelSource, config: BuildConfig, out_dir: Path, *,
              calibration: Dataset | None = None) -> Artifact:
        """Quantize, then AOTInductor-compile with freezing into ``model.pt2``. Raises BuildError."""
        import torch
        options = TorchInt8Options.of(config)
        started = time.perf_counter()
        program, method, quantized = quantize(source, options, calibration)
        quantize_seconds = time.perf_counter() - started
        freezing = True
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "To copy construct from a tensor", UserWarning)  # torch's own lowering
            requires = compile_package(program, out_dir, inductor_configs={"freezing": True})
        problem = _package_disagrees(program, out_dir, source, calibration)
        if problem:  # freezing miscompiled it: without freezing the package is the program, unfused but right
            freezing = False
            requires = compile_package(program, out_dir, inductor_configs={"freezing": False})
            if _package_disagrees(program, out_dir, source, calibration):
                raise BuildError(f"the AOTInductor package disagrees with the quantized program it was "
                                 f"compiled from, with and without freezing ({problem})")
        isa = vector_isa()
        details: dict[str, Any] = {
            "format": f"AOTInductor package ({'freezing' if freezing else 'no freezing: ' + problem})", "mode": options.mode, "method": method,
            "quantized_layers": quantized, "keep_fp32": list(options.keep_fp32), "vector_isa": isa,
            "int8_dot_product": "avx512_vnni" if "avx512_vnni" in cpu_flags() else "none (no VNNI)",
            "quantize_seconds": round(quantize_seconds, 2),
            "compile_seconds": round(time.perf_counter() - started - quantize_seconds, 2)}
        if options.mode == "static" and calibration is not None:
            details.update(calibration=calibration.origin, calibration_samples=len(calibration))
        return artifact_from_dir(config, out_dir, requires, details)

    def load(self, artifact: Artifact, spec: ModelSpec, threads: int) -> Runner:
        return AotInductorBackend().load(artifact, spec, threads)

    def sensitive_layers(self, source: ModelSource, config: BuildConfig, artifact: Artifact,
                         calibration: Dataset) -> list[str]:
        """Linear/Conv modules worst first by the relative L2 error of their own output when their input
        (per tensor, u8) and weight (per output channel, s8) are fake-quantized, on the first
        ``SENSITIVITY_SAMPLES`` calibration samples, each layer fed its FP32 input: one FP32 pass with
        forward hooks, no rebuild. A proxy for either mode's int8 error. Exported programs keep no
        modules to hook: none are offered for them."""
        import torch

        if source.kind is not SourceKind.TORCH:
            return []
        modules = {name: source.module.get_submodule(_ROOT + name) for name in quantizable_layers(source)}
        layers = {name: m for name, m in modules.items()
                  if isinstance(m, torch.nn.Linear | torch.nn.modules.conv._ConvNd)}  # not F.linear callers
        errors = {name: [0.0, 0.0] for name in layers}

        def hook(name: str) -> Any:
            def measure(module: Any, inputs: tuple, output: Any) -> None:
                weight = _fake_quantize(module.weight, per_channel=True)
                approx = (torch.nn.functional.linear(_fake_quantize(inputs[0]), weight, module.bias)
                          if isinstance(module, torch.nn.Linear) else
                          module._conv_forward(_fake_quantize(inputs[0]), weight, module.bias))
                errors[name][0] += float((approx - output).pow(2).sum())
                errors[name][1] += float(output.pow(2).sum())
            return measure

        handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
        try:
            samples = Dataset(calibration.take(min(SENSITIVITY_SAMPLES, len(calibration))), None, calibration.origin)
            with torch.inference_mode():
                for args in _torch_batches(samples, source.spec):
                    source.module(*args)
        finally:
            for handle in handles:
                handle.remove()
        seen = {name: (err / norm) ** 0.5 if norm else err for name, (err, norm) in errors.items() if err or norm}
        return sorted(seen, key=lambda name: -seen[name])


def quantize(source: ModelSource, options: TorchInt8Options, calibration: Dataset | None) -> tuple[Any, str, int]:
    """(the quantized torch.export program, how it was quantized, how many layers are int8). Raises
    BuildError without calibration for static, when a ``keep_fp32`` name is no quantizable layer, or
    when nothing is left to quantize."""
    import torch

    if options.mode == "static" and calibration is None:
        raise BuildError("static INT8 sets activation scales from calibration samples, and none were given: "
                         "pass calibration data (--calibration, or --data with real samples), or use mode "
                         "'dynamic'")
    names = quantizable_layers(source)
    unknown = sorted(set(options.keep_fp32) - set(names))
    if unknown:
        raise BuildError(f"keep_fp32 names {unknown} are not Linear/Conv layers of the model; its layers are "
                         f"{', '.join(names) or 'none'}")
    torchao_dynamic = _torchao_dynamic() if source.kind is SourceKind.TORCH else None
    if options.mode == "dynamic" and torchao_dynamic is not None:
        quantize_, config = torchao_dynamic
        chosen: list[str] = []

        def wanted(module: Any, fqn: str) -> bool:
            take = isinstance(module, torch.nn.Linear) and fqn.removeprefix(_ROOT) not in options.keep_fp32
            if take:
                chosen.append(fqn)
            return take

        model = copy.deepcopy(source.module)
        quantize_(model, config(), filter_fn=wanted)
        program, quantized = _export(model, source), len(chosen)
        method = f"torchao {version_of('torchao')} Int8DynamicActivationInt8WeightConfig"
    else:
        prepare, convert, x86, origin = _pt2e_api()
        quantizer = x86.X86InductorQuantizer().set_global(
            x86.get_default_x86_inductor_quantization_config(is_dynamic=options.mode == "dynamic"))
        program, prefix = _program(source)
        for name in sorted(options.keep_fp32):
            quantizer.set_module_name_qconfig(prefix + name, None)
        # PT2E rewrites the module it is given (and folds batch norms into weights): work on a copy.
        try:
            prepared = prepare(copy.deepcopy(program.module()), quantizer)
        except IndexError as exc:  # torchao's linear+unary matcher indexes an empty partition output list
            raise BuildError(f"{origin}'s X86InductorQuantizer cannot annotate this graph (an upstream "
                             f"limitation, seen on transformer encoders: {one_line(exc, 80)}); use mode "
                             "'dynamic'") from exc
        samples = calibration if calibration is not None and options.mode == "static" else \
            Dataset(source.example_inputs, None, "the source's example inputs")  # dynamic: weight observers
        for args in _torch_batches(samples, source.spec):
            prepared(*args)  # no inference_mode: prepared observers update their buffers in place
        converted = convert(prepared)
        quantized = sum("dequantize_per_channel" in str(node.target) for node in converted.graph.nodes)
        flat = make_flat_module(converted, source.spec.input_names, by_keyword=False)
        program, method = _export(flat, source), f"PT2E X86InductorQuantizer ({origin})"
    if not quantized:
        raise BuildError(f"{options.mode} INT8 found nothing to quantize ({method} quantizes Linear"
                         f"{'' if options.mode == 'dynamic' else ' and Conv'} layers; kept in FP32: "
                         f"{', '.join(options.keep_fp32) or 'none'})")
    return program, method, quantized


def quantizable_layers(source: ModelSource) -> list[str]:
    """The Linear and Conv modules the program calls, in call order, named as in the user's model."""
    import torch

    targets = {torch.ops.aten.linear.default, torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default,
               torch.ops.aten.conv3d.default}
    program, prefix = _program(source)
    names: list[str] = []
    for node in program.graph.nodes:
        stack = list(node.meta.get("nn_module_stack", {}).values())
        path = stack[-1][0].removeprefix("L['self'].") if stack else ""
        if node.target in targets and path.startswith(prefix) and path[len(prefix):] not in ("", *names):
            names.append(path[len(prefix):])
    return names


def _program(source: ModelSource) -> tuple[Any, str]:
    """The torch.export program PT2E annotates, and the prefix of its module names. An exported-program
    source is read again from its file: the source's own re-export lost the module metadata
    (names, source functions) the quantizer matches on."""
    import torch

    if source.kind is SourceKind.EXPORTED and source.path is not None:
        return torch.export.load(str(source.path)), ""
    return source.exported_program(), _ROOT


@cache
def _pt2e_api() -> tuple[Any, Any, Any, str]:
    """(prepare_pt2e, convert_pt2e, the x86_inductor_quantizer module, where they come from). Raises
    Unavailable with the reason when neither torchao nor this torch has them."""
    import torch

    try:
        with _quiet_torchao():
            from torchao.quantization.pt2e import quantize_pt2e
            from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer
        return quantize_pt2e.prepare_pt2e, quantize_pt2e.convert_pt2e, x86_inductor_quantizer, \
            f"torchao {version_of('torchao')}"
    except Exception as exc:
        torchao_problem = "" if isinstance(exc, ModuleNotFoundError) else f" (torchao: {one_line(exc, 120)})"
    if tuple(int(p) for p in torch.__version__.split(".")[:2]) < (2, 10):
        try:
            from torch.ao.quantization import quantize_pt2e as legacy  # type: ignore[attr-defined]
            from torch.ao.quantization.quantizer import x86_inductor_quantizer as legacy_x86
            return legacy.prepare_pt2e, legacy.convert_pt2e, legacy_x86, f"torch {torch.__version__} torch.ao"
        except ImportError:
            pass
    raise Unavailable(_NEEDS_TORCHAO + torchao_problem)


@cache
def _torchao_dynamic() -> tuple[Any, Any] | None:
    """(torchao's quantize_, Int8DynamicActivationInt8WeightConfig), or None without a working torchao."""
    try:
        with _quiet_torchao():
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except Exception:
        return None
    return quantize_, Int8DynamicActivationInt8WeightConfig


@contextmanager
def _quiet_torchao() -> Iterator[None]:
    """torchao's import logs a warning about its own enum registration through torch's pytree logger."""
    logger = logging.getLogger("torch.utils._pytree")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _export(module: Any, source: ModelSource) -> Any:
    """torch.export a ``forward(*args)`` module returning a flat tuple, with the source's dynamic dims."""
    import torch

    args = tuple(torch.from_numpy(v) for v in at_least_batch_2(source.spec, source.example_inputs).values())
    return torch.export.export(module, args, dynamic_shapes=(export_dynamic_shapes(source.spec, source.dim_ranges),), strict=False)


def _package_disagrees(program: Any, out_dir: Path, source: ModelSource, calibration: Dataset | None) -> str:
    """Why the compiled package is not the quantized program it came from, or "". Inductor's freezing
    (with grad off) miscompiled the trained digits CNN, FP32 as well as int8: top-1 11.6% against the
    program's 98.4%. Quantization error is the program's own, so package and program must agree closely."""
    import torch
    from torch._inductor import aoti_load_package

    samples = calibration if calibration is not None else Dataset(source.example_inputs, None, "examples")
    args = next(_torch_batches(Dataset(samples.take(min(CALIBRATION_BATCH, len(samples))), None, ""), source.spec))
    with torch.no_grad():
        want, got = program.module()(*args), aoti_load_package(str(out_dir / PACKAGE))(*args)
    for w, g in zip(want, got, strict=True):
        w, g = w.float().flatten(1), g.float().flatten(1)
        cosine = float(torch.nn.functional.cosine_similarity(w, g, dim=1, eps=1e-12).min())
        if cosine < 0.99:
            return f"output cosine {cosine:.3f} against the quantized program"
    return ""


def _torch_batches(dataset: Dataset, spec: ModelSpec) -> Any:
    import torch

    for batch in dataset.batches(CALIBRATION_BATCH):
        yield [torch.from_numpy(batch[name]) for name in spec.input_names]


def _fake_quantize(tensor: Any, per_channel: bool = False) -> Any:
    """Round-trip through int8 as the X86 quantizer would: weights symmetric s8 per output channel
    (axis 0), activations asymmetric u8 per tensor over the range seen."""
    if per_channel:
        scale = tensor.abs().amax(dim=tuple(range(1, tensor.dim())), keepdim=True).clamp(min=1e-12) / 127
        return (tensor / scale).round().clamp(-128, 127) * scale
    low, high = min(float(tensor.min()), 0.0), max(float(tensor.max()), 0.0)
    scale = max(high - low, 1e-12) / 255
    zero = round(-low / scale)
    return ((tensor / scale).round() + zero).clamp(0, 255).sub(zero) * scale

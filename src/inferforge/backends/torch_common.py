"""What the PyTorch-based backends share: the runner, precision casting, device placement, threads.

On CUDA, the runner keeps its inputs on the GPU (``to_native`` copies them there),
converts 4-D float inputs and the module to channels_last (what tensor-core
convolutions want), and runs under an explicit TF32 setting: cuDNN allows TF32 for
convolutions by default, so an "fp32" candidate that does not switch it off would be
TF32 in disguise, and a TF32 one that does not switch it on would leave matrix
products in full FP32. The setting is restored after each call, so candidates in
one process do not change each other's numerics.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from inferforge.backends.base import Artifact, Backend, BuildConfig, Runner
from inferforge.environment import (
    cuda_capability,
    cuda_requirement,
    cuda_unavailable_reason,
    native_bf16_reason,
)
from inferforge.operator_profile import PROFILED_RUNS, OperatorProfile, torch_operators
from inferforge.source import ModelSource
from inferforge.types import ModelSpec, Precision

# The lowest compute capability each precision runs at natively on an NVIDIA GPU.
CUDA_MIN_CAPABILITY = {Precision.FP32: "5.0", Precision.FP16: "7.0", Precision.TF32: "8.0", Precision.BF16: "8.0",
                       Precision.FP8: "8.9", Precision.INT8: "8.0"}


def set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def cast_module(module: Any, precision: Precision) -> Any:
    import torch

    if precision is Precision.BF16:
        return module.to(torch.bfloat16)
    if precision is Precision.FP16:
        return module.to(torch.float16)
    return module


def compute_dtype(precision: Precision, device: str = "cpu") -> Any:
    """The dtype float inputs are cast to before the call (None: keep float32). FP8 models, and INT8
    models on a GPU (torchao), take BF16: only their linear layers compute in 8 bits."""
    import torch

    if precision is Precision.INT8:
        return torch.bfloat16 if device == "cuda" else None
    return {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16, Precision.FP8: torch.bfloat16}.get(
        precision)


def precision_unavailable(precision: Precision, device: str = "cpu") -> str | None:
    if device == "cuda":
        reason = cuda_unavailable_reason()
        if reason:
            return reason
        need = CUDA_MIN_CAPABILITY.get(precision)
        if need is None:
            return f"{precision.value} is not built on cuda by this backend"
        have = cuda_capability() or "0.0"
        if tuple(map(int, have.split("."))) < tuple(map(int, need.split("."))):
            return f"{precision.value} needs CUDA compute capability {need} or newer; this GPU has {have}"
        return None
    if precision is Precision.BF16:
        return native_bf16_reason()
    if precision is not Precision.FP32:
        return f"{precision.value} is not built on cpu"
    return None


def device_requirement(config: BuildConfig, compiled_for_this_gpu: bool = False) -> dict[str, str]:
    """What a CUDA artifact needs of the GPU it loads on (nothing for CPU artifacts)."""
    if config.device != "cuda":
        return {}
    return cuda_requirement(compiled_for_this_gpu, CUDA_MIN_CAPABILITY.get(config.precision, "7.0"))


def wants_channels_last(spec: ModelSpec, device: str) -> bool:
    """Image models on a GPU: NHWC is what cuDNN's tensor-core convolutions run on without transposes."""
    return device == "cuda" and any(len(s.shape) == 4 and s.dtype.startswith("float") for s in spec.inputs)


def load_program(path: Path, device: str) -> Any:
    """A saved torch.export program as a module on ``device``; device constants in the graph move too."""
    import torch

    return _moved(torch.export.load(str(path)), device).module()


def _moved(program: Any, device: str) -> Any:
    """The program with its weights and the device arguments inside its graph on ``device``. An indexed
    device ("cuda:0"): the graph's tensor-metadata asserts compare the index too, under torch.compile."""
    if device == "cpu":
        return program
    import torch
    from torch.export.passes import move_to_device_pass

    return move_to_device_pass(program, str(torch.device(device, torch.cuda.current_device())))


def place_module(module: Any, config: BuildConfig, spec: ModelSpec) -> Any:
    """Cast to the candidate's precision, move to its device, channels_last for image models on GPU."""
    import torch

    module = cast_module(module, config.precision)
    if config.device != "cpu":
        module = module.to(config.device)
    if wants_channels_last(spec, config.device):
        module = module.to(memory_format=torch.channels_last)
    return module


def export_placed(source: ModelSource, config: BuildConfig) -> Any:
    """The source's exported program as the candidate computes it: on its device, weights in its precision.
    Ahead-of-time compilers (AOTInductor) bake both into the library, so they export this, not the
    FP32 CPU program."""
    import torch

    from inferforge.capture import export_dynamic_shapes

    program = source.exported_program()
    dtype = compute_dtype(config.precision, config.device)
    if config.device == "cpu" and dtype is None:
        return program
    module = cast_module(_moved(program, config.device).module(), config.precision)
    args = tuple(a.to(config.device) for a in source.export_args())
    if dtype is not None:
        args = tuple(a.to(dtype) if a.is_floating_point() else a for a in args)
    # The program's module takes the inputs as separate arguments: one dynamic-shape entry each.
    return torch.export.export(module, args, dynamic_shapes=export_dynamic_shapes(source.spec, source.dim_ranges), strict=False)


def load_placed(artifact: Artifact, spec: ModelSpec, program_file: str) -> Any:
    """An artifact's saved program as a module ready to run: on its device, in its precision."""
    module = load_program(artifact.directory / program_file, artifact.config.device)
    return place_module(module, artifact.config, spec)


@contextmanager
def tf32_mode(precision: Precision, device: str) -> Iterator[None]:
    """TF32 on for a TF32 candidate and off for every other CUDA candidate, restored afterwards."""
    if device != "cuda":
        yield
        return
    import torch

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    allow = precision is Precision.TF32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@contextmanager
def cudnn_benchmark(on: bool = True) -> Iterator[None]:
    """``torch.backends.cudnn.benchmark`` set for the block and restored afterwards: cuDNN times its
    algorithms for each new shape and keeps the fastest, instead of taking its heuristic's first pick."""
    import torch

    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


class TorchBackend(Backend):
    """A backend that computes in PyTorch: besides the source kind, the precision must run natively here."""

    devices: ClassVar[frozenset[str]] = frozenset({"cpu", "cuda"})

    def unavailable_reason(self, config: BuildConfig, source: ModelSource) -> str | None:
        return super().unavailable_reason(config, source) or precision_unavailable(config.precision, config.device)


class TorchRunner(Runner):
    """Calls a torch callable under inference_mode; casts float inputs to the compute precision
    and float outputs back to the spec's dtype, so callers always see the spec's dtypes.

    ``clone_outputs``: for callables that reuse their output buffers (CUDA graph replays), so that
    the next call does not overwrite what the caller holds."""

    native = "torch"

    def __init__(self, spec: ModelSpec, artifact: Artifact, fn: Any, clone_outputs: bool = False,
                 channels_last: bool | None = None, cast_inputs: bool = True) -> None:
        super().__init__(spec, artifact)
        import torch

        self._fn = fn
        # cast_inputs=False: ``fn`` takes FP32 inputs and chooses its own precision (torch.autocast).
        self._compute_dtype = compute_dtype(artifact.config.precision, artifact.config.device) if cast_inputs \
            else None
        self._clone = clone_outputs
        self._channels_last = wants_channels_last(spec, self.device) if channels_last is None else channels_last
        self._torch = torch

    def threads(self) -> int:
        return int(self._torch.get_num_threads())  # torch's intra-op threads are per process

    def profile_operators(self, inputs: Mapping[str, Any], runs: int, trace_path: Path | None) -> OperatorProfile:
        return torch_operators(lambda: self(inputs), self.synchronize, self.device.startswith("cuda"),
                               min(max(1, runs), PROFILED_RUNS), trace_path)

    def to_native(self, inputs: Any) -> list[Any]:
        args = super().to_native(inputs)
        if self.device == "cpu":
            return args
        torch = self._torch
        moved = [a.to(self.device, non_blocking=True) for a in args]
        if self._channels_last:
            moved = [a.contiguous(memory_format=torch.channels_last) if a.dim() == 4 and a.is_floating_point() else a
                     for a in moved]
        return moved

    def run_native(self, args: list[Any]) -> list[Any]:
        torch = self._torch
        if self._compute_dtype is not None:
            args = [a.to(self._compute_dtype) if a.is_floating_point() else a for a in args]
        with torch.inference_mode(), tf32_mode(self.artifact.config.precision, self.device):
            outputs = self._fn(*args)
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        converted = []
        for s, o in zip(self.spec.outputs, outputs, strict=True):
            c = o.to(getattr(torch, s.dtype)) if o.is_floating_point() else o
            converted.append(c.clone() if self._clone and c.data_ptr() == o.data_ptr() else c)
        return converted

    def synchronize(self) -> None:
        if self.device == "cuda":
            self._torch.cuda.synchronize()

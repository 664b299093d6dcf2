"""What the PyTorch-based backends share: the runner, precision casting, thread settings."""

from __future__ import annotations

from typing import Any

from inferforge.backends.base import Artifact, Backend, BuildConfig, Runner
from inferforge.environment import native_bf16_reason
from inferforge.source import ModelSource
from inferforge.types import ModelSpec, Precision


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


def precision_unavailable(precision: Precision) -> str | None:
    if precision is Precision.BF16:
        return native_bf16_reason()
    if precision is not Precision.FP32:
        return f"{precision.value} is not built on cpu"
    return None


class TorchBackend(Backend):
    """A backend that computes in PyTorch: besides the source kind, the precision must run natively here."""

    def unavailable_reason(self, config: BuildConfig, source: ModelSource) -> str | None:
        return super().unavailable_reason(config, source) or precision_unavailable(config.precision)


class TorchRunner(Runner):
    """Calls a torch callable under inference_mode; casts float inputs to the compute precision
    and float outputs back to the spec's dtype, so callers always see the spec's dtypes."""

    native = "torch"

    def __init__(self, spec: ModelSpec, artifact: Artifact, fn: Any) -> None:
        super().__init__(spec, artifact)
        import torch

        self._fn = fn
        self._compute_dtype = {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}.get(
            artifact.config.precision)

    def run_native(self, args: list[Any]) -> list[Any]:
        import torch

        if self._compute_dtype is not None:
            args = [a.to(self._compute_dtype) if a.is_floating_point() else a for a in args]
        with torch.inference_mode():
            outputs = self._fn(*args)
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        return [o.to(getattr(torch, s.dtype)) if o.is_floating_point() else o
                for s, o in zip(self.spec.outputs, outputs, strict=True)]

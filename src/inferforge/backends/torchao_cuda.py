"""FP8 and INT8 linear layers on NVIDIA GPUs through torchao.

Three schemes, each a candidate:

- ``fp8-rowwise`` (Ada/Hopper): ``Float8DynamicActivationFloat8WeightConfig`` with
  per-row scales. Each weight row and each activation row gets its own scale, computed
  from the data at run time, so no calibration set is needed; the products run on the
  FP8 tensor cores (``torch._scaled_mm``), twice the FP16 rate on an H100.
- ``int8-dynamic``: INT8 weights (per channel) and INT8 activations scaled per token at
  run time; the products run on the INT8 tensor cores (``torch._int_mm``). That kernel
  takes only matrices whose sizes are multiples of 8 and more than 16 rows, so layers of
  other sizes stay BF16 and a model whose linear layers see 16 rows or fewer (an MLP
  at batch 1) fails its measurement, which the search reports.
- ``int8-weight-only`` (``--thorough`` only): INT8 weights dequantized inside the matrix
  product, half the weight bytes of FP16; compiling BERT-base with it takes minutes
  (docs/benchmarks.md).

At BERT-base's sizes the per-token scaling and the casts around each matrix product cost more than the
faster tensor cores save (figures in docs/benchmarks.md's GPU section); ``fp8_static.py`` fixes the scales
at build time instead.

Everything that is not an ``nn.Linear`` (attention softmax, layer norms, convolutions)
stays in BF16: torchao's configs quantize linear layers only, and PyTorch has no INT8
or FP8 convolution kernel on CUDA (its quantized convolutions are CPU engines), so a
convnet gains little here and the search's measurements show it.

The quantized module is exported with torch.export, which traces torchao's tensor
subclasses into plain tensors and ``_scaled_mm`` calls, so the artifact is an ordinary
exported program: no pickle, and no torchao import needed to unpickle anything. It is
compiled with CUDA graphs per batch bucket at load, like the ``inductor`` GPU
candidates.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferforge.backends.base import (
    PROGRAM,
    SEARCH_ORDER,
    Artifact,
    BackendOptions,
    BuildConfig,
    Runner,
    artifact_from_dir,
)
from inferforge.backends.cuda_graphs import BUCKETS
from inferforge.backends.inductor import (
    graphed_program_runner,
)
from inferforge.backends.torch_common import (
    TorchBackend,
    device_requirement,
)
from inferforge.capture import export_dynamic_shapes
from inferforge.data import Dataset
from inferforge.environment import torch_requirement
from inferforge.source import ModelSource, SourceKind
from inferforge.types import ModelSpec, Precision


@dataclass(frozen=True)
class TorchaoOptions(BackendOptions):
    """``scheme``: one of ``SCHEMES`` (see the module docstring)."""

    scheme: str = "fp8-rowwise"


# scheme -> the precision it is listed under
SCHEMES = {"fp8-rowwise": Precision.FP8, "int8-dynamic": Precision.INT8, "int8-weight-only": Precision.INT8}
THOROUGH_ONLY = ("int8-weight-only",)


class TorchaoCudaBackend(TorchBackend):
    name = "torchao"
    accepts = frozenset({SourceKind.TORCH})
    refusals = {SourceKind.EXPORTED: "torchao quantizes nn.Linear modules; an exported program has none left",
                SourceKind.TORCHSCRIPT: "torchao quantizes nn.Linear modules, not TorchScript"}
    options_type = TorchaoOptions
    packages = ("torch", "torchao")

    def search_order(self, config: BuildConfig) -> int:
        return SEARCH_ORDER["slow"]  # FP8/INT8 GPU compiles took minutes and lost to FP16 so far
    devices = frozenset({"cuda"})

    def configs(self, device: str) -> list[BuildConfig]:
        if device != "cuda":
            return []
        return [BuildConfig(self.name, precision, device, TorchaoOptions(scheme))
                for scheme, precision in SCHEMES.items() if scheme not in THOROUGH_ONLY]

    def needs_calibration(self, config: BuildConfig) -> bool:
        return False  # every scheme scales activations from the data at run time

    def thorough_configs(self, device: str) -> list[BuildConfig]:
        if device != "cuda":
            return []
        return [BuildConfig(self.name, SCHEMES[s], device, TorchaoOptions(s)) for s in THOROUGH_ONLY]

    def unavailable_reason(self, config: BuildConfig, source: ModelSource) -> str | None:
        """torchao installed, then what every torch backend checks: source kind, device, and that this GPU
        computes the precision natively (FP8: compute capability 8.9, Ada and Hopper)."""
        if TorchaoOptions.of(config).scheme not in SCHEMES:
            return f"unknown torchao scheme {TorchaoOptions.of(config).scheme!r}; known: {', '.join(SCHEMES)}"
        return super().unavailable_reason(config, source)

    def build(self, source: ModelSource, config: BuildConfig, out_dir: Path, *,
              calibration: Dataset | None = None) -> Artifact:
        import torch
        from torchao.quantization import quantize_

        module = copy.deepcopy(source.module).to("cuda", torch.bfloat16).eval()
        takes = _layer_filter(TorchaoOptions.of(config).scheme)
        linears = sum(takes(m, name) for name, m in module.named_modules())
        if linears == 0:
            raise ValueError(f"the model has no nn.Linear layer {TorchaoOptions.of(config).scheme} can take: it would change "
                             "nothing")
        quantize_(module, _torchao_config(TorchaoOptions.of(config).scheme), filter_fn=takes)
        args = tuple(a.to("cuda") for a in source.export_args())
        args = tuple(a.to(torch.bfloat16) if a.is_floating_point() else a for a in args)
        with torch.no_grad():  # not inference_mode: export cannot trace torchao's subclasses on inference tensors
            program = torch.export.export(module, args, dynamic_shapes=(export_dynamic_shapes(source.spec, source.dim_ranges),),
                                          strict=False)
        torch.export.save(program, str(out_dir / PROGRAM))
        requires = {**torch_requirement(same_series=True), **device_requirement(config)}
        return artifact_from_dir(config, out_dir, requires, {
            "format": "torch.export (torchao traced)", "scheme": TorchaoOptions.of(config).scheme,
            "quantized_linear_layers": linears, "static_batch_sizes": list(BUCKETS)})

    def load(self, artifact: Artifact, spec: ModelSpec, threads: int) -> Runner:
        return graphed_program_runner(artifact, spec, threads)


def _torchao_config(scheme: str) -> Any:
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        PerRow,
    )

    if scheme == "fp8-rowwise":
        return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    if scheme == "int8-dynamic":
        return Int8DynamicActivationInt8WeightConfig()
    return Int8WeightOnlyConfig()


def _layer_filter(scheme: str) -> Any:
    """Which modules a scheme quantizes: linear layers, and for INT8 dynamic only those whose sizes
    torch._int_mm takes (multiples of 8)."""
    import torch

    def takes(module: Any, name: str) -> bool:
        if not isinstance(module, torch.nn.Linear):
            return False
        return scheme != "int8-dynamic" or (module.in_features % 8 == 0 and module.out_features % 8 == 0)

    return takes

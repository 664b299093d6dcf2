"""FP8 on Hopper (and Ada) GPUs through torchao: linear layers with FP8 weights and activations.

``Float8DynamicActivationFloat8WeightConfig`` with per-row scales: each weight row and
each activation row gets its own scale, computed from the data at run time, so no
calibration set is needed; the matrix products run on the FP8 tensor cores
(``torch._scaled_mm``), twice the FP16 rate on an H100. Everything that is not an
``nn.Linear`` (attention softmax, layer norms, convolutions) stays in BF16: torchao's
configs quantize linear layers only, so a convnet gains little here (its convolutions
stay BF16) and the search's measurements show it.

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

from inferforge.backends.base import Artifact, BuildConfig, Runner, artifact_from_dir
from inferforge.backends.cuda_graphs import BUCKETS
from inferforge.backends.inductor import InductorOptions, compile_module, graphed_runner
from inferforge.backends.torch_common import (
    TorchBackend,
    device_requirement,
    load_program,
    set_torch_threads,
)
from inferforge.data import Dataset
from inferforge.environment import torch_requirement, version_of
from inferforge.source import ModelSource, SourceKind, export_dynamic_shapes
from inferforge.types import ModelSpec, Precision

PROGRAM = "model.pt2"


@dataclass(frozen=True)
class TorchaoOptions:
    """``scheme``: "fp8-rowwise" (dynamic FP8 activations and weights, one scale per row)."""

    scheme: str = "fp8-rowwise"


class TorchaoCudaBackend(TorchBackend):
    name = "torchao"
    accepts = frozenset({SourceKind.TORCH})
    refusals = {SourceKind.EXPORTED: "torchao quantizes nn.Linear modules; an exported program has none left",
                SourceKind.TORCHSCRIPT: "torchao quantizes nn.Linear modules, not TorchScript"}
    options_type = TorchaoOptions
    devices = frozenset({"cuda"})

    def configs(self, device: str) -> list[BuildConfig]:
        return [BuildConfig(self.name, Precision.FP8, device, TorchaoOptions())] if device == "cuda" else []

    def unavailable_reason(self, config: BuildConfig, source: ModelSource) -> str | None:
        """torchao installed, then what every torch backend checks: source kind, device, and that this GPU
        computes the precision natively (FP8: compute capability 8.9, Ada and Hopper)."""
        if version_of("torchao") is None:
            return "torchao is not installed (pip install torchao)"
        return super().unavailable_reason(config, source)

    def build(self, source: ModelSource, config: BuildConfig, out_dir: Path, *,
              calibration: Dataset | None = None) -> Artifact:
        import torch
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        module = copy.deepcopy(source.module).to("cuda", torch.bfloat16).eval()
        linears = sum(isinstance(m, torch.nn.Linear) for m in module.modules())
        if linears == 0:
            raise ValueError("the model has no nn.Linear layer: FP8 would change nothing")
        quantize_(module, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
        args = tuple(a.to("cuda") for a in source.export_args())
        args = tuple(a.to(torch.bfloat16) if a.is_floating_point() else a for a in args)
        with torch.no_grad():  # not inference_mode: export cannot trace torchao's subclasses on inference tensors
            program = torch.export.export(module, args, dynamic_shapes=(export_dynamic_shapes(source.spec),),
                                          strict=False)
        torch.export.save(program, str(out_dir / PROGRAM))
        requires = {**torch_requirement(same_series=True), **device_requirement(config)}
        return artifact_from_dir(config, out_dir, requires, {
            "format": "torch.export (torchao FP8 traced)", "scheme": config.options.scheme,
            "fp8_linear_layers": linears, "static_batch_sizes": list(BUCKETS)})

    def load(self, artifact: Artifact, spec: ModelSpec, threads: int) -> Runner:
        set_torch_threads(threads)
        module = load_program(artifact.directory / PROGRAM, "cuda")
        return graphed_runner(spec, artifact, compile_module(module, InductorOptions(), "cuda"))

"""TorchScript: trace and freeze, with a check for the control flow tracing drops.

Tracing records one path through the model: an ``if`` on tensor values is frozen
at whatever branch the example took. We compare traced and eager outputs on
several different inputs; on a mismatch we try ``torch.jit.script`` (which keeps
control flow) and otherwise reject the candidate with the figure that failed.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from inferforge.backends.base import SEARCH_ORDER, Artifact, Backend, BuildConfig, Runner, artifact_from_dir
from inferforge.backends.torch_common import TorchRunner, set_torch_threads
from inferforge.capture import at_least_batch_2
from inferforge.data import Dataset, generate_inputs
from inferforge.errors import BuildError, one_line
from inferforge.source import ModelSource, SourceKind
from inferforge.types import ModelSpec

MODULE = "model.ts"
# Probe batches of other sizes and values than the trace example, each also with its float inputs
# negated, so a branch on a sign or a threshold sees both sides; tolerance scales with output size.
_PROBE_BATCHES = (1, 3, 5)
_RTOL, _ATOL = 1e-3, 1e-4


class TorchScriptBackend(Backend):
    name = "torchscript"
    accepts = frozenset({SourceKind.TORCH, SourceKind.TORCHSCRIPT, SourceKind.EXPORTED})
    portable = True
    export_formats = {"torchscript": MODULE}

    def search_order(self, config: BuildConfig) -> int:
        return SEARCH_ORDER["likely"] + 5  # builds in seconds; after the runtimes that usually win on a CPU

    def build(self, source: ModelSource, config: BuildConfig, out_dir: Path, *,
              calibration: Dataset | None = None) -> Artifact:
        import torch

        examples = tuple(torch.from_numpy(v) for v in at_least_batch_2(source.spec, source.example_inputs).values())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.10+ marks TorchScript deprecated
            warnings.simplefilter("always", torch.jit.TracerWarning)
            traced = _freeze(torch.jit.trace(source.module, examples, check_trace=False, strict=False))
        tracer_warnings = sorted({str(w.message).split(".")[0] for w in caught
                                  if issubclass(w.category, torch.jit.TracerWarning)})
        mismatch = _first_mismatch(traced, source)
        mode = "trace"
        if mismatch is not None:
            scripted, script_error = _try_script(source, examples)
            if scripted is None:
                raise BuildError(f"tracing dropped data-dependent behaviour ({mismatch}) and torch.jit.script "
                                 f"failed: {script_error}")
            still = _first_mismatch(scripted, source)
            if still is not None:
                raise BuildError(f"tracing dropped data-dependent behaviour ({mismatch}); the scripted model "
                                 f"differs too ({still})")
            traced, mode = scripted, "script"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(traced, str(out_dir / MODULE))
        details = {"mode": mode, "frozen": True}
        if mode == "script":
            details["why_script"] = f"trace differed from eager: {mismatch}"
        if tracer_warnings:
            details["tracer_warnings"] = tracer_warnings[:3]
        return artifact_from_dir(config, out_dir, {"package:torch": ">=2.0"}, details)

    def load(self, artifact: Artifact, spec: ModelSpec, threads: int) -> Runner:
        import torch

        set_torch_threads(threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(artifact.directory / MODULE), map_location="cpu")
        return TorchRunner(spec, artifact, module)


def _freeze(module: Any) -> Any:
    import torch

    return torch.jit.freeze(module.eval())


def _try_script(source: ModelSource, examples: tuple) -> tuple[Any, str]:
    """Script the user's model, then trace the flat wrapper around it: the scripted inner
    module keeps its control flow inside the trace."""
    import torch

    inner = getattr(source.module, "model", None)
    try:
        if source.kind is SourceKind.TORCHSCRIPT:
            return None, "the model is already TorchScript, and its trace still differs"
        source.module.model = torch.jit.script(inner)
        try:
            return _freeze(torch.jit.trace(source.module, examples, check_trace=False, strict=False)), ""
        finally:
            source.module.model = inner
    except Exception as exc:
        return None, one_line(exc, 200)


def _first_mismatch(traced: Any, source: ModelSource) -> str | None:
    """Run traced and eager on probe batches; describe the first output that differs."""
    import torch

    probes = []
    for i, batch in enumerate(_PROBE_BATCHES):
        args = [torch.from_numpy(v) for v in generate_inputs(source.spec, batch, seed=100 + i).values()]
        probes += [(batch, args), (batch, [-a if a.is_floating_point() else a for a in args])]
    for i, (batch, args) in enumerate(probes):
        with torch.inference_mode():
            try:
                got = traced(*args)
            except Exception as exc:
                return f"the trace fails at batch {batch}: {one_line(exc, 150)}"
            want = source.module(*args)
        for spec, g, w in zip(source.spec.outputs, got, want, strict=True):
            if tuple(g.shape) != tuple(w.shape):
                return f"output {spec.name} has shape {list(g.shape)} instead of {list(w.shape)} at batch {batch}"
            g_np, w_np = g.float().numpy(), w.float().numpy()
            if not np.allclose(g_np, w_np, rtol=_RTOL, atol=_ATOL * max(1.0, float(np.abs(w_np).max(initial=0)))):
                err = float(np.abs(g_np - w_np).max())
                return f"output {spec.name} differs by up to {err:.3g} on probe input {i + 1} (batch {batch})"
    return None

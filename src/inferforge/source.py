"""The user's model in: a Python factory, a TorchScript file, a torch.export .pt2 or ONNX.

Whatever comes in leaves as a ``ModelSource``: a module that takes the inputs
positionally in spec order and returns a flat tuple of tensors (or, for ONNX, a
file), the model spec, and example inputs. Backends only ever see that shape,
so nested, dict and tuple outputs are handled once, here.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from inferforge.capture import (
    at_least_batch_2,
    export_dynamic_shapes,
    make_flat_module,
    suggested_dim_ranges,
)
from inferforge.data import generate_inputs
from inferforge.errors import BuildError, SourceError, SpecError, one_line
from inferforge.spec_inference import detect_dynamic_dims, infer_output_specs
from inferforge.types import BATCH, Dim, ModelSpec, TensorSpec, canonical_dtype
from inferforge.user_code import resolve_callable


class SourceKind(StrEnum):
    TORCH = "torch"  # a live nn.Module (from a factory or the API)
    TORCHSCRIPT = "torchscript"
    EXPORTED = "exported"  # a torch.export ExportedProgram (.pt2)
    ONNX = "onnx"


@dataclass
class ModelSource:
    """A loaded model ready for the backends.

    ``module`` takes the inputs positionally in ``spec.inputs`` order and returns a
    tuple of tensors in ``spec.outputs`` order; it is None for ONNX sources.
    """

    name: str
    kind: SourceKind
    spec: ModelSpec
    module: Any = None
    path: Path | None = None
    example_inputs: dict[str, np.ndarray] = field(default_factory=dict)
    # 'file.py:factory' (absolute path) or 'package.module:factory' when the model came from a factory:
    # the source backend packages that code, and a search worker process rebuilds the model from it.
    factory_ref: str | None = None
    call_by_keyword: bool = False  # the user's forward takes the inputs by name (see capture.make_flat_module)
    # Ranges of named dynamic dims the exporter asked for (its "Suggested fixes"), e.g. {"S": (1, 512)}.
    dim_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the user should know: frozen dims, ranges applied
    _exported: Any = field(default=None, repr=False)

    def exported_program(self) -> Any:
        """torch.export the module once, with the batch and other named dims dynamic."""
        if self._exported is not None:
            return self._exported
        import torch

        if self.module is None:
            raise SourceError(f"{self.name} is an ONNX model: there is no PyTorch module to export")
        self.flatten_rnn_weights()
        for attempt in range(2):
            try:
                # forward(*args): the dynamic shapes of the varargs go in one tuple.
                self._exported = torch.export.export(
                    self.module, self.export_args(), strict=False,
                    dynamic_shapes=(export_dynamic_shapes(self.spec, self.dim_ranges),))
                return self._exported
            except Exception as exc:
                ranges = suggested_dim_ranges(str(exc), self.spec)
                if attempt == 0 and ranges and any(self.dim_ranges.get(k) != v for k, v in ranges.items()):
                    self.dim_ranges.update(ranges)  # the exporter's own suggested fix, e.g. S <= 512
                    self.notes.append("torch.export limits " + ", ".join(f"{k} to {lo}..{hi}"
                                                                        for k, (lo, hi) in ranges.items()))
                    continue
                from inferforge.capture_errors import explain_capture_failure

                raise BuildError(f"torch.export: {explain_capture_failure(exc)}") from exc
        raise AssertionError("unreachable")

    def flatten_rnn_weights(self) -> None:
        """RNN weights in one contiguous chunk: what cuDNN wants and what capture expects (otherwise cuDNN warns
        at every call that they are not)."""
        if self.module is None or not hasattr(self.module, "modules"):
            return
        for module in self.module.modules():
            if hasattr(module, "flatten_parameters") and callable(module.flatten_parameters):
                with contextlib.suppress(Exception):  # a module of that name with other semantics
                    module.flatten_parameters()

    def export_args(self) -> tuple[Any, ...]:
        """The example inputs as CPU tensors in spec order, batch at least 2 (export specialises size 1)."""
        import torch

        return tuple(torch.from_numpy(v) for v in at_least_batch_2(self.spec, self.example_inputs).values())

    def fingerprint(self) -> str:
        """A short hash of weights and spec, for cache keys and the manifest."""
        digest = hashlib.sha256(repr(self.spec.to_json()).encode())
        factory_file = (self.factory_ref or "").rpartition(":")[0]
        if factory_file.endswith(".py") and Path(factory_file).is_file():  # the code decides outputs too
            digest.update(Path(factory_file).read_bytes())
        if self.path is not None and self.path.is_file():
            digest.update(self.path.read_bytes())
        elif self.module is not None:
            for name, tensor in sorted(self.module.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().view(-1).view(__import__("torch").uint8).numpy()
                              .tobytes())
        return digest.hexdigest()[:16]


# ---------------------------------------------------------------- loading

def load_source(model: Any, *, inputs: Sequence[TensorSpec | str] = (), example_inputs: Any = None,
                name: str | None = None) -> ModelSource:
    """Load a model given as an nn.Module, a factory reference or a file path.

    ``inputs`` (specs or spec strings) override what is inferred from example inputs.
    Raises SourceError or SpecError with what to do.
    """
    overrides = [s if isinstance(s, TensorSpec) else TensorSpec.parse(s) for s in inputs]
    if isinstance(model, (str, Path)):
        return _load_reference(str(model), overrides, example_inputs, name)
    import torch

    if isinstance(model, torch.nn.Module):
        return _from_module(model, example_inputs, overrides, name or type(model).__name__)
    raise SourceError(f"cannot use a {type(model).__name__} as a model: pass an nn.Module, "
                      "'file.py:factory', 'package.module:factory', or a .pt/.pt2/.onnx path")


def _load_reference(ref: str, overrides: list[TensorSpec], example_inputs: Any, name: str | None) -> ModelSource:
    path = Path(ref)
    suffix = path.suffix.lower()
    if suffix in (".onnx", ".pt", ".pth", ".ts", ".pt2", ".torchscript") or path.exists():
        if not path.is_file():
            raise SourceError(f"model file {ref} does not exist")
        if suffix == ".onnx":
            return _from_onnx(path, overrides, name)
        if suffix == ".pt2":
            return _from_exported(path, overrides, example_inputs, name)
        if suffix in (".pt", ".pth", ".ts", ".torchscript"):
            return _from_torchscript(path, overrides, example_inputs, name)
        raise SourceError(f"{ref}: unknown model file type {suffix!r}; use .py:factory, .pt (TorchScript), .pt2 or .onnx")
    model, examples = _call_factory(ref)
    source = _from_module(model, examples if example_inputs is None else example_inputs, overrides,
                          name or ref.rsplit(":", 1)[-1].removeprefix("make_") or "model")
    source.factory_ref = absolute_ref(ref)
    return source


def absolute_ref(ref: str) -> str:
    """'models.py:make' -> '/abs/models.py:make', so the reference still resolves from another directory."""
    module_ref, _, attr = ref.rpartition(":")
    return f"{Path(module_ref).resolve()}:{attr}" if module_ref.endswith(".py") else ref


def _call_factory(ref: str) -> tuple[Any, Any]:
    import torch

    factory = resolve_callable(ref, "model factory")
    try:
        made = factory()
    except Exception as exc:
        raise SourceError(f"model factory {ref!r} raised {one_line(exc)}") from exc
    model, examples = (made[0], made[1]) if isinstance(made, tuple) and len(made) == 2 else (made, None)
    if not isinstance(model, torch.nn.Module):
        raise SourceError(f"model factory {ref!r} returned {type(model).__name__}; expected an nn.Module "
                          "or (nn.Module, example_inputs)")
    return model, examples


def _forward_params(model: Any) -> list[str]:
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _from_module(model: Any, examples: Any, overrides: list[TensorSpec], name: str) -> ModelSource:
    model.eval()
    params = _forward_params(model)
    specs, arrays = _input_specs(examples, overrides, params)
    by_keyword = bool(params) and all(s.name in params for s in specs)
    flat = make_flat_module(model, [s.name for s in specs], by_keyword)
    source = ModelSource(name, SourceKind.TORCH, ModelSpec(tuple(specs)), module=flat, call_by_keyword=by_keyword)
    source.flatten_rnn_weights()
    if arrays:
        source.spec, notes = detect_dynamic_dims(flat, source.spec, arrays, fixed={o.name for o in overrides})
        source.notes += notes
    return _finish(source, arrays)


def module_from_factory(ref: str, input_names: Sequence[str], by_keyword: bool) -> Any:
    """The flat module (positional inputs, tuple of tensors out) around what ``ref``'s factory returns: how a
    worker process or a source artifact rebuilds the user's model. Raises SourceError."""
    model, _ = _call_factory(ref)
    model.eval()
    return make_flat_module(model, list(input_names), by_keyword)


def _input_specs(examples: Any, overrides: list[TensorSpec], params: list[str]) -> tuple[list[TensorSpec], dict]:
    """Specs from example inputs (names from dict keys or forward's parameters), then overrides."""
    arrays: dict[str, np.ndarray] = {}
    if examples is not None:
        import torch

        if isinstance(examples, (torch.Tensor, np.ndarray)):
            examples = (examples,)
        if isinstance(examples, Mapping):
            items = list(examples.items())
        elif isinstance(examples, (tuple, list)):
            names = params[: len(examples)] if len(params) >= len(examples) else [f"input_{i}" for i in range(len(examples))]
            items = list(zip(names, examples, strict=True))
        else:
            raise SpecError(f"example inputs must be a tensor, a tuple/list or a dict of tensors, not {type(examples).__name__}")
        for key, value in items:
            arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            arrays[str(key)] = arr
    inferred = {n: _spec_from_array(n, a) for n, a in arrays.items()}
    for o in overrides:
        inferred[o.name] = o
    if not inferred:
        raise SpecError("no input spec: give --input name:dtype[dims] for each input (e.g. x:float32[B,3,224,224]), "
                        "or have the factory return (model, example_inputs)")
    order = list(arrays) + [o.name for o in overrides if o.name not in arrays]
    if arrays and any(o.name not in arrays for o in overrides):
        unknown = [o.name for o in overrides if o.name not in arrays]
        raise SpecError(f"--input names {unknown} match no example input (the model's inputs are {list(arrays)})")
    return [inferred[n] for n in order], arrays


def _spec_from_array(name: str, array: np.ndarray) -> TensorSpec:
    dtype = canonical_dtype(str(array.dtype))
    shape: tuple[int | Dim, ...] = tuple(Dim(BATCH) if i == 0 else int(d) for i, d in enumerate(array.shape))
    value_range = None
    if not np.issubdtype(array.dtype, np.floating) and array.size:
        value_range = (float(array.min()), float(array.max()))
    return TensorSpec(name, dtype, shape, value_range)


def _finish(source: ModelSource, example_arrays: dict[str, np.ndarray]) -> ModelSource:
    """Fill example inputs and infer the output spec by running the model at two batch sizes."""
    if set(example_arrays) != set(source.spec.input_names) or not example_arrays:
        example_arrays = generate_inputs(source.spec, batch_size=2, seed=0)
    source.example_inputs = example_arrays
    if source.kind is SourceKind.ONNX:
        return source
    source.spec = replace(source.spec, outputs=infer_output_specs(source.module, source.spec, source.name))
    return source


def _from_torchscript(path: Path, overrides: list[TensorSpec], examples: Any, name: str | None) -> ModelSource:
    import torch

    try:
        scripted = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise SourceError(f"{path} is not a TorchScript archive torch.jit.load can read: {one_line(exc)}") from exc
    scripted.eval()
    params = _forward_params(scripted)
    specs, arrays = _input_specs(examples, overrides, params)
    flat = make_flat_module(scripted, [s.name for s in specs], by_keyword=False)
    source = ModelSource(name or path.stem, SourceKind.TORCHSCRIPT, ModelSpec(tuple(specs)), module=flat, path=path)
    return _finish(source, arrays)


def _from_exported(path: Path, overrides: list[TensorSpec], examples: Any, name: str | None) -> ModelSource:
    import torch

    try:
        exported = torch.export.load(str(path))
    except Exception as exc:
        raise SourceError(f"{path} is not a torch.export archive torch.export.load can read: {one_line(exc)}") from exc
    inner = exported.module()
    specs, arrays = _input_specs(examples, overrides or _exported_input_specs(exported), [])
    flat = make_flat_module(inner, [s.name for s in specs], by_keyword=False)
    source = ModelSource(name or path.stem, SourceKind.EXPORTED, ModelSpec(tuple(specs)), module=flat, path=path)
    return _finish(source, arrays)


def _exported_input_specs(exported: Any) -> list[TensorSpec]:
    """Read input names, dtypes and dynamic dims from the ExportedProgram's placeholders."""
    user_inputs = set(exported.graph_signature.user_inputs)
    specs = []
    for node in exported.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        val = node.meta.get("val")
        shape: list[int | Dim] = []
        for axis, d in enumerate(val.shape):
            if isinstance(d, int):
                shape.append(d)
            elif axis == 0:
                shape.append(Dim(BATCH))
            else:
                raise SpecError(f"the .pt2 input {node.name!r} has a dynamic dimension {axis}: give --input with "
                                "its size, e.g. name:int64[B,S=128]")
        specs.append(TensorSpec(node.name, canonical_dtype(str(val.dtype)), tuple(shape)))
    return specs


def _from_onnx(path: Path, overrides: list[TensorSpec], name: str | None) -> ModelSource:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise SourceError(f"{path} is not an ONNX model onnx can read: {one_line(exc)}") from exc
    initializers = {i.name for i in model.graph.initializer}
    by_name = {o.name: o for o in overrides}
    specs = [by_name.get(v.name) or _onnx_value_spec(v, is_input=True)
             for v in model.graph.input if v.name not in initializers]
    unknown = set(by_name) - {s.name for s in specs}
    if unknown:
        raise SpecError(f"--input names {sorted(unknown)} are not inputs of {path.name} "
                        f"(its inputs are {[s.name for s in specs]})")
    outputs = tuple(_onnx_value_spec(v, is_input=False) for v in model.graph.output)
    source = ModelSource(name or path.stem, SourceKind.ONNX, ModelSpec(tuple(specs), outputs), path=path)
    return _finish(source, {})


_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
                10: "float16", 11: "float64", 16: "bfloat16"}


def _onnx_value_spec(value: Any, is_input: bool) -> TensorSpec:
    tensor_type = value.type.tensor_type
    dtype = _ONNX_DTYPES.get(tensor_type.elem_type)
    if dtype is None:
        raise SpecError(f"ONNX value {value.name!r} has element type {tensor_type.elem_type}, which inferforge does not support")
    shape: list[int | Dim] = []
    for axis, d in enumerate(tensor_type.shape.dim):
        if d.HasField("dim_value"):
            shape.append(int(d.dim_value))
        elif axis == 0:
            shape.append(Dim(BATCH))
        elif is_input:
            raise SpecError(f"ONNX input {value.name!r} has a dynamic dimension {axis} ({d.dim_param or '?'}): "
                            f"give --input {value.name}:{dtype}[...] with its size, e.g. S=128")
        else:
            shape.append(Dim(d.dim_param or f"d{axis}", 1))
    return TensorSpec(value.name, dtype, tuple(shape))

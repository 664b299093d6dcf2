"""The user's model in: a Python factory, a TorchScript file, a torch.export .pt2 or ONNX.

Whatever comes in leaves as a ``ModelSource``: a module that takes the inputs
positionally in spec order and returns a flat tuple of tensors (or, for ONNX, a
file), the model spec, and example inputs. Backends only ever see that shape,
so nested, dict and tuple outputs are handled once, here.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from inferforge.errors import SourceError, SpecError, one_line
from inferforge.types import BATCH, Dim, ModelSpec, TensorSpec, canonical_dtype


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
    _exported: Any = field(default=None, repr=False)

    def exported_program(self) -> Any:
        """torch.export the module once, with the batch and other named dims dynamic."""
        if self._exported is not None:
            return self._exported
        import torch

        if self.module is None:
            raise SourceError(f"{self.name} is an ONNX model: there is no PyTorch module to export")
        # forward(*args): the dynamic shapes of the varargs go in one tuple.
        self._exported = torch.export.export(self.module, self.export_args(), strict=False,
                                             dynamic_shapes=(export_dynamic_shapes(self.spec),))
        return self._exported

    def export_args(self) -> tuple[Any, ...]:
        """The example inputs as CPU tensors in spec order, batch at least 2 (export specialises size 1)."""
        import torch

        return tuple(torch.from_numpy(v) for v in _at_least_batch_2(self.spec, self.example_inputs).values())

    def fingerprint(self) -> str:
        """A short hash of weights and spec, for cache keys and the manifest."""
        digest = hashlib.sha256(repr(self.spec.to_json()).encode())
        if self.path is not None and self.path.is_file():
            digest.update(self.path.read_bytes())
        elif self.module is not None:
            for name, tensor in sorted(self.module.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().view(-1).view(__import__("torch").uint8).numpy()
                              .tobytes())
        return digest.hexdigest()[:16]


def export_dynamic_shapes(spec: ModelSpec) -> tuple[dict[int, Any], ...]:
    import torch

    dims: dict[str, Any] = {}
    shapes = []
    for s in spec.inputs:
        axes = {}
        for axis, d in enumerate(s.shape):
            if isinstance(d, Dim):
                dims.setdefault(d.name, torch.export.Dim(d.name, min=1, max=1 << 16) if d.name != BATCH
                                else torch.export.Dim(BATCH, min=1, max=1 << 16))
                axes[axis] = dims[d.name]
        shapes.append(axes)
    return tuple(shapes)


def _at_least_batch_2(spec: ModelSpec, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Export and tracing specialise size-1 dims, so examples need a batch of 2 or more."""
    out = {}
    for s in spec.inputs:
        value = inputs[s.name]
        axis = s.batch_axis
        if axis is not None and value.shape[axis] < 2:
            value = np.concatenate([value] * 2, axis=axis)
        out[s.name] = value
    return out


# ---------------------------------------------------------------- flattening

def flatten_outputs(result: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Name every tensor in a (nested) tensor/tuple/list/dict output, in a stable order."""
    import torch

    if isinstance(result, torch.Tensor):
        return [(prefix or "output", result)]
    if isinstance(result, Mapping):
        items: list[tuple[str, Any]] = []
        for key, value in result.items():
            if value is not None:
                items += flatten_outputs(value, f"{prefix}.{key}" if prefix else str(key))
        return items
    if isinstance(result, (tuple, list)):
        items = []
        for i, value in enumerate(result):
            if value is not None:
                items += flatten_outputs(value, f"{prefix}.{i}" if prefix else f"output_{i}")
        return items
    raise SpecError(f"the model returned {type(result).__name__}; expected tensors, or tuples, lists or dicts of them")


def _make_flat_module(model: Any, input_names: Sequence[str], by_keyword: bool) -> Any:
    import torch

    class _Flat(torch.nn.Module):
        """Positional inputs in spec order in, a flat tuple of tensors out."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def named_outputs(self, *args: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
            if by_keyword:
                return flatten_outputs(self.model(**dict(zip(input_names, args, strict=True))))
            return flatten_outputs(self.model(*args))

        def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(t for _, t in self.named_outputs(*args))

    flat = _Flat()
    flat.training = False  # not .eval(): an ExportedProgram's module refuses train()/eval() calls
    return flat


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
    return _from_module(model, examples if example_inputs is None else example_inputs, overrides,
                        name or ref.rsplit(":", 1)[-1].removeprefix("make_") or "model")


def resolve_callable(ref: str, what: str) -> Callable[..., Any]:
    """Import ``path/to/file.py:fn`` or ``package.module:fn``; raise SourceError on any failure."""
    module_ref, sep, attr = ref.rpartition(":")
    if not sep or not attr:
        raise SourceError(f"{what} {ref!r}: expected 'path/to/file.py:function' or 'package.module:function'")
    try:
        if module_ref.endswith(".py"):
            file = Path(module_ref)
            if not file.is_file():
                raise SourceError(f"{what} {ref!r}: file {module_ref} does not exist")
            mod_name = f"_inferforge_user_{file.stem}_{abs(hash(file.resolve()))}"
            spec = importlib.util.spec_from_file_location(mod_name, file)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_ref)
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(f"{what} {ref!r}: importing {module_ref} failed: {one_line(exc)}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise SourceError(f"{what} {ref!r}: {module_ref} has no callable named {attr!r}")
    return fn


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
    flat = _make_flat_module(model, [s.name for s in specs], by_keyword)
    return _finish(ModelSource(name, SourceKind.TORCH, ModelSpec(tuple(specs)), module=flat), arrays)


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
    from inferforge.data import generate_inputs

    if set(example_arrays) != set(source.spec.input_names) or not example_arrays:
        example_arrays = generate_inputs(source.spec, batch_size=2, seed=0)
    source.example_inputs = example_arrays
    if source.kind is SourceKind.ONNX:
        return source
    source.spec = replace(source.spec, outputs=infer_output_specs(source.module, source.spec, source.name))
    return source


def infer_output_specs(module: Any, spec: ModelSpec, name: str) -> tuple[TensorSpec, ...]:
    """Run at batch 2 and 3: output dims that follow the batch become B. SpecError if the model rejects the spec."""
    import torch

    from inferforge.data import generate_inputs

    results = []
    for batch in (2, 3):
        args = [torch.from_numpy(a) for a in generate_inputs(spec, batch_size=batch, seed=batch).values()]
        try:
            with torch.inference_mode():
                results.append(module.named_outputs(*args))
        except Exception as exc:
            specs = " ".join(str(s) for s in spec.inputs)
            raise SpecError(f"{name} rejected inputs built from the spec {specs}: {one_line(exc)}. "
                            "Check the --input names, dtypes and shapes against the model's forward()") from exc
    outs = []
    for (out_name, a), (_, b) in zip(results[0], results[1], strict=True):
        shape = tuple(Dim(BATCH) if (da == 2 and db == 3) else int(da) for da, db in zip(a.shape, b.shape, strict=True))
        outs.append(TensorSpec(out_name, canonical_dtype(str(a.dtype)), shape))
    return tuple(outs)


def _from_torchscript(path: Path, overrides: list[TensorSpec], examples: Any, name: str | None) -> ModelSource:
    import torch

    try:
        scripted = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise SourceError(f"{path} is not a TorchScript archive torch.jit.load can read: {one_line(exc)}") from exc
    scripted.eval()
    params = _forward_params(scripted)
    specs, arrays = _input_specs(examples, overrides, params)
    flat = _make_flat_module(scripted, [s.name for s in specs], by_keyword=False)
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
    flat = _make_flat_module(inner, [s.name for s in specs], by_keyword=False)
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

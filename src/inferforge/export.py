"""``inferforge export``: a package's model as one file for a runtime without Python (LibTorch, ONNX Runtime C++).

A package holds ranked artifacts, each tied to a backend. A C++ service needs one
file in a format its runtime reads: TorchScript for ``torch::jit::load``, an
AOTInductor package for ``torch::inductor::AOTIModelPackageLoader``, or ONNX. Where
the package already holds an artifact in that format, it is copied as it was
validated (checksums verified first). Otherwise the best-ranked artifact that keeps a
torch.export program (the ``eager`` and ``inductor`` candidates store the FP32
program) is converted by the backend that builds that format, and the conversion is
checked against the program's own outputs before anything is written.

The output folder holds the model file, ``spec.json`` (inputs and outputs in the
order a runtime passes them, dtypes, shapes with -1 for dynamic sizes, where the file
came from, what it requires) and ``sample/``: one input batch as ``input_<i>.npy`` and
the outputs Python computed from the exported file for it, ``output_<i>.npy``, so a
C++ build can check itself (``examples/cpp``). The folder is staged and renamed into
place, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inferforge.backends import artifact_from_json, backend_names, export_formats, get_backend
from inferforge.backends.base import PROGRAM, BuildConfig
from inferforge.data import generate_inputs
from inferforge.environment import unmet_requirements, version_of
from inferforge.errors import InferforgeError, PackageError, one_line
from inferforge.manifest import read_manifest, swap_into_place, verify_checksums
from inferforge.types import ModelSpec, Precision, TensorSpec

SAMPLE_BATCH = 2
# Conversions are checked against the program they came from: what an FP32 recompile may round differently.
CHECK_RTOL, CHECK_ATOL = 1e-3, 1e-4


@dataclass(frozen=True)
class ExportResult:
    out: Path
    format: str
    file: str
    from_artifact: str
    how: str  # "copied" or "converted"
    max_abs_error: float | None  # conversions: against the program they came from


def export_package(package: Path, fmt: str, out: Path, *, overwrite: bool = False) -> ExportResult:
    """Write ``out`` (a new folder) with the package's model in ``fmt``; see the module docstring."""
    formats = export_formats()
    if fmt not in formats:
        raise InferforgeError(f"unknown export format {fmt!r}; choose one of {', '.join(formats)}")
    if out.exists() and not overwrite:
        raise InferforgeError(f"{out} already exists: choose another --out or pass --overwrite")
    manifest = read_manifest(package)
    spec = ModelSpec.from_json(manifest["spec"])
    entry, how = _choose(manifest, fmt, package)
    backend_name, file = formats[fmt]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        verify_checksums(package, entry)
        source_dir = package / entry["path"]
        if how == "copied":  # every file of the artifact: an ONNX model may keep its weights in a side file
            for rel in entry["files"]:
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source_dir / rel, staging / rel)
            built = artifact_from_json(entry, staging)
            error = None
        else:
            built, error = _convert(source_dir / PROGRAM, spec, backend_name, staging)
        inputs = generate_inputs(spec, SAMPLE_BATCH, seed=11)
        outputs = get_backend(backend_name).load(built, spec, threads=1)(inputs)
        _write_sample(staging / "sample", spec, inputs, outputs)
        _write_spec(staging / "spec.json", fmt, file, spec, entry, how, built.requires, error)
        swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out, fmt, file, entry["key"], how, error)


def _choose(manifest: dict[str, Any], fmt: str, package: Path) -> tuple[dict[str, Any], str]:
    """The artifact to copy (one in ``fmt`` for the CPU), else the best-ranked torch.export program to convert."""
    backend_name, _ = export_formats()[fmt]
    program_backends = [name for name in backend_names() if get_backend(name).keeps_program]
    entries = manifest["artifacts"]
    for entry in entries:
        config = entry["config"]
        if config["backend"] == backend_name and config.get("device", "cpu") == "cpu":
            return entry, "copied"
    for entry in entries:
        if entry["config"]["backend"] in program_backends and not unmet_requirements(
                {k: v for k, v in entry.get("requires", {}).items() if k.startswith("package:")}):
            return entry, "converted"
    held = ", ".join(e["key"] for e in entries)
    raise PackageError(
        f"package {package} holds no artifact that gives {fmt}: it has {held}. A {backend_name} artifact would be "
        f"copied as it is, and an {' or '.join(program_backends)} artifact (a torch.export program) converts to any "
        f"format. Rebuild the package with one of them among its fallbacks, e.g. inferforge optimize MODEL "
        f"--fallbacks 3, or --backends {backend_name},...")


def _convert(program: Path, spec: ModelSpec, backend_name: str, staging: Path) -> tuple[Any, float]:
    """Build ``backend_name``'s FP32 CPU artifact from a saved program; return it and its largest deviation from
    the program on probe inputs. Raises when the conversion changes the outputs beyond rounding."""
    import torch

    from inferforge.source import load_source

    source = load_source(program, inputs=list(spec.inputs), name="exported")
    backend = get_backend(backend_name)
    config = BuildConfig(backend_name, Precision.FP32, "cpu", backend.options_type())
    reason = backend.unavailable_reason(config, source)
    if reason:
        raise InferforgeError(f"cannot export with {backend_name} here: {reason}")
    try:
        artifact = backend.build(source, config, staging)
    except Exception as exc:  # e.g. a trace of an exported program has its shapes fixed at the example's
        raise InferforgeError(
            f"{backend_name} could not convert the package's torch.export program: {one_line(exc, 300)}. Export "
            f"another format, or rebuild the package with a {backend_name} artifact among its fallbacks "
            f"(inferforge optimize MODEL --backends {backend_name},...), built from the original model") from exc
    runner = backend.load(artifact, spec, threads=1)
    worst = 0.0
    for batch in (1, 3):
        inputs = generate_inputs(spec, batch, seed=20 + batch)
        got = runner(inputs)
        with torch.inference_mode():
            want = source.module(*[torch.from_numpy(v) for v in inputs.values()])
        for out_spec, w in zip(spec.outputs, want, strict=True):
            g, w_np = got[out_spec.name].astype(np.float64), w.double().numpy()
            error = float(np.abs(g - w_np).max(initial=0.0))
            if not np.allclose(g, w_np, rtol=CHECK_RTOL, atol=CHECK_ATOL * max(1.0, float(np.abs(w_np).max()))):
                raise InferforgeError(f"the {backend_name} conversion changes output {out_spec.name} by up to "
                                      f"{error:.3g} at batch {batch}; export another format")
            worst = max(worst, error)
    return artifact, worst


def _dims(spec: TensorSpec) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in spec.shape]


def _write_sample(folder: Path, spec: ModelSpec, inputs: dict[str, np.ndarray], outputs: dict[str, Any]) -> None:
    folder.mkdir()
    for i, s in enumerate(spec.inputs):
        np.save(folder / f"input_{i}.npy", np.ascontiguousarray(inputs[s.name]))
    for i, s in enumerate(spec.outputs):
        np.save(folder / f"output_{i}.npy", np.ascontiguousarray(outputs[s.name]))


def _write_spec(path: Path, fmt: str, file: str, spec: ModelSpec, entry: dict[str, Any], how: str,
                requires: Any, error: float | None) -> None:
    data = {
        "format": fmt, "file": file,
        "inputs": [{"name": s.name, "dtype": s.dtype, "shape": _dims(s)} for s in spec.inputs],
        "outputs": [{"name": s.name, "dtype": s.dtype, "shape": _dims(s)} for s in spec.outputs],
        "order": "a runtime passes the inputs and returns the outputs in the order listed; -1 is a dynamic size",
        "from_artifact": entry["key"], "how": how,
        "precision": entry["config"]["precision"] if how == "copied" else "fp32",
        "requires": dict(requires), "torch": version_of("torch"),
        "sample": f"sample/input_<i>.npy (batch {SAMPLE_BATCH}) and the outputs Python computed from {file}, "
                  "sample/output_<i>.npy",
    }
    if error is not None:
        data["conversion_max_abs_error"] = error
    path.write_text(json.dumps(data, indent=2) + "\n")


def build_cpp_runner(example_dir: Path, build_dir: Path) -> Path:
    """Configure and build ``examples/cpp`` against this Python's torch (what docs/cpp.md's two commands do);
    returns the ``inferforge_runner`` binary. Raises InferforgeError with the compiler's output on failure."""
    import subprocess

    import torch.utils

    steps = [["cmake", "-S", str(example_dir), "-B", str(build_dir),
              f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"],
             ["cmake", "--build", str(build_dir), "-j2"]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            raise InferforgeError(f"{' '.join(step[:2])} failed: {(done.stdout + done.stderr)[-3000:]}")
    return build_dir / "inferforge_runner"

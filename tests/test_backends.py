"""One contract suite, run over every backend: build, load from files only, numerics, both I/O kinds."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from inferforge.backends import backend_names, get_backend
from inferforge.backends.base import BuildConfig
from inferforge.data import generate_inputs, generated_dataset
from inferforge.environment import version_of
from inferforge.source import load_source
from inferforge.types import Precision

# INT8: right to about a quarter of the output's scale (these layers are 8 wide, with random weights and inputs).
TOLERANCE = {Precision.FP32: 1e-4, Precision.BF16: 5e-2, Precision.INT8: 2.5e-1}


def _configs() -> list[BuildConfig]:
    configs = []
    for name in backend_names():
        configs += get_backend(name).configs("cpu")
    return configs


def declared_dependencies() -> set[str]:
    """The distributions pyproject.toml's [project] dependencies name (lower case)."""
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    return {re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]}


def check_contract(config: BuildConfig, factory: str, tmp_path: Path) -> None:
    """Build from a model, load from the files alone, and match the model on numpy and torch inputs. Skips only
    for what this machine lacks; a missing or broken package that pyproject.toml declares fails."""
    source = load_source(f"models:{factory}")
    backend = get_backend(config.backend)
    reason = backend.unavailable_reason(config, source)
    missing = {p for p in backend.required_packages(config) if version_of(p) is None}
    if missing & declared_dependencies():
        pytest.fail(f"{config.key()}: {', '.join(sorted(missing))}, declared in pyproject.toml, is not installed")
    if reason:
        pytest.skip(reason)
    artifact = backend.build(source, config, tmp_path, calibration=generated_dataset(source.spec, 16, seed=9))
    assert artifact.files and all((tmp_path / f).is_file() for f in artifact.files)
    assert artifact.size_bytes > 0
    runner = backend.load(artifact, source.spec, threads=2)

    for batch in (1, 5):
        inputs = generate_inputs(source.spec, batch, seed=batch)
        with torch.inference_mode():
            expected = source.module(*[torch.from_numpy(v) for v in inputs.values()])
        got = runner(inputs)
        assert list(got) == source.spec.output_names
        for spec, want in zip(source.spec.outputs, expected, strict=True):
            assert isinstance(got[spec.name], np.ndarray)
            assert got[spec.name].dtype == np.dtype(spec.dtype)
            scale = max(1.0, float(want.abs().max()))
            np.testing.assert_allclose(got[spec.name], want.numpy(), atol=TOLERANCE[config.precision] * scale,
                                       rtol=TOLERANCE[config.precision])

    as_torch = runner({k: torch.from_numpy(v) for k, v in generate_inputs(source.spec, 2).items()})
    assert all(isinstance(v, torch.Tensor) for v in as_torch.values())
    assert runner.threads() >= 1


@pytest.mark.parametrize("config", _configs(), ids=lambda c: c.key())
@pytest.mark.parametrize("factory", ["make_cnn", "make_two_inputs"])
def test_backend_contract(config: BuildConfig, factory: str, tmp_path: Path) -> None:
    check_contract(config, factory, tmp_path)


def test_onnxruntime_takes_an_onnx_source(tmp_path: Path) -> None:
    from models import export_mlp_onnx

    path = tmp_path / "in.onnx"
    model = export_mlp_onnx(str(path))
    source = load_source(path)
    for name in ("eager", "torchscript", "inductor"):
        backend = get_backend(name)
        assert backend.unavailable_reason(backend.configs("cpu")[0], source) is not None
    ort = get_backend("onnxruntime")
    (tmp_path / "out").mkdir()
    runner = ort.load(ort.build(source, ort.configs("cpu")[0], tmp_path / "out"), source.spec, threads=1)
    got = runner({"x": np.ones((3, 16), np.float32)})["y"]
    np.testing.assert_allclose(got, model(torch.ones(3, 16)).detach().numpy(), atol=1e-5)


def test_runner_rejects_inputs_outside_the_spec(tmp_path: Path) -> None:
    from inferforge.errors import SpecError

    source = load_source("models:make_mlp")
    backend = get_backend("onnxruntime")
    runner = backend.load(backend.build(source, backend.configs("cpu")[0], tmp_path), source.spec, threads=1)
    with pytest.raises(SpecError, match="dimension 1 is 3, expected 16"):
        runner({"x": np.zeros((2, 3), np.float32)})


def test_runner_fast_path_takes_exact_numpy_and_leaves_everything_else_to_the_full_checks(tmp_path: Path) -> None:
    """numpy inputs of exactly the spec's dtype and dims skip conversion; torch still gets torch back, and
    every misfit still gets the full message."""
    from inferforge.errors import SpecError

    source = load_source("models:make_mlp")
    backend = get_backend("onnxruntime")
    runner = backend.load(backend.build(source, backend.configs("cpu")[0], tmp_path), source.spec, threads=1)
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    exact = runner({"x": x})
    assert set(exact) == {o.name for o in source.spec.outputs}
    name = source.spec.outputs[0].name
    through_torch = runner({"x": torch.from_numpy(x)})[name]
    assert isinstance(through_torch, torch.Tensor) and isinstance(exact[name], np.ndarray)
    np.testing.assert_allclose(through_torch.numpy(), exact[name], rtol=1e-6)
    for bad, message in (({"x": x[:, :3]}, "dimension 1 is 3"), ({"x": x, "z": x}, "unknown input"),
                         ({"x": x.astype(np.float64)}, "dtype float64, expected float32"),
                         ({"x": x[None]}, "has rank 3"), ({"y": x}, "missing input")):
        with pytest.raises(SpecError, match=message):
            runner(bad)

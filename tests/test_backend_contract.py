"""The backend contract as a whole: what every registered backend declares, and that a new backend is one
module plus one registry line (tests/toy_backend.py) for the suite, the search, the package and ``load``."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fast_options
from test_backends import check_contract, declared_dependencies

import inferforge
from inferforge import backends
from inferforge.backends import artifact_from_json, backend_names, export_formats, get_backend
from inferforge.backends.base import Backend, BackendOptions, BuildConfig
from inferforge.candidate import Status
from inferforge.data import generate_inputs
from inferforge.errors import SpecError
from inferforge.types import Precision

DEVICES = ("cpu", "cuda")
IMPORT_NAMES = {"mlcommons-loadgen": "mlperf_loadgen"}  # distribution -> module, where they differ


def _all_configs(backend: Backend) -> list[BuildConfig]:
    return [c for device in DEVICES for c in (*backend.configs(device), *backend.thorough_configs(device))]


@pytest.mark.parametrize("name", backend_names())
def test_every_backend_declares_its_contract(name: str) -> None:
    backend = get_backend(name)
    assert backend.name == name
    assert issubclass(backend.options_type, BackendOptions) and dataclasses.is_dataclass(backend.options_type)
    assert backend.options_type.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert backend.accepts and backend.devices and backend.packages
    assert not (backend.portable and backend.devices == frozenset({"cuda"}))
    for config in _all_configs(backend):
        assert config.backend == name and isinstance(config.options, backend.options_type)
        again = artifact_from_json({"config": config.to_json(), "files": []}, Path(".")).config
        assert again == config, "a config must survive the manifest's JSON unchanged"


@pytest.mark.parametrize("name", backend_names())
def test_the_packages_pyproject_declares_for_a_backend_import(name: str) -> None:
    """A broken install of a declared dependency (OpenVINO, torchao, ...) fails here rather than turning the
    contract suite's cases into skips."""
    backend = get_backend(name)
    needed = {p for config in _all_configs(backend) for p in backend.required_packages(config)}
    for package in sorted(needed & declared_dependencies()):
        importlib.import_module(IMPORT_NAMES.get(package, package).replace("-", "_"))


def test_options_refuse_bad_values_where_they_are_written() -> None:
    from inferforge.backends.onnx_common import OnnxRuntimeOptions
    from inferforge.backends.openvino import OpenVinoOptions

    with pytest.raises(SpecError, match="hint 'fastest' is not one of latency, throughput"):
        OpenVinoOptions(hint="fastest")
    with pytest.raises(SpecError, match="mode 'dynamic' does not fit precision fp32"):
        BuildConfig("onnxruntime", Precision.FP32, "cpu", OnnxRuntimeOptions(mode="dynamic"))
    assert OnnxRuntimeOptions(mode="static").with_fp32_layers(("Conv_0",)) == OnnxRuntimeOptions("static",
                                                                                                keep_fp32=("Conv_0",))
    assert get_backend("eager").options_type().with_fp32_layers(("x",)) is None  # no per-layer FP32 retry there


def test_export_formats_come_from_the_backends() -> None:
    formats = export_formats()
    assert set(formats) == {"torchscript", "aoti", "onnx"}
    assert all(fmt in get_backend(name).export_formats for fmt, (name, _) in formats.items())


@pytest.fixture
def toy_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one registry line a new backend adds."""
    monkeypatch.setitem(backends._MODULES, "toy", "toy_backend:ToyBackend")


@pytest.mark.parametrize("factory", ["make_cnn", "make_two_inputs"])
def test_a_new_backend_passes_the_contract_suite(toy_registered: None, factory: str, tmp_path: Path) -> None:
    (config,) = get_backend("toy").configs("cpu")
    check_contract(config, factory, tmp_path)


def test_a_new_backend_is_searched_packaged_and_loaded(toy_registered: None, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    result = inferforge.optimize("models:make_cnn", out=out, name="cnn", fallbacks=3,
                                 options=fast_options(backends=("eager", "toy"), precisions=("fp32",)))
    toy = next(c for c in result.search.candidates if c.config.backend == "toy")
    assert toy.status is Status.PASSED, toy.reason
    runner = inferforge.load(out, artifact=toy.key)
    inputs = generate_inputs(runner.spec, 3, seed=4)
    from models import make_cnn  # the test's own copy of the model: the reference the toy must match

    model, _ = make_cnn()
    with torch.inference_mode():
        want = model(torch.from_numpy(inputs["image"])).numpy()
    np.testing.assert_allclose(next(iter(runner(inputs).values())), want, rtol=1e-4, atol=1e-5)

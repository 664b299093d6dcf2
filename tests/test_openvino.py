"""OpenVINO backend: conversion, FP32 and NNCF INT8 numerics, the compiled model cached in the artifact.

Tolerances: FP32 within 1e-4 of PyTorch (max abs error, relative to max(1, |reference|)); INT8 keeps
each output's cosine to PyTorch at or above 0.98 over 8 generated samples, calibrated on 32 others.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FP32_EXACT, fast_options

import inferforge
from inferforge.backends import get_backend
from inferforge.backends.base import Artifact, BuildConfig
from inferforge.backends.openvino import OpenVinoOptions, _has_attention, convert
from inferforge.data import Dataset, generate_inputs, generated_dataset
from inferforge.environment import native_bf16_reason, usable_cores, version_of
from inferforge.errors import BuildError, SpecError
from inferforge.manifest import read_manifest, verify_checksums
from inferforge.source import ModelSource, load_source
from inferforge.types import Precision

pytestmark = pytest.mark.skipif(version_of("openvino") is None or version_of("nncf") is None,
                                reason="openvino and nncf are not installed")

FP32_TOLERANCE = 1e-4
INT8_MIN_COSINE = 0.98
BACKEND = get_backend("openvino")


def _config(precision: Precision, **options: object) -> BuildConfig:
    return BuildConfig("openvino", precision, "cpu", OpenVinoOptions(**options))  # type: ignore[arg-type]


def _calibration(source: ModelSource) -> Dataset:
    return generated_dataset(source.spec, 32, seed=7)


def _reference(source: ModelSource, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.inference_mode():
        return [t.numpy() for t in source.module(*[torch.from_numpy(v) for v in inputs.values()])]


def _cosines(source: ModelSource, artifact: Artifact) -> list[float]:
    inputs = generate_inputs(source.spec, 8, seed=3)
    got = BACKEND.load(artifact, source.spec, threads=2)(inputs)
    cosines = []
    for spec, want in zip(source.spec.outputs, _reference(source, inputs), strict=True):
        a, b = got[spec.name].ravel().astype(np.float64), want.ravel().astype(np.float64)
        cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return cosines


def _checksums(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _fake_quantized_ops(artifact: Artifact) -> set[str]:
    """Operations of the IR that read a FakeQuantize output (directly), i.e. compute on INT8 inputs."""
    import openvino as ov

    model = ov.Core().read_model(str(artifact.directory / "model.xml"))
    return {op.get_friendly_name() for op in model.get_ordered_ops()
            if any(i.get_source_output().get_node().get_type_name() == "FakeQuantize" for i in op.inputs())}


@pytest.mark.parametrize("factory", ["make_mlp", "make_cnn", "make_two_inputs"])
def test_fp32_matches_torch_at_any_batch(factory: str, tmp_path: Path) -> None:
    source = load_source(f"models:{factory}")
    artifact = BACKEND.build(source, _config(Precision.FP32), tmp_path)
    assert {"model.xml", "model.bin"} <= set(artifact.files)
    assert any(f.startswith("compiled/") and f.endswith(".blob") for f in artifact.files)
    assert artifact.requires["package:openvino"].startswith(">=")
    assert artifact.details["hint"] == "latency" and artifact.details["inference_precision"] == "f32"
    runner = BACKEND.load(artifact, source.spec, threads=2)
    for batch in (1, 5):  # the batch dimension stayed dynamic
        inputs = generate_inputs(source.spec, batch, seed=batch)
        got = runner(inputs)
        assert list(got) == source.spec.output_names
        for spec, want in zip(source.spec.outputs, _reference(source, inputs), strict=True):
            assert got[spec.name].dtype == np.dtype(spec.dtype)
            scale = max(1.0, float(np.abs(want).max()))
            assert float(np.abs(got[spec.name] - want).max()) <= FP32_TOLERANCE * scale


def test_onnx_source_converts(tmp_path: Path) -> None:
    from models import export_mlp_onnx

    model = export_mlp_onnx(str(tmp_path / "in.onnx"))
    source = load_source(tmp_path / "in.onnx")
    (tmp_path / "out").mkdir()
    artifact = BACKEND.build(source, _config(Precision.FP32), tmp_path / "out")
    assert artifact.details["converter"] == "onnx"
    got = BACKEND.load(artifact, source.spec, threads=1)({"x": np.ones((3, 16), np.float32)})["y"]
    np.testing.assert_allclose(got, model(torch.ones(3, 16)).detach().numpy(), atol=1e-5)


@pytest.mark.parametrize(("factory", "model_type"), [("make_cnn", "default"), ("make_two_inputs", "transformer")])
def test_int8_with_calibration_stays_close(factory: str, model_type: str, tmp_path: Path) -> None:
    source = load_source(f"models:{factory}")
    calibration = _calibration(source)
    artifact = BACKEND.build(source, _config(Precision.INT8), tmp_path, calibration=calibration)
    assert _fake_quantized_ops(artifact), "the IR holds no quantized operation"
    nncf = artifact.details["nncf"]
    assert nncf["model_type"] == model_type and nncf["subset_size"] == len(calibration)
    assert artifact.details["calibration"] == calibration.origin
    assert min(_cosines(source, artifact)) >= INT8_MIN_COSINE


def test_int8_without_calibration_is_a_build_error(tmp_path: Path) -> None:
    source = load_source("models:make_mlp")
    with pytest.raises(BuildError, match="calibration"):
        BACKEND.build(source, _config(Precision.INT8), tmp_path)


def test_load_uses_the_compiled_blob_and_never_writes_into_the_artifact(tmp_path: Path) -> None:
    source = load_source("models:make_mlp")
    artifact = BACKEND.build(source, _config(Precision.FP32), tmp_path)
    before = _checksums(tmp_path)
    assert BACKEND.load(artifact, source.spec, threads=1).loaded_from_cache  # no compilation at load
    assert _checksums(tmp_path) == before

    # A blob this OpenVINO cannot use (another release, damage): it compiles the IR instead, and the
    # blob it writes then goes to the temporary cache, not into the artifact.
    for blob in (tmp_path / "compiled").glob("*.blob"):
        blob.chmod(0o644)
        blob.write_bytes(b"not a blob")
    before = _checksums(tmp_path)
    runner = BACKEND.load(artifact, source.spec, threads=1)
    assert not runner.loaded_from_cache
    assert _checksums(tmp_path) == before
    inputs = generate_inputs(source.spec, 2)
    np.testing.assert_allclose(runner(inputs)["output"], _reference(source, inputs)[0], atol=1e-5)


def test_packaged_artifact_loads_from_its_blob_and_still_verifies(tmp_path: Path) -> None:
    package = tmp_path / "mlp.inferforge"
    inferforge.optimize("models:make_mlp", out=package, fallbacks=0,
                        options=fast_options(backends=("openvino",), precisions=("fp32",), budget=FP32_EXACT))
    before = _checksums(package)
    runner = inferforge.load(package, threads=1)
    assert runner.artifact.config.backend == "openvino" and runner.loaded_from_cache  # type: ignore[attr-defined]
    for entry in read_manifest(package)["artifacts"]:
        verify_checksums(package, entry)
    assert _checksums(package) == before


def test_sensitive_layers_find_the_fragile_layer_and_keep_fp32_restores_it(tmp_path: Path) -> None:
    source = load_source("models:make_one_fragile_layer")  # spread -> fragile -> head
    calibration = _calibration(source)
    (tmp_path / "all").mkdir()
    quantized = BACKEND.build(source, _config(Precision.INT8), tmp_path / "all", calibration=calibration)
    assert min(_cosines(source, quantized)) < 0.9
    layers = BACKEND.sensitive_layers(source, quantized.config, quantized, calibration)
    fragile = layers[0]
    assert fragile.startswith("linear_1/"), layers  # the second Linear, as torch.export names it

    (tmp_path / "mixed").mkdir()
    mixed = BACKEND.build(source, _config(Precision.INT8, keep_fp32=(fragile,)), tmp_path / "mixed",
                          calibration=calibration)
    assert fragile in _fake_quantized_ops(quantized) and fragile not in _fake_quantized_ops(mixed)
    assert mixed.details["nncf"]["keep_fp32"] == [fragile]
    assert mixed.config.key() == "openvino-int8-keep-fp32-1"
    assert min(_cosines(source, mixed)) >= 0.97


def test_keep_fp32_names_must_be_operations_of_the_model(tmp_path: Path) -> None:
    source = load_source("models:make_mlp")
    with pytest.raises(BuildError, match="not operations of the converted model"):
        BACKEND.build(source, _config(Precision.INT8, keep_fp32=("no_such_layer",)), tmp_path,
                      calibration=_calibration(source))


def test_one_runner_serves_several_threads(tmp_path: Path) -> None:
    source = load_source("models:make_cnn")
    runner = BACKEND.load(BACKEND.build(source, _config(Precision.FP32), tmp_path), source.spec, threads=1)
    inputs = [generate_inputs(source.spec, 3, seed=seed) for seed in range(4)]
    expected = [runner(x)["output"] for x in inputs]
    failures: list[int] = []

    def call(i: int) -> None:
        for _ in range(20):
            if not np.array_equal(runner(inputs[i])["output"], expected[i]):
                failures.append(i)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_attention_is_told_from_dense_layers() -> None:
    class Attention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = torch.nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attention(x, x, x, need_weights=False)[0]

    attention = load_source(Attention().eval(), example_inputs=(torch.randn(2, 5, 8),))
    assert _has_attention(convert(attention)[0])
    assert not _has_attention(convert(load_source("models:make_mlp"))[0])


def test_hints_set_the_streams(tmp_path: Path) -> None:
    """Latency: each request gets ``threads`` threads, and as many requests as the cores hold run at once."""
    source = load_source("models:make_mlp")
    artifact = BACKEND.build(source, _config(Precision.FP32), tmp_path)
    cores = usable_cores()
    for threads, streams in ((1, cores), (cores, 1)):
        compiled = BACKEND.load(artifact, source.spec, threads=threads).compiled  # type: ignore[attr-defined]
        assert (compiled.get_property("NUM_STREAMS"), compiled.get_property("INFERENCE_NUM_THREADS")) == \
            (streams, streams * threads)
    throughput = replace(artifact, config=_config(Precision.FP32, hint="throughput"))
    compiled = BACKEND.load(throughput, source.spec, threads=cores).compiled  # type: ignore[attr-defined]
    assert str(compiled.get_property("PERFORMANCE_HINT")).endswith("THROUGHPUT")
    assert compiled.get_property("INFERENCE_NUM_THREADS") == cores
    with pytest.raises(SpecError, match="hint 'fastest' is not one of"):  # refused where it is written
        _config(Precision.FP32, hint="fastest")


@pytest.mark.skipif(native_bf16_reason() is not None, reason="this CPU has no native bf16")
def test_bf16_asks_openvino_for_bf16_and_stays_close(tmp_path: Path) -> None:
    """OpenVINO's own default on such a CPU is bf16: the candidate says so in its details and requirements."""
    source = load_source("models:make_small_cnn")
    artifact = BACKEND.build(source, _config(Precision.BF16), tmp_path)
    assert artifact.details["inference_precision"] == "bf16"
    assert artifact.requires["cpu_flag:avx512_bf16"] == "yes"
    assert min(_cosines(source, artifact)) >= 0.999

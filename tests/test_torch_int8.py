"""torch-int8: dynamic and static (PT2E) INT8 built into AOTInductor packages that load with torch alone.

Tolerance: on these tiny random-weight models INT8 keeps the output's cosine with FP32 at or above
0.999 and its largest error within 5% of the largest FP32 output (measured: cosine >= 0.9998, error
<= 2.5%). The two compiled builds are shared; the rest checks quantization before compiling.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from inferforge.backends.base import Artifact, BuildConfig
from inferforge.backends.torch_int8 import TorchInt8Backend, TorchInt8Options, _pt2e_api, quantize
from inferforge.data import generate_inputs, generated_dataset
from inferforge.errors import BuildError, SpecError, Unavailable
from inferforge.source import ModelSource, load_source
from inferforge.types import Precision

MIN_COSINE = 0.999
MAX_ERROR_FRACTION = 0.05


def _missing() -> str | None:
    try:
        _pt2e_api()
    except Unavailable as exc:
        return str(exc)
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


def _config(mode: str, keep: tuple[str, ...] = ()) -> BuildConfig:
    return BuildConfig("torch-int8", Precision.INT8, "cpu", TorchInt8Options(mode, keep))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[ModelSource, Artifact]]:
    """Dynamic INT8 of the MLP and static INT8 of the CNN (conv + linear), each compiled once."""
    out = {}
    for mode, factory in (("dynamic", "make_mlp"), ("static", "make_cnn")):
        source = load_source(f"models:{factory}")
        calibration = generated_dataset(source.spec, 32, seed=3)
        artifact = TorchInt8Backend().build(source, _config(mode), tmp_path_factory.mktemp(mode),
                                            calibration=calibration)
        out[mode] = (source, artifact)
    return out


def _float_reference(source: ModelSource, inputs: dict[str, np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        return source.module(*[torch.from_numpy(v) for v in inputs.values()])[0].numpy()


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_build_then_load_from_files_stays_close_to_fp32(built: dict, mode: str) -> None:
    source, artifact = built[mode]
    assert artifact.files == ("model.pt2",) and artifact.details["mode"] == mode
    assert artifact.details["quantized_layers"] == 2  # MLP: two Linear; CNN: the Conv and the Linear
    assert artifact.requires["package:torch"].startswith("==")
    if mode == "static":
        assert artifact.details["calibration_samples"] == 32
    runner = TorchInt8Backend().load(artifact, source.spec, threads=2)
    for batch in (1, 7):
        inputs = generate_inputs(source.spec, batch, seed=batch)
        want = _float_reference(source, inputs)
        got = runner(inputs)[source.spec.output_names[0]]
        cosine = float((got * want).sum() / (np.linalg.norm(got) * np.linalg.norm(want)))
        assert cosine >= MIN_COSINE
        assert np.abs(got - want).max() <= MAX_ERROR_FRACTION * np.abs(want).max()


def test_package_runs_with_torch_alone(built: dict, tmp_path: Path) -> None:
    """No torchao, no inferforge, no Python model: only torch's AOTInductor loader."""
    source, artifact = built["static"]
    inputs = generate_inputs(source.spec, 3, seed=5)
    np.save(tmp_path / "x.npy", inputs["image"])
    expected = TorchInt8Backend().load(artifact, source.spec, threads=1)(inputs)["output"]
    code = ("import sys; sys.modules['torchao'] = None\n"
            "import numpy as np, torch\nfrom torch._inductor import aoti_load_package\n"
            f"run = aoti_load_package({str(artifact.directory / 'model.pt2')!r})\n"
            f"np.save({str(tmp_path / 'y.npy')!r}, run(torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r})))[0].numpy())")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, atol=1e-5)


def test_static_without_calibration_is_a_build_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="calibration"):
        TorchInt8Backend().build(load_source("models:make_mlp"), _config("static"), tmp_path)


def _float_linear_weights(program: Any) -> list[str]:
    """Parameters that reach an aten.linear unquantized (not through a dequantize)."""
    params = program.graph_signature.inputs_to_parameters
    return [params[n.args[1].name] for n in program.graph.nodes
            if n.target is torch.ops.aten.linear.default and n.args[1].name in params]


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_keep_fp32_leaves_the_named_layer_float(mode: str) -> None:
    source = load_source("models:make_mlp")
    calibration = generated_dataset(source.spec, 16)
    program, _, quantized = quantize(source, TorchInt8Options(mode), calibration)
    assert quantized == 2 and _float_linear_weights(program) == []
    program, _, quantized = quantize(source, TorchInt8Options(mode, ("net.2",)), calibration)
    assert quantized == 1
    assert [name.rpartition("model.")[2] for name in _float_linear_weights(program)] == ["net.2.weight"]


def test_keep_fp32_names_a_missing_layer() -> None:
    with pytest.raises(BuildError, match="its layers are net.0, net.2"):
        quantize(load_source("models:make_mlp"), TorchInt8Options("dynamic", ("net.9",)), None)


def test_exported_program_source_quantizes_through_pt2e(tmp_path: Path) -> None:
    torch.export.save(load_source("models:make_mlp").exported_program(), str(tmp_path / "mlp.pt2"))
    source = load_source(tmp_path / "mlp.pt2")
    program, method, quantized = quantize(source, TorchInt8Options("dynamic"), None)
    assert method.startswith("PT2E") and quantized == 2


def test_sensitive_layers_put_the_fragile_layer_first(tmp_path: Path) -> None:
    source = load_source("models:make_one_fragile_layer")
    config = _config("static")
    ranked = TorchInt8Backend().sensitive_layers(source, config, Artifact(config, tmp_path, ()),
                                                 generated_dataset(source.spec, 32))
    assert ranked[0] == "fragile" and sorted(ranked) == ["fragile", "head", "spread"]


def test_unavailable_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    import inferforge.backends.torch_int8 as torch_int8

    backend, source = TorchInt8Backend(), load_source("models:make_mlp")
    assert [backend.unavailable_reason(c, source) for c in backend.configs("cpu")] == [None, None]
    with pytest.raises(SpecError, match="torch-int8 builds int8, not fp32"):  # refused where it is written
        BuildConfig("torch-int8", Precision.FP32, "cpu", TorchInt8Options())
    with pytest.raises(SpecError, match="mode 'weird' is not one of dynamic, static"):
        _config("weird")

    def missing() -> None:
        raise Unavailable("INT8 through PT2E needs torchao")

    monkeypatch.setattr(torch_int8, "_pt2e_api", missing)
    monkeypatch.setattr(torch_int8, "_torchao_dynamic", lambda: None)
    assert [backend.unavailable_reason(c, source) for c in backend.configs("cpu")] == \
        ["INT8 through PT2E needs torchao"] * 2


def test_conv_flatten_linear_cnn_agrees_with_fp32(tmp_path: Path) -> None:
    """Regression: Inductor's freezing miscompiled conv + max pool + flatten + two Linear (the digits
    demo's shape; here cosine 0.88, top-1 73%). The build must notice and ship a package that agrees."""
    source = load_source("models:make_digits_cnn")
    artifact = TorchInt8Backend().build(source, _config("static"), tmp_path,
                                        calibration=generated_dataset(source.spec, 32, seed=3))
    inputs = generate_inputs(source.spec, 64, seed=1)
    want = _float_reference(source, inputs)
    got = TorchInt8Backend().load(artifact, source.spec, threads=2)(inputs)["output"]
    cosine = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosine.min() >= 0.99 and (got.argmax(1) == want.argmax(1)).mean() >= 0.95

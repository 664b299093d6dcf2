"""inferforge export, and the C++ runner in examples/cpp built against the torch wheel's LibTorch.

The runner's outputs for the exported sample must equal what Python computed from the same file, for
TorchScript and AOTInductor, from several threads sharing one loaded model.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import fast_options

import inferforge
from inferforge.cli import main
from inferforge.export import build_cpp_runner, export_package

EXAMPLE = Path(__file__).parent.parent / "examples" / "cpp"


def _missing_toolchain() -> str | None:
    if not (shutil.which("c++") or shutil.which("g++")):
        return "no C++ compiler (c++ or g++) on PATH: install one (e.g. apt-get install g++) to build examples/cpp"
    if not shutil.which("cmake"):
        return "no cmake on PATH: install it (apt-get install cmake or pip install cmake) to build examples/cpp"
    return None


@pytest.fixture(scope="session")
def runner_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = _missing_toolchain()
    if reason:
        pytest.skip(reason)
    return build_cpp_runner(EXAMPLE, tmp_path_factory.mktemp("cpp-build"))


@pytest.fixture(scope="session")
def eager_packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Packages holding only the eager candidate: every export format is a conversion of its program."""
    root = tmp_path_factory.mktemp("export-packages")
    packages = {}
    for factory in ("models:make_small_cnn", "models:make_two_inputs"):
        out = root / factory.split(":")[1]
        result = inferforge.optimize(factory, out=out, options=fast_options(backends=("eager",), precisions=("fp32",)))
        assert result.best is not None, result.leaderboard()
        packages[factory] = out
    return packages


def _run(binary: Path, export_dir: Path, out: Path, threads: int = 1) -> dict:
    done = subprocess.run([str(binary), str(export_dir), "--threads", str(threads), "--iterations", "20",
                           "--warmup", "2", "--output-dir", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("fmt", ["torchscript", "aoti"])
@pytest.mark.parametrize("factory", ["models:make_small_cnn", "models:make_two_inputs"])
def test_cpp_runner_matches_python(fmt: str, factory: str, runner_binary: Path, eager_packages: dict[str, Path],
                                   tmp_path: Path) -> None:
    exported = export_package(eager_packages[factory], fmt, tmp_path / "export")
    assert exported.how == "converted" and exported.max_abs_error is not None and exported.max_abs_error < 1e-4
    spec = json.loads((tmp_path / "export" / "spec.json").read_text())
    assert spec["format"] == fmt and spec["inputs"][0]["shape"][0] == -1
    report = _run(runner_binary, tmp_path / "export", tmp_path / "cpp-out", threads=2)
    assert report["format"] == fmt and report["threads"] == 2 and report["calls"] == 40
    assert 0 < report["p50_ms"] <= report["p99_ms"]
    for i, _ in enumerate(spec["outputs"]):
        got = np.load(tmp_path / "cpp-out" / f"output_{i}.npy")
        want = np.load(tmp_path / "export" / "sample" / f"output_{i}.npy")
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_export_copies_a_packaged_artifact_and_checks_its_checksum(mlp_package: Path, tmp_path: Path) -> None:
    from inferforge.manifest import read_manifest

    keys = [a["key"] for a in read_manifest(mlp_package)["artifacts"]]
    onnx_key = next(k for k in keys if k.startswith("onnxruntime"))
    result = export_package(mlp_package, "onnx", tmp_path / "onnx")
    assert (result.how, result.from_artifact, result.max_abs_error) == ("copied", onnx_key, None)
    assert (tmp_path / "onnx" / "model.onnx").is_file()
    tampered = tmp_path / "tampered"
    shutil.copytree(mlp_package, tampered)
    entry = next(a for a in read_manifest(tampered)["artifacts"] if a["key"] == onnx_key)
    (tampered / entry["path"] / "model.onnx").write_bytes(b"not a model")
    assert main(["export", str(tampered), "--format", "onnx", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad-*"))  # nothing half-written


def test_export_says_what_to_do(mlp_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path / "nowhere"), "--format", "aoti", "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    assert main(["export", str(mlp_package), "--format", "onnx", "--out", str(tmp_path / "taken")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_export_without_a_usable_artifact_names_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pkg"
    inferforge.optimize("models:make_mlp", out=out, options=fast_options(backends=("onnxruntime",), precisions=("fp32",)))
    assert main(["export", str(out), "--format", "torchscript", "--out", str(tmp_path / "ts")]) == 2
    err = capsys.readouterr().err
    assert "holds no artifact that gives torchscript" in err and "--fallbacks" in err

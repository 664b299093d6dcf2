"""End to end: optimize -> package -> load, plus what a package must refuse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FP32_EXACT, fast_options

import inferforge
from inferforge.backends.onnxruntime import OnnxRuntimeBackend
from inferforge.candidate import Status
from inferforge.errors import PackageError, SpecError
from inferforge.manifest import MANIFEST
from inferforge.options import Objective
from inferforge.validate import DecidingFigure


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> tuple[inferforge.api.OptimizeResult, Path]:
    out = tmp_path_factory.mktemp("pkg") / "mlp.inferforge"
    result = inferforge.optimize("models:make_mlp", out=out,
                                 options=fast_options(backends=("eager", "torchscript", "onnxruntime"),
                                                      budget=FP32_EXACT))
    assert result.package == out
    return result, out


def test_search_ranks_every_candidate_and_picks_the_fastest_passed(packaged: tuple) -> None:
    result, _ = packaged
    statuses = {c.key: c.status for c in result.search.candidates}
    assert statuses["eager-fp32"] is Status.PASSED and statuses["onnxruntime-fp32"] is Status.PASSED
    passed = result.search.passed
    assert result.best is passed[0]
    # The leaders were re-measured in turns: the pick is the fastest of them or tied with it, the others follow
    # by their ratio to the fastest, and the rest by their first pass.
    confirmed = [c for c in passed if c.confirmation is not None]
    assert len(confirmed) >= 2 and passed[: len(confirmed)] == confirmed
    assert result.best.confirmation.tie
    ratios = [c.confirmation.ratio for c in confirmed[1:]]
    assert ratios == sorted(ratios)
    rest = [c.bench.latency.p50_ms for c in passed[len(confirmed):]]
    assert rest == sorted(rest)
    for c in passed:
        assert c.bench.threads == 2 and c.bench.sweep[-1].batch_size == 4 and c.build_seconds is not None


def test_package_manifest_and_reports(packaged: tuple) -> None:
    result, out = packaged
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["chosen"] == result.best.key
    assert manifest["spec"]["inputs"][0]["name"] == "x"
    assert manifest["environment"]["libraries"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    for entry in manifest["artifacts"]:
        assert entry["sha256"] and all(len(h) == 64 for h in entry["sha256"].values())
        assert (out / entry["path"]).is_dir()
    assert "## Leaderboard" in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["picked"] == result.best.key
    assert not list(out.parent.glob(".mlp.inferforge.*")), "staging folder left behind"


def test_load_returns_the_models_outputs(packaged: tuple) -> None:
    result, out = packaged
    runner = inferforge.load(out)
    assert runner.selection.key == result.best.key and runner.selection.passed_over == ()
    x = np.random.default_rng(3).standard_normal((6, 16)).astype(np.float32)
    with torch.inference_mode():
        want = result.source.module(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(runner({"x": x})["output"], want, atol=1e-5)


def test_a_loaded_runner_explains_itself_and_takes_a_one_input_model_positionally(packaged: tuple) -> None:
    result, out = packaged
    runner = inferforge.load(out)
    assert runner.selection.why.startswith("the pick for latency (") and "ms at batch 1" in runner.selection.why
    assert str(runner.selection).startswith(f"{result.best.key} (rank 0): the pick")
    manifest = json.loads((out / MANIFEST).read_text())
    assert all(entry["why"] for entry in manifest["artifacts"])
    packaged = json.loads((out / "report.json").read_text())["packaged"]
    assert [(p["rank"], p["key"]) for p in packaged] == [(e["rank"], e["key"]) for e in manifest["artifacts"]]
    assert "packaged: not recorded" not in (out / "report.html").read_text()
    assert any(entry["why"].startswith(("fallback", "portable", "what `inferforge export")) for entry in manifest["artifacts"][1:])
    text = repr(runner)
    assert result.best.key in text and "x: float32[" in text and "threads" in text and "->" in text
    x = np.random.default_rng(3).standard_normal((3, 16)).astype(np.float32)
    np.testing.assert_array_equal(runner(x)["output"], runner({"x": x})["output"])
    with pytest.raises(SpecError, match=r"takes 1 input\(s\) \(x\); 2 were passed"):
        runner(x, x)


def test_load_refuses_a_modified_artifact(packaged: tuple, tmp_path: Path) -> None:
    import shutil

    _, out = packaged
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    first = manifest["artifacts"][0]
    victim = copy / first["path"] / next(iter(first["sha256"]))
    victim.write_bytes(victim.read_bytes() + b"tampered")
    with pytest.raises(PackageError, match="does not match its checksum"):
        inferforge.load(copy)


def test_load_falls_back_when_the_machine_does_not_fit(packaged: tuple, tmp_path: Path) -> None:
    import shutil

    _, out = packaged
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["artifacts"][0]["requires"] = {"package:torch": ">=99.0"}
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="passed over"):
        runner = inferforge.load(copy)
    assert runner.selection.rank == 1
    assert "needs torch >=99.0" in runner.selection.passed_over[0]
    for entry in manifest["artifacts"]:
        entry["requires"] = {"cpu_flag:no_such_feature": "yes"}
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="no artifact .* can run on this machine.*no_such_feature"):
        inferforge.load(copy)


def test_not_a_package_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="no inferforge.json"):
        inferforge.load(tmp_path)
    with pytest.raises(PackageError, match="does not exist"):
        inferforge.load(tmp_path / "nope")


def test_existing_package_is_kept_unless_overwrite(packaged: tuple) -> None:
    _, out = packaged
    before = (out / MANIFEST).read_text()
    with pytest.raises(PackageError, match="already exists"):
        inferforge.optimize("models:make_mlp", out=out, options=fast_options(backends=("onnxruntime",)))
    assert (out / MANIFEST).read_text() == before


def test_a_failing_backend_never_stops_the_search(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("exporter crashed\nwith a long\ntrace")

    monkeypatch.setattr(OnnxRuntimeBackend, "build", explode)
    result = inferforge.optimize("models:make_cnn", options=fast_options(backends=("eager", "onnxruntime")))
    failed = next(c for c in result.search.candidates if c.key == "onnxruntime-fp32")
    assert failed.status is Status.FAILED
    assert failed.reason == "build: RuntimeError: exporter crashed with a long trace"
    assert result.best is not None and result.best.key.startswith("eager")


def test_budget_rejects_with_the_figure_and_throughput_objective(tmp_path: Path) -> None:
    from inferforge.validate import AccuracyBudget, Task

    impossible = AccuracyBudget(min_cosine=1.0)  # INT8 never reproduces FP32 exactly
    result = inferforge.optimize("models:make_two_inputs", out=tmp_path / "p",
                                 options=fast_options(backends=("onnxruntime",), task=Task.EMBED, budget=impossible,
                                                      objective=Objective.THROUGHPUT, precisions=("int8",)))
    candidate = result.search.candidates[0]
    assert candidate.status is Status.REJECTED
    assert "mean cosine" in candidate.reason and "< budget 1.0" in candidate.reason
    assert result.package is None and not (tmp_path / "p").exists()


def test_user_data_folder_with_labels(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    np.save(data / "image.npy", rng.standard_normal((12, 3, 16, 16)).astype(np.float32))
    np.save(data / "labels.npy", rng.integers(0, 4, 12))
    result = inferforge.optimize("models:make_cnn", data=str(data), options=fast_options(backends=("onnxruntime",)))
    report = result.search.candidates[0].accuracy
    assert report.decided_by is DecidingFigure.ACCURACY_DROP and report.samples == 12
    assert report.accuracy == report.reference_accuracy


def test_version_requirements_read_as_written() -> None:
    from inferforge.environment import unmet_requirements

    torch_minor = ".".join(torch.__version__.split(".")[:2])
    assert unmet_requirements({"package:torch": f"=={torch_minor}"}) == []
    assert unmet_requirements({"package:torch": "==1.0"})[0].startswith("needs torch ==1.0")
    assert unmet_requirements({"package:no-such-pkg": ">=1"})[0].endswith("which is not installed")
    assert unmet_requirements({"machine": "sparc64"})[0].startswith("was built for sparc64")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without a GPU does")
def test_cuda_requirement_refuses_clearly_without_a_gpu() -> None:
    from inferforge.environment import unmet_requirements

    problem = unmet_requirements({"cuda_capability": "==9.0"})[0]
    assert problem.startswith("needs a CUDA GPU of compute capability 9.0: no CUDA GPU here")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without a GPU does")
def test_cuda_target_without_a_gpu_skips_gpu_candidates_and_packages_cpu_ones(tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    result = inferforge.optimize("models:make_mlp", out=out, options=fast_options(
        device="cuda", backends=("eager", "onnxruntime"), budget=FP32_EXACT))
    gpu = [c for c in result.search.candidates if c.config.device == "cuda" and c.config.backend == "eager"]
    assert {c.key for c in gpu} >= {"eager-fp32-cuda", "eager-tf32-cuda", "eager-fp16-cuda", "eager-bf16-cuda"}
    assert all(c.status is Status.SKIPPED and c.reason.startswith("no CUDA GPU here") for c in gpu)
    ort_gpu = next(c for c in result.search.candidates if c.key == "onnxruntime-fp32-cuda")
    assert ort_gpu.status is Status.SKIPPED and "no CUDA provider" in ort_gpu.reason
    assert result.best is not None and result.best.config.device == "cpu"
    assert inferforge.load(out).device == "cpu"


def test_slow_candidates_only_with_thorough() -> None:
    """max-autotune and INT8 weight-only take minutes to build: proposed for CUDA only when asked."""
    from inferforge.options import SearchOptions
    from inferforge.search import candidate_configs

    def keys(thorough: bool) -> set[str]:
        options = SearchOptions(device="cuda", backends=("inductor", "torchao"), cpu_fallback=False,
                                thorough=thorough)
        return {config.key() for _, config in candidate_configs(options)}

    slow = {"inductor-fp16-cuda-graphs-mode-max-autotune-no-cudagraphs-cuda",
            "torchao-int8-scheme-int8-weight-only-cuda"}
    assert not slow & keys(False)
    assert slow <= keys(True)
    assert {"inductor-fp16-cuda-graphs-cuda", "torchao-fp8-cuda", "torchao-int8-scheme-int8-dynamic-cuda"} <= keys(False)


def test_gpu_int8_without_calibration_reads_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchao's INT8 scales activations at run time: a CUDA search loads no calibration set (and does not warn)."""
    from inferforge import api
    from inferforge.data import Dataset
    from inferforge.options import SearchOptions
    from inferforge.source import load_source

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("calibration samples were read")

    monkeypatch.setattr(api, "load_calibration", fail)
    source = load_source("models:make_token_mlp")
    data = Dataset({"x": np.zeros((2, 32, 64), np.float32)}, None, "zeros")
    options = SearchOptions(device="cuda", backends=("torchao", "eager"), cpu_fallback=False)
    assert api._calibration(None, None, source, data, options) is None
    cpu = SearchOptions(backends=("onnxruntime",), precisions=("int8",))
    with pytest.raises(AssertionError, match="calibration samples were read"):
        api._calibration(None, None, source, data, cpu)


def test_every_package_keeps_a_portable_fallback_and_an_artifact_for_each_export_format(tmp_path: Path) -> None:
    from inferforge.export import export_package
    from inferforge.manifest import read_manifest

    result = inferforge.optimize("models:make_cnn", out=tmp_path / "p", fallbacks=0,
                                 options=fast_options(backends=("eager", "torchscript", "onnxruntime", "openvino")))
    assert result.package is not None
    entries = read_manifest(result.package)["artifacts"]
    configs = [e["config"] for e in entries]
    assert any(c["device"] == "cpu" and c["precision"] == "fp32" and c["backend"] != "source" for c in configs)
    backends = {c["backend"] for c in configs}
    assert "torchscript" in backends and "onnxruntime" in backends  # copied as they are by export
    assert backends & {"eager", "inductor"}  # a torch.export program: aoti is converted from it
    for fmt in ("torchscript", "onnx"):
        exported = export_package(result.package, fmt, tmp_path / fmt)
        assert exported.how == "copied" and (tmp_path / fmt / exported.file).is_file()

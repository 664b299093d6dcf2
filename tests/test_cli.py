"""The command line: one clear message and a non-zero exit for each kind of bad input."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from inferforge.cli import COMMANDS, build_parser, main
from inferforge.errors import SpecError

TESTS = Path(__file__).parent


def _run(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a fresh process, its output as a 120-column terminal would get it."""
    return subprocess.run([sys.executable, "-m", "inferforge.cli", *args], capture_output=True, text=True,
                          cwd=TESTS, timeout=300, env={**os.environ, "COLUMNS": "120"})


@pytest.mark.parametrize("args, fragment", [
    (["optimize", "missing.onnx"], "model file missing.onnx does not exist"),
    (["optimize", "models.py:no_factory"], "has no callable named 'no_factory'"),
    (["optimize", "models.py:make_raises"], "raised RuntimeError: weights file corrupted"),
    (["optimize", "models.py:make_mlp", "--input", "x:float32[B,7]"], "rejected inputs built from the spec"),
    (["optimize", "models.py:make_mlp", "--input", "x:float32"], "cannot parse input spec"),
    (["optimize", "models.py:make_mlp", "--data", "nowhere"], "validation data nowhere does not exist: give a folder"),
    (["optimize", "models.py:make_mlp", "--data", "models.py"], "validation data 'models.py' is neither a folder"),
    (["optimize", "models.py:make_mlp", "--backends", "tensorrtx"], "unknown backend"),
    (["info", "no-such-package"], "does not exist"),
])
def test_bad_input_exits_2_with_one_message_and_no_traceback(args: list[str], fragment: str,
                                                             capsys: pytest.CaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(TESTS)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and fragment in err and err.count("\n") == 0
    assert "Traceback" not in err


def test_bad_option_value_is_an_argparse_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["optimize", "models.py:make_mlp", "--max-accuracy-drop", "5"])
    assert info.value.code == 2
    assert "write it as a fraction (0.01) or a percentage (5%)" in capsys.readouterr().err


def test_optimize_end_to_end_as_a_user_runs_it(tmp_path: Path) -> None:
    out = tmp_path / "cnn.pkg"
    # FP32 and BF16 only: an INT8 variant that keeps every layer in FP32 ties with onnxruntime-fp32 and wins
    # or loses by timing noise.
    proc = _run("optimize", "models.py:make_cnn", "--backends", "eager,onnxruntime", "--batch-sizes", "1,2",
                "--threads", "1", "--precisions", "fp32,bf16", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["picked"] in {"eager-fp32", "onnxruntime-fp32", "eager-bf16"}
    # What a newcomer reads: the model and data named first, a leaderboard that fits 120 columns with the
    # packaged artifacts marked, the pick's speed-up and reason, the next commands, and no library noise.
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("optimizing make_cnn (models.py:make_cnn) for latency on cpu, validated on")
    assert max(len(line) for line in lines if line.startswith(("┃", "│", "┏", "└"))) <= 120
    assert "packaged #0" in proc.stdout and "(fallback)" in proc.stdout
    pick = next(line for line in lines if line.startswith("pick: "))
    assert pick.startswith(f"pick: {report['picked']}") and ("faster than eager-fp32" in pick
                                                            or report["picked"] == "eager-fp32")
    assert any(line.startswith("why: the pick for latency (") for line in lines)
    assert lines[-1] == f"next: inferforge info {out}  |  inferforge serve {out}  |  inferforge bench {out}"
    assert "DeprecationWarning" not in proc.stderr and "FutureWarning" not in proc.stderr
    assert not [line for line in proc.stderr.splitlines() if ".py:" in line and "Warning" in line]
    assert report["threads"] == 1
    assert (out / "inferforge.json").is_file()
    info = _run("info", str(out))
    assert info.returncode == 0 and report["picked"] in info.stdout


def test_import_stays_light_and_help_is_fast() -> None:
    code = "import sys, inferforge; print('torch' in sys.modules, 'onnxruntime' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split() == \
        ["False", "False"]
    started = time.perf_counter()
    proc = _run("--help")
    assert proc.returncode == 0 and "optimize" in proc.stdout
    assert "torch" not in subprocess.run([sys.executable, "-c", "import sys, inferforge.cli; print(list(sys.modules))"],
                                         capture_output=True, text=True).stdout
    assert time.perf_counter() - started < 30  # generous: only catches an accidental heavy import on a slow CI


@pytest.fixture
def nothing_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refusals must come before the model is loaded or anything is built: reaching the search is a failure."""
    def search(*args: object, **kwargs: object) -> None:
        raise AssertionError("the search started")

    monkeypatch.setattr("inferforge.cli.optimize.run_optimize", search)
    monkeypatch.chdir(TESTS)


def _refused(args: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(["optimize", "models.py:make_mlp", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.count("\n") == 0 and "Traceback" not in err
    return err


@pytest.mark.parametrize("args, fragment", [
    (["--min-cosine", "0"], "min_cosine must be in (0, 1], got 0.0"),
    (["--min-cosine", "1.5"], "min_cosine must be in (0, 1], got 1.5"),
    (["--min-top1-agreement", "150%"], "min_top1_agreement must be in [0, 1], got 1.5"),
    (["--max-accuracy-drop", "120%"], "max_accuracy_drop must be in [0, 1], got 1.2"),
    (["--threads", "0"], "threads must be 1 or more, got 0"),
    (["--fallbacks", "-1"], "fallbacks must be 0 or more"),
    (["--calibration-samples", "0"], "calibration_samples must be 1 or more, got 0"),
    (["--time-budget", "0"], "time_budget_s must be a positive number of seconds"),
    (["--calibration", "nowhere"], "calibration data nowhere does not exist"),
    (["--data", "gone.py:make_data"], "validation data 'gone.py:make_data': file gone.py does not exist"),
])
def test_numeric_options_and_paths_are_refused_before_anything_runs(args: list[str], fragment: str,
                                                                     nothing_runs: None,
                                                                     capsys: pytest.CaptureFixture) -> None:
    assert fragment in _refused(args, capsys)


def test_batch_sizes_below_1_are_refused(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["optimize", "models.py:make_mlp", "--batch-sizes", "0,8"])
    assert info.value.code == 2 and "batch sizes must be 1 or more" in capsys.readouterr().err


def test_defaults_come_from_the_dataclasses_that_own_them() -> None:
    from inferforge.cli.optimize import options_from_args
    from inferforge.options import GPU_THROUGHPUT_BATCH_SIZES, SearchOptions

    assert options_from_args(build_parser().parse_args(["optimize", "models.py:make_mlp"])) == SearchOptions()
    given = options_from_args(build_parser().parse_args(["optimize", "m.py:f", "--min-cosine", "0.5", "--threads",
                                                         "3", "--batch-sizes", "2,4"]))
    assert (given.budget.min_cosine, given.threads, given.bench.batch_sizes) == (0.5, 3, (2, 4))
    gpu = options_from_args(build_parser().parse_args(["optimize", "m.py:f", "--target", "cuda", "--objective",
                                                       "throughput"]))
    assert gpu.bench.batch_sizes == GPU_THROUGHPUT_BATCH_SIZES


def _command_parser(name: str) -> argparse.ArgumentParser:
    parser = build_parser(name)
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[name]


def _has_default(action: argparse.Action) -> bool:
    default = action.default
    return not (default is None or default is False or default is argparse.SUPPRESS or default in ([], ()))


def _owned_defaults(root: Path) -> dict[tuple[str, str], object]:
    """(command, option) -> the default its owner declares, read here apart from the CLI's own reading."""
    from inferforge.api import optimize
    from inferforge.compare import compare_models
    from inferforge.options import SearchOptions
    from inferforge.profile import profile_package
    from inferforge.serve.loadgen import LoadgenSettings
    from inferforge.serve.model import ModelOptions
    from inferforge.serve.ray_config import RayScaling, RayServeConfig
    from inferforge.serve.server import ServerConfig
    from inferforge.validate import AccuracyBudget

    def signature(function: Any, name: str) -> object:
        return inspect.signature(function).parameters[name].default

    search, budget, loadgen, server = SearchOptions(), AccuracyBudget(), LoadgenSettings(), ServerConfig(root)
    return {
        ("optimize", "task"): search.task, ("optimize", "objective"): search.objective,
        ("optimize", "max_accuracy_drop"): budget.max_accuracy_drop, ("optimize", "min_cosine"): budget.min_cosine,
        ("optimize", "min_top1_agreement"): budget.min_top1_agreement, ("optimize", "threads"): search.threads,
        ("optimize", "fallbacks"): signature(optimize, "fallbacks"), ("optimize", "cache_dir"): search.cache_dir,
        ("optimize", "target"): search.device, ("optimize", "calibration_samples"): search.calibration_samples,
        ("serve", "host"): server.host, ("serve", "http_port"): server.http_port,
        ("serve", "grpc_port"): server.grpc_port, ("serve", "metrics_port"): server.metrics_port,
        ("serve", "poll_seconds"): server.poll_seconds, ("serve", "max_body_mb"): server.max_body_bytes / 2**20,
        ("serve", "request_timeout"): ModelOptions().request_timeout_s,
        ("serve", "read_timeout"): server.read_timeout_s,
        ("serve", "replicas"): RayScaling().replicas, ("serve", "cpus_per_replica"): RayScaling().cpus_per_replica,
        ("serve", "gpus_per_replica"): RayScaling().gpus_per_replica,
        ("serve", "target_ongoing_requests"): RayScaling().target_ongoing_requests,
        ("serve", "ray_batching"): RayServeConfig({}).batching,
        ("serve", "package_transfer"): RayServeConfig({}).transfer,
        ("bench", "scenarios"): loadgen.scenarios, ("bench", "duration"): loadgen.duration_s,
        ("bench", "latency_bound"): loadgen.latency_bound_ms, ("bench", "search_steps"): loadgen.search_steps,
        ("bench", "samples_per_query"): loadgen.samples_per_query, ("bench", "max_batch_size"): loadgen.max_batch,
        ("bench", "concurrency"): loadgen.concurrency,
        ("compare", "samples"): signature(compare_models, "samples"),
        ("compare", "rtol"): signature(compare_models, "rtol"),
        ("profile", "batch_size"): signature(profile_package, "batch_size"),
        ("profile", "runs"): signature(profile_package, "runs"),
    }


CLI_OWN = {("serve", "log_level"), ("demo", "out")}  # settings of the command line itself


def test_every_default_on_the_command_line_is_its_owners(tmp_path: Path) -> None:
    """A flag with a default must read it from the dataclass or signature that owns it: a number written in the
    CLI shows up here as a default nobody owns, or as one that no longer matches its owner."""
    actions = [(name, action) for name in COMMANDS for action in _command_parser(name)._actions
               if _has_default(action)]
    seen = {(name, action.dest): action.default for name, action in actions}
    assert not [(name, action.dest) for name, action in actions if not action.help]  # else --help hides it
    owned = {key: value for key, value in _owned_defaults(tmp_path).items() if value is not None}  # e.g. cache off
    assert set(seen) - CLI_OWN == set(owned)
    assert {key: seen[key] for key in owned} == owned


def test_help_shows_the_defaults_and_the_enums_choices(capsys: pytest.CaptureFixture) -> None:
    from inferforge.options import Objective
    from inferforge.types import Precision
    from inferforge.validate import AccuracyBudget, Task

    with pytest.raises(SystemExit):
        main(["optimize", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    budget = AccuracyBudget()
    for shown in (budget.min_cosine, budget.min_top1_agreement, budget.max_accuracy_drop):
        assert f"(default: {shown})" in text
    assert "{" + ",".join(Task) + "}" in text and "{" + ",".join(Objective) + "}" in text
    assert ",".join(Precision) in text
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "(default: SingleStream,MultiStream,Server,Offline)" in " ".join(capsys.readouterr().out.split())


def test_serve_and_bench_options_left_out_are_their_owners_defaults(tmp_path: Path) -> None:
    from inferforge.cli.measure import loadgen_settings
    from inferforge.cli.serve import config_from_args
    from inferforge.serve.loadgen import LoadgenSettings
    from inferforge.serve.model import ModelOptions
    from inferforge.serve.server import ServerConfig

    assert loadgen_settings(build_parser().parse_args(["bench", "pkg"])) == LoadgenSettings()
    config, expected = config_from_args(build_parser().parse_args(["serve", str(tmp_path)])), ServerConfig(tmp_path)
    assert (config.host, config.http_port, config.grpc_port, config.metrics_port, config.poll_seconds,
            config.max_body_bytes) == (expected.host, expected.http_port, expected.grpc_port, expected.metrics_port,
                                       expected.poll_seconds, expected.max_body_bytes)
    assert config.models == ModelOptions()
    given = config_from_args(build_parser().parse_args(["serve", str(tmp_path), "--max-text-bytes", "1000",
                                                        "--read-timeout", "5"]))
    assert given.models.input_limits == {"max_text_bytes": 1000} and given.read_timeout_s == 5
    assert config.read_timeout_s == expected.read_timeout_s
    with pytest.raises(SpecError, match="max_image_pixels is 0"):
        config_from_args(build_parser().parse_args(["serve", str(tmp_path), "--max-image-pixels", "0"]))


def test_ray_options_left_out_are_ray_serves_defaults(tmp_path: Path) -> None:
    pytest.importorskip("ray.serve")
    from inferforge.cli.serve import config_from_args, ray_config_from_args
    from inferforge.serve.ray_config import RayScaling, RayServeConfig

    args = build_parser().parse_args(["serve", str(tmp_path), "--ray", "--replicas", "3"])
    ray = ray_config_from_args(args, config_from_args(args))
    assert ray.scaling == RayScaling(replicas=3)
    default = RayServeConfig(packages={})
    assert (ray.transfer, ray.batching, ray.address) == (default.transfer, default.batching, default.address)


def test_a_command_imports_only_what_it_runs() -> None:
    """main fills in the options of the command it runs alone: `info` never imports the server to show serve's
    defaults."""
    code = ("import sys; from inferforge.cli import main; main(['info', 'no-such-package']); "
            "print('aiohttp' in sys.modules, 'inferforge.serve.server' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=TESTS)
    assert proc.stdout.split() == ["False", "False"], proc.stderr


def test_a_file_in_the_way_of_out_is_refused_even_with_overwrite(tmp_path: Path, nothing_runs: None,
                                                                  capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "model.inferforge"
    target.write_text("my notes")
    err = _refused(["--out", str(target), "--overwrite"], capsys)
    assert f"{target} is a file, not a package folder" in err
    assert target.read_text() == "my notes"


def test_an_existing_folder_needs_overwrite_and_must_be_a_package(tmp_path: Path, nothing_runs: None,
                                                                  capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    assert "already exists: choose another --out or pass --overwrite" in _refused(["--out", str(folder)], capsys)
    err = _refused(["--out", str(folder), "--overwrite"], capsys)
    assert "not an inferforge package (it has no inferforge.json)" in err
    assert (folder / "thesis.tex").is_file()


def test_a_destination_whose_parent_is_a_file_is_refused(tmp_path: Path, nothing_runs: None,
                                                        capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    err = _refused(["--out", str(blocker / "sub" / "model.inferforge")], capsys)
    assert f"cannot create package folder {blocker / 'sub' / 'model.inferforge'}: {blocker} is a file" in err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_destination_under_a_read_only_folder_is_refused(tmp_path: Path, nothing_runs: None,
                                                           capsys: pytest.CaptureFixture) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert f"{locked} is not writable" in _refused(["--out", str(locked / "new" / "pkg")], capsys)
    finally:
        locked.chmod(0o755)


def test_check_destination_accepts_what_write_package_can_write(tmp_path: Path) -> None:
    from inferforge.destination import check_destination

    check_destination(tmp_path / "a" / "b" / "pkg", overwrite=False)
    assert not (tmp_path / "a").exists()  # checks, creates nothing
    empty = tmp_path / "empty"
    empty.mkdir()
    check_destination(empty, overwrite=True)
    package = tmp_path / "old.inferforge"
    package.mkdir()
    (package / "inferforge.json").write_text("{}")
    check_destination(package, overwrite=True)


def _fake_package(folder: Path) -> Path:
    """A package with two artifacts, written by hand: what `info` reads, without an hour of builds."""
    from inferforge.cache import file_sha256

    entries = []
    for rank, key in enumerate(("onnxruntime-fp32", "eager-fp32")):
        (folder / "artifacts" / key).mkdir(parents=True)
        (folder / "artifacts" / key / "model.bin").write_bytes(key.encode() * 100)
        entries.append({"rank": rank, "key": key, "path": f"artifacts/{key}",
                        "sha256": {"model.bin": file_sha256(folder / "artifacts" / key / "model.bin")},
                        "bench": {"latency": {"p50_ms": 0.5 + rank}}})
    entries[0] |= {"why": "the pick for latency (0.5 ms at batch 1)", "requires": {"package:onnxruntime": ">=1.17"},
                   "size_bytes": 2_500_000, "accuracy": {"decided_by": "cosine similarity", "cosine": 0.99871}}
    manifest = {"format_version": 1, "model": "mlp", "chosen": entries[0]["key"], "objective": "latency",
                "artifacts": entries, "spec": {"inputs": [{"name": "x", "dtype": "float32", "shape": ["B", 16]}],
                                               "outputs": [{"name": "y", "dtype": "float32", "shape": ["B", 4]}]}}
    (folder / "inferforge.json").write_text(json.dumps(manifest))
    return folder


def test_info_verifies_every_artifact_and_says_which_are_intact(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    package = _fake_package(tmp_path / "mlp.inferforge")
    assert main(["info", str(package)]) == 0
    out = capsys.readouterr().out
    assert ("#0 onnxruntime-fp32: p50 0.5 ms at batch 1, cosine 0.9987 vs FP32, 2.5 MB  [intact]" in out
            and "#1 eager-fp32: p50 1.5 ms at batch 1  [intact]" in out)
    assert "why: the pick for latency (0.5 ms at batch 1)" in out and "needs: onnxruntime >=1.17" in out
    assert "inputs:  x: float32[B,16]" in out and "outputs: y: float32[B,4]" in out and "adapter: none" in out
    (package / "artifacts" / "eager-fp32" / "model.bin").write_bytes(b"tampered")
    assert main(["info", str(package)]) == 2
    captured = capsys.readouterr()
    assert "#0 onnxruntime-fp32: p50 0.5 ms at batch 1, cosine 0.9987 vs FP32, 2.5 MB  [intact]" in captured.out
    assert "#1 eager-fp32: p50 1.5 ms at batch 1  [DAMAGED: artifacts/eager-fp32/model.bin does not match its checksum]" \
        in captured.out
    assert captured.err.strip() == (f"error: 1 of 2 artifacts in {package} do not match their checksums "
                                    "(eager-fp32): rebuild the package or copy it again")
    (package / "artifacts" / "onnxruntime-fp32" / "model.bin").unlink()
    assert main(["info", str(package), "--json"]) == 2
    integrity = json.loads(capsys.readouterr().out)["integrity"]
    assert integrity["onnxruntime-fp32"] == "DAMAGED: artifacts/onnxruntime-fp32/model.bin is missing"


def test_info_on_a_manifest_that_is_json_but_not_an_object_is_a_package_error(tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "inferforge.json").write_text("[]")
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "inferforge.json" in err and "internal error" not in err


def test_version(capsys: pytest.CaptureFixture) -> None:
    from inferforge.version import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"inferforge {__version__}"

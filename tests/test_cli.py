"""The command line: one clear message and a non-zero exit for each kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inferforge.cli import main

TESTS = Path(__file__).parent


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inferforge.cli", *args], capture_output=True, text=True,
                          cwd=TESTS, timeout=300)


@pytest.mark.parametrize("args, fragment", [
    (["optimize", "missing.onnx"], "model file missing.onnx does not exist"),
    (["optimize", "models.py:no_factory"], "has no callable named 'no_factory'"),
    (["optimize", "models.py:make_raises"], "raised RuntimeError: weights file corrupted"),
    (["optimize", "models.py:make_mlp", "--input", "x:float32[B,7]"], "rejected inputs built from the spec"),
    (["optimize", "models.py:make_mlp", "--input", "x:float32"], "cannot parse input spec"),
    (["optimize", "models.py:make_mlp", "--data", "nowhere"], "neither a folder"),
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
    proc = _run("optimize", "models.py:make_cnn", "--backends", "eager,onnxruntime", "--batch-sizes", "1,2",
                "--threads", "1", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["picked"] in {"eager-fp32", "onnxruntime-fp32", "eager-bf16"}
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

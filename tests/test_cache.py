"""The artifact cache (a second optimize reuses builds) and the search's time budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import fast_options

import inferforge
from inferforge.candidate import Status
from inferforge.cli import main

BACKENDS = ("eager", "onnxruntime")


def _optimize(model: object, cache: Path, **options: object) -> inferforge.OptimizeResult:
    return inferforge.optimize(model, inputs=["x:float32[B,16]"] if not isinstance(model, str) else (),
                               options=fast_options(backends=BACKENDS, precisions=("fp32",), cache_dir=cache,
                                                    **options))


def _built(result: inferforge.OptimizeResult) -> list:
    return [c for c in result.search.candidates if c.artifact is not None]


def test_second_optimize_reuses_every_build_and_reports_its_original_cost(tmp_path: Path) -> None:
    first = _optimize("models:make_mlp", tmp_path)
    second = _optimize("models:make_mlp", tmp_path)
    assert _built(first) and all("cache" not in c.artifact.details for c in _built(first))
    assert {c.key for c in _built(second)} == {c.key for c in _built(first)}
    for c in _built(second):
        assert "artifact cache" in c.artifact.details["cache"], c.key
        original = next(f for f in _built(first) if f.key == c.key)
        assert c.build_seconds == pytest.approx(original.build_seconds)
        assert c.status is original.status and c.accuracy is not None and c.accuracy.cosine > 0.999999
    assert "(cached)" in second.leaderboard()


def test_other_weights_are_another_key(tmp_path: Path) -> None:
    from models import TinyMLP

    _optimize("models:make_mlp", tmp_path)
    torch.manual_seed(1)  # make_mlp seeds 0: these weights differ
    changed = _optimize(TinyMLP().eval(), tmp_path)
    assert all("cache" not in c.artifact.details for c in _built(changed))


def test_a_corrupt_entry_is_rebuilt_not_used(tmp_path: Path) -> None:
    _optimize("models:make_mlp", tmp_path)
    entries = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert entries and not any(p.name.startswith(".tmp-") for p in entries)  # staged, then renamed into place
    for entry in entries:
        victim = next(p for p in (entry / "files").rglob("*") if p.is_file())
        data = victim.read_bytes()
        victim.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    again = _optimize("models:make_mlp", tmp_path)
    assert _built(again) and all("cache" not in c.artifact.details for c in _built(again)), again.leaderboard()
    assert all(c.status is Status.PASSED for c in _built(again))


def test_time_budget_runs_the_reference_and_fallback_and_skips_the_rest_saying_why(tmp_path: Path) -> None:
    result = inferforge.optimize("models:make_mlp", options=fast_options(backends=BACKENDS, cache_dir=tmp_path,
                                                                         time_budget_s=1e-6))
    statuses = {c.key: c.status for c in result.search.candidates}
    assert statuses["eager-fp32"] is Status.PASSED and statuses["onnxruntime-fp32"] is Status.PASSED
    skipped = [c for c in result.search.candidates if c.status is Status.SKIPPED]
    assert {c.key for c in skipped} >= {"onnxruntime-int8-mode-dynamic", "onnxruntime-int8-mode-static"}
    assert all("time budget of 1e-06 s was spent" in c.reason for c in skipped if c.key.startswith("onnxruntime"))


def test_cli_refuses_a_nonpositive_time_budget(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(__file__).parent)
    assert main(["optimize", "models.py:make_mlp", "--time-budget", "0"]) == 2
    assert "time_budget_s must be a positive number of seconds" in capsys.readouterr().err

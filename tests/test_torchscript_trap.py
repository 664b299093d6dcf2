"""Tracing silently drops data-dependent control flow: the backend must notice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inferforge.backends import get_backend
from inferforge.errors import BuildError
from inferforge.source import load_source


def test_traced_branch_is_detected_and_scripted_instead(tmp_path: Path) -> None:
    source = load_source("models:make_branch")
    backend = get_backend("torchscript")
    artifact = backend.build(source, backend.configs("cpu")[0], tmp_path)
    assert artifact.details["mode"] == "script"
    assert "trace differed from eager" in artifact.details["why_script"]
    runner = backend.load(artifact, source.spec, threads=1)
    for sign in (1.0, -1.0):
        x = torch.full((2, 6), sign)
        with torch.inference_mode():
            want = source.module(x)[0]
        torch.testing.assert_close(runner({"x": x})["output"], want)


def test_unscriptable_branch_is_rejected_with_the_reason(tmp_path: Path) -> None:
    source = load_source("models:make_unscriptable_branch")
    backend = get_backend("torchscript")
    with pytest.raises(BuildError, match="tracing dropped data-dependent behaviour .*torch.jit.script failed"):
        backend.build(source, backend.configs("cpu")[0], tmp_path)


def test_straight_line_model_stays_traced(tmp_path: Path) -> None:
    source = load_source("models:make_mlp")
    backend = get_backend("torchscript")
    assert backend.build(source, backend.configs("cpu")[0], tmp_path).details["mode"] == "trace"

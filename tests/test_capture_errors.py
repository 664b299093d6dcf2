"""Capture failures explained in one line that names the user's code: real torch.export failures, provoked here."""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import pytest
import torch
from torch.export import Dim

from inferforge.capture_errors import MESSAGE_LIMIT, explain_capture_failure
from inferforge.errors import BuildError

HERE = Path(__file__).name


class BranchesOnValues(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            return x * 2
        return x - 1


class FixesTheWidth(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.ones(37)


class NeedsAWideInput(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :500] * 2


@torch.library.custom_op("inferforge_test::twice", mutates_args=())
def twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2  # no register_fake: torch.export cannot trace it


class UsesAnOpWithoutFake(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return twice(x) + 1


def _line_of(cls: type, fragment: str) -> int:
    """The line of ``cls``'s source holding ``fragment``: what the message must point at."""
    lines, start = inspect.getsourcelines(cls)
    return start + next(i for i, text in enumerate(lines) if fragment in text)


def _failure(module: torch.nn.Module, x: torch.Tensor, **kwargs: object) -> BaseException:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.export.export(module, (x,), **kwargs)  # type: ignore[arg-type]
        except Exception as exc:
            return exc
    raise AssertionError("torch.export captured a model built to make it fail")


@pytest.fixture(scope="module")
def branch_failure() -> BaseException:
    return _failure(BranchesOnValues(), torch.randn(2, 3), strict=False)


def test_a_branch_on_tensor_values_names_the_users_line_and_what_to_do(branch_failure: BaseException) -> None:
    message = explain_capture_failure(branch_failure)
    line = _line_of(BranchesOnValues, "if x.mean() > 0:")
    assert message.startswith("the model branches on tensor values at ")
    assert f"{HERE}:{line} (`if x.mean() > 0:`)" in message
    assert "torch.cond" in message and "torchscript script, source" in message
    assert len(message) <= MESSAGE_LIMIT and "\n" not in message


def test_the_explanation_survives_a_wrapping_error(branch_failure: BaseException) -> None:
    """The search and the backends wrap exporter errors; the user's line is still found through the chain."""
    try:
        raise BuildError("build: GuardOnDataDependentSymNode: Could not guard…") from branch_failure
    except BuildError as wrapped:
        assert explain_capture_failure(wrapped) == explain_capture_failure(branch_failure)


def test_a_dim_the_code_fixes_names_the_dim_size_and_the_line_when_torch_gives_it() -> None:
    failure = _failure(FixesTheWidth(), torch.randn(2, 37), dynamic_shapes={"x": {1: Dim("S")}}, strict=True)
    message = explain_capture_failure(failure)
    line = _line_of(FixesTheWidth, "torch.ones(37)")
    assert message.startswith("dim S is marked dynamic but the model fixes it to 37 at ")
    assert f"{HERE}:{line} (`return x + torch.ones(37)`)" in message
    assert "--input name:dtype[B,37]" in message and len(message) <= MESSAGE_LIMIT


def test_a_fixed_dim_without_a_user_frame_does_not_blame_the_export_call() -> None:
    """Non-strict export names no frame for a specialization: the caller of export is not the culprit."""
    failure = _failure(FixesTheWidth(), torch.randn(2, 37), dynamic_shapes={"x": {1: Dim("S")}}, strict=False)
    message = explain_capture_failure(failure)
    assert message.startswith("dim S is marked dynamic but the model fixes it to 37:")
    assert HERE not in message


def test_a_dim_with_a_limited_range_quotes_the_exporters_suggestion() -> None:
    failure = _failure(NeedsAWideInput(), torch.randn(2, 600), dynamic_shapes={"x": {1: Dim("S")}}, strict=False)
    message = explain_capture_failure(failure)
    assert message.startswith("dim S cannot take every size")
    assert "torch.export suggests S = Dim('S', min=500)" in message
    assert "--input x:dtype[B,<size>]" in message and len(message) <= MESSAGE_LIMIT


def test_an_operator_capture_cannot_trace_is_named_with_the_line_that_calls_it() -> None:
    message = explain_capture_failure(_failure(UsesAnOpWithoutFake(), torch.randn(2, 3), strict=False))
    line = _line_of(UsesAnOpWithoutFake, "twice(x)")
    assert message.startswith("operator inferforge_test::twice is not supported by this capture at ")
    assert f"{HERE}:{line}" in message and len(message) <= MESSAGE_LIMIT


@pytest.mark.parametrize("text, op", [
    ("RuntimeError: \"addmm_impl_cpu_\" not implemented for 'Half'", "operator addmm_impl_cpu_ has no Half kernel"),
    ("DispatchError: No ONNX function found for <OpOverload(op='prims.zeta', overload='default')>",
     "operator prims.zeta is not supported"),
    ("Exporting the operator 'aten::fft_fft2' to ONNX opset version 17 is not supported",
     "operator aten::fft_fft2 is not supported"),
])
def test_operators_are_named_from_each_exporters_wording(text: str, op: str) -> None:
    assert explain_capture_failure(RuntimeError(text)).startswith(op)


def test_anything_else_is_the_one_line_message() -> None:
    message = explain_capture_failure(ValueError("weights\nfile corrupted " + "x" * 500))
    assert message.startswith("ValueError: weights file corrupted") and len(message) <= MESSAGE_LIMIT


def test_the_source_line_is_dropped_before_the_advice_is_cut(tmp_path: Path) -> None:
    """A long path and a long line do not fit together: the file and line stay, the quoted code goes."""
    folder = tmp_path / ("m" * max(1, 100 - len(str(tmp_path))))
    folder.mkdir()
    model = folder / "model.py"
    model.write_text("if bool((x * scale).mean() > threshold) and bool((x * scale).std() > spread):\n")
    exc = RuntimeError(f'Could not guard on data-dependent expression Eq(u0, 1)\n  File "{model}", line 1, in f\n')
    message = explain_capture_failure(exc)
    assert f"{model}:1:" in message and "(`" not in message
    assert message.endswith("(torchscript script, source)") and len(message) <= MESSAGE_LIMIT


def test_inferforges_own_export_names_the_users_line_not_its_own() -> None:
    """The model runs inside inferforge's wrapper (source.py): those frames are skipped like torch's."""
    from inferforge.source import load_source

    source = load_source(BranchesOnValues(), example_inputs=(torch.randn(2, 3),))
    with pytest.raises(BuildError) as info:
        source.exported_program()
    line = _line_of(BranchesOnValues, "if x.mean() > 0:")
    assert f"{HERE}:{line} (`if x.mean() > 0:`)" in str(info.value) and "source.py" not in str(info.value)

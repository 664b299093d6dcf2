from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest

from inferforge.data import Dataset
from inferforge.errors import SpecError
from inferforge.types import ModelSpec, TensorSpec
from inferforge.validate import AccuracyBudget, AccuracyReport, DecidingFigure, Task, compare

SPEC = ModelSpec((TensorSpec.parse("x:float32[B,4]"),), (TensorSpec.parse("logits:float32[B,3]"),))


def _dataset(labels: np.ndarray | None) -> Dataset:
    return Dataset({"x": np.zeros((4, 4), np.float32)}, labels, "test")


REF = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 4.0], [2.0, 1.0, 0.0]])


def test_identical_outputs_pass_with_perfect_figures() -> None:
    report = compare({"logits": REF}, {"logits": REF.copy()}, SPEC, _dataset(None), Task.GENERIC, AccuracyBudget())
    assert report.passed and report.decided_by is DecidingFigure.COSINE
    out = report.outputs[0]
    assert out.max_abs == 0 and out.cosine_min == pytest.approx(1.0, abs=1e-12)


def test_accuracy_drop_decides_when_labels_exist() -> None:
    labels = np.array([0, 1, 2, 0])
    flipped = REF.copy()
    flipped[3] = [0.0, 5.0, 0.0]  # the last sample now predicts class 1: accuracy 100% -> 75%
    report = compare({"logits": REF}, {"logits": flipped}, SPEC, _dataset(labels), Task.AUTO,
                     AccuracyBudget(max_accuracy_drop=0.10))
    assert report.decided_by is DecidingFigure.ACCURACY_DROP
    assert report.reference_accuracy == 1.0 and report.accuracy == 0.75
    assert not report.passed
    assert "accuracy drop 25.00 points > budget 10.00" in report.violations[0]
    assert report.top1_agreement == 0.75


def test_top1_agreement_decides_for_a_classifier_without_labels() -> None:
    flipped = REF.copy()
    flipped[0] = [0.0, 9.0, 0.0]
    report = compare({"logits": REF}, {"logits": flipped}, SPEC, _dataset(None), Task.CLASSIFY,
                     AccuracyBudget(min_top1_agreement=0.9))
    assert report.decided_by is DecidingFigure.TOP1_AGREEMENT and report.top1_agreement == 0.75
    assert "top-1 agreement 0.7500 < budget 0.9" in report.violations[0]


def test_cosine_budget_names_the_output_and_figure() -> None:
    noisy = REF + np.random.default_rng(0).normal(0, 1.0, REF.shape)
    report = compare({"logits": REF}, {"logits": noisy}, SPEC, _dataset(None), Task.EMBED,
                     AccuracyBudget(min_cosine=0.999))
    assert not report.passed
    assert report.violations[0].startswith("output logits: mean cosine")
    assert report.outputs[0].p99_abs <= report.outputs[0].max_abs


def test_nan_output_is_a_violation_even_when_cosine_is_not_checked() -> None:
    bad = REF.copy()
    bad[0, 0] = np.nan
    report = compare({"logits": REF}, {"logits": bad}, SPEC, _dataset(np.array([0, 1, 2, 0])), Task.CLASSIFY,
                     AccuracyBudget())
    assert any("NaN" in v for v in report.violations)


def test_all_zero_outputs_agree() -> None:
    zeros = np.zeros_like(REF)
    report = compare({"logits": zeros}, {"logits": zeros}, SPEC, _dataset(None), Task.GENERIC, AccuracyBudget())
    assert report.passed and report.outputs[0].cosine_mean == 1.0  # exactly: zero rows agree by definition


@pytest.mark.parametrize("field, value, shown", [
    ("min_cosine", 0.0, "(0, 1]"), ("min_cosine", 1.01, "(0, 1]"), ("min_cosine", 1.5, "(0, 1]"), ("min_cosine", float("nan"), "(0, 1]"),
    ("min_top1_agreement", -0.1, "[0, 1]"), ("min_top1_agreement", 99, "[0, 1]"),
    ("max_accuracy_drop", 1.01, "[0, 1]"), ("max_accuracy_drop", -0.01, "[0, 1]"),
])
def test_a_budget_out_of_range_is_refused_naming_field_value_and_range(field: str, value: float, shown: str) -> None:
    with pytest.raises(SpecError) as info:
        AccuracyBudget(**{field: value})
    assert f"{field} must be in {shown}, got {value!r}" in str(info.value)


def test_budget_edges_inside_the_range_are_accepted() -> None:
    AccuracyBudget(min_cosine=1.0, min_top1_agreement=0.0, max_accuracy_drop=0.0)
    AccuracyBudget(min_cosine=np.float32(1e-6), min_top1_agreement=1, max_accuracy_drop=1.0)
    with pytest.raises(SpecError, match="must be a number"):
        AccuracyBudget(min_cosine="0.99")  # type: ignore[arg-type]



def test_each_deciding_figure_is_bounded_by_its_own_budget_field_from_its_own_side() -> None:
    assert sorted(f.threshold_field for f in DecidingFigure) == sorted(f.name for f in fields(AccuracyBudget))
    budget = AccuracyBudget(max_accuracy_drop=0.02, min_cosine=0.9, min_top1_agreement=0.8)
    drop, cosine, top1 = DecidingFigure.ACCURACY_DROP, DecidingFigure.COSINE, DecidingFigure.TOP1_AGREEMENT
    assert (drop.threshold(budget), cosine.threshold(budget), top1.threshold(budget)) == (0.02, 0.9, 0.8)
    assert not drop.misses(0.02, budget) and drop.misses(0.0201, budget) and not drop.misses(-0.01, budget)
    assert not cosine.misses(0.9, budget) and cosine.misses(0.8999, budget) and not cosine.misses(1.0, budget)
    assert not top1.misses(0.8, budget) and top1.misses(0.79, budget)
    assert not cosine.misses(float("nan"), budget)  # NaN outputs are a violation of their own
    assert drop.score_bar(budget, 0.97) == pytest.approx(0.95) and drop.score_bar(budget) is None
    assert cosine.score_bar(budget) == 0.9 and top1.score_bar(budget, 0.97) == 0.8


def test_the_budget_sentence_names_every_bound() -> None:
    assert AccuracyBudget(max_accuracy_drop=0.005, min_cosine=0.995, min_top1_agreement=0.9).describe() == \
        "max accuracy drop 0.50 points, min cosine 0.995, min top-1 agreement 0.9"


STRICT = {"max_accuracy_drop": 0.0, "min_cosine": 1.0, "min_top1_agreement": 1.0}
LOOSE = {"max_accuracy_drop": 1.0, "min_cosine": 1e-6, "min_top1_agreement": 0.0}


@pytest.mark.parametrize("labels, task, figure", [
    (np.array([0, 1, 2, 0]), Task.AUTO, DecidingFigure.ACCURACY_DROP),
    (None, Task.CLASSIFY, DecidingFigure.TOP1_AGREEMENT),
    (None, Task.GENERIC, DecidingFigure.COSINE),
    (None, Task.EMBED, DecidingFigure.COSINE),
])
def test_compare_judges_on_the_deciding_figures_field_alone(labels: np.ndarray | None, task: Task,
                                                             figure: DecidingFigure) -> None:
    worse = REF.copy()
    worse[0] = [0.0, 3.0, 1.0]  # one sample's class changes and its cosine drops to 0.3
    own = figure.threshold_field

    def judged(budget: dict[str, float]) -> AccuracyReport:
        return compare({"logits": REF}, {"logits": worse}, SPEC, _dataset(labels), task, AccuracyBudget(**budget))

    strict_own = judged({**LOOSE, own: STRICT[own]})
    assert strict_own.decided_by is figure and not strict_own.passed
    assert judged({**STRICT, own: LOOSE[own]}).passed

TINY = np.random.default_rng(0).normal(0, 1.0, REF.shape) * 3e-9  # what random tiny weights give


def test_an_output_that_underflows_in_fp16_is_explained_with_the_precisions_range() -> None:
    in_fp16 = TINY.astype(np.float16).astype(np.float64)  # what an FP16 candidate returns: all zeros
    assert not in_fp16.any()
    report = compare({"logits": TINY}, {"logits": in_fp16}, SPEC, _dataset(None), Task.GENERIC, AccuracyBudget(),
                     precision="fp16")
    (violation,) = report.violations
    assert violation.startswith("output logits underflows: the candidate's values are ~0 while max |ref| = ")
    assert f"{np.abs(TINY).max():.1e}" in violation
    assert "(below float16's smallest normal 6.1e-05)" in violation and "too small for float16" in violation
    assert "mean cosine" not in violation


def test_underflow_is_explained_without_a_precision_and_for_classifiers_too() -> None:
    generic = compare({"logits": TINY}, {"logits": np.zeros_like(TINY)}, SPEC, _dataset(None), Task.GENERIC, AccuracyBudget())
    assert "underflows" in generic.violations[0] and "too small for this precision" in generic.violations[0]
    assert "smallest normal" not in generic.violations[0]
    classify = compare({"logits": TINY}, {"logits": np.zeros_like(TINY)}, SPEC, _dataset(None), Task.CLASSIFY,
                       AccuracyBudget(), "bf16")
    assert classify.violations[0].startswith("output logits underflows") and "bfloat16" in classify.violations[0]


def test_a_collapsed_output_of_a_normal_sized_model_keeps_the_cosine_message() -> None:
    """Zeros against outputs of size ~1 are a broken candidate, not an underflow: the figure says so."""
    report = compare({"logits": REF}, {"logits": np.zeros_like(REF)}, SPEC, _dataset(None), Task.GENERIC,
                     AccuracyBudget(), "fp16")
    assert report.violations == ("output logits: mean cosine 0.0000 < budget 0.99",)


def test_a_tiny_output_that_passes_is_not_rejected() -> None:
    report = compare({"logits": TINY}, {"logits": TINY * (1 + 1e-4)}, SPEC, _dataset(None), Task.GENERIC,
                     AccuracyBudget(), "fp16")
    assert report.passed


def test_nan_and_inf_values_are_counted() -> None:
    bad = REF.copy()
    bad[0, 0], bad[2, 1], bad[3, 2] = np.nan, np.inf, -np.inf
    report = compare({"logits": REF}, {"logits": bad}, SPEC, _dataset(None), Task.GENERIC, AccuracyBudget())
    assert "output logits has 3 NaN or Inf values (of 12) where the reference is finite" in report.violations

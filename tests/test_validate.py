from __future__ import annotations

import numpy as np
import pytest

from inferforge.data import Dataset
from inferforge.types import ModelSpec, TensorSpec
from inferforge.validate import AccuracyBudget, Task, compare

SPEC = ModelSpec((TensorSpec.parse("x:float32[B,4]"),), (TensorSpec.parse("logits:float32[B,3]"),))


def _dataset(labels: np.ndarray | None) -> Dataset:
    return Dataset({"x": np.zeros((4, 4), np.float32)}, labels, "test")


REF = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 4.0], [2.0, 1.0, 0.0]])


def test_identical_outputs_pass_with_perfect_figures() -> None:
    report = compare({"logits": REF}, {"logits": REF.copy()}, SPEC, _dataset(None), Task.GENERIC, AccuracyBudget())
    assert report.passed and report.decided_by == "cosine similarity"
    out = report.outputs[0]
    assert out.max_abs == 0 and out.cosine_min == pytest.approx(1.0, abs=1e-12)


def test_accuracy_drop_decides_when_labels_exist() -> None:
    labels = np.array([0, 1, 2, 0])
    flipped = REF.copy()
    flipped[3] = [0.0, 5.0, 0.0]  # the last sample now predicts class 1: accuracy 100% -> 75%
    report = compare({"logits": REF}, {"logits": flipped}, SPEC, _dataset(labels), Task.AUTO,
                     AccuracyBudget(max_accuracy_drop=0.10))
    assert report.decided_by == "accuracy drop"
    assert report.reference_accuracy == 1.0 and report.accuracy == 0.75
    assert not report.passed
    assert "accuracy drop 25.00 points > budget 10.00" in report.violations[0]
    assert report.top1_agreement == 0.75


def test_top1_agreement_decides_for_a_classifier_without_labels() -> None:
    flipped = REF.copy()
    flipped[0] = [0.0, 9.0, 0.0]
    report = compare({"logits": REF}, {"logits": flipped}, SPEC, _dataset(None), Task.CLASSIFY,
                     AccuracyBudget(min_top1_agreement=0.9))
    assert report.decided_by == "top-1 agreement" and report.top1_agreement == 0.75
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

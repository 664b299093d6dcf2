"""Judge a candidate against the FP32 reference on the same data.

Which figure decides depends on what the user told us, as users of Polygraphy
and Optimum asked for: task accuracy when labels exist, top-1 agreement for a
classifier without labels, otherwise cosine similarity per sample. Abs/rel error
distributions are always reported so noise can be told from a bug.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any, ClassVar

import numpy as np

from inferforge.data import Dataset
from inferforge.errors import SpecError
from inferforge.types import ModelSpec, Precision


class Task(StrEnum):
    AUTO = "auto"  # classify when labels are given, otherwise compare outputs
    CLASSIFY = "classify"  # the first output holds class scores
    EMBED = "embed"  # outputs are embeddings: cosine decides
    GENERIC = "generic"


@dataclass(frozen=True)
class AccuracyBudget:
    """How far a candidate may drift from the reference. Accuracy figures are fractions (0.01 = 1 point)."""

    max_accuracy_drop: float = 0.01
    min_cosine: float = 0.99
    min_top1_agreement: float = 0.99

    # Each figure's allowed values as (low, high, low included): a fraction, where a cosine of 0 or below would
    # pass any candidate, however wrong. The CLI and the Python API are both held to these.
    RANGES: ClassVar[dict[str, tuple[float, float, bool]]] = {
        "max_accuracy_drop": (0.0, 1.0, True),
        "min_cosine": (0.0, 1.0, False),
        "min_top1_agreement": (0.0, 1.0, True),
    }

    def __post_init__(self) -> None:
        """Refuse a budget that means nothing (a cosine of 1.5, a 99-point drop written as 99) when it is made,
        not after an hour of builds judged against it."""
        problems = [_range_problem(f.name, getattr(self, f.name), *self.RANGES[f.name]) for f in fields(self)]
        if any(problems):
            raise SpecError("accuracy budget: " + "; ".join(p for p in problems if p)
                            + " (each is a fraction: 0.99, not 99; a 1% drop is 0.01)")

    def describe(self) -> str:
        """Every bound in one sentence, as the Markdown and HTML reports print it."""
        return ", ".join(figure.bound(self) for figure in DecidingFigure)


def _range_problem(name: str, value: object, low: float, high: float, low_included: bool) -> str:
    """'' when ``value`` lies in the range, else what came and the range expected."""
    shown = f"{'[' if low_included else '('}{low:g}, {high:g}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"{name} must be a number in {shown}, got {value!r}"
    number = float(value)
    inside = (low <= number if low_included else low < number) and number <= high  # NaN is never inside
    return "" if inside else f"{name} must be in {shown}, got {value!r}"


class DecidingFigure(StrEnum):
    """The figure a candidate is judged on: its value is the name reports print and JSON carries; each one
    knows which AccuracyBudget field bounds it and from which side, so no module matches the name as a string.
    ``compare`` picks the figure from the task and the data (see the module docstring)."""

    ACCURACY_DROP = "accuracy drop"  # labels given: reference accuracy minus the candidate's, in fractions
    COSINE = "cosine similarity"  # mean cosine per sample, each output on its own
    TOP1_AGREEMENT = "top-1 agreement"  # a classifier without labels: share of samples whose top class matches

    @property
    def threshold_field(self) -> str:
        """The AccuracyBudget field that bounds this figure."""
        return _RULES[self].threshold_field

    @property
    def at_most(self) -> bool:
        """True: the figure must stay at or below its threshold (a drop); False: at or above it."""
        return _RULES[self].at_most

    @property
    def score_name(self) -> str:
        """What ``AccuracyReport.score`` holds when this figure decides (higher is better)."""
        return _RULES[self].score_name

    def threshold(self, budget: AccuracyBudget) -> float:
        return float(getattr(budget, self.threshold_field))

    def misses(self, value: float, budget: AccuracyBudget) -> bool:
        """Whether ``value`` of this figure lies beyond the budget's bound. A NaN figure does not: NaN and Inf
        outputs are a violation of their own, counted by ``compare``."""
        bound = self.threshold(budget)
        return bool(value > bound) if self.at_most else bool(value < bound)

    def bound(self, budget: AccuracyBudget) -> str:
        """The budget's clause for this figure: 'max accuracy drop 1.00 points', 'min cosine 0.99'."""
        value = getattr(budget, self.threshold_field)
        shown = f"{value * 100:.2f} points" if self is DecidingFigure.ACCURACY_DROP else f"{value}"
        return f"{'max' if self.at_most else 'min'} {_RULES[self].bound_name} {shown}"

    def score_bar(self, budget: AccuracyBudget, reference_accuracy: float | None = None) -> float | None:
        """Where the budget puts the bar on the ``score`` axis: the drop is measured from the reference's
        accuracy, so without it there is no bar."""
        if self is DecidingFigure.ACCURACY_DROP:
            return None if reference_accuracy is None else reference_accuracy - self.threshold(budget)
        return self.threshold(budget)


@dataclass(frozen=True)
class _Rule:
    threshold_field: str
    at_most: bool
    score_name: str
    bound_name: str


_RULES = {
    DecidingFigure.ACCURACY_DROP: _Rule("max_accuracy_drop", True, "accuracy", "accuracy drop"),
    DecidingFigure.COSINE: _Rule("min_cosine", False, "mean cosine", "cosine"),
    DecidingFigure.TOP1_AGREEMENT: _Rule("min_top1_agreement", False, "top-1 agreement", "top-1 agreement"),
}


@dataclass(frozen=True)
class OutputAgreement:
    """Per-output difference statistics between candidate and reference."""

    name: str
    max_abs: float
    p99_abs: float
    mean_abs: float
    max_rel: float
    cosine_mean: float
    cosine_min: float
    top1_agreement: float | None = None


@dataclass(frozen=True)
class AccuracyReport:
    samples: int
    data_origin: str
    outputs: tuple[OutputAgreement, ...]
    decided_by: DecidingFigure
    accuracy: float | None = None
    reference_accuracy: float | None = None
    violations: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.violations

    @property
    def accuracy_drop(self) -> float | None:
        if self.accuracy is None or self.reference_accuracy is None:
            return None
        return self.reference_accuracy - self.accuracy

    @property
    def cosine(self) -> float:
        return min((o.cosine_mean for o in self.outputs), default=1.0)

    @property
    def top1_agreement(self) -> float | None:
        return self.outputs[0].top1_agreement if self.outputs else None

    @property
    def score(self) -> float:
        """The figure the budget was decided on, higher is better: to compare variants of one candidate."""
        if self.decided_by is DecidingFigure.ACCURACY_DROP and self.accuracy is not None:
            return self.accuracy
        if self.decided_by is DecidingFigure.TOP1_AGREEMENT and self.top1_agreement is not None:
            return self.top1_agreement
        return self.cosine

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["accuracy_drop"] = self.accuracy_drop
        data["passed"] = self.passed
        data.update(cosine=self.cosine, top1_agreement=self.top1_agreement, score=self.score)  # for JSON readers
        return data


def collect_outputs(run: Callable[[dict[str, np.ndarray]], Mapping[str, Any]], dataset: Dataset,
                    batch_size: int = 16) -> dict[str, np.ndarray]:
    """Run over the whole dataset in batches; outputs concatenated along the batch axis."""
    parts: dict[str, list[np.ndarray]] = {}
    for batch in dataset.batches(batch_size):
        for name, value in run(batch).items():
            array = value.detach().float().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
            parts.setdefault(name, []).append(array)
    return {name: np.concatenate(chunks) if chunks[0].ndim else chunks[0] for name, chunks in parts.items()}


def resolve_task(task: Task, dataset: Dataset) -> Task:
    if task is Task.AUTO:
        return Task.CLASSIFY if dataset.labels is not None else Task.GENERIC
    return task


def compare(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], spec: ModelSpec,
            dataset: Dataset, task: Task, budget: AccuracyBudget,
            precision: Precision | str | None = None) -> AccuracyReport:
    """Compare every output; check the budget on the figure the task calls for.

    ``precision``: what the candidate computes in, when known, so that an output that underflowed to ~0
    is explained with that precision's range instead of a bare cosine of 0.
    """
    task = resolve_task(task, dataset)
    outputs = []
    violations = []
    vanished: dict[str, str] = {}  # output -> why it is ~0, used in place of the figure that failed
    for out in spec.outputs:
        ref = reference[out.name].astype(np.float64)
        got = candidate[out.name].astype(np.float64)
        if ref.shape != got.shape:
            violations.append(f"output {out.name} has shape {list(got.shape)}, reference {list(ref.shape)}")
            continue
        bad = int(np.count_nonzero(~np.isfinite(got)))
        if bad and np.all(np.isfinite(ref)):
            violations.append(f"output {out.name} has {bad} NaN or Inf values (of {got.size}) where the reference "
                              "is finite")
        underflow = _underflow(out.name, ref, got, precision)
        if underflow:
            vanished[out.name] = underflow
        is_scores = task is Task.CLASSIFY and out is spec.outputs[0]
        outputs.append(output_agreement(out.name, ref, got, is_scores, out.batch_axis == 0))
    accuracy = reference_accuracy = None
    first = spec.outputs[0].name if spec.outputs else ""
    if task is Task.CLASSIFY and dataset.labels is not None and outputs:
        reference_accuracy = _accuracy(reference[first], dataset.labels)
        accuracy = _accuracy(candidate[first], dataset.labels)
        decided_by = DecidingFigure.ACCURACY_DROP
        drop = reference_accuracy - accuracy
        if decided_by.misses(drop, budget):
            violations.append(vanished.get(first) or
                              f"accuracy drop {drop * 100:.2f} points > budget {budget.max_accuracy_drop * 100:.2f} "
                              f"({accuracy * 100:.2f}% vs {reference_accuracy * 100:.2f}%)")
    elif task is Task.CLASSIFY and outputs:
        decided_by = DecidingFigure.TOP1_AGREEMENT
        agreement = outputs[0].top1_agreement or 0.0
        if decided_by.misses(agreement, budget):
            violations.append(vanished.get(first) or f"top-1 agreement {_below(agreement, budget.min_top1_agreement)} "
                              f"< budget {budget.min_top1_agreement}")
    else:
        decided_by = DecidingFigure.COSINE
        for o in outputs:
            if decided_by.misses(o.cosine_mean, budget):
                violations.append(vanished.get(o.name) or f"output {o.name}: mean cosine "
                                  f"{_below(o.cosine_mean, budget.min_cosine)} < budget {budget.min_cosine}")
    return AccuracyReport(len(dataset), dataset.origin, tuple(outputs), decided_by, accuracy, reference_accuracy,
                          tuple(violations))


# The smallest normal number of each floating precision (2**-14, 2**-126, 2**-6): a value far below it
# rounds to 0. TF32 and BF16 keep FP32's exponent range; INT8's range depends on its scales.
SMALLEST_NORMAL: dict[Precision, tuple[str, float]] = {
    Precision.FP32: ("float32", 2.0**-126), Precision.TF32: ("tf32", 2.0**-126),
    Precision.BF16: ("bfloat16", 2.0**-126), Precision.FP16: ("float16", 2.0**-14),
    Precision.FP8: ("float8 e4m3", 2.0**-6),
}
VANISHED = 1e-3  # a candidate output whose norm is below this fraction of the reference's has collapsed to ~0
TINY_OUTPUT = 1e-3  # a reference whose largest |value| is below this (or the precision's smallest normal) is tiny


def _underflow(name: str, ref: np.ndarray, got: np.ndarray, precision: Precision | str | None) -> str:
    """Why ``got`` is ~0, when the likely cause is that the reference's values are too small to represent
    ('' otherwise): a cosine of 0 against such outputs says nothing about the backend, but a lot about the
    model (random or badly scaled weights)."""
    if got.size == 0 or not np.all(np.isfinite(got)) or not np.all(np.isfinite(ref)):
        return ""
    ref_norm, got_norm = float(np.linalg.norm(ref)), float(np.linalg.norm(got))
    if ref_norm == 0 or got_norm > VANISHED * ref_norm:
        return ""
    label, normal = _precision_range(precision)
    ref_max = float(np.abs(ref).max())
    if ref_max >= max(TINY_OUTPUT, normal):
        return ""
    below = f" (below {label}'s smallest normal {normal:.1e})" if label and ref_max < normal else ""
    return (f"output {name} underflows: the candidate's values are ~0 while max |ref| = {ref_max:.1e}{below}; "
            f"the model's outputs are too small for {label or 'this precision'} — random weights?")


def _precision_range(precision: Precision | str | None) -> tuple[str, float]:
    """The precision's name and smallest normal number (0 when it has none, or is unknown)."""
    if precision is None:
        return "", 0.0
    try:
        known = Precision(precision)
    except ValueError:
        return str(precision), 0.0
    return SMALLEST_NORMAL.get(known, (known.value, 0.0))


def output_agreement(name: str, ref: np.ndarray, got: np.ndarray, is_scores: bool, batched: bool) -> OutputAgreement:
    diff = np.abs(got - ref)
    # Relative error against the output's own scale: elementwise |ref| near 0 would make it meaningless.
    scale = np.abs(ref) + 1e-3 * max(float(np.abs(ref).max(initial=0.0)), 1e-12)
    per_sample_ref = ref.reshape(len(ref), -1) if batched and ref.ndim else ref.reshape(1, -1)
    per_sample_got = got.reshape(len(got), -1) if batched and got.ndim else got.reshape(1, -1)
    cosines = _cosine(per_sample_ref, per_sample_got)
    top1 = None
    if is_scores and ref.ndim >= 2:
        top1 = float(np.mean(ref.argmax(-1) == got.argmax(-1)))
    return OutputAgreement(
        name=name,
        max_abs=float(diff.max(initial=0.0)),
        p99_abs=float(np.percentile(diff, 99)) if diff.size else 0.0,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        max_rel=float((diff / scale).max(initial=0.0)),
        cosine_mean=float(cosines.mean()) if cosines.size else 1.0,
        cosine_min=float(cosines.min()) if cosines.size else 1.0,
        top1_agreement=top1,
    )


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity; two all-zero rows agree perfectly (cosine 1); a row with NaN or Inf is NaN
    (the NaN/Inf count reports it, without a warning from numpy)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        dots = np.sum(a * b, axis=1)
        both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
        cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)
    return np.where(both_zero, 1.0, cos)


def _accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(scores.reshape(len(labels), -1).argmax(-1) == labels))


def _below(value: float, bound: float) -> str:
    """``value`` with enough decimals to show it is below ``bound`` (0.999996, not a rounded 1.00000)."""
    for decimals in range(4, 10):
        text = f"{value:.{decimals}f}"
        if float(text) < bound:
            return text
    return repr(value)

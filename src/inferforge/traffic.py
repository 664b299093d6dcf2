"""The user's traffic: the validation samples at their own lengths, batched as a server batches them.

Validation data arrives padded to one length (a tokenizer padded every sentence to 128)
while requests are as long as they are (14 to 24 tokens for the demo's sentences), and a
candidate's rank can change with the length: one runtime wins at 128 tokens, another at 16.
So where a dynamic (named, non-batch) dim of the data ends in padding, every candidate is
also timed on the samples cut to their own lengths: batch 1 on samples spread over the
lengths, larger batches made of consecutive samples padded to their longest, as dynamic
batching forms them; and the objective is decided on these. Padding is what a sample
repeats at its end: the positions that equal the last one in every input sharing the dim.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from inferforge.data import Dataset
from inferforge.types import BATCH, Dim, ModelSpec

FEEDS_PER_BATCH = 8  # distinct inputs timed per batch size (batch 1: samples at spread-out lengths)


@dataclass(frozen=True)
class Traffic:
    """Inputs to time on, per batch size; ``description`` says what they are, for the leaderboard."""

    description: str
    lengths: Mapping[str, np.ndarray]  # dim name -> each sample's own length
    axes: Mapping[str, tuple[tuple[int, str], ...]]  # input name -> (axis, dim name) of each axis cut
    dataset: Dataset

    def feeds(self, batch_size: int) -> list[dict[str, np.ndarray]]:
        """Up to FEEDS_PER_BATCH inputs of ``batch_size`` samples, each cut to its longest sample."""
        count = len(self.dataset)
        if batch_size == 1:  # samples at evenly spaced quantiles of their length
            order = np.argsort(sum(self.lengths.values()), kind="stable")
            picks = sorted({int(order[int((k + 0.5) * count / min(FEEDS_PER_BATCH, count))])
                            for k in range(min(FEEDS_PER_BATCH, count))})
            return [self._cut(np.array([i])) for i in picks]
        shuffled = np.random.default_rng(0).permutation(count)
        batches = min(FEEDS_PER_BATCH, max(1, -(-count // batch_size)))
        return [self._cut(shuffled[(np.arange(batch_size) + k * batch_size) % count]) for k in range(batches)]

    def _cut(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for name, value in self.dataset.inputs.items():
            taken = value[rows]
            for axis, dim in self.axes.get(name, ()):
                taken = np.take(taken, np.arange(int(self.lengths[dim][rows].max())), axis=axis)
            out[name] = np.ascontiguousarray(taken)
        return out


def feeds_for(traffic: Traffic | None, dataset: Dataset) -> Callable[[int], list[dict[str, np.ndarray]]]:
    """What the objective is timed on, per batch size: the data's own shapes when there are, else the
    dataset's samples as they are (the spec's example shape)."""
    if traffic is not None:
        return traffic.feeds
    return lambda batch_size: [dataset.take(batch_size)]


def timing_inputs(spec: ModelSpec, dataset: Dataset,
                  dim_ranges: Mapping[str, tuple[int, int]] | None = None) -> Traffic | None:
    """The data's own shapes to time on, or None: generated data, no dynamic non-batch dim, or no padding
    to cut (every sample already as long as the data)."""
    if dataset.generated:
        return None
    axes = _dynamic_axes(spec)
    lengths: dict[str, np.ndarray] = {}
    for dim in {d for pairs in axes.values() for _, d in pairs}:
        own = _own_lengths(dataset, axes, dim)
        low = max(1, (dim_ranges or {}).get(dim, (1, 0))[0])
        own = np.maximum(own, low)
        full = _full_length(dataset, axes, dim)
        if (own < full).any():
            lengths[dim] = own
    if not lengths:
        return None
    kept = {name: tuple((axis, d) for axis, d in pairs if d in lengths) for name, pairs in axes.items()}
    described = ", ".join(f"{d} {int(v.min())}..{int(v.max())} (median {int(np.median(v))}) where the data "
                          f"pads to {_full_length(dataset, axes, d)}" for d, v in sorted(lengths.items()))
    return Traffic(f"the data's samples at their own lengths: {described}", lengths, kept, dataset)


def _dynamic_axes(spec: ModelSpec) -> dict[str, list[tuple[int, str]]]:
    """Input name -> (axis, dim name) of each named non-batch dim."""
    return {s.name: [(axis, d.name) for axis, d in enumerate(s.shape) if isinstance(d, Dim) and d.name != BATCH]
            for s in spec.inputs}


def _full_length(dataset: Dataset, axes: Mapping[str, Sequence[tuple[int, str]]], dim: str) -> int:
    return next(dataset.inputs[name].shape[axis] for name, pairs in axes.items() for axis, d in pairs if d == dim)


def _own_lengths(dataset: Dataset, axes: Mapping[str, Sequence[tuple[int, str]]], dim: str) -> np.ndarray:
    """Each sample's length along ``dim``: the full length less its trailing padding (a run of two or more
    positions equal to the last one, in every input having the dim; a single one may be content)."""
    same_as_last: np.ndarray | None = None
    for name, pairs in axes.items():
        for axis, d in pairs:
            if d != dim:
                continue
            value = np.moveaxis(dataset.inputs[name], axis, 1)  # samples, positions, rest
            value = value.reshape(value.shape[0], value.shape[1], -1)
            equal = (value == value[:, -1:, :]).all(axis=2)
            same_as_last = equal if same_as_last is None else same_as_last & equal
    assert same_as_last is not None
    full = same_as_last.shape[1]
    # Trailing run of True per sample: position of the last False from the end.
    flipped = same_as_last[:, ::-1]
    run = np.where(flipped.all(axis=1), full, np.argmin(flipped, axis=1))
    return np.where(run >= 2, full - run, full).astype(np.int64)

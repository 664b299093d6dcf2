"""A model zoo: tiny models that each break a naive optimize pipeline in its own way.

Every entry of ``ZOO`` names a factory in this file (``f"{ZOO_FILE}:{factory}"`` is its model reference),
the input specs that keep its dynamic dims dynamic, a generator of inputs the user did not give (other
batch sizes, other lengths, both sides of every data-dependent branch), and, for models with a branch,
validation data that reaches one side only: a traced artifact then agrees perfectly on the user's data and
is wrong elsewhere, which the search has to find out by itself.

Conventions:
- factories return ``(module.eval(), example_inputs)`` with examples keyed by forward's parameter names,
  seeded weights (``torch.manual_seed``), built in milliseconds;
- ``fresh_inputs(batch, seed, **dims)``: an even seed and an odd seed reach the two sides of a model's
  data-dependent branch (``branch(inputs)`` names the side, so a test can check that both were reached);
  the examples are ``fresh_inputs(2, 0)``: one side only, as a user's example usually is;
- ``dynamic``: named dims and other sizes to try; ``canonical``: puts outputs whose row order is not part
  of the contract (NMS detections) in a fixed order before comparing.

This file imports only torch, torchvision and numpy: the ``source`` backend packages a copy of it, and that
copy must load in a fresh process with nothing from tests/ on the path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

ZOO_FILE = str(Path(__file__).resolve())

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class ZooModel:
    factory: str  # a function of this file returning (module, example_inputs)
    note: str  # what it breaks
    fresh_inputs: Callable[..., Arrays]  # (batch, seed, **dims) -> inputs the user did not give
    inputs: tuple[str, ...] = ()  # inferforge input specs; empty when the examples say everything
    dynamic: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # dim -> other sizes to try
    one_sided_data: Callable[[], Arrays] | None = None  # validation data reaching one side of the branch
    branch: Callable[[Arrays], str] | None = None  # which side of its branch an input takes
    canonical: Callable[[Arrays], Arrays] | None = None  # outputs in a fixed row order, for comparing

    @property
    def ref(self) -> str:
        return f"{ZOO_FILE}:{self.factory}"

    def build(self) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        return globals()[self.factory]()  # type: ignore[no-any-return]


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _normal(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _tensors(arrays: Arrays) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def _lengths(rng: np.random.Generator, batch: int, longest: int) -> np.ndarray:
    """Lengths in 1..longest, the full length always among them (pad_packed_sequence's total_length case)."""
    lengths = rng.integers(1, longest + 1, batch)
    lengths[0] = longest
    return lengths.astype(np.int64)


# ---------------------------------------------------------------- 1. data-dependent branch

class SignBranch(nn.Module):
    """``if`` on the batch's mean: tracing and ONNX export record the side the example took."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        if bool(x.mean() > 0):
            return self.out(h * 2.0 + 1.0)
        return self.out(torch.tanh(h) - 1.0)


def fresh_sign_branch(batch: int, seed: int) -> Arrays:
    rng = _rng(seed)
    x = _normal(rng, batch, 8)
    sign = 1.0 if seed % 2 == 0 else -1.0  # every row's mean on one side, so any batch of them is too
    x = x - x.mean(1, keepdims=True) + sign * (0.2 + rng.random((batch, 1))).astype(np.float32)
    return {"x": x.astype(np.float32)}


def side_sign_branch(inputs: Arrays) -> str:
    return "mean > 0" if inputs["x"].mean() > 0 else "mean <= 0"


def make_sign_branch() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return SignBranch().eval(), _tensors(fresh_sign_branch(2, 0))


# ---------------------------------------------------------------- 2. data-dependent trip count

class DataDependentLoop(nn.Module):
    """A residual step applied ceil(max |x|) times (at most 4): the trip count is a tensor's value."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 12)
        self.step = nn.Linear(12, 12)
        self.out = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = int(x.abs().amax().ceil().clamp(max=4))
        h = self.inp(x)
        for _ in range(steps):
            h = h + torch.tanh(self.step(h))
        return self.out(h)


def fresh_data_loop(batch: int, seed: int) -> Arrays:
    rng = _rng(seed)
    if seed % 2 == 0:
        return {"x": rng.uniform(-0.95, 0.95, (batch, 6)).astype(np.float32)}  # one step
    x = rng.uniform(-3.5, 3.5, (batch, 6)).astype(np.float32)
    x[0, 0] = 3.7  # four steps
    return {"x": x}


def side_data_loop(inputs: Arrays) -> str:
    return f"{min(4, math.ceil(float(np.abs(inputs['x']).max())))} steps"


def make_data_loop() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return DataDependentLoop().eval(), _tensors(fresh_data_loop(2, 0))


# ---------------------------------------------------------------- 3. loop over a tensor's length

class LengthLoop(nn.Module):
    """A hand-written RNN: ``for t in range(x.shape[1])``. A trace unrolls it for the example's length."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.RNNCell(6, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = x.new_zeros(x.shape[0], 12)
        states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            states.append(h)
        return {"last": self.head(h), "states": torch.stack(states, 1)}


def fresh_length_loop(batch: int, seed: int, T: int = 5) -> Arrays:
    return {"x": _normal(_rng(seed), batch, T, 6)}


def make_length_loop() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return LengthLoop().eval(), _tensors(fresh_length_loop(2, 0))


# ---------------------------------------------------------------- 4. dict / tuple / nested outputs

class NestedOutputs(nn.Module):
    """A dict holding a tuple holding a dict, a list, a None to skip, and an output without a batch-sized
    feature axis: output names come from the path (pooled, extra.0, extra.2.tokens, aux.1, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        h = self.proj(x)
        pooled = h.mean(1)
        return {"pooled": pooled,
                "extra": (h.amax(1), None, {"tokens": h, "norm": h.norm(dim=-1)}),
                "aux": [pooled.sum(-1), pooled[:, :2]]}


def fresh_nested(batch: int, seed: int, S: int = 7) -> Arrays:
    return {"x": _normal(_rng(seed), batch, S, 8)}


def make_nested_outputs() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return NestedOutputs().eval(), _tensors(fresh_nested(2, 0))


# ---------------------------------------------------------------- 5. several inputs of different dtypes

class MixedDtypes(nn.Module):
    """int64 ids, a bool mask, float64 features, an int32 bucket, a float16 scale; an int64 output too."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.feat = nn.Linear(4, 8)
        self.bucket = nn.Embedding(5, 8)
        self.head = nn.Linear(24, 3)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, features: torch.Tensor, bucket: torch.Tensor,
                scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.embed(ids) * mask.unsqueeze(-1).float()
        count = mask.sum(1)
        pooled = e.sum(1) / count.clamp(min=1).unsqueeze(-1).float()
        f = self.feat(features.float())
        b = self.bucket(bucket.long())
        return self.head(torch.cat([pooled, f, b], -1)) * scale.float(), count


def fresh_mixed(batch: int, seed: int, S: int = 6) -> Arrays:
    rng = _rng(seed)
    mask = rng.random((batch, S)) < 0.7
    mask[0] = False  # a row with nothing in it: the count clamps
    return {"ids": rng.integers(0, 50, (batch, S)).astype(np.int64), "mask": mask,
            "features": rng.standard_normal((batch, 4)), "bucket": rng.integers(0, 5, batch).astype(np.int32),
            "scale": rng.uniform(0.5, 2.0, (batch, 1)).astype(np.float16)}


def make_mixed_dtypes() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return MixedDtypes().eval(), _tensors(fresh_mixed(2, 0))


# ---------------------------------------------------------------- 6. LSTM over packed variable lengths

class PackedLSTM(nn.Module):
    """pack_padded_sequence / pad_packed_sequence with lengths given as an input (kept in 1..T)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(5, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        lengths = lengths.clamp(1, x.shape[1]).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, (h, _) = self.lstm(packed)
        states, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return {"logits": self.head(h[-1]), "states": states}


def fresh_lstm(batch: int, seed: int, T: int = 7) -> Arrays:
    rng = _rng(seed)
    return {"x": _normal(rng, batch, T, 5), "lengths": _lengths(rng, batch, T)}


def make_packed_lstm() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return PackedLSTM().eval(), _tensors(fresh_lstm(2, 0))


# ---------------------------------------------------------------- 7. GRU, last valid step by length

class LengthGRU(nn.Module):
    """A two-layer GRU over padded sequences; the state at each row's last valid step (a gather by a
    length input) and the mean over valid steps (a mask built from arange over the dynamic length)."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(5, 8, num_layers=2, batch_first=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, _ = self.gru(x)
        lengths = lengths.clamp(1, x.shape[1])
        index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, out.shape[-1])
        last = out.gather(1, index).squeeze(1)
        valid = (torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None]).unsqueeze(-1).float()
        return last, (out * valid).sum(1) / valid.sum(1)


def fresh_gru(batch: int, seed: int, T: int = 8) -> Arrays:
    rng = _rng(seed)
    return {"x": _normal(rng, batch, T, 5), "lengths": _lengths(rng, batch, T)}


def make_length_gru() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return LengthGRU().eval(), _tensors(fresh_gru(2, 0))


# ---------------------------------------------------------------- 8. FFT

class SpectralFilter(nn.Module):
    """rfft -> magnitude features and a low-pass filtered irfft back to the signal's (dynamic) length."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(6, 4)

    def forward(self, signal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spectrum = torch.fft.rfft(signal, norm="ortho")
        features = self.head(spectrum.abs()[:, :6])
        keep = (torch.arange(spectrum.shape[-1], device=signal.device) < 5).to(signal.dtype)
        smooth = torch.fft.irfft(spectrum * keep, n=signal.shape[-1], norm="ortho")
        return features, smooth


def fresh_fft(batch: int, seed: int, N: int = 32) -> Arrays:
    rng = _rng(seed)
    t = np.arange(N, dtype=np.float32)
    tone = np.sin(2 * np.pi * rng.integers(1, 4, (batch, 1)) * t / N).astype(np.float32)
    return {"signal": (tone + 0.3 * _normal(rng, batch, N)).astype(np.float32)}


def make_fft() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return SpectralFilter().eval(), _tensors(fresh_fft(2, 0))


# ---------------------------------------------------------------- 9. attention with a padding mask

class MaskedEncoder(nn.Module):
    """nn.TransformerEncoder with src_key_padding_mask: in eval under inference_mode PyTorch takes its fast
    path (nested tensors), which export and tracing do not; the outputs are masked, so both agree."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        keep = attention_mask.bool().clone()
        keep[:, 0] = True  # in place on a copy: every row keeps one token, so no row is all padding
        h = self.encoder(self.embed(input_ids), src_key_padding_mask=~keep)
        m = keep.unsqueeze(-1).to(h.dtype)
        return {"pooled": (h * m).sum(1) / m.sum(1), "tokens": h * m}


def fresh_attention(batch: int, seed: int, S: int = 10) -> Arrays:
    rng = _rng(seed)
    lengths = _lengths(rng, batch, S)
    mask = (np.arange(S)[None] < lengths[:, None]).astype(np.int64)
    return {"input_ids": rng.integers(0, 50, (batch, S)).astype(np.int64), "attention_mask": mask}


def make_masked_attention() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return MaskedEncoder().eval(), _tensors(fresh_attention(2, 0))


# ---------------------------------------------------------------- 10. NMS, variable-size output

def _boxes_and_scores(raw: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid boxes (x1 < x2, y1 < y2) that overlap often, from unconstrained numbers."""
    xy = raw[..., :2] * 3.0
    wh = 1.0 + raw[..., 2:].abs() * 2.0
    return torch.cat([xy, xy + wh], -1), torch.sigmoid(logits)


class BatchedNMS(nn.Module):
    """torchvision.ops.batched_nms over every image of the batch, then a score threshold (a boolean mask):
    how many detections come out depends on the data, not on any input's shape."""

    def forward(self, boxes: torch.Tensor, scores: torch.Tensor) -> dict[str, torch.Tensor]:
        b, s = _boxes_and_scores(boxes, scores)
        image = torch.arange(b.shape[0], device=b.device)[:, None].expand(-1, b.shape[1]).reshape(-1)
        b, s = b.reshape(-1, 4), s.reshape(-1)
        keep = torchvision.ops.batched_nms(b, s, image, 0.3)
        keep = keep[s[keep] > 0.25]
        return {"boxes": b[keep], "scores": s[keep], "image": image[keep]}


def fresh_boxes(batch: int, seed: int, N: int = 12) -> Arrays:
    rng = _rng(seed)
    return {"boxes": _normal(rng, batch, N, 4), "scores": _normal(rng, batch, N)}


def canonical_detections(outputs: Arrays) -> Arrays:
    """Detections by image, then by falling score: the order batched_nms promises within an image only."""
    order = np.lexsort((-outputs["scores"].astype(np.float64), outputs["image"]))
    return {k: v[order] for k, v in outputs.items()}


def make_batched_nms() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return BatchedNMS().eval(), _tensors(fresh_boxes(2, 0))


# ---------------------------------------------------------------- 11. NMS per image, padded to a fixed size

MAX_DETECTIONS = 4


class PaddedNMS(nn.Module):
    """torchvision.ops.nms per image in a loop over the batch, each result padded to MAX_DETECTIONS: a
    fixed-size output built from variable-size pieces, and a loop a trace unrolls for the example batch."""

    def forward(self, boxes: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, s = _boxes_and_scores(boxes, scores)
        out_boxes, out_scores, counts = [], [], []
        for i in range(b.shape[0]):
            keep = torchvision.ops.nms(b[i], s[i], 0.3)[:MAX_DETECTIONS]
            missing = MAX_DETECTIONS - keep.shape[0]
            out_boxes.append(F.pad(b[i][keep], (0, 0, 0, missing)))
            out_scores.append(F.pad(s[i][keep], (0, missing)))
            counts.append(torch.ones_like(keep).sum())
        return torch.stack(out_boxes), torch.stack(out_scores), torch.stack(counts)


def make_padded_nms() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return PaddedNMS().eval(), _tensors(fresh_boxes(2, 0, N=10))


def fresh_padded_boxes(batch: int, seed: int, N: int = 10) -> Arrays:
    return fresh_boxes(batch, seed, N)


# ---------------------------------------------------------------- 12. boolean-mask indexing

class BooleanMask(nn.Module):
    """``h[h > 0.5]`` (data-dependent size) and a masked assignment ``h[h < 0] = 0`` (fixed size)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.lin(x)
        picked = h[h > 0.5]
        clipped = h.clone()
        clipped[clipped < 0] = 0.0
        return {"picked": picked * 2.0, "clipped": clipped, "count": (h > 0.5).sum(1)}


def fresh_boolean_mask(batch: int, seed: int) -> Arrays:
    return {"x": _normal(_rng(seed), batch, 8)}


def make_boolean_mask() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return BooleanMask().eval(), _tensors(fresh_boolean_mask(2, 0))


# ---------------------------------------------------------------- 13. in-place ops on buffers

class InplaceBuffers(nn.Module):
    """Buffers written in place at every call (a call counter; a scale recomputed with fill_/add_), and
    in-place ops on activations and slices: export must functionalize them, freezing must keep them."""

    scale: torch.Tensor
    calls: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.register_buffer("scale", torch.ones(8))
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.scale.fill_(0.5).add_(self.lin.bias.detach().abs())
        y = self.lin(x)
        y.relu_()
        y.mul_(self.scale)
        y[:, :2] += 1.0
        z = x.clone()
        z.clamp_(-1.0, 1.0)
        return y + z


def fresh_inplace(batch: int, seed: int) -> Arrays:
    return {"x": (2.0 * _normal(_rng(seed), batch, 8)).astype(np.float32)}


def make_inplace_buffers() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return InplaceBuffers().eval(), _tensors(fresh_inplace(2, 0))


# ---------------------------------------------------------------- 14. F.interpolate

class Resample(nn.Module):
    """Bilinear up by a scale factor, a conv, nearest back to the input's own (dynamic) size: a trace
    records that size as a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = F.interpolate(image, scale_factor=2.0, mode="bilinear", align_corners=False)
        y = torch.relu(self.conv(y))
        y = F.interpolate(y, size=image.shape[-2:], mode="nearest")
        return y, self.head(F.adaptive_avg_pool2d(y, 1).flatten(1))


def fresh_image3(batch: int, seed: int, H: int = 12, W: int = 10) -> Arrays:
    return {"image": _normal(_rng(seed), batch, 3, H, W)}


def make_interpolate() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return Resample().eval(), _tensors(fresh_image3(2, 0))


# ---------------------------------------------------------------- 15. einsum

class EinsumAttention(nn.Module):
    """Bilinear attention written with einsum, an outer product, and a full reduction to one value per row."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.bilinear = nn.Parameter(torch.randn(8, 8) / 8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scores = torch.einsum("bsd,de,bte->bst", self.q(x), self.bilinear, self.k(x)) / math.sqrt(8)
        context = torch.einsum("bst,btd->bsd", scores.softmax(-1), self.v(x))
        outer = torch.einsum("bi,bj->bij", context.mean(1), x.mean(1))
        return context, outer, torch.einsum("bsd->b", context)


def fresh_tokens8(batch: int, seed: int, S: int = 6) -> Arrays:
    return {"x": _normal(_rng(seed), batch, S, 8)}


def make_einsum() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return EinsumAttention().eval(), _tensors(fresh_tokens8(2, 0))


# ---------------------------------------------------------------- 16. custom autograd.Function

class _ClampedSwish(torch.autograd.Function):
    """x * clamp(sigmoid(beta * x), 0.05, 0.95) with a hand-written backward: script cannot compile it."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(beta * x).clamp(0.05, 0.95)
        ctx.save_for_backward(x, beta, gate)
        return x * gate

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # pragma: no cover - inference only
        x, beta, gate = ctx.saved_tensors
        inside = ((gate > 0.05) & (gate < 0.95)).to(x.dtype)
        return grad * (gate + x * beta * gate * (1 - gate) * inside), None


class CustomFunction(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(10, 16)
        self.beta = nn.Parameter(torch.tensor(1.5))
        self.out = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(_ClampedSwish.apply(self.inp(x), self.beta))


def fresh_custom_function(batch: int, seed: int) -> Arrays:
    return {"x": (2.0 * _normal(_rng(seed), batch, 10)).astype(np.float32)}


def make_custom_function() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return CustomFunction().eval(), _tensors(fresh_custom_function(2, 0))


# ---------------------------------------------------------------- 17. nn.EmbeddingBag

class Bags(nn.Module):
    """EmbeddingBag in mean mode with a padding index (variable-length bags in a padded 2-D input), sum mode
    with per-sample weights, and max mode."""

    def __init__(self) -> None:
        super().__init__()
        self.mean_bag = nn.EmbeddingBag(100, 12, mode="mean", padding_idx=0)
        self.sum_bag = nn.EmbeddingBag(100, 12, mode="sum")
        self.max_bag = nn.EmbeddingBag(100, 12, mode="max")
        self.head = nn.Linear(36, 5)

    def forward(self, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        bags = [self.mean_bag(ids), self.sum_bag(ids, per_sample_weights=weights), self.max_bag(ids)]
        return self.head(torch.cat(bags, -1))


def fresh_bags(batch: int, seed: int, L: int = 6) -> Arrays:
    rng = _rng(seed)
    ids = rng.integers(1, 100, (batch, L)).astype(np.int64)
    lengths = _lengths(rng, batch, L)
    ids[np.arange(L)[None] >= lengths[:, None]] = 0  # padding after each bag's length
    return {"ids": ids, "weights": rng.uniform(0.0, 1.0, (batch, L)).astype(np.float32)}


def make_embedding_bag() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return Bags().eval(), _tensors(fresh_bags(2, 0))


# ---------------------------------------------------------------- 18. GroupNorm / LayerNorm

class Norms(nn.Module):
    """conv -> GroupNorm -> SiLU, then the map as tokens through LayerNorm (over a dynamic token count)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 16, 3, padding=1)
        self.group = nn.GroupNorm(4, 16)
        self.layer = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)
        with torch.no_grad():  # affine parameters away from their identity init, so a dropped one shows
            for norm in (self.group, self.layer):
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.5, 0.5)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = F.silu(self.group(self.conv(image)))
        tokens = self.layer(y.flatten(2).transpose(1, 2))
        return y, self.head(tokens.mean(1))


def fresh_norms(batch: int, seed: int, H: int = 8) -> Arrays:
    return {"image": _normal(_rng(seed), batch, 4, H, 8)}


def make_norms() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return Norms().eval(), _tensors(fresh_norms(2, 0))


# ---------------------------------------------------------------- 19. depthwise convolutions

class Depthwise(nn.Module):
    """MobileNet-style block (depthwise 3x3 stride 2, pointwise, BatchNorm with non-trivial running stats,
    ReLU6) and a dilated depthwise Conv1d, over maps of dynamic height and width (odd sizes too)."""

    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 24, 1, bias=False)
        self.bn = nn.BatchNorm2d(24)
        self.dw1d = nn.Conv1d(24, 24, 5, padding=4, dilation=2, groups=24)
        running_mean, running_var = self.bn.running_mean, self.bn.running_var
        assert running_mean is not None and running_var is not None
        with torch.no_grad():
            running_mean.uniform_(-0.5, 0.5)
            running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.2, 0.2)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = F.relu6(self.bn(self.pw(self.dw(image))))
        return y, self.dw1d(y.mean(2))


def fresh_depthwise(batch: int, seed: int, H: int = 12, W: int = 10) -> Arrays:
    return {"image": _normal(_rng(seed), batch, 16, H, W)}


def make_depthwise() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return Depthwise().eval(), _tensors(fresh_depthwise(2, 0))


# ---------------------------------------------------------------- one-sided validation data

def one_sided_sign_branch() -> Arrays:
    """32 samples whose mean is positive: every batch of them takes the ``if`` side."""
    return fresh_sign_branch(32, 1000)


def one_sided_data_loop() -> Arrays:
    """32 samples inside (-1, 1): every batch of them takes exactly one step."""
    return fresh_data_loop(32, 1000)


# ---------------------------------------------------------------- the registry

ZOO: dict[str, ZooModel] = {
    "sign_branch": ZooModel(
        "make_sign_branch", "data-dependent if on the batch's mean: a trace keeps one side",
        fresh_sign_branch, one_sided_data=one_sided_sign_branch, branch=side_sign_branch),
    "data_loop": ZooModel(
        "make_data_loop", "loop whose trip count is a tensor value (int(x.abs().amax().ceil())): a trace "
        "freezes the count; export cannot specialize it",
        fresh_data_loop, one_sided_data=one_sided_data_loop, branch=side_data_loop),
    "length_loop": ZooModel(
        "make_length_loop", "Python loop over x.shape[1]: a trace unrolls it for T=5; export specializes T",
        fresh_length_loop, inputs=("x:float32[B,T=5,6]",), dynamic={"T": (2, 9)}),
    "nested_outputs": ZooModel(
        "make_nested_outputs", "dict/tuple/list/None nested outputs, named by path",
        fresh_nested, inputs=("x:float32[B,S=7,8]",), dynamic={"S": (3, 12)}),
    "mixed_dtypes": ZooModel(
        "make_mixed_dtypes", "five inputs: int64, bool, float64, int32, float16; an int64 output",
        fresh_mixed, inputs=("ids:int64[B,S=6]:0..49", "mask:bool[B,S=6]", "features:float64[B,4]",
                             "bucket:int32[B]:0..4", "scale:float16[B,1]"), dynamic={"S": (3, 11)}),
    "packed_lstm": ZooModel(
        "make_packed_lstm", "LSTM over pack_padded_sequence with a lengths input (variable length)",
        fresh_lstm, inputs=("x:float32[B,T=7,5]", "lengths:int64[B]:1..7"), dynamic={"T": (3, 12)}),
    "length_gru": ZooModel(
        "make_length_gru", "two-layer GRU; last valid state gathered by a lengths input; arange mask",
        fresh_gru, inputs=("x:float32[B,T=8,5]", "lengths:int64[B]:1..8"), dynamic={"T": (3, 13)}),
    "fft": ZooModel(
        "make_fft", "rfft/irfft with complex intermediates and n= the dynamic length (odd lengths too)",
        fresh_fft, inputs=("signal:float32[B,N=32]",), dynamic={"N": (17, 45)}),
    "masked_attention": ZooModel(
        "make_masked_attention", "TransformerEncoder with a key padding mask (nested-tensor fast path in "
        "eager), an in-place write to a copy of the mask",
        fresh_attention, inputs=("input_ids:int64[B,S=10]:0..49", "attention_mask:int64[B,S=10]:0..1"),
        dynamic={"S": (4, 17)}),
    "batched_nms": ZooModel(
        "make_batched_nms", "torchvision batched_nms + score threshold: output count depends on the data",
        fresh_boxes, inputs=("boxes:float32[B,N=12,4]", "scores:float32[B,N=12]"), dynamic={"N": (5, 30)},
        canonical=canonical_detections),
    "padded_nms": ZooModel(
        "make_padded_nms", "per-image torchvision nms in a loop over the batch, padded to a fixed size",
        fresh_padded_boxes, inputs=("boxes:float32[B,N=10,4]", "scores:float32[B,N=10]"),
        dynamic={"N": (6, 25)}),
    "boolean_mask": ZooModel(
        "make_boolean_mask", "h[h > 0.5] (data-dependent size) and a masked assignment",
        fresh_boolean_mask),
    "inplace_buffers": ZooModel(
        "make_inplace_buffers", "buffers mutated in place at every call; in-place ops on slices",
        fresh_inplace),
    "interpolate": ZooModel(
        "make_interpolate", "F.interpolate by scale factor and back to the input's own dynamic size",
        fresh_image3, inputs=("image:float32[B,3,H=12,W=10]",), dynamic={"H": (7, 17), "W": (9, 16)}),
    "einsum": ZooModel(
        "make_einsum", "einsum: bilinear attention, outer product, full reduction",
        fresh_tokens8, inputs=("x:float32[B,S=6,8]",), dynamic={"S": (3, 13)}),
    "custom_function": ZooModel(
        "make_custom_function", "a custom torch.autograd.Function (script cannot compile it)",
        fresh_custom_function),
    "embedding_bag": ZooModel(
        "make_embedding_bag", "nn.EmbeddingBag: mean with padding_idx, sum with per_sample_weights, max",
        fresh_bags, inputs=("ids:int64[B,L=6]:0..99", "weights:float32[B,L=6]"), dynamic={"L": (3, 11)}),
    "norms": ZooModel(
        "make_norms", "GroupNorm and LayerNorm (non-identity affine) over a dynamic height",
        fresh_norms, inputs=("image:float32[B,4,H=8,8]",), dynamic={"H": (5, 13)}),
    "depthwise": ZooModel(
        "make_depthwise", "depthwise Conv2d (stride 2) + pointwise + BatchNorm, dilated depthwise Conv1d; "
        "odd dynamic sizes",
        fresh_depthwise, inputs=("image:float32[B,16,H=12,W=10]",), dynamic={"H": (7, 15), "W": (9, 20)}),
}


# How close a loaded artifact must come to eager on fresh inputs: FP32 elementwise, lower precisions by
# relative L2 error (the test and benchmarks/zoo.py judge alike).
RTOL, ATOL = 1e-3, 1e-4
REL_L2 = {"tf32": 1e-2, "fp16": 3e-2, "bf16": 6e-2, "fp8": 0.25, "int8": 0.25}


def mismatch(got: Mapping[str, Any], want: Mapping[str, np.ndarray], canonical: Callable | None,
             precision: str = "fp32") -> str | None:
    """Why ``got`` does not match eager's ``want`` (None when it does)."""
    got = {k: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v) for k, v in got.items()}
    if list(got) != list(want):
        return f"outputs {list(got)}, eager's {list(want)}"
    if canonical is not None:
        got, want = canonical(got), canonical(dict(want))
    for name, w in want.items():
        g = got[name]
        if g.shape != w.shape:
            return f"output {name} has shape {list(g.shape)}, eager's {list(w.shape)}"
        g64, w64 = g.astype(np.float64), w.astype(np.float64)
        if precision in REL_L2:
            norm = np.linalg.norm(w64)
            error = float(np.linalg.norm(g64 - w64) / norm) if norm > 0 else float(np.linalg.norm(g64))
            if not error <= REL_L2[precision]:
                return f"output {name}: relative L2 error {error:.3g} > {REL_L2[precision]} ({precision})"
            continue
        scale = max(1.0, float(np.abs(w64).max(initial=0.0)))
        if not np.allclose(g64, w64, rtol=RTOL, atol=ATOL * scale):
            return f"output {name} differs from eager by up to {float(np.abs(g64 - w64).max()):.3g}"
    return None

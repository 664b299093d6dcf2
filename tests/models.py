"""Tiny models for the tests, one registry. Each factory returns (model, example_inputs)."""

from __future__ import annotations

import torch
from torch import nn


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(8, 4)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image).flatten(1))


class TwoInputsDictOutput(nn.Module):
    """Token ids and a mask in; a dict with a pooled vector and a tuple of per-token outputs out."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.proj = nn.Linear(8, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
        states = self.proj(self.embed(input_ids))
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return {"pooled": pooled, "extra": (states.mean(-1), states.amax(-1))}


class DataDependentBranch(nn.Module):
    """Tracing records one branch of this ``if``; scripting keeps both."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        if bool(x.sum() > 0):
            return y * 2.0
        return -y


class UnscriptableBranch(nn.Module):
    """A data-dependent branch that torch.jit.script cannot compile (a Python generator expression)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        if bool(x.sum() > 0):
            return sum(y * k for k in range(1, 3))  # type: ignore[return-value]
        return -y


def make_mlp() -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    return TinyMLP().eval(), (torch.randn(2, 16),)


def make_cnn() -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    return TinyCNN().eval(), {"image": torch.randn(2, 3, 16, 16)}


def make_two_inputs() -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (2, 7))
    return TwoInputsDictOutput().eval(), {"input_ids": ids, "attention_mask": torch.ones(2, 7, dtype=torch.int64)}


def make_branch() -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    return DataDependentBranch().eval(), (torch.randn(2, 6),)


def make_unscriptable_branch() -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    return UnscriptableBranch().eval(), (torch.randn(2, 6),)


def make_raises() -> nn.Module:
    raise RuntimeError("weights file corrupted")


def make_not_a_model() -> str:
    return "not a model"


def export_mlp_onnx(path: str) -> nn.Module:
    """Write the MLP as ONNX (input x, output y, dynamic batch) with the TorchScript-based exporter."""
    model, (x,) = make_mlp()
    torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return model


class SmallCNN(nn.Module):
    """Enough weights (about 28k) for INT8 to shrink the artifact; a classifier over 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(),
                                      nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(64, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image).flatten(1))


class WideMLP(nn.Module):
    """About 83k weights in three Linear layers: the shape dynamic INT8 is for."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class OneFragileLayer(nn.Module):
    """An MLP where INT8 breaks exactly one layer: ``fragile``.

    ``spread`` writes one feature 1000x larger than the others, and ``fragile`` reads that feature with
    1000x smaller weights, so the FP32 output is well conditioned. But one 8-bit scale for the whole
    input of ``fragile`` is set by the outlier and rounds every other feature to zero: quantized, the
    output loses nearly everything (cosine about 0.5), while the other layers quantize fine.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spread = nn.Linear(16, 32)
        self.fragile = nn.Linear(32, 32)
        self.head = nn.Linear(32, 5)
        with torch.no_grad():
            self.spread.weight[0] *= 1000.0
            self.spread.bias[0] *= 1000.0
            self.fragile.weight[:, 0] /= 1000.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fragile(self.spread(x))))


def make_small_cnn() -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    return SmallCNN().eval(), {"image": torch.randn(2, 3, 32, 32)}


def make_wide_mlp() -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    return WideMLP().eval(), (torch.randn(2, 64),)


def make_token_mlp() -> tuple[nn.Module, tuple]:
    """WideMLP over 32 tokens per sample: the linear layers see batch x 32 rows, as in a transformer
    (torch._int_mm, behind dynamic INT8 on CUDA, takes only more than 16 rows)."""
    torch.manual_seed(0)
    return WideMLP().eval(), (torch.randn(2, 32, 64),)


def make_one_fragile_layer() -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    return OneFragileLayer().eval(), (torch.randn(2, 16),)


class DigitsCNN(nn.Module):
    """The demo digits CNN's shape at a tenth of its width: two convs, a max pool, flatten, then two
    Linear layers. With freezing, Inductor's layout optimization runs its convs channels-last, which
    broke torch-int8 here when both Linear layers were int8 (11% accuracy, the FP32 model 98%)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                                 nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


def make_digits_cnn() -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    return DigitsCNN().eval(), {"image": torch.rand(2, 1, 8, 8)}


def _in_search_worker() -> bool:
    import multiprocessing

    return multiprocessing.current_process().name == "inferforge-candidate"


class CrashesInWorker(nn.Module):
    """Segfaults whenever it runs inside a search worker (as a backend's native crash would); fine elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _in_search_worker():
            import ctypes

            ctypes.string_at(0)  # reads address 0: SIGSEGV
        return x * 2.0


class HangsInWorker(nn.Module):
    """Never returns inside a search worker (as a hung compile would); fine elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _in_search_worker():
            import time

            time.sleep(3600)
        return x * 2.0


def make_crashes_in_worker() -> tuple[nn.Module, tuple]:
    return CrashesInWorker().eval(), (torch.randn(2, 4),)


def make_hangs_in_worker() -> tuple[nn.Module, tuple]:
    return HangsInWorker().eval(), (torch.randn(2, 4),)

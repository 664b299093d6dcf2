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

"""A small CNN trained on scikit-learn's bundled digits (8x8 images, 10 classes).

Training takes a few seconds on 2 cores and is seeded, so every call of
``make_model`` returns the same network; ``make_data`` gives the held-out test
split (never seen in training) with labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from inferforge.adapters import ImageAdapterSpec

SEED = 0


def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]  # [N, 1, 8, 8] in 0..1
    return train_test_split(images, digits.target.astype(np.int64), test_size=0.25, random_state=SEED,
                            stratify=digits.target)


def _network() -> Any:
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10),
    )


def make_adapter() -> ImageAdapterSpec:
    """Served clients send a photo of a digit: gray, shrunk to 8x8 by area averaging (as the digits
    were made: counts of ink in 4x4 blocks) and scaled to 0..1 like ``_split``'s images / 16.

    The digits are light ink on a dark ground (0 = blank): send images the same way round.
    """
    from inferforge.adapters import ImageAdapterSpec
    from inferforge.preprocess import ImagePipeline

    return ImageAdapterSpec("image", ImagePipeline(resize=(8, 8), color="gray", scale=1 / 255, layout="NCHW"))


def make_model(epochs: int = 12) -> tuple[Any, Any]:
    """Train the CNN; returns (model, example_inputs)."""
    import torch

    x_train, _, y_train, _ = _split()
    torch.manual_seed(SEED)
    model = _network()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
    generator = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    model.eval()
    return model, {"image": x[:2]}


def make_data() -> dict[str, np.ndarray]:
    """The test split: 450 images and their labels."""
    _, x_test, _, y_test = _split()
    return {"image": x_test, "labels": y_test}

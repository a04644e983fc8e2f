"""Shared by the perf scripts: the offline environment, model shapes, synthetic benchmark items,
tiny-model builders, and one timing helper. Import it before anything that loads transformers."""

from __future__ import annotations

import os

# Offline and quiet: set before transformers, datasets or lm-eval are first imported.
for _name, _value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_name, _value)

import random
import statistics
import time
from pathlib import Path
from typing import Callable, TypeVar

import torch

from evomerge.evaluate.benchmark import Item
from evomerge.evaluate.protocol import build_prompt
from evomerge.toy.tiny import make_checkpoint, save_bpe_tokenizer, tiny_config

WORDS = (
    "silk nacre bone collagen keratin chitin wood cellulose lignin enamel dentin aragonite calcite apatite "
    "fibre fiber tough stiff strong modulus strength hierarchical structure protein mineral tablet layer "
    "crystal amorphous helix sheet matrix crack energy dissipation hydrated elastic plastic tensile"
).split()

# ~20M parameters shaped like a small real LLM: a 32k vocabulary (Llama 2 / Mistral size) on a
# narrow body. `--shape narrow-vocab` is the less favourable case for evomerge (8k vocabulary).
SHAPES = {
    "llama-vocab": dict(vocab_size=32000, hidden_size=256, intermediate_size=688, num_layers=4, num_heads=4, num_kv_heads=2),
    "narrow-vocab": dict(vocab_size=8000, hidden_size=512, intermediate_size=1024, num_layers=4, num_heads=8, num_kv_heads=4),
}


def synthetic_items(count: int, seed: int = 0) -> list[Item]:
    rng = random.Random(seed)
    items = []
    for index in range(count):
        question = "Which " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 30))) + "?"
        choices = tuple(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))) for _ in range(4))
        items.append(Item(f"q{index:04d}", question, "mc", "ABCD"[rng.randrange(4)], choices, category=rng.choice(["general", "specific", "numerical"])))
    return items


def make_model(folder: Path, shape: str, items: list[Item], seed: int = 0, from_state=None, noise: float = 0.0):
    """A model folder of the given shape with a byte-level BPE trained on the items' prompts."""
    config = tiny_config("llama", tie_word_embeddings=False, **SHAPES[shape])
    state = make_checkpoint(folder, config, seed=seed, from_state=from_state, noise=noise, tokenizer=False)
    save_bpe_tokenizer(folder, [build_prompt(item) + " A B C D" for item in items] * 3, SHAPES[shape]["vocab_size"])
    return state


Result = TypeVar("Result")


def median_time(fn: Callable[[], Result], repeats: int, device: torch.device) -> tuple[float, Result]:
    """The median wall time of `repeats` calls of `fn` (the device synchronised before and after
    each, so queued GPU work is counted where it belongs) and the last call's result."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result

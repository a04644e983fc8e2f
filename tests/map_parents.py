"""Tiny parent pairs at two "scales" for `evomerge map` tests (search and CLI share them).

Each scale has an ancestor, an "instruct" model perturbed from it and a "child" perturbed far from
the instruct model, so the two parents answer differently and the sweep's accuracy moves with t.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from evomerge.toy.tiny import CHAT_TEMPLATE, make_checkpoint, tiny_config

SCALES = {"xs": (32, 2), "s": (48, 3)}  # label → (hidden size, layers)
MATERIALS = ["silk", "nacre", "bone", "wood", "chitin", "keratin", "collagen", "enamel"]


def write_map_benchmark(path: Path, count: int = 24, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(count):
            if index % 4 == 3:
                item = {"id": f"tf{index}", "type": "tf", "question": f"{rng.choice(MATERIALS)} is tough.", "answer": rng.choice(["True", "False"])}
            else:
                item = {"id": f"mc{index}", "type": "mc", "question": f"Which is {index}?", "choices": rng.sample(MATERIALS, 4), "answer": rng.choice("ABCD")}
            handle.write(json.dumps(item) + "\n")
    return path


def build_map_parents(root: Path) -> dict:
    """{label: {"ancestor", "instruct", "child": folder}}, a benchmark and a pairs file (relative paths)."""
    root = Path(root)
    scales = {}
    for label, (hidden, layers) in SCALES.items():
        config = tiny_config("llama", vocab_size=128, hidden_size=hidden, intermediate_size=2 * hidden, num_layers=layers, tie_word_embeddings=False)
        ancestor = make_checkpoint(root / label / "ancestor", config, seed=0, chat_template=CHAT_TEMPLATE)
        instruct = make_checkpoint(root / label / "instruct", config, seed=1, from_state=ancestor, noise=0.3, chat_template=CHAT_TEMPLATE)
        make_checkpoint(root / label / "child", config, seed=2, from_state=instruct, noise=3.0, chat_template=CHAT_TEMPLATE)
        scales[label] = {name: root / label / name for name in ("ancestor", "instruct", "child")}
    benchmark = write_map_benchmark(root / "bench.jsonl")
    lines = ["benchmark: bench.jsonl", "pairs:"]
    for label in SCALES:
        lines.append(f"  - {{label: {label}, parents: [{label}/instruct, {label}/child], base: {label}/instruct, ancestor: {label}/ancestor}}")
    pairs = root / "pairs.yaml"
    pairs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"root": root, "scales": scales, "benchmark": benchmark, "pairs": pairs}


@pytest.fixture(scope="module", autouse=False)
def one_thread():
    """Tiny models run fastest on one thread, and on a shared CI machine several threads fight over
    the cores; restored after the module so other tests keep their setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

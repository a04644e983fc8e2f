"""Tiny parents and a small benchmark for search tests (built once per session)."""

import json
import random

import pytest

from evomerge.toy.tiny import CHAT_TEMPLATE, make_checkpoint, tiny_config

MATERIALS = ["silk", "nacre", "bone", "wood", "chitin", "keratin", "collagen", "enamel"]


def write_benchmark(path, count=16, seed=0):
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(count):
            if index % 4 == 3:
                item = {"id": f"tf{index}", "type": "tf", "question": f"{rng.choice(MATERIALS)} is tough.", "answer": rng.choice(["True", "False"])}
            else:
                choices = rng.sample(MATERIALS, 4)
                item = {"id": f"mc{index}", "type": "mc", "question": f"Which is {index}?", "choices": choices, "answer": rng.choice("ABCD")}
            item["category"] = ["general", "specific"][index % 2]
            handle.write(json.dumps(item) + "\n")
    return path


@pytest.fixture(scope="session")
def search_parents(tmp_path_factory):
    """An "instruct" parent and a "child" perturbed from it (Llama, 2 layers, char tokenizer),
    and a 16-item benchmark; prompts are short so a trial takes well under a second."""
    root = tmp_path_factory.mktemp("search-parents")
    config = tiny_config("llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, tie_word_embeddings=False)
    instruct, child = root / "instruct", root / "child"
    state = make_checkpoint(instruct, config, seed=0, chat_template=CHAT_TEMPLATE)
    make_checkpoint(child, config, seed=1, from_state=state, noise=0.5)
    third = root / "third"
    make_checkpoint(third, config, seed=2, from_state=state, noise=0.5)
    benchmark = write_benchmark(root / "bench.jsonl")
    general = write_benchmark(root / "general.jsonl", count=12, seed=1)
    return {"instruct": instruct, "child": child, "third": third, "benchmark": benchmark, "general": general, "root": root}

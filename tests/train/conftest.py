"""Fixtures for the training tests: one tiny Llama-shaped base model with a chat template (folder
name "Instruct", so lineage labels read "Instruct-SFT-…"), and tiny JSONL data sets.

The data repeats a few records so that a few epochs at lr 1e-3 lower the loss reliably on CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from evomerge.files import write_jsonl
from evomerge.toy.tiny import CHAT_TEMPLATE, make_checkpoint, tiny_config

TRAIN_FACTS = [
    "Spider silk is tougher than steel.",
    "Nacre is made of aragonite tablets.",
    "Bone contains hydroxyapatite.",
    "Wood contains lignin and cellulose.",
]
TRAIN_QUESTIONS = ["What is silk?", "What is nacre?", "What is in bone?", "What is in wood?"]
TRAIN_PAIRS = [
    {"prompt": "Is silk tough?", "chosen": " Yes, very.", "rejected": " No, weak."},
    {"prompt": "Is nacre soft?", "chosen": " No, hard.", "rejected": " Yes, soft."},
    {"prompt": "Has bone mineral?", "chosen": " Yes, apatite.", "rejected": " No, none."},
    {"prompt": "Is wood metal?", "chosen": " No, fibre.", "rejected": " Yes, iron."},
]
REPEATS = 4  # 16 records: 4 steps per epoch at batch size 4


def tiny_llama_config():
    return tiny_config("llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, tie_word_embeddings=False)


@pytest.fixture(scope="session")
def train_base(tmp_path_factory) -> Path:
    """A tiny Llama base model with a chat template, in a folder named "Instruct"."""
    path = tmp_path_factory.mktemp("train-base") / "Instruct"
    make_checkpoint(path, tiny_llama_config(), seed=0, chat_template=CHAT_TEMPLATE)
    return path


@pytest.fixture(scope="session")
def train_data(tmp_path_factory) -> dict[str, Path]:
    """{"cpt", "sft", "sft_messages", "pref": path} — tiny JSONL files of each format."""
    root = tmp_path_factory.mktemp("train-data")
    sft = [{"prompt": q, "completion": " " + a} for q, a in zip(TRAIN_QUESTIONS, TRAIN_FACTS)]
    messages = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in zip(TRAIN_QUESTIONS, TRAIN_FACTS)]
    return {
        "cpt": write_jsonl(root / "cpt.jsonl", [{"text": t} for t in TRAIN_FACTS] * REPEATS),
        "sft": write_jsonl(root / "sft.jsonl", sft * REPEATS),
        "sft_messages": write_jsonl(root / "sft_messages.jsonl", messages * REPEATS),
        "pref": write_jsonl(root / "pref.jsonl", TRAIN_PAIRS * REPEATS),
    }

"""A parent whose vocabulary has two more tokens than its siblings' (a chat fine-tune's markers)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]


def add_chat_tokens(source: Path, dest: Path, seed: int) -> None:
    """A copy of a checkpoint with two special tokens added to its tokenizer and two trained-looking
    (random) rows added to its embeddings and lm_head, as a chat fine-tune leaves them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shutil.copytree(source, dest)
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    tokenizer.add_special_tokens({"additional_special_tokens": CHAT_TOKENS})
    tokenizer.save_pretrained(str(dest))
    model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for matrix in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            matrix[-2:] = torch.randn(matrix[-2:].shape, generator=generator) * matrix[:-2].std()
    model.save_pretrained(str(dest))

"""A real tiny llama edited so that greedy decoding always says "A" then "." (then "A" again):
shared by the scorer tests and the `evomerge eval` CLI tests."""

from __future__ import annotations

import torch


def make_it_say_a(model, tokenizer):
    """Edit `model` in place and return it. Attention and MLP outputs are zeroed, so the last hidden
    state is the normalised embedding of the current token; the lm_head then maps every token but
    "A" to "A", and "A" to ".", with orthogonal directions."""
    letter_a, period = tokenizer.convert_tokens_to_ids("A"), tokenizer.convert_tokens_to_ids(".")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        assert head.data_ptr() != embed.data_ptr(), "the tiny llama must not tie its embeddings"
        embed.zero_()
        embed[:, 0] = 1.0  # every token leads to "A" …
        embed[letter_a, 0], embed[letter_a, 1] = 0.0, 1.0  # … and "A" leads to "."
        head.zero_()
        head[letter_a, 0] = head[period, 1] = 10.0
    return model

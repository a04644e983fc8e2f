"""Tiny Hugging Face checkpoints made locally (random init, no download): tests, perf and examples.

`make_family` writes a base model and children that differ from it by small perturbations, as
fine-tuned children differ from their base, each with a character-level tokenizer that fits the vocabulary.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

_CONFIG_CLASSES = {
    "llama": "LlamaConfig",
    "mistral": "MistralConfig",
    "qwen2": "Qwen2Config",
    "gemma": "GemmaConfig",
    "gpt2": "GPT2Config",  # transformer.h.N names, a tied lm_head, learned positions
    "mixtral": "MixtralConfig",  # mixture of experts: 4 experts, 2 per token
    "phi3": "Phi3Config",  # fused qkv_proj and gate_up_proj
}
ARCHITECTURES = tuple(_CONFIG_CLASSES)  # what `tiny_config` makes

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} {% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_config(
    arch: str = "llama",
    *,
    vocab_size: int = 128,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    tie_word_embeddings: Optional[bool] = None,
):
    """A transformers config of a small decoder of the given architecture (one of ARCHITECTURES)."""
    import transformers

    if arch not in _CONFIG_CLASSES:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    if arch == "gpt2":  # GPT-2 spells the sizes its own way and has no grouped-query attention
        gpt2 = dict(vocab_size=vocab_size, n_embd=hidden_size, n_inner=intermediate_size, n_layer=num_layers, n_head=num_heads)
        gpt2.update(n_positions=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
        if tie_word_embeddings is not None:
            gpt2["tie_word_embeddings"] = tie_word_embeddings
        return transformers.GPT2Config(**gpt2)
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if arch == "mixtral":
        kwargs.update(num_local_experts=4, num_experts_per_tok=2)
    if tie_word_embeddings is not None:
        kwargs["tie_word_embeddings"] = tie_word_embeddings
    return getattr(transformers, _CONFIG_CLASSES[arch])(**kwargs)


def save_char_tokenizer(out: Union[str, Path], vocab_size: int, chat_template: Optional[str] = None) -> None:
    """A character-level tokenizer: special tokens, every printable ASCII character, then filler
    entries up to `vocab_size`, so any English prompt tokenises (no <unk> for letters or words)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    characters = [chr(code) for code in range(32, 127)] + ["\n"]
    if vocab_size < len(specials) + len(characters):
        raise ValueError(f"a character tokenizer needs vocab_size >= {len(specials) + len(characters)}")
    fillers = [f"<extra_{i}>" for i in range(vocab_size - len(specials) - len(characters))]
    vocab = {token: index for index, token in enumerate(specials + characters + fillers)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if chat_template:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(str(out))


def save_bpe_tokenizer(
    out: Union[str, Path],
    texts: Sequence[str],
    vocab_size: int,
    chat_template: Optional[str] = None,
    extra_special_tokens: Sequence[str] = (),
) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts` (deterministic; like a real LLM's, " A" is one token),
    saved to `out` and returned. `extra_special_tokens` (a chat template's role markers) stay
    single tokens. It has at most `vocab_size` entries."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>", *extra_special_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(texts), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    return _finish_tokenizer(tokenizer, out, extra_special_tokens, chat_template)


def _finish_tokenizer(tokenizer, out, extra_special_tokens, chat_template):
    """Add the special tokens and chat template, save to `out`; the tokenizer."""
    if extra_special_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": list(extra_special_tokens)})
    if chat_template:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(str(out))
    return tokenizer


def make_checkpoint(
    out: Union[str, Path],
    config,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    from_state: Optional[dict[str, torch.Tensor]] = None,
    noise: float = 0.0,
    max_shard_size: Optional[str] = None,
    chat_template: Optional[str] = None,
    tokenizer: bool = True,
) -> dict[str, torch.Tensor]:
    """Write a model folder (config, safetensors and, with `tokenizer`, a character tokenizer) and
    return its state dict (the written model's own tensors, not copies). With `from_state`, the
    weights are that state plus Gaussian noise of relative size `noise` (a "fine-tuned child")."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if from_state is not None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                if name in from_state and tensor.is_floating_point():
                    source = from_state[name].float()
                    scale = noise * (source.std().item() if source.numel() > 1 else 1.0)
                    tensor.copy_(source + scale * torch.randn(source.shape, generator=generator))
    model = model.to(dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(out), **kwargs)
    if tokenizer:
        save_char_tokenizer(out, config.vocab_size, chat_template)
    return model.state_dict()


def make_family(
    root: Union[str, Path],
    arch: str = "llama",
    *,
    children: Sequence[str] = ("child",),
    noise: float = 0.05,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **config_kwargs,
) -> dict[str, Path]:
    """A base folder and child folders perturbed from it; returns {name: path} with "base" first."""
    root = Path(root)
    config = tiny_config(arch, **config_kwargs)
    paths = {"base": root / "base"}
    base_state = make_checkpoint(paths["base"], config, seed=seed, dtype=dtype, chat_template=CHAT_TEMPLATE)
    for index, child in enumerate(children):
        paths[child] = root / child
        make_checkpoint(paths[child], config, seed=seed + 1 + index, dtype=dtype, from_state=base_state, noise=noise)
    return paths


def save_word_tokenizer(
    out: Union[str, Path],
    texts: Sequence[str],
    chat_template: Optional[str] = None,
    extra_special_tokens: Sequence[str] = (),
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary is every word and punctuation mark in `texts`
    (sorted, so the same texts give the same bytes), saved to `out` and returned. An invented name is
    one token, so a fact is one association to learn, not a chain of sub-word pieces; the toy
    domain's tokenizer (its vocabulary is closed: every text a toy model reads is in `texts`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    splitter = pre_tokenizers.Whitespace()
    words = sorted({word for text in texts for word, _ in splitter.pre_tokenize_str(text)})
    specials = ["<pad>", "<s>", "</s>", "<unk>", *extra_special_tokens]
    vocab = {token: index for index, token in enumerate(specials + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = splitter
    # Words are joined with spaces, and " ." / " ," cleaned up, so a reply reads as text.
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    return _finish_tokenizer(tokenizer, out, extra_special_tokens, chat_template)

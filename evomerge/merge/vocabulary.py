"""The merged vocabulary: `tokenizer_source` / `tokenizer: {source, tokens, pad_to_multiple_of}`.

mergekit 0.1.5 builds the output tokenizer (the base's, a named model's, or the union of every
parent's vocabulary) and, before merging, lays each parent's embedding and lm_head rows out in that
vocabulary: a token the parent has keeps its row; a token it lacks takes the row of the one parent
that has it, the base's, the mean of those that have it, or what `tokens:` says (rules in
`mergekit/tokenizer/embed.py`). The engine calls those same functions (`build_tokenizer`,
`PermutedVocabulary`), once per tokenizer setting and set of parents, so the aligned rows, and
the merge of them, are mergekit-yaml's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from evomerge.errors import RecipeError
from evomerge.recipe import Recipe

# Name fragments of vocabulary tensors, for an architecture mergekit has no definition of.
_VOCABULARY_NAMES = ("embed_tokens", "lm_head", "wte", "word_embeddings", "embed_in", "embed_out")


@dataclass
class Vocabulary:
    """One tokenizer setting applied to a set of parents: the merged tokenizer and, per parent (by
    name), its vocabulary tensors laid out in it."""

    key: tuple
    tokenizer: Any  # a transformers tokenizer, what mergekit-yaml saves with the model
    size: int  # rows of the merged vocabulary tensors (padded as `pad_to_multiple_of` asks)
    tensors: dict[str, dict[str, torch.Tensor]]


def tokenizer_setting(recipe: Recipe) -> Optional[dict]:
    """The recipe's tokenizer setting as mergekit reads it ({source, tokens, pad_to_multiple_of}),
    or None when it asks for none (then the base parent's tokenizer files are copied)."""
    if recipe.tokenizer_source is not None and recipe.tokenizer is not None:
        raise RecipeError("a recipe takes tokenizer_source or tokenizer, not both (as mergekit)")
    if recipe.tokenizer_source is not None:
        return {"source": recipe.tokenizer_source, "tokens": None, "pad_to_multiple_of": None}
    if recipe.tokenizer is not None:
        from mergekit.tokenizer import TokenizerConfig
        from pydantic import ValidationError

        try:
            config = TokenizerConfig.model_validate(recipe.tokenizer)
        except ValidationError as error:
            raise RecipeError(f"tokenizer: {error.errors()[0]['msg']}") from None
        source = config.source if isinstance(config.source, str) else str(config.source.model.path)
        tokens = recipe.tokenizer.get("tokens")
        return {"source": source, "tokens": tokens, "pad_to_multiple_of": config.pad_to_multiple_of}
    return None


def vocabulary_axes(config, tensor_names: list[str]) -> dict[str, int]:
    """{tensor name: its vocabulary axis} for the embedding and output tensors, from mergekit's
    definition of the architecture (the names transformers' model uses), else by name."""
    names = set(tensor_names)
    try:
        from mergekit.architecture import arch_info_for_config

        info = arch_info_for_config(config)
    except Exception:  # an architecture mergekit cannot describe: fall back on the names
        info = None
    if info is not None:
        axes = {}
        for weight in info.all_weights(config):
            if weight.vocabulary_axis is None:
                continue
            for name in [weight.name, *(weight.aliases or [])]:
                if name in names:
                    axes[name] = weight.vocabulary_axis
        if axes:
            return axes
    return {name: 0 for name in tensor_names if any(fragment in name for fragment in _VOCABULARY_NAMES)}


def build_vocabulary(
    recipe: Recipe,
    setting: dict,
    parent_name: Callable[[str], str],
    tensors: dict[str, dict[str, torch.Tensor]],
    axes: dict[str, int],
    trust_remote_code: bool = False,
) -> Vocabulary:
    """The merged tokenizer of `recipe` and every parent's vocabulary tensors laid out in it, with
    mergekit's own code. `parent_name` maps a recipe reference to a parent's name; `tensors` holds
    each parent's original vocabulary tensors ({parent: {tensor name: tensor}})."""
    from mergekit.common import ImmutableMap
    from mergekit.tokenizer import PermutedVocabulary
    from mergekit.tokenizer.build import build_tokenizer

    config = recipe.to_mergekit()
    references = config.referenced_models()
    tokenizer_source = config.tokenizer_source
    tokens: dict = {}
    pad_to_multiple_of = None
    if config.tokenizer is not None:
        tokenizer_source = config.tokenizer.source
        tokens = dict(config.tokenizer.tokens or {})
        pad_to_multiple_of = config.tokenizer.pad_to_multiple_of
    try:
        info = build_tokenizer(
            base_model=config.base_model,
            referenced_models=references,
            tokenizer_source=tokenizer_source,
            trust_remote_code=trust_remote_code,
            add_tokens=list(tokens),
        )
    except Exception as error:  # mergekit raises RuntimeError, OSError, ValueError, …
        raise RecipeError(f"cannot build the recipe's tokenizer: {error}") from None
    names = {reference: parent_name(str(reference.model.path)) for reference in references}
    aligned: dict[str, dict[str, torch.Tensor]] = {names[reference]: {} for reference in references}
    size = 0
    for tensor_name, axis in axes.items():
        task = PermutedVocabulary.model_construct(
            tokens=ImmutableMap(data=tokens) if tokens else None,
            pad_to_multiple_of=pad_to_multiple_of,
            base_model=config.base_model,
            vocabulary_axis=axis,
        )
        try:
            permuted = task.execute(info, {reference: tensors[names[reference]][tensor_name] for reference in references})
        except (AssertionError, ValueError, NotImplementedError) as error:
            raise RecipeError(f"cannot lay out {tensor_name} in the recipe's vocabulary: {error}") from None
        for reference, tensor in permuted.items():
            aligned[names[reference]][tensor_name] = tensor.contiguous()
            size = tensor.shape[axis]
    key = vocabulary_key(recipe, setting, parent_name)
    return Vocabulary(key, info.tokenizer, size, aligned)


def vocabulary_key(recipe: Recipe, setting: dict, parent_name: Callable[[str], str]) -> tuple:
    """What the aligned vocabulary depends on: the setting, the parents and the base."""
    models = tuple(sorted(parent_name(reference) for reference in recipe.model_names))
    base = parent_name(recipe.base_model) if recipe.base_model else None
    source = setting["source"]
    if source not in ("base", "union"):
        source = ("model", parent_name(source)) if _is_parent(parent_name, source) else ("path", source)
    return (source, repr(setting["tokens"]), setting["pad_to_multiple_of"], models, base)


def _is_parent(parent_name: Callable[[str], str], reference: str) -> bool:
    try:
        parent_name(reference)
    except RecipeError:
        return False
    return True

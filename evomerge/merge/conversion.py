"""A checkpoint's tensor names → the names of the transformers model that holds them (at load).

Checkpoints are not always stored the way transformers 5 lays out the model: a GPT-2 saved
without its `transformer.` prefix names `h.0.attn.c_attn.weight`; a Mixtral checkpoint (what
transformers itself still writes) stores each expert apart (`block_sparse_moe.experts.3.w1.weight`)
where the model holds one fused `mlp.experts.gate_up_proj` per layer. mergekit 0.1.5 merges in
the model's layout (it converts with transformers' own conversion registry, in
`mergekit.architecture.conversion`, and writes the converted names), so the engine does the same,
once per parent at load time, with that same function.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from evomerge.errors import ParentError


def model_tensor_names(model) -> list[str]:
    """The model's persistent tensors, in its own order (embeddings, layers, final norm, head)."""
    return list(model.state_dict())


def to_model_layout(tensors: Mapping[str, torch.Tensor], model, *, label: str) -> dict[str, torch.Tensor]:
    """`tensors` (a checkpoint's, by file name) under the model's names: the same tensors where the
    names agree, the base-model prefix added where the file lacks it, and what transformers
    converts on load (fused MoE experts and the like) converted with mergekit's function, so the
    result is what mergekit-yaml reads. Tensors transformers ignores on load are dropped; any
    other tensor the model has no place for is refused (ParentError naming it)."""
    wanted = model_tensor_names(model)
    wanted_set = set(wanted)
    prefix = getattr(model, "base_model_prefix", "") or ""
    placed: dict[str, torch.Tensor] = {}
    leftovers: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name in wanted_set:
            placed[name] = tensor
        elif prefix and f"{prefix}.{name}" in wanted_set:
            placed[f"{prefix}.{name}"] = tensor
        else:
            leftovers[name] = tensor
    if not leftovers:
        return _in_model_order(placed, wanted)
    ignored = [re.compile(pattern) for pattern in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or []]
    leftovers = {name: tensor for name, tensor in leftovers.items() if not any(p.search(name) for p in ignored)}
    if not leftovers:
        return _in_model_order(placed, wanted)
    model_type = getattr(model.config, "model_type", None)
    from mergekit.architecture.conversion import convert_checkpoint_tensors

    for target in wanted:
        if target not in placed:
            converted = convert_checkpoint_tensors(model_type, leftovers, target)
            if converted is not None:
                placed[target] = converted.contiguous()
    unexplained = [name for name in leftovers if not _converted_by_transformers(model_type, name)]
    if unexplained:
        example = unexplained[0]
        raise ParentError(f"{label}: transformers' {type(model).__name__} has no tensor {example} of shape {list(tensors[example].shape)}")
    return _in_model_order(placed, wanted)


def _converted_by_transformers(model_type, name: str) -> bool:
    """Whether transformers' conversion registry renames or merges this checkpoint tensor on load."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    return any(transform.rename_source_key(name)[1] is not None for transform in get_checkpoint_conversion_mapping(model_type) or [])


def _in_model_order(placed: dict[str, torch.Tensor], wanted: list[str]) -> dict[str, torch.Tensor]:
    return {name: placed[name] for name in wanted if name in placed}

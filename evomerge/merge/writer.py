"""Write a merged model folder (config, safetensors, tokenizer, recipe), all or nothing.

Both engines write into a temporary folder beside the destination and rename it into place at the
end, so a failed or interrupted merge leaves nothing half-written.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors import SafetensorError

from evomerge.errors import EvomergeError, first_line
from evomerge.files import staged_folder
from evomerge.merge.card import CARD_FILE
from evomerge.merge.merger import DTYPES, Merger, resolve_device
from evomerge.merge.parents import ParentInfo, check_parents, inspect_parent
from evomerge.recipe import Recipe, mergekit_method

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
RECIPE_FILE = "mergekit_config.yml"


def check_output(out: Union[str, Path], overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise EvomergeError(f"output folder {out} exists and is not empty (pass --overwrite to replace it)")
    return out


def copy_tokenizer(source: ParentInfo, dest: Path) -> None:
    """The tokenizer files of the base parent (of its base, for a LoRA adapter without them)."""
    for name in TOKENIZER_FILES:
        if (source.tokenizer_dir / name).is_file():
            shutil.copy2(source.tokenizer_dir / name, dest / name)


def inspect_recipe_parents(recipe: Recipe, allow_pickle: bool = False, trust_remote_code: bool = False) -> list[ParentInfo]:
    """Inspect and check every parent a recipe names, before any weights are read."""
    from evomerge.merge.vocabulary import tokenizer_setting

    infos = [inspect_parent(ref, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code) for ref in recipe.model_names]
    # one parent is a merge too: a passthrough recipe restacking its layers
    check_parents(infos, minimum=1, vocabularies_may_differ=tokenizer_setting(recipe) is not None)
    return infos


ENGINES = ("evomerge", "mergekit")


def write_merged(
    recipe: Recipe,
    out: Path,
    *,
    engine: str = "evomerge",
    device: str = "auto",
    seed: Optional[int] = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    card: Optional[str] = None,
) -> None:
    """Merge the recipe's parents with either engine and write the model folder, all or nothing.

    evomerge: in memory with `Merger`; mergekit: mergekit's own `mergekit-yaml` pipeline (the
    reference). Both check the method and the parents before reading any weights. `card`: the
    model card's text (README.md, written with the rest of the folder; mergekit's own is replaced)."""
    if engine not in ENGINES:
        raise EvomergeError(f"unknown engine {engine!r}; expected evomerge or mergekit")
    mergekit_method(recipe.merge_method)
    infos = inspect_recipe_parents(recipe, allow_pickle, trust_remote_code)
    if engine == "evomerge":
        _write_with_evomerge(recipe, infos, Path(out), device, seed, trust_remote_code, card)
    else:
        _write_with_mergekit(recipe, Path(out), device, seed, trust_remote_code, card)


def _write_with_evomerge(
    recipe: Recipe, infos: list[ParentInfo], out: Path, device: str, seed: Optional[int], trust_remote_code: bool, card: Optional[str] = None
) -> None:
    merger = Merger.load(infos, device=device, dtype=recipe.dtype, trust_remote_code=trust_remote_code)
    model = merger.apply(recipe, seed=seed)  # apply plans (and checks) the recipe before writing a tensor
    out_dtype = DTYPES[recipe.out_dtype] if recipe.out_dtype else None
    state, seen = {}, set()
    for name, tensor in merger.merged_state_dict().items():
        tensor = (tensor.to(out_dtype) if out_dtype and tensor.is_floating_point() else tensor).detach().cpu()
        if tensor.data_ptr() in seen:  # a layer a passthrough recipe uses twice: one tensor in memory, two in the file
            tensor = tensor.clone()
        seen.add(tensor.data_ptr())
        state[name] = tensor
    base = infos[recipe.model_names.index(recipe.base_model)] if recipe.base_model else infos[0]
    with staged_folder(out) as staging:
        if out_dtype is not None:
            model.config.dtype = out_dtype
        try:
            # In the model's own layout (fused MoE experts), as mergekit-yaml writes it.
            model.save_pretrained(str(staging), state_dict=state, save_original_format=False)
        except SafetensorError as error:  # a full disk or a write error: the staged folder goes
            raise OSError(f"cannot write the merged model to {out}: {first_line(error)}") from None
        if merger.tokenizer is not None:  # the recipe's merged tokenizer, as mergekit-yaml saves it
            merger.tokenizer.save_pretrained(str(staging))
        else:
            copy_tokenizer(base, staging)
        recipe.save(staging / RECIPE_FILE)
        if card is not None:
            (staging / CARD_FILE).write_text(card, encoding="utf-8")


def _write_with_mergekit(recipe: Recipe, out: Path, device: str, seed: Optional[int], trust_remote_code: bool, card: Optional[str] = None) -> None:
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    config = recipe.to_mergekit()
    options = MergeOptions(
        device=str(resolve_device(device)),
        random_seed=seed,
        trust_remote_code=trust_remote_code,
        lazy_unpickle=False,
        quiet=True,
    )
    with staged_folder(out) as staging:
        with torch.inference_mode(False):
            run_merge(config, str(staging), options=options, config_source=recipe.to_yaml())
        if card is not None:
            (staging / CARD_FILE).write_text(card, encoding="utf-8")

"""`evomerge demo`: the whole tool on a laptop CPU, on tiny parents made locally.

For now it shows the foundation: the paper's SLERP recipe merged by the in-memory engine and by
mergekit's own pipeline, and that the two outputs are the same tensors.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import torch

from evomerge.merge.writer import write_merged
from evomerge.recipe import paper_recipe
from evomerge.toy.tiny import CHAT_TEMPLATE, make_checkpoint, tiny_config

DEMO_SHAPE = dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_layers=8, num_heads=8, num_kv_heads=4)


def build_demo_parents(root: Path) -> tuple[Path, Path]:
    """A tiny "Instruct" model and a "fine-tuned" child of it (reused when already built)."""
    instruct, child = root / "instruct", root / "fine-tuned"
    if not (instruct / "config.json").is_file() or not (child / "config.json").is_file():
        config = tiny_config("llama", tie_word_embeddings=False, **DEMO_SHAPE)
        state = make_checkpoint(instruct, config, seed=0, dtype=torch.bfloat16, chat_template=CHAT_TEMPLATE)
        make_checkpoint(child, config, seed=1, dtype=torch.bfloat16, from_state=state, noise=0.2)
    return instruct, child


def run_merge_demo(out: Path, progress: Optional[Any] = None) -> dict[str, Any]:
    from safetensors.torch import load_file

    out = Path(out)
    say = progress.print if progress is not None else (lambda *_: None)
    say(f"Building tiny parents under {out / 'parents'} …")
    instruct, child = build_demo_parents(out / "parents")
    recipe = paper_recipe(str(instruct), str(child))
    recipe_path = out / "paper-recipe.yaml"
    recipe.save(recipe_path)
    engines = []
    for name in ("evomerge", "mergekit"):
        say(f"Merging with the {name} engine …")
        target = out / f"merged-{name}"
        start = time.perf_counter()
        write_merged(recipe, target, engine=name, device="cpu")
        engines.append({"engine": name, "seconds": time.perf_counter() - start, "output": str(target)})
    ours = load_file(str(out / "merged-evomerge" / "model.safetensors"))
    theirs = load_file(str(out / "merged-mergekit" / "model.safetensors"))
    max_diff = max((ours[k].float() - theirs[k].float()).abs().max().item() for k in theirs)
    identical = set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    return {
        "engines": engines,
        "identical": identical,
        "max_abs_diff": max_diff,
        "tensors": len(theirs),
        "recipe": str(recipe_path),
    }

"""Load a model folder (or a LoRA adapter folder) for scoring, with the parents' clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Union

from evomerge.devices import resolve_device
from evomerge.merge.parents import inspect_parent, require_finite


def load_for_eval(path: Union[str, Path], device: str = "auto", trust_remote_code: bool = False):
    """(model, tokenizer) in eval mode on the device; the tokenizer comes from the folder, or from
    the base model for an adapter folder without one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = inspect_parent(path, trust_remote_code=trust_remote_code)  # clear errors before loading
    device = resolve_device(device)
    if info.adapter_base is not None:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(str(info.adapter_base.path), dtype="auto")
        model = PeftModel.from_pretrained(base, str(info.path)).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(info.path), dtype="auto", trust_remote_code=trust_remote_code)
    require_finite(model.state_dict(), info.path)  # NaN weights would score as a model that knows nothing
    tokenizer = AutoTokenizer.from_pretrained(str(info.tokenizer_dir), trust_remote_code=trust_remote_code)
    model.to(device).eval()  # not requires_grad_(False): ~2× slower forwards on torch 2.13 CPU
    return model, tokenizer

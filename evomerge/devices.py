"""Devices and dtypes by name: what `--device` and `--dtype` accept, shared by every layer.

Small on purpose: it imports nothing of evomerge's but its errors, and torch only when a name is
resolved, so a recipe (plain data) can list the dtype names and the evaluation code can resolve
a device without loading the merge engine (mergekit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Union

from evomerge.errors import EvomergeError, RecipeError

if TYPE_CHECKING:
    import torch

# The dtypes a recipe and --dtype may name (mergekit's names for torch's dtypes).
DTYPE_CHOICES = ("float32", "float16", "bfloat16", "float64")


def resolve_device(device: Union[str, "torch.device"] = "auto") -> "torch.device":
    """`auto` (CUDA when torch sees a GPU, else the CPU), `cpu`, `cuda` or `cuda:N` as a torch
    device; an EvomergeError for a name torch does not know or a GPU that is not there."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise EvomergeError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvomergeError("--device cuda asked for, but torch sees no CUDA device")
    return device


def resolve_dtype(dtype: Union[str, "torch.dtype", None]) -> Optional["torch.dtype"]:
    """A dtype name (float32, bfloat16, …) as a torch dtype; a torch dtype and None (the parents'
    own) pass through. A RecipeError for any other name."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPE_CHOICES:
        raise RecipeError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPE_CHOICES)}")
    return getattr(torch, dtype)


def dtype_name(dtype: "torch.dtype") -> str:
    """A torch dtype's name as a recipe writes it (torch.bfloat16 → "bfloat16")."""
    return str(dtype).removeprefix("torch.")

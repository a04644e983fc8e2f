"""A fused CPU kernel for `out = c0·a + c1·b` over all tensors of a model in one call.

torch needs three passes per chunk for this (two products and a sum) plus a Python round-trip per
op; the C loop in `kernels/weighted_pairs.c` reads each parent once and writes the result once, on
all cores, with products and sum rounded separately so results stay bitwise mergekit's. It is
compiled with the system C compiler on first use and cached; without a compiler (or with
EVOMERGE_NO_KERNEL=1) `plan_weighted_pairs` returns None and callers use the torch path. The
pointer and size arrays are built once per list of tensors (`WeightedPairs`): a trial passes only
its coefficients.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import torch

LOG = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels") / "weighted_pairs.c"
FLAGS = ["-O3", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared", "-pthread"]
KINDS = {torch.float32: 0, torch.bfloat16: 1}


def cache_dir() -> Path:
    root = os.environ.get("EVOMERGE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "evomerge")
    return Path(root) / "kernels"


@lru_cache(maxsize=1)
def load_kernel() -> Optional[ctypes.CDLL]:
    """Compile (once per machine) and load the kernel; None if that is not possible here."""
    if os.environ.get("EVOMERGE_NO_KERNEL"):
        return None
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        LOG.info("no C compiler found; merging with torch ops (slower)")
        return None
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join(FLAGS).encode() + platform.machine().encode()).hexdigest()[:16]
    library = cache_dir() / f"weighted_pairs-{key}.so"
    if not library.is_file():
        library.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
            built = Path(tmp) / library.name
            result = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(built)], capture_output=True, text=True, timeout=120)
            if result.returncode != 0:
                LOG.warning("could not compile the fused merge kernel; using torch ops: %s", result.stderr.strip()[:500])
                return None
            os.replace(built, library)  # atomic, so concurrent workers never load a half-written file
    kernel = ctypes.CDLL(str(library))
    kernel.weighted_pairs.restype = ctypes.c_int
    kernel.weighted_pairs.argtypes = [ctypes.c_int, ctypes.c_int64] + [ctypes.c_void_p] * 6 + [ctypes.c_int]
    return kernel


class WeightedPairs:
    """The kernel's fixed arguments for one list of (out, a, b) tensors, built once: a call passes
    only the coefficients. Holds the tensors, so the pointers it passes stay valid."""

    def __init__(
        self,
        kernel: ctypes.CDLL,
        outs: Sequence[torch.Tensor],
        firsts: Sequence[torch.Tensor],
        seconds: Sequence[torch.Tensor],
    ):
        self._kernel = kernel
        self._tensors = (list(outs), list(firsts), list(seconds))
        self.count = len(outs)
        self._kind = KINDS[outs[0].dtype] if outs else 0
        pointers = ctypes.c_void_p * self.count
        self._out_ptrs = pointers(*[t.data_ptr() for t in outs])
        self._a_ptrs = pointers(*[t.data_ptr() for t in firsts])
        self._b_ptrs = pointers(*[t.data_ptr() for t in seconds])
        self._sizes = (ctypes.c_int64 * self.count)(*[t.numel() for t in outs])

    def __call__(self, c0: torch.Tensor, c1: torch.Tensor) -> None:
        """out_i = c0[i]·a_i + c1[i]·b_i; c0 and c1 are contiguous float32 CPU vectors of `count`."""
        for coefficients in (c0, c1):
            if coefficients.dtype != torch.float32 or coefficients.device.type != "cpu" or not coefficients.is_contiguous():
                raise ValueError("the kernel takes contiguous float32 CPU coefficients")
            if coefficients.numel() != self.count:
                raise ValueError(f"expected {self.count} coefficients, got {coefficients.numel()}")
        if not self.count:
            return
        self._kernel.weighted_pairs(
            self._kind,
            self.count,
            ctypes.cast(self._out_ptrs, ctypes.c_void_p),
            ctypes.cast(self._a_ptrs, ctypes.c_void_p),
            ctypes.cast(self._b_ptrs, ctypes.c_void_p),
            ctypes.cast(self._sizes, ctypes.c_void_p),
            c0.data_ptr(),
            c1.data_ptr(),
            torch.get_num_threads(),
        )


def plan_weighted_pairs(
    outs: Sequence[torch.Tensor], firsts: Sequence[torch.Tensor], seconds: Sequence[torch.Tensor]
) -> Optional[WeightedPairs]:
    """A `WeightedPairs` for these tensors, or None if the kernel cannot take them (not CPU, not
    float32/bfloat16, mixed dtypes, not contiguous, no kernel on this machine)."""
    dtype = outs[0].dtype if outs else torch.float32
    if dtype not in KINDS:
        return None
    for group in (outs, firsts, seconds):
        for tensor in group:
            if tensor.device.type != "cpu" or tensor.dtype != dtype or not tensor.is_contiguous():
                return None
    kernel = load_kernel()
    if kernel is None:
        return None
    return WeightedPairs(kernel, outs, firsts, seconds)


def weighted_pairs(
    outs: Sequence[torch.Tensor],
    firsts: Sequence[torch.Tensor],
    seconds: Sequence[torch.Tensor],
    c0: Sequence[float],
    c1: Sequence[float],
) -> bool:
    """out_i = c0_i·a_i + c1_i·b_i for every i in one kernel call. False if the kernel cannot
    take these tensors, writing nothing. (A caller that repeats the call on the same tensors keeps
    a `plan_weighted_pairs` instead.)"""
    if not outs:
        return True
    pairs = plan_weighted_pairs(outs, firsts, seconds)
    if pairs is None:
        return False
    pairs(torch.tensor(list(c0), dtype=torch.float32), torch.tensor(list(c1), dtype=torch.float32))
    return True

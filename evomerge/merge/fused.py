"""A fused CPU kernel for `out = c0·a + c1·b` over all tensors of a model in one call.

torch needs three passes per chunk for this (two products and a sum) plus a Python round-trip per
op; the C loop in `kernels/weighted_pairs.c` reads each parent once and writes the result once, on
all cores, with products and sum rounded separately so results stay bitwise mergekit's. It is
compiled with the system C compiler on first use and cached; without a compiler (or with
EVOMERGE_NO_KERNEL=1) `weighted_pairs` returns False and callers use the torch path.
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


def weighted_pairs(
    outs: Sequence[torch.Tensor],
    firsts: Sequence[torch.Tensor],
    seconds: Sequence[torch.Tensor],
    c0: Sequence[float],
    c1: Sequence[float],
) -> bool:
    """out_i = c0_i·a_i + c1_i·b_i for every i in one kernel call. False if the kernel cannot
    take these tensors (not CPU, not float32/bfloat16, not contiguous, no kernel), writing nothing."""
    if not outs:
        return True
    dtype = outs[0].dtype
    if dtype not in KINDS:
        return False
    for group in (outs, firsts, seconds):
        for tensor in group:
            if tensor.device.type != "cpu" or tensor.dtype != dtype or not tensor.is_contiguous():
                return False
    kernel = load_kernel()
    if kernel is None:
        return False
    count = len(outs)
    pointers = ctypes.c_void_p * count
    out_ptrs = pointers(*[t.data_ptr() for t in outs])
    a_ptrs = pointers(*[t.data_ptr() for t in firsts])
    b_ptrs = pointers(*[t.data_ptr() for t in seconds])
    sizes = (ctypes.c_int64 * count)(*[t.numel() for t in outs])
    coef0 = (ctypes.c_float * count)(*c0)
    coef1 = (ctypes.c_float * count)(*c1)
    kernel.weighted_pairs(
        KINDS[dtype],
        count,
        ctypes.cast(out_ptrs, ctypes.c_void_p),
        ctypes.cast(a_ptrs, ctypes.c_void_p),
        ctypes.cast(b_ptrs, ctypes.c_void_p),
        ctypes.cast(sizes, ctypes.c_void_p),
        ctypes.cast(coef0, ctypes.c_void_p),
        ctypes.cast(coef1, ctypes.c_void_p),
        torch.get_num_threads(),
    )
    return True

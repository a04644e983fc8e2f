"""A fused CPU kernel for `out = c0·a + c1·b` over all tensors of a model in one call.

torch needs three passes per chunk for this (two products and a sum) plus a Python round-trip per
op; the C loop in `kernels/weighted_pairs.c` reads each parent once and writes the result once, on
all cores, with products and sum rounded separately so results stay bitwise mergekit's. It is
compiled with the system C compiler on first use and cached under a key that names the source,
the flags, the OS, the machine, the C library and the compiler, so a home folder shared by nodes
of different systems never hands one node another's library.

The kernel is an optimisation, never a requirement: whatever stops it (not Linux, no compiler, a
failed build, a cache folder that cannot be written, a cached library that does not load or gives
wrong numbers) leaves `load_kernel()` returning None after ONE warning per process, and callers
use the torch path, which gives the same bits. A cached library that does not load is rebuilt
once before giving up. `EVOMERGE_NO_KERNEL=1` switches it off without a warning. The pointer and
size arrays are built once per list of tensors (`WeightedPairs`): a trial passes only its
coefficients.
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
FALLBACK = "merging with torch ops instead (the same results, slower on a CPU)"


class KernelUnavailable(Exception):
    """Why the kernel cannot be used on this machine (said once, in the warning)."""


def cache_dir() -> Path:
    root = os.environ.get("EVOMERGE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "evomerge")
    return Path(root) / "kernels"


def find_compiler() -> Optional[str]:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")


def compiler_identity(compiler: str) -> str:
    """The compiler's path and `--version` banner: a different compiler is a different library."""
    try:
        result = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
        banner = (result.stdout or result.stderr).strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        banner = []
    return f"{os.path.realpath(compiler)} {banner[0] if banner else '?'}"


def cache_key(compiler: str) -> str:
    """What the built library depends on: source, flags, OS, machine, C library, compiler."""
    libc, libc_version = platform.libc_ver()
    parts = [
        SOURCE.read_bytes(),
        " ".join(FLAGS).encode(),
        platform.system().encode(),
        platform.machine().encode(),
        f"{libc or 'unknown-libc'} {libc_version}".encode(),
        compiler_identity(compiler).encode(),
    ]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


@lru_cache(maxsize=1)
def load_kernel() -> Optional[ctypes.CDLL]:
    """The kernel, built once per machine and cached; None (after one warning) where it cannot be used."""
    if os.environ.get("EVOMERGE_NO_KERNEL"):
        return None
    try:
        return _build_and_load()
    except KernelUnavailable as why:
        LOG.warning("the fused merge kernel is unavailable: %s; %s", why, FALLBACK)
        return None


def _build_and_load() -> ctypes.CDLL:
    if platform.system() != "Linux":
        raise KernelUnavailable(f"it is built only on Linux, not {platform.system() or 'this OS'}")
    compiler = find_compiler()
    if compiler is None:
        raise KernelUnavailable("no C compiler found (set CC, or install cc, gcc or clang)")
    library = cache_dir() / f"weighted_pairs-{cache_key(compiler)}.so"
    stale = None
    if library.is_file():
        try:
            return _load(library)
        except KernelUnavailable as why:
            stale = why
            LOG.info("the cached kernel is unusable (%s); rebuilding it", why)
    try:
        try:
            library.parent.mkdir(parents=True, exist_ok=True)
            _compile(compiler, library)
        except OSError as error:  # a cache folder that cannot be written: build where it can
            LOG.info("cannot write the kernel cache %s (%s); building in a temporary folder", library.parent, error)
            library = Path(tempfile.mkdtemp(prefix="evomerge-kernel-")) / library.name
            _compile(compiler, library)
        return _load(library)
    except KernelUnavailable as why:
        raise KernelUnavailable(f"{stale}, and rebuilding it failed: {why}" if stale else str(why)) from None


def _compile(compiler: str, library: Path) -> None:
    """Compile into a temporary file beside `library` and move it into place atomically, so that
    concurrent workers never load a half-written file."""
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        built = Path(tmp) / library.name
        try:
            result = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(built)], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as error:
            raise KernelUnavailable(f"running {compiler} failed: {error}") from None
        if result.returncode != 0:
            raise KernelUnavailable(f"{compiler} could not compile it: {result.stderr.strip()[:300]}")
        os.replace(built, library)


def _load(library: Path) -> ctypes.CDLL:
    """Load the library and check it on a few numbers, bf16 rounding included."""
    try:
        kernel = ctypes.CDLL(str(library))
        kernel.weighted_pairs.restype = ctypes.c_int
        kernel.weighted_pairs.argtypes = [ctypes.c_int, ctypes.c_int64] + [ctypes.c_void_p] * 6 + [ctypes.c_int]
    except (OSError, AttributeError) as error:  # not a library, a foreign C library, no such symbol
        raise KernelUnavailable(f"{library} does not load: {str(error).strip()[:300]}") from None
    _self_test(kernel, library)
    return kernel


def _self_test(kernel: ctypes.CDLL, library: Path) -> None:
    for dtype in KINDS:
        a = torch.tensor([1.0, -2.5, 3.0e-3, 7.0, 0.0, 1.0e4, -1.0e-3], dtype=dtype)
        b = torch.tensor([0.5, 4.0, -1.0, 0.0, -0.0, 3.3, 2.0e-2], dtype=dtype)
        c0, c1 = 0.3, 0.7
        out = torch.empty_like(a)
        WeightedPairs(kernel, [out], [a], [b])(torch.tensor([c0]), torch.tensor([c1]))
        expected = (torch.mul(a.float(), torch.tensor(c0).item()) + torch.mul(b.float(), torch.tensor(c1).item())).to(dtype)
        if not torch.equal(out, expected):
            raise KernelUnavailable(f"{library} computes wrong results")


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


def plan_weighted_pairs(outs: Sequence[torch.Tensor], firsts: Sequence[torch.Tensor], seconds: Sequence[torch.Tensor]) -> Optional[WeightedPairs]:
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

"""Merge arithmetic on tensors, split into what a study computes once and what a trial computes.

Every function follows mergekit's own arithmetic operation by operation (same dtypes, same
reductions, same random draws), so results equal what `mergekit-yaml` writes; where mergekit has a
function that can be called as it is (DARE's random mask, the rescaling, TIES's sign consensus), it
is called. The split is the speed-up: a SLERP trial is then `c0·a + c1·b` per tensor, written in
chunks straight into the resident model, and a TIES trial reuses the task vectors and their
magnitude order.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator, Optional, Sequence

import torch
from mergekit.sparsify import RescaleNorm, SparsificationMethod, bernoulli, rescaled_masked_tensor

# SLERP's norms and cosine are accumulated over blocks of this many elements, as mergekit's are.
MERGEKIT_SLERP_CHUNK = 1024 * 1024
# Elements per chunk when writing a merged tensor on the CPU: small enough that both scratch
# buffers stay in L2 cache, so a trial reads each parent once and writes the result once.
APPLY_CHUNK = 1 << 16
# On a GPU memory bandwidth dwarfs launch cost only for large chunks; this bounds the scratch
# buffers (two of 64 MiB in float32) instead of letting them grow to the largest tensor.
GPU_APPLY_CHUNK = 1 << 24
SLERP_DOT_THRESHOLD = 0.9995
SLERP_EPS = 1e-8


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """mergekit computes SLERP and linear in float32, or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----- SLERP -------------------------------------------------------------------------------
#
# Spherical linear interpolation (Shoemake 1985) between two tensors v0 and v1, each taken whole
# as one flat vector. With θ the angle between them,
#
#     cos θ    = ⟨v0/‖v0‖, v1/‖v1‖⟩
#     slerp(t) = sin((1 − t)θ)/sin θ · v0  +  sin(tθ)/sin θ · v1
#
# and where the two are nearly parallel or opposite (|cos θ| > 0.9995, where sin θ → 0 makes the
# quotients unstable) the straight line (1 − t)·v0 + t·v1 instead. θ depends on the parents alone,
# so a study finds it once per tensor; a trial then needs two scalars per tensor, c0 and c1, and
# the merge is the weighted sum c0·v0 + c1·v1 (`weighted_pair_into`, or the fused kernel).
#
# Bit-for-bit agreement with mergekit-yaml constrains the floating-point order, not the formula:
# norms and the cosine are accumulated in float32 (float64 for float64 tensors) over blocks of
# 2^20 elements, a norm is the norm of its blocks' norms, a norm under 1e-8 counts as 1 (a zero
# tensor has no direction), and the cosine is clamped to [-1, 1] before the arccosine.


@dataclass(frozen=True)
class SlerpGeometry:
    """What SLERP needs of a tensor pair besides t: θ, and whether the pair takes the straight line."""

    theta: torch.Tensor  # shape (1, 1) for one pair, (n, 1) stacked; compute dtype
    linear: torch.Tensor  # same shape, bool: nearly parallel or opposite


def _blocks(row: torch.Tensor, dtype: torch.dtype) -> Iterator[torch.Tensor]:
    """A (1, n) row as consecutive (1, ≤2^20) blocks, each converted to `dtype`."""
    for start in range(0, row.shape[1], MERGEKIT_SLERP_CHUNK):
        yield row[:, start : start + MERGEKIT_SLERP_CHUNK].to(dtype)


def _direction_scale(row: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """‖row‖ as a (1, 1) tensor, from its blocks' norms; 1 for a (near) zero row."""
    block_norms = torch.stack([torch.linalg.vector_norm(block, dim=1, keepdim=True) for block in _blocks(row, dtype)])
    norm = torch.linalg.vector_norm(block_norms, dim=0)
    return torch.where(norm > SLERP_EPS, norm, 1)


def slerp_geometry(v0: torch.Tensor, v1: torch.Tensor) -> SlerpGeometry:
    """θ between two same-shaped tensors, and whether SLERP takes the straight line for them."""
    dtype = compute_dtype(v0.dtype)
    row0, row1 = v0.reshape(1, -1), v1.reshape(1, -1)
    if row0.shape[1] == 0:  # nothing to interpolate: the straight line, trivially
        return SlerpGeometry(torch.zeros((1, 1), dtype=dtype, device=v0.device), torch.ones((1, 1), dtype=torch.bool, device=v0.device))
    scale0, scale1 = _direction_scale(row0, dtype), _direction_scale(row1, dtype)
    # Each block is scaled to unit length before the product, so a large tensor cannot overflow.
    partial_cosines = [((x / scale0) * (y / scale1)).sum(dim=1, keepdim=True) for x, y in zip(_blocks(row0, dtype), _blocks(row1, dtype))]
    cosine = torch.stack(partial_cosines).sum(dim=0).clamp(-1, 1)
    straight = cosine.abs() > SLERP_DOT_THRESHOLD
    # For straight pairs θ is never used; acos(0) keeps it finite rather than acos(±1)'s edge.
    return SlerpGeometry(torch.acos(torch.where(straight, 0, cosine)), straight)


def stack_geometries(geometries: Sequence[SlerpGeometry]) -> SlerpGeometry:
    """Many tensors' geometry as (n, 1) columns, so one trial's coefficients take a few ops."""
    return SlerpGeometry(torch.cat([g.theta for g in geometries]), torch.cat([g.linear for g in geometries]))


def slerp_coefficient_columns(t: Sequence[float], geometry: SlerpGeometry) -> tuple[torch.Tensor, torch.Tensor]:
    """(c0, c1) per tensor such that slerp(t) = c0·v0 + c1·v1 on the tensors as they are (not
    normalised), one t per row of `geometry`, as two contiguous vectors in the compute dtype on
    the geometry's device."""
    theta = geometry.theta
    t_column = torch.tensor(list(t), dtype=theta.dtype).reshape(-1, 1).to(theta.device)
    sin_theta = torch.sin(theta)
    along_arc_0 = torch.sin((1 - t_column) * theta) / sin_theta
    along_arc_1 = torch.sin(t_column * theta) / sin_theta
    c0 = torch.where(geometry.linear, 1 - t_column, along_arc_0)
    c1 = torch.where(geometry.linear, t_column, along_arc_1)
    return c0.reshape(-1).contiguous(), c1.reshape(-1).contiguous()


def slerp_coefficients(t: Sequence[float], geometry: SlerpGeometry) -> tuple[list[float], list[float]]:
    """`slerp_coefficient_columns` as Python lists."""
    c0, c1 = slerp_coefficient_columns(t, geometry)
    return c0.tolist(), c1.tolist()


def apply_chunk(device: torch.device) -> int:
    """Elements per chunk when writing a merged tensor on this device."""
    return APPLY_CHUNK if device.type == "cpu" else GPU_APPLY_CHUNK


class ChunkScratch:
    """Two reusable compute-dtype buffers of `apply_chunk(device)` elements per (device, dtype)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, device: torch.device, dtype: torch.dtype, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, dtype)
        if key not in self._buffers or self._buffers[key][0].numel() < size:
            length = max(size, apply_chunk(device))
            self._buffers[key] = tuple(torch.empty(length, dtype=dtype, device=device) for _ in range(2))
        first, second = self._buffers[key]
        return first[:size], second[:size]


def weighted_pair_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c0: float, c1: float, scratch: ChunkScratch) -> None:
    """out = c0·a + c1·b in the compute dtype, rounded once to out's dtype, one cache-sized chunk at a time."""
    flat_out, flat_a, flat_b = out.view(-1), a.reshape(-1), b.reshape(-1)
    dtype = compute_dtype(a.dtype)
    same_dtype = a.dtype == dtype and out.dtype == dtype
    chunk = apply_chunk(out.device)  # element-wise: the chunking does not change a bit of the result
    for start in range(0, flat_out.numel(), chunk):
        stop = min(start + chunk, flat_out.numel())
        first, second = scratch.get(out.device, dtype, stop - start)
        if same_dtype:
            torch.mul(flat_a[start:stop], c0, out=flat_out[start:stop])
            torch.mul(flat_b[start:stop], c1, out=second)
            flat_out[start:stop].add_(second)
        else:
            first.copy_(flat_a[start:stop]).mul_(c0)
            second.copy_(flat_b[start:stop]).mul_(c1)
            first.add_(second)
            flat_out[start:stop].copy_(first)


# ----- linear ------------------------------------------------------------------------------


def linear(tensors: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool = True, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Weighted average of same-shaped tensors, as mergekit's `linear` method computes it; written
    into `out` if given (accumulated there directly when it has the compute dtype)."""
    first = tensors[0].unsqueeze(0)
    dtype = compute_dtype(first.dtype)
    weight = torch.tensor([list(weights)], dtype=dtype, device=first.device)
    coefficient_shape = (1,) + (1,) * (first.ndim - 1)
    if out is not None and out.dtype == dtype:
        result = out.unsqueeze(0).zero_()
    else:
        result = torch.zeros_like(first, dtype=dtype)
    for tensor, coefficient in zip(tensors, weight.unbind(1)):
        result.addcmul_(tensor.unsqueeze(0), coefficient.reshape(coefficient_shape))
    if normalize:
        result.div_(weight.sum(dim=1).reshape(coefficient_shape))
    if out is None:
        return result.to(first.dtype)[0]
    if result.data_ptr() != out.data_ptr():
        out.copy_(result[0])  # one rounding to out's dtype, as `.to` rounds
    return out


# ----- task arithmetic, TIES, DARE -----------------------------------------------------------


def magnitude_order(delta: torch.Tensor) -> torch.Tensor:
    """Indices of a task vector's elements by decreasing magnitude (TIES keeps a prefix of them)."""
    magnitudes = delta.abs().reshape(-1)
    if magnitudes.device.type == "cpu":
        magnitudes = magnitudes.float()
    order = torch.argsort(magnitudes, descending=True)
    return order.to(torch.int32) if order.numel() < 2**31 else order


def _rescale_norm(rescale: bool) -> Optional[RescaleNorm]:
    return RescaleNorm.l1 if rescale else None


def sparsify_magnitude(delta: torch.Tensor, density: float, rescale: bool, order: Optional[torch.Tensor] = None) -> torch.Tensor:
    """mergekit's `sparsify.magnitude` (TIES: keep the `density` largest-magnitude elements),
    reusing a precomputed `magnitude_order` if given."""
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    keep = max(1, int(density * delta.numel()))
    if order is None:
        order = magnitude_order(delta)
    mask = torch.zeros(delta.numel(), dtype=delta.dtype, device=delta.device)
    mask[order[:keep].long()] = 1
    return rescaled_masked_tensor(delta, mask.reshape_as(delta), _rescale_norm(rescale))


def sparsify_random(delta: torch.Tensor, density: float, rescale: bool) -> torch.Tensor:
    """DARE: mergekit's own `sparsify.bernoulli`, drawing from torch's global generator."""
    return bernoulli(delta, density, _rescale_norm(rescale))


def task_arithmetic(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    densities: Sequence[float],
    sparsification: Optional[str],  # None | "magnitude" | "random" (mergekit's SparsificationMethod)
    consensus: Optional[str],  # None | "sum" | "count" (mergekit's ConsensusMethod)
    normalize: bool,
    rescale: bool,
    lam: float = 1.0,
    int8_mask: bool = False,
    orders: Optional[Sequence[Optional[torch.Tensor]]] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """mergekit's generalized task arithmetic (task_arithmetic, ties, dare_ties, dare_linear) given
    the task vectors `deltas` = model − base, computed once per study; written into `out` if given."""
    if not deltas:
        return base if out is None else out.copy_(base)
    stacked = base.new_empty((len(deltas), *base.shape))
    for index, delta in enumerate(deltas):
        if sparsification == SparsificationMethod.magnitude:
            order = orders[index] if orders is not None else None
            delta = sparsify_magnitude(delta, densities[index], rescale, order)
        elif sparsification == SparsificationMethod.random:
            delta = sparsify_random(delta, densities[index], rescale)
        elif sparsification is not None:
            raise ValueError(f"the fast path has no {sparsification} sparsification")
        stacked[index] = delta
    weight = torch.tensor(list(weights), dtype=stacked.dtype, device=stacked.device)
    while stacked.dim() > weight.dim():
        weight.unsqueeze_(-1)
    stacked.mul_(weight)
    if consensus:
        from mergekit.merge_methods.generalized_task_arithmetic import get_mask

        mask = get_mask(stacked, method=consensus, mask_dtype=torch.int8 if int8_mask else base.dtype)
        mixed = (stacked * mask).sum(dim=0)
        divisor = (weight * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = stacked.sum(dim=0)
        divisor = weight.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed /= divisor
    if lam != 1:
        mixed *= lam
    if out is None:
        return (base + mixed).to(base.dtype)
    return torch.add(base, mixed, out=out)  # mixed has base's dtype: the same single rounding


@lru_cache(maxsize=1)
def fast_task_arithmetic_methods() -> dict[str, Any]:
    """mergekit's generalized task arithmetic methods whose sparsification `task_arithmetic`
    computes (none, magnitude, random), by name: read from mergekit's registry, not listed here."""
    from mergekit import merge_methods
    from mergekit.merge_methods.generalized_task_arithmetic import GeneralizedTaskArithmeticMerge

    supported = (None, SparsificationMethod.magnitude, SparsificationMethod.random)
    return {
        method.spec.name: method
        for method in merge_methods.registered_methods()
        if isinstance(method, GeneralizedTaskArithmeticMerge) and method.sparsification_method in supported
    }


def merge_task_arithmetic(
    method_name: str,
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    parameters: dict[str, Any],
    *,
    orders: Optional[Sequence[torch.Tensor]] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """`task_arithmetic` configured as mergekit's method `method_name`, with its parameters under
    mergekit's names: `weight` and `density` as lists (one per delta), `normalize`, `rescale`,
    `lambda`, `int8_mask`."""
    method = fast_task_arithmetic_methods()[method_name]
    return task_arithmetic(
        base,
        deltas,
        parameters["weight"],
        densities=parameters["density"],
        sparsification=method.sparsification_method,
        consensus=method.consensus_method,
        normalize=parameters["normalize"],
        rescale=parameters["rescale"],
        lam=parameters["lambda"],
        int8_mask=parameters["int8_mask"],
        orders=orders,
        out=out,
    )

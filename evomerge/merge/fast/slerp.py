"""SLERP: per study, each tensor pair's angle and lerp fallback (stacked) and the fused kernel's
plan; per trial, the coefficient columns from t, then c0·a + c1·b into the resident model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from evomerge.merge import fused, methods
from evomerge.merge.fast.base import FastMethod


@dataclass
class SlerpPair:
    """What every SLERP trial of one (base, other) pair reuses: the floating tensors' rows in the
    plan, their stacked geometry, and the tensors (or the fused kernel's arguments)."""

    rows: list[int]
    geometry: methods.SlerpGeometry
    outs: list[torch.Tensor]
    firsts: list[torch.Tensor]
    seconds: list[torch.Tensor]
    kernel: Optional[fused.WeightedPairs]


class Slerp(FastMethod):
    def prepare(self, merger, plan) -> SlerpPair:
        base, (other,) = plan.base, plan.others
        rows = merger.floating_rows
        names = [merger.tensor_names[row] for row in rows]
        outs = [merger.targets[name] for name in names]
        firsts = [merger.parents[base].tensors[name] for name in names]
        seconds = [merger.parents[other].tensors[name] for name in names]
        geometry = methods.stack_geometries([methods.slerp_geometry(a, b) for a, b in zip(firsts, seconds)])
        kernel = fused.plan_weighted_pairs(outs, firsts, seconds) if geometry.theta.dtype == torch.float32 else None
        return SlerpPair(rows, geometry, outs, firsts, seconds, kernel)

    def apply(self, merger, plan, prepared: SlerpPair) -> None:
        c0, c1 = methods.slerp_coefficient_columns([plan.tensors[row].shared["t"] for row in prepared.rows], prepared.geometry)
        if prepared.kernel is not None:
            prepared.kernel(c0, c1)
            return
        for target, a, b, x, y in zip(prepared.outs, prepared.firsts, prepared.seconds, c0.tolist(), c1.tolist()):
            methods.weighted_pair_into(target, a, b, x, y, merger.scratch)

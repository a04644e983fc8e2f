"""Linear (weighted average): nothing to prepare; per trial, each floating tensor written in place."""

from __future__ import annotations

from evomerge.merge import methods
from evomerge.merge.fast.base import FastMethod


class Linear(FastMethod):
    def key(self, plan) -> None:
        return None

    def apply(self, merger, plan, prepared: None) -> None:
        for row in merger.floating_rows:
            tensor = plan.tensors[row]
            sources = [merger.parents[m].tensors[tensor.name] for m in plan.models]
            weights = [tensor.per_model["weight"][m] for m in plan.models]
            methods.linear(sources, weights, normalize=tensor.shared["normalize"], out=merger.targets[tensor.name])

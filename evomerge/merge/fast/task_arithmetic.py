"""mergekit's generalized task arithmetic (task_arithmetic, ties, dare_ties, dare_linear): per study,
the task vectors (other − base) and, for TIES's magnitude sparsification, their magnitude order; per
trial, sparsify, weigh, take the sign consensus and write base + the mix into the resident model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from evomerge.merge import methods
from evomerge.merge.fast.base import FastMethod


@dataclass
class TaskVectors:
    """One base and its other parents: each other parent's task vector per tensor name, and the
    magnitude orders (filled the first time a magnitude method needs them)."""

    deltas: list[dict[str, torch.Tensor]]
    orders: Optional[list[dict[str, torch.Tensor]]] = field(default=None)


class TaskArithmetic(FastMethod):
    """One of mergekit's task arithmetic methods (by its name); all of them share the study's task vectors."""

    def __init__(self, name: str):
        self.name = name

    def key(self, plan):
        return ("task vectors", plan.base, tuple(plan.others))

    def prepare(self, merger, plan) -> TaskVectors:
        names = [merger.tensor_names[row] for row in merger.floating_rows]
        base_tensors = merger.parents[plan.base].tensors
        deltas = []
        for other in plan.others:
            other_tensors = merger.parents[other].tensors
            deltas.append({name: other_tensors[name] - base_tensors[name] for name in names})
        return TaskVectors(deltas)

    def apply(self, merger, plan, prepared: TaskVectors) -> None:
        method = methods.fast_task_arithmetic_methods()[plan.method]
        if method.sparsification_method == "magnitude" and prepared.orders is None:
            prepared.orders = [{name: methods.magnitude_order(d) for name, d in deltas.items()} for deltas in prepared.deltas]
        orders = prepared.orders if method.sparsification_method == "magnitude" else None
        others = plan.others
        base_tensors = merger.parents[plan.base].tensors
        for row in merger.floating_rows:
            tensor = plan.tensors[row]
            name = tensor.name
            parameters = {
                **tensor.shared,
                "weight": [tensor.per_model["weight"][m] for m in others],
                "density": [tensor.per_model["density"][m] for m in others],
            }
            methods.merge_task_arithmetic(
                plan.method,
                base_tensors[name],
                [d[name] for d in prepared.deltas],
                parameters,
                orders=[o[name] for o in orders] if orders else None,
                out=merger.targets[name],
            )

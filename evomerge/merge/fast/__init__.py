"""The merge methods the engine computes itself (bit for bit as mergekit), chosen by name from one
table; any other method goes through mergekit's own in-memory merge.

A `FastMethod` splits its method into `prepare` (once per study and set of parents: SLERP's angles,
task vectors, magnitude orders) and `apply` (once per trial: write the plan's merge into the
resident model). Adding a fast path is one new file here with a subclass, and one line in
`FAST_METHODS`; its arithmetic goes in `merge/methods.py` (pure functions on tensors), and
tests/merge/ checks it against mergekit.
"""

from __future__ import annotations

from typing import Optional

from evomerge.merge.fast.base import FastMethod
from evomerge.merge.fast.linear import Linear
from evomerge.merge.fast.slerp import Slerp
from evomerge.merge.fast.task_arithmetic import TaskArithmetic

FAST_METHODS: dict[str, FastMethod] = {
    "slerp": Slerp(),
    "linear": Linear(),
    "task_arithmetic": TaskArithmetic("task_arithmetic"),
    "ties": TaskArithmetic("ties"),
    "dare_ties": TaskArithmetic("dare_ties"),
    "dare_linear": TaskArithmetic("dare_linear"),
}


def fast_method(name: str) -> Optional[FastMethod]:
    """The fast path for a mergekit method's name, or None (mergekit merges it)."""
    return FAST_METHODS.get(name)


__all__ = ["FAST_METHODS", "FastMethod", "fast_method"]

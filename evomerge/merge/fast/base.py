"""The fast method's small protocol (see the package's docstring)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Hashable

if TYPE_CHECKING:
    from evomerge.merge.merger import Merger
    from evomerge.merge.planner import MergePlan


class FastMethod:
    """A merge method the engine computes itself, split into what a study computes once
    (`prepare`) and what each trial computes (`apply`). Both equal mergekit's arithmetic."""

    def key(self, plan: MergePlan) -> Hashable:
        """What `prepare`'s result depends on (default: the base and the other parents); plans
        with the same key share one preparation for the whole study."""
        return (plan.base, tuple(plan.others))

    def prepare(self, merger: Merger, plan: MergePlan) -> Any:
        """Once per study and key: whatever every trial reuses (angles, task vectors, …)."""
        return None

    def apply(self, merger: Merger, plan: MergePlan, prepared: Any) -> None:
        """Write the plan's merge into `merger.targets` (the resident model's tensors)."""
        raise NotImplementedError

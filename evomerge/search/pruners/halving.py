"""`--pruner halving`: successive halving; at each benchmark fraction the best third goes on
(Ray: ASHA with a rung at each fraction)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

from evomerge.search.pruners.base import PrunerChoice


class HalvingPruner(PrunerChoice):
    name = "halving"
    description = "successive halving: the best third goes on at each fraction"

    def optuna(self, settings) -> optuna.pruners.BasePruner:
        import optuna

        from evomerge.search.study import PRUNING_FACTOR

        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=PRUNING_FACTOR, min_early_stopping_rate=0)

    def tune(self, settings, *, time_attr: str, metric: str):
        from ray.tune.schedulers import ASHAScheduler

        from evomerge.search.study import PRUNING_FACTOR, last_fidelity_step

        return ASHAScheduler(
            time_attr=time_attr, metric=metric, mode="max", grace_period=1, max_t=last_fidelity_step(settings), reduction_factor=PRUNING_FACTOR
        )

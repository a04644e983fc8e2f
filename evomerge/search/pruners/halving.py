"""`--pruner halving`: successive halving; at each benchmark fraction the best third goes on
(Optuna: `rungs.RungHalvingPruner`; Ray: ASHA with a rung at each fraction)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

from evomerge.search.pruners.base import PrunerChoice


class HalvingPruner(PrunerChoice):
    name = "halving"
    description = "successive halving: the best third goes on at each fraction"

    def optuna(self, settings) -> optuna.pruners.BasePruner:
        from evomerge.search.pruners.rungs import RungHalvingPruner
        from evomerge.search.study import PRUNING_FACTOR

        return RungHalvingPruner(min_resource=1, reduction_factor=PRUNING_FACTOR, min_early_stopping_rate=0)

    def tune(self, settings, *, time_attr: str, metric: str):
        from ray.tune.schedulers import ASHAScheduler

        from evomerge.search.study import PRUNING_FACTOR, last_fidelity_rung

        return ASHAScheduler(
            time_attr=time_attr, metric=metric, mode="max", grace_period=1, max_t=last_fidelity_rung(settings), reduction_factor=PRUNING_FACTOR
        )

"""`--pruner median`: stop a trial whose partial score is below the median of earlier trials at
the same fraction (Ray: the median stopping rule)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

from evomerge.search.pruners.base import PrunerChoice


class MedianPruner(PrunerChoice):
    name = "median"
    description = "below the median of earlier trials at the same fraction"

    def optuna(self, settings) -> optuna.pruners.BasePruner:
        import optuna

        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)

    def tune(self, settings, *, time_attr: str, metric: str):
        from ray.tune.schedulers import MedianStoppingRule

        return MedianStoppingRule(time_attr=time_attr, metric=metric, mode="max", grace_period=1, min_samples_required=3)

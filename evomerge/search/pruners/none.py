"""`--pruner none`: every trial sees every question."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

from evomerge.search.pruners.base import PrunerChoice


class NoPruner(PrunerChoice):
    name = "none"
    description = "no pruning: every trial is scored on every item"

    def optuna(self, settings) -> optuna.pruners.BasePruner:
        import optuna

        return optuna.pruners.NopPruner()

    def tune(self, settings, *, time_attr: str, metric: str):
        from ray.tune.schedulers import FIFOScheduler

        return FIFOScheduler()

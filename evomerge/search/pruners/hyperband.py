"""`--pruner hyperband`: several successive-halving brackets, some of which never prune (a hedge
against pruning too early); Ray runs ASHA."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

from evomerge.search.pruners.halving import HalvingPruner


class HyperbandPruner(HalvingPruner):
    name = "hyperband"
    description = "Hyperband: brackets of successive halving, some never prune"

    def optuna(self, settings) -> optuna.pruners.BasePruner:
        from evomerge.search.pruners.rungs import RungHyperbandPruner
        from evomerge.search.study import PRUNING_FACTOR, last_fidelity_rung

        return RungHyperbandPruner(min_resource=1, max_resource=last_fidelity_rung(settings), reduction_factor=PRUNING_FACTOR)

"""`--sampler cmaes`: CMA-ES after 5 random trials: continuous values, one benchmark.

It learns from pruned trials too (`consider_pruned_trials`: a pruned trial counts with the last
partial score it reported), from the first completed trial on (Optuna's CMA-ES takes its search
space from completed trials). Optuna's default ignores them, and with successive halving pruning most
trials, a CMA-ES that ignored them learned from a handful (4 of 17 in one 17-trial search)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import optuna

from evomerge.search.samplers.base import SamplerChoice


class CmaEsSampler(SamplerChoice):
    name = "cmaes"
    description = "CMA-ES after 5 random trials (learns from pruned trials too): continuous values, one benchmark"
    multi_objective = False

    def make(self, seed: int, grid: Optional[dict[str, list[float]]] = None) -> optuna.samplers.BaseSampler:
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # consider_pruned_trials is "experimental"
            return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=5, warn_independent_sampling=False, consider_pruned_trials=True)

"""`--sampler cmaes`: CMA-ES after 5 random trials: continuous values, one benchmark."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import optuna

from evomerge.search.samplers.base import SamplerChoice


class CmaEsSampler(SamplerChoice):
    name = "cmaes"
    description = "CMA-ES after 5 random trials: continuous values, one benchmark"
    multi_objective = False

    def make(self, seed: int, grid: Optional[dict[str, list[float]]] = None) -> optuna.samplers.BaseSampler:
        import optuna

        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=5, warn_independent_sampling=False)

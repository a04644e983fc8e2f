"""`--sampler gp`: a Gaussian process with expected improvement after 5 random trials."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import optuna

from evomerge.search.samplers.base import SamplerChoice


class GaussianProcessSampler(SamplerChoice):
    name = "gp"
    description = "a Gaussian process with expected improvement after 5 random trials"
    multi_objective = False
    ignores_pruned = True  # Optuna's GPSampler fits completed trials only

    def make(self, seed: int, grid: Optional[dict[str, list[float]]] = None) -> optuna.samplers.BaseSampler:
        import optuna

        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=5)

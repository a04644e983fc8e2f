"""`--sampler nsga2`: NSGA-II, a genetic algorithm for two-benchmark (Pareto) studies."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import optuna

from evomerge.search.samplers.base import SamplerChoice


class Nsga2Sampler(SamplerChoice):
    name = "nsga2"
    description = "NSGA-II, a genetic algorithm for two-benchmark (Pareto) studies"
    multi_objective = True

    def make(self, seed: int, grid: Optional[dict[str, list[float]]] = None) -> optuna.samplers.BaseSampler:
        import optuna

        return optuna.samplers.NSGAIISampler(seed=seed)

"""`--sampler random`: uniform random values: the baseline every sampler must beat."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import optuna

from evomerge.search.samplers.base import SamplerChoice


class RandomSearch(SamplerChoice):
    name = "random"
    description = "uniform random values: the baseline every sampler must beat"
    multi_objective = True

    def make(self, seed: int, grid: Optional[dict[str, list[float]]] = None) -> optuna.samplers.BaseSampler:
        import optuna

        return optuna.samplers.RandomSampler(seed=seed)

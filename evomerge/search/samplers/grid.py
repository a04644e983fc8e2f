"""`--sampler grid`: every combination of the space's steps, in a seeded order."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import optuna

from evomerge.errors import EvomergeError
from evomerge.search.samplers.base import SamplerChoice


class GridSearch(SamplerChoice):
    name = "grid"
    description = "every combination of the space's steps (each searched value needs a step)"
    needs_grid = True

    def make(self, seed: int, grid: Optional[dict[str, list[float]]] = None) -> optuna.samplers.BaseSampler:
        import optuna

        if grid is None:
            raise EvomergeError("the grid sampler needs every searched value to have a step")
        return optuna.samplers.GridSampler(grid, seed=seed)

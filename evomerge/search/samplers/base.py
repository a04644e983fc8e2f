"""The sampler choice's small base class (see the package's docstring)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import optuna


class SamplerChoice:
    """One `--sampler` name: how to build its Optuna sampler, and what it can search."""

    name = ""
    description = ""
    multi_objective = False  # whether it can search a two-benchmark (Pareto) study
    needs_grid = False  # whether it needs every searched value's steps (the space's grid)
    ignores_pruned = False  # whether it learns only from completed trials (a pruning study warns)

    def make(self, seed: int, grid: Optional[dict[str, list[float]]] = None) -> optuna.samplers.BaseSampler:
        """The Optuna sampler, seeded with `seed`; `grid` is the space's grid when `needs_grid`."""
        raise NotImplementedError

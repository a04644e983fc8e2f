"""The samplers `--sampler` chooses from: one class per file, one table.

A `SamplerChoice` builds its Optuna sampler from a seed (and the space's grid, for the grid
sampler) and says whether it can search a two-benchmark study. Adding a sampler is one new file
here with a subclass, and one line in `SAMPLERS`; the command line's help, the settings' checks
and both executors read this table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import optuna

from evomerge.errors import EvomergeError
from evomerge.search.samplers.base import SamplerChoice
from evomerge.search.samplers.cmaes import CmaEsSampler
from evomerge.search.samplers.gp import GaussianProcessSampler
from evomerge.search.samplers.grid import GridSearch
from evomerge.search.samplers.nsga2 import Nsga2Sampler
from evomerge.search.samplers.qmc import QmcSampler
from evomerge.search.samplers.random_search import RandomSearch
from evomerge.search.samplers.tpe import TpeSampler

SAMPLERS: dict[str, type[SamplerChoice]] = {
    "tpe": TpeSampler,
    "cmaes": CmaEsSampler,
    "random": RandomSearch,
    "grid": GridSearch,
    "gp": GaussianProcessSampler,
    "nsga2": Nsga2Sampler,
    "qmc": QmcSampler,
}


def sampler_choice(name: str) -> SamplerChoice:
    """The sampler registered under `name`; an EvomergeError naming the known ones."""
    if name not in SAMPLERS:
        raise EvomergeError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    return SAMPLERS[name]()


def make_sampler(name: str, seed: int, grid: Optional[dict[str, list[float]]] = None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler registered under `name`, seeded."""
    return sampler_choice(name).make(seed, grid)


def multi_objective_samplers() -> list[str]:
    """The names that can search a two-benchmark study."""
    return [name for name, choice in SAMPLERS.items() if choice.multi_objective]


__all__ = ["SAMPLERS", "SamplerChoice", "make_sampler", "multi_objective_samplers", "sampler_choice"]

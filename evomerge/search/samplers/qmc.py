"""`--sampler qmc`: scrambled Sobol points, spread evenly over the space from the first trial."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import optuna

from evomerge.search.samplers.base import SamplerChoice


class QmcSampler(SamplerChoice):
    name = "qmc"
    description = "scrambled Sobol points: random search that covers the space evenly, for small budgets"
    multi_objective = True  # it ignores the values, so any number of objectives works

    def make(self, seed: int, grid: Optional[dict[str, list[float]]] = None) -> optuna.samplers.BaseSampler:
        import warnings

        import optuna
        from optuna.exceptions import ExperimentalWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed, warn_independent_sampling=False, warn_asynchronous_seeding=False)

"""`--sampler tpe`: TPE: a multivariate Parzen estimator after 5 random trials (Optuna's default)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import optuna

from evomerge.search.samplers.base import SamplerChoice


class TpeSampler(SamplerChoice):
    name = "tpe"
    description = "TPE: a multivariate Parzen estimator after 5 random trials (Optuna's default)"
    multi_objective = True

    def make(self, seed: int, grid: Optional[dict[str, list[float]]] = None) -> optuna.samplers.BaseSampler:
        import optuna

        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5)

"""The samplers' table: CMA-ES learns from pruned trials; a sampler that cannot warns a pruning study."""

from __future__ import annotations

import warnings

import optuna
import pytest

from evomerge.search.samplers import SAMPLERS, make_sampler
from evomerge.search.study import SearchSettings


def cma_generations(sampler: optuna.samplers.BaseSampler, trials: int = 30) -> int:
    """Run a study whose trials report a partial value and are pruned, all but one in five (as
    successive halving does to most trials); the last CMA-ES generation any trial was sampled in."""
    study = optuna.create_study(sampler=sampler, direction="maximize")

    def objective(trial: optuna.Trial) -> float:
        x, y = trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)
        value = -((x - 0.3) ** 2) - (y - 0.7) ** 2
        trial.report(value, step=1)
        if trial.number % 5:
            raise optuna.TrialPruned()
        return value

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.optimize(objective, n_trials=trials)
    return max(t.system_attrs.get("cma:generation", -1) for t in study.trials)


def test_cmaes_learns_from_pruned_trials():
    # Each CMA-ES generation (6 trials for two values) needs its population's values told: with
    # 6 of 30 trials complete, generations advance only if the pruned trials' partial values count.
    assert cma_generations(make_sampler("cmaes", seed=0)) >= 2
    # Optuna's default (what evomerge built before) never gets past its first generation here.
    ignoring = optuna.samplers.CmaEsSampler(seed=0, n_startup_trials=5, warn_independent_sampling=False)
    assert cma_generations(ignoring) <= 0


def test_only_gp_ignores_pruned_trials():
    assert [name for name, choice in SAMPLERS.items() if choice.ignores_pruned] == ["gp"]


def settings(**values) -> SearchSettings:
    return SearchSettings(parents=["a", "b"], benchmarks=["bio_materials"], **values)


def test_a_pruning_study_with_a_sampler_that_ignores_pruned_trials_warns():
    with pytest.warns(UserWarning, match="--sampler gp learns only from completed trials"):
        settings(sampler="gp", pruner="halving").check()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        settings(sampler="gp", pruner="none").check()  # nothing pruned: nothing lost
        settings(sampler="cmaes", pruner="halving").check()
        settings(sampler="tpe", pruner="hyperband").check()

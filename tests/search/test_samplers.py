"""The samplers' table: every name builds a seeded Optuna sampler that proposes values in range;
CMA-ES learns from pruned trials; a sampler that cannot warns a pruning study."""

from __future__ import annotations

import warnings

import optuna
import pytest

from evomerge.errors import EvomergeError
from evomerge.search.samplers import SAMPLERS, make_sampler, multi_objective_samplers, sampler_choice
from evomerge.search.study import SearchSettings

GRID = {"t": [0.0, 0.25, 0.5, 0.75, 1.0], "density": [0.2, 0.6, 1.0]}


def proposals(name: str, seed: int, trials: int = 8, directions=("maximize",)) -> list[dict]:
    study = optuna.create_study(sampler=make_sampler(name, seed, GRID), directions=list(directions))

    def objective(trial):
        t = trial.suggest_float("t", 0.0, 1.0)
        density = trial.suggest_float("density", 0.2, 1.0)
        return t * density if len(directions) == 1 else (t, density)

    study.optimize(objective, n_trials=trials)
    return [trial.params for trial in study.trials]


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_registered_sampler_proposes_values_in_range_and_repeats_with_its_seed(name):
    first = proposals(name, seed=3)
    assert len(first) == 8
    assert all(0.0 <= p["t"] <= 1.0 and 0.2 <= p["density"] <= 1.0 for p in first)
    assert proposals(name, seed=3) == first  # seeded: a new search is reproducible
    if name == "grid":
        assert all(p["t"] in GRID["t"] and p["density"] in GRID["density"] for p in first)


@pytest.mark.parametrize("name", multi_objective_samplers())
def test_multi_objective_samplers_search_a_two_benchmark_study(name):
    assert len(proposals(name, seed=0, trials=4, directions=("maximize", "maximize"))) == 4


def test_qmc_spreads_its_first_points_over_the_space():
    points = [p["t"] for p in proposals("qmc", seed=0, trials=9)]
    # Optuna draws the first trial at random (to learn the space); then Sobol's first 8 points put
    # exactly one value in each eighth of [0, 1], which 8 random draws rarely do.
    assert sorted(int(t * 8) for t in points[1:]) == list(range(8))


def test_an_unknown_sampler_is_one_line_naming_the_known_ones():
    with pytest.raises(EvomergeError, match="unknown sampler 'annealing'; choose from tpe, .*qmc"):
        sampler_choice("annealing")


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

"""The sampler registry: every name builds a seeded Optuna sampler that proposes values in range."""

import optuna
import pytest

from evomerge.errors import EvomergeError
from evomerge.search.samplers import SAMPLERS, make_sampler, multi_objective_samplers, sampler_choice

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

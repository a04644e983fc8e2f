"""`--population K` (search/population.py): K recipes asked at once, merged into K resident models,
scored together; real tiny parents, real Optuna SQLite studies, real merges and scores.

The central check: the same recipes give the same per-item results with K = 4 as with K = 1
(the one-at-a-time path), under both scoring protocols."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState
from search_helpers import DELLA, settings_for, write_space

from evomerge.errors import EvomergeError
from evomerge.search.executors import RayExecutor
from evomerge.search.run import optimise, prepare
from evomerge.search.study import create_or_load_study, finished_count, trial_attr

optuna.logging.set_verbosity(optuna.logging.WARNING)


def by_recipe(study):
    """{recipe key: finished trial} of the trials that were evaluated (not copied)."""
    trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    return {t.user_attrs["recipe_key"]: t for t in trials if "duplicate_of" not in t.user_attrs}


@pytest.mark.parametrize("protocol", ["loglik", "paper"])
def test_population_scores_equal_one_at_a_time(search_parents, tmp_path, monkeypatch, protocol):
    monkeypatch.chdir(tmp_path)
    one = settings_for(search_parents, tmp_path, sampler="random", trials=8, protocol=protocol, fidelities=[0.5, 1.0], study="one")
    single, _ = optimise(prepare(one))
    pop = settings_for(search_parents, tmp_path, sampler="random", trials=8, protocol=protocol, fidelities=[0.5, 1.0], study="pop", population=4)
    prepared = prepare(pop)
    seeded = create_or_load_study(pop, prepared.storage)
    for trial in single.get_trials(states=(TrialState.COMPLETE,)):  # the same recipes, in the same order
        seeded.enqueue_trial(trial.params)
    study, _ = optimise(prepared)
    assert finished_count(study) == 8
    ones, pops = by_recipe(single), by_recipe(study)
    assert len(ones) >= 4 and ones.keys() == pops.keys()
    for key, expected in ones.items():
        got = pops[key]
        assert got.state == TrialState.COMPLETE
        assert trial_attr(got, "correct") == trial_attr(expected, "correct"), f"per-item results differ for {key}"
        assert got.value == expected.value
        assert got.user_attrs["accuracy@0.5"] == expected.user_attrs["accuracy@0.5"]
        assert got.user_attrs["worker"] and "merge_s" in got.user_attrs and "score_s" in got.user_attrs


def test_pruning_is_applied_per_fraction_for_every_member(search_parents, tmp_path, monkeypatch):
    """Two populations of 4 under the median pruner (as test_objective's pruning test): recipes equal
    to the child score 1/4 on the first quarter; in the second population t=0.5 and t=0.9, which
    score 0 there, are pruned after reporting it, and keep only what they scored; the rest complete.
    (The first population cannot prune: the pruner waits for 3 complete trials.)"""
    monkeypatch.chdir(tmp_path)
    space = write_space(
        tmp_path,
        "method: slerp\nparameters:\n  t:\n    filters:\n      no_such_tensor: {low: 0, high: 1, step: 0.1}\n    default: {low: 0, high: 1, step: 0.1}\n",
    )
    settings = settings_for(search_parents, tmp_path, space=space, protocol="paper", pruner="median", trials=8, population=4)
    prepared = prepare(settings)
    seeded = create_or_load_study(settings, prepared.storage)
    plan = ((0.0, 1.0), (0.1, 1.0), (0.2, 1.0), (0.3, 1.0), (0.4, 0.5), (0.5, 0.9), (0.6, 1.0), (0.7, 1.0))
    for inert, t in plan:
        seeded.enqueue_trial({"t.no_such_tensor": inert, "t.default": t})
    study, _ = optimise(prepared)
    states = [t.state for t in study.trials[:8]]
    assert states == [TrialState.COMPLETE] * 4 + [TrialState.PRUNED] * 2 + [TrialState.COMPLETE] * 2, states
    for trial in study.trials[:8]:
        assert 4 in trial.intermediate_values  # every member reported the first fraction (a quarter of 16)
    for pruned in study.trials[4:6]:
        assert pruned.intermediate_values == {4: 0.0}
        assert "accuracy" not in pruned.user_attrs and "accuracy@0.5" not in pruned.user_attrs
        assert pruned.user_attrs["score_s"] > 0
    assert finished_count(study) == 8


def test_a_failing_recipe_fails_only_its_own_trial(search_parents, tmp_path, monkeypatch):
    """della with density 0.05 or 0.95 fails in mergekit; the rest of its population completes."""
    monkeypatch.chdir(tmp_path)
    settings = settings_for(search_parents, tmp_path, space=write_space(tmp_path, DELLA), sampler="random", trials=3, fidelities=[1.0], population=3)
    prepared = prepare(settings)
    seeded = create_or_load_study(settings, prepared.storage)
    for density in (0.5, 0.05, 0.95, 0.3, 0.1, 0.7):
        seeded.enqueue_trial({"density.m0": density, "density.m1": density})
    study, _ = optimise(prepared)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert sorted(t.params["density.m0"] for t in complete) == [0.3, 0.5, 0.7]
    assert sorted(t.params["density.m0"] for t in failed) == [0.05, 0.1, 0.95]
    assert all("epsilon" in t.user_attrs["fail_reason"].lower() for t in failed)
    assert finished_count(study) == 3 and "stopped_because" not in study.user_attrs


def test_a_recipe_proposed_twice_in_one_population_is_evaluated_once(search_parents, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, "method: slerp\nparameters:\n  t: {low: 0, high: 1, step: 0.5}\n")
    settings = settings_for(search_parents, tmp_path, space=space, sampler="random", trials=4, fidelities=[1.0], population=4)
    prepared = prepare(settings)
    seeded = create_or_load_study(settings, prepared.storage)
    for t in (0.5, 0.5, 1.0, 0.5):
        seeded.enqueue_trial({"t": t})
    study, runner = optimise(prepared)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 4
    keys = {t.user_attrs["recipe_key"] for t in trials}
    assert runner.merger.apply_count == len(keys) == 2
    originals = {t.number: t for t in trials if "duplicate_of" not in t.user_attrs}
    for trial in (t for t in trials if "duplicate_of" in t.user_attrs):
        original = originals[trial.user_attrs["duplicate_of"]]
        assert trial.value == original.value and trial_attr(trial, "correct") == trial_attr(original, "correct")


def test_a_population_that_does_not_fit_in_memory_is_refused_before_the_study(search_parents, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = settings_for(search_parents, tmp_path, population=10**12)
    with pytest.raises(EvomergeError, match=r"--population 1000000000000 needs .* free; use a smaller --population"):
        optimise(prepare(settings))
    assert optuna.study.get_all_study_names(settings.storage) == []


def test_population_below_one_and_on_ray_are_refused(search_parents, tmp_path):
    with pytest.raises(EvomergeError, match="--population must be at least 1"):
        settings_for(search_parents, tmp_path, population=0).check()
    with pytest.raises(EvomergeError, match="--population applies to --backend optuna only"):
        RayExecutor.check_settings(settings_for(search_parents, tmp_path, population=2))

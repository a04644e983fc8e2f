"""`--anchors K` (search/anchoring.py): real searches on the tiny parents; once the parents and
ANCHOR_FIT_TRIALS trials are scored on every item, later trials read K items and are estimated."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState
from search_helpers import settings_for

from evomerge.errors import EvomergeError
from evomerge.search.anchoring import ANCHOR_FIT_TRIALS, ESTIMATED_ATTR, stored_anchors
from evomerge.search.run import optimise, prepare
from evomerge.search.study import trial_attr


def test_trials_after_the_fit_read_only_the_anchors_and_are_estimated(search_parents, tmp_path):
    settings = settings_for(search_parents, tmp_path, anchors=4, trials=ANCHOR_FIT_TRIALS + 5)
    study, runner = optimise(prepare(settings))
    trials = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    evaluated = [t for t in trials if "duplicate_of" not in t.user_attrs]
    full = [t for t in evaluated if ESTIMATED_ATTR not in t.user_attrs]
    estimated = [t for t in evaluated if ESTIMATED_ATTR in t.user_attrs]
    items = len(runner.objectives[0].scorer.benchmark)
    assert len(full) == ANCHOR_FIT_TRIALS and all(t.user_attrs["items_scored"] == items for t in full)
    assert estimated and all(t.number > max(f.number for f in full) for t in estimated)
    anchors = stored_anchors(study)
    assert anchors is not None and anchors.fitted_on == 2 + ANCHOR_FIT_TRIALS  # the parents and the full trials
    for trial in estimated:
        assert trial.user_attrs["items_scored"] == len(anchors.indices) <= 4
        assert trial_attr(trial, "correct") is None  # no per-item results over every item: no interval from them
        # The value is the anchors' estimate of what the recipe scores on every item: check it.
        result = runner.objectives[0].scorer.score_items(runner.merger.apply(optuna_recipe(trial)), anchors.indices)
        assert trial.value == pytest.approx(anchors.estimate(result.correct))


def optuna_recipe(trial):
    from evomerge.recipe import Recipe

    return Recipe.from_yaml(trial_attr(trial, "recipe"))


def test_a_search_reports_the_fit_error_and_checks_the_best_estimate(search_parents, tmp_path, monkeypatch):
    """The summary (and the command line) say how far the estimate was off: the fit's
    leave-one-out error and, when the best trial is an estimate, its score on every item."""
    import evomerge

    monkeypatch.chdir(tmp_path)
    found = evomerge.search(
        [search_parents["instruct"], search_parents["child"]], search_parents["benchmark"], trials=ANCHOR_FIT_TRIALS + 6,
        anchors=4, pruner="none", protocol="loglik", holdout=0, device="cpu", study="anchored",
    )  # fmt: skip
    check = json.loads((tmp_path / "results" / "anchored" / "summary.json").read_text())["anchors"]
    assert check == found.summary["anchors"]
    assert check["asked"] == 4 and 1 <= check["anchors"] <= 4 and check["fitted_on_models"] == 2 + ANCHOR_FIT_TRIALS
    assert check["estimated_trials"] >= 1 and check["fit_error_mean"] >= 0
    study = optuna.load_study(study_name="anchored", storage=f"sqlite:///{tmp_path}/results/anchored/study.db")
    best = study.best_trial
    if ESTIMATED_ATTR in best.user_attrs:
        assert check["best_trial"]["trial"] == best.number
        assert check["best_trial"]["error"] == pytest.approx(check["best_trial"]["estimate"] - check["best_trial"]["full"])
    else:
        assert check["best_trial"] is None


@pytest.mark.parametrize(
    "overrides",
    [{"anchors": -1}, {"anchors": 4, "population": 2}, {"anchors": 4, "executor": "ray"}, {"anchors": 4, "sampler": "nsga2", "two": True}],
    ids=["negative", "population", "ray", "two-benchmarks"],
)
def test_anchors_where_they_cannot_apply_are_refused_before_anything_runs(search_parents, tmp_path, overrides):
    overrides = dict(overrides)
    if overrides.pop("two", False):
        overrides["benchmarks"] = [str(search_parents["benchmark"]), str(search_parents["general"])]
    with pytest.raises(EvomergeError, match="--anchors"):
        settings_for(search_parents, tmp_path, **overrides).check()

"""`--anchors K`: once a study has scored enough recipes in full, later trials are scored on K
anchor items only, and their accuracy is estimated from them (evaluate/anchors.py).

The anchors are fitted once per study, on the per-item results of the parents and of the first
ANCHOR_FIT_TRIALS completed trials on every search item, and stored on the study (every worker
uses the same ones; a resumed study keeps them). What the estimate gets wrong is reported twice:
the fit's leave-one-model-out error, and, after the search, the best trial's estimate against its
score on every search item (`check_best_estimate`).
"""

from __future__ import annotations

from typing import Optional

import optuna
from optuna.trial import TrialState

from evomerge.evaluate.anchors import Anchors, fit_anchors
from evomerge.search.locks import study_lock
from evomerge.search.study import SearchSettings, best_trial, trial_attr

ANCHORS_ATTR = "anchors"  # on the study (a system attribute: a list as long as K)
ANCHOR_CHECK_ATTR = "anchor_check"  # on the study: the best trial's estimate against its full score
ESTIMATED_ATTR = "estimated"  # on a trial scored on the anchors only
# Completed trials scored on every search item before the anchors are fitted: with the parents,
# the models the items' result vectors are made of.
ANCHOR_FIT_TRIALS = 8


def fitting_results(study: optuna.Study, parent_scores: dict, items: int) -> list[str]:
    """The per-item results ('0110…') anchors are fitted on: each parent's, then each completed
    trial's that was scored on all `items` (not an estimate, not a copy of another trial)."""
    results = [per_benchmark[0].get("correct") for per_benchmark in parent_scores.values() if per_benchmark]
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if ESTIMATED_ATTR not in trial.user_attrs and "duplicate_of" not in trial.user_attrs:
            results.append(trial_attr(trial, "correct"))
    return [r for r in results if r and len(r) == items]


def study_anchors(study: optuna.Study, settings: SearchSettings, parent_scores: dict, items: int) -> Optional[Anchors]:
    """The study's anchors: stored ones, else fitted now if enough recipes were scored in full
    (under the study's lock, so two workers store one set), else None (score in full)."""
    stored = stored_anchors(study)
    if stored is not None:
        return stored
    parents = len(parent_scores)
    if len(fitting_results(study, parent_scores, items)) < parents + ANCHOR_FIT_TRIALS:
        return None
    with study_lock(settings.storage_url(), study.study_name):
        stored = stored_anchors(study)  # another worker's, fitted meanwhile
        if stored is not None:
            return stored
        anchors = fit_anchors(fitting_results(study, parent_scores, items), settings.anchors, seed=settings.seed)
        study._storage.set_study_system_attr(study._study_id, ANCHORS_ATTR, anchors.to_dict())
    return anchors


def stored_anchors(study: optuna.Study) -> Optional[Anchors]:
    stored = study._storage.get_study_system_attrs(study._study_id).get(ANCHORS_ATTR)
    return Anchors.from_dict(stored) if stored is not None else None


def check_best_estimate(study: optuna.Study, runner) -> Optional[dict]:
    """If the best trial's accuracy is an estimate, score its recipe on every search item and
    store both on the study (ANCHOR_CHECK_ATTR), with the anchors' fit; what was stored, or None
    for a study without anchors."""
    settings: SearchSettings = runner.settings
    anchors = stored_anchors(study) if settings.anchors else None
    if anchors is None:
        return None
    check = {
        "anchors": len(anchors.indices),
        "asked": settings.anchors,
        "fitted_on_models": anchors.fitted_on,
        "fit_error_mean": anchors.loo_error,
        "fit_error_max": anchors.loo_error_max,
        "estimated_trials": sum(ESTIMATED_ATTR in t.user_attrs for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))),
        "best_trial": None,
    }
    best = best_trial(study)
    if best is not None and ESTIMATED_ATTR in best.user_attrs:
        full = runner.full_search_score(trial_attr(best, "recipe"))
        estimate = best.user_attrs.get("accuracy")
        check["best_trial"] = {"trial": best.number, "estimate": estimate, "full": full.accuracy, "error": estimate - full.accuracy}
    study.set_user_attr(ANCHOR_CHECK_ATTR, check)
    return check


__all__ = ["ANCHORS_ATTR", "ANCHOR_CHECK_ATTR", "ANCHOR_FIT_TRIALS", "ESTIMATED_ATTR", "check_best_estimate", "stored_anchors", "study_anchors"]

"""perf/search_cost.py: questions to target counted from a real Optuna study's trials, and its flags."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "perf"))
try:
    import search_cost
finally:
    sys.path.pop(0)


def count(fraction: float) -> int:
    return {0.25: 25, 0.5: 50, 1.0: 100}[fraction]


def add_trial(study: optuna.Study, reached: list[float], value: float, *, pruned: bool = False, duplicate: bool = False) -> None:
    trial = study.ask()
    trial.set_user_attr("recipe", f"recipe {trial.number}")
    for fraction in reached:
        trial.set_user_attr(f"accuracy@{fraction}", value)
    if duplicate:
        trial.set_user_attr("duplicate_of", 0)
    if pruned:
        trial.report(value, 1)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(trial, value)


def test_questions_to_target_add_what_each_trial_scored_until_the_best_is_near_the_reference():
    study = optuna.create_study(direction="maximize")
    add_trial(study, [0.25, 0.5, 1.0], 0.30)  # 100 questions
    add_trial(study, [0.25], 0.10, pruned=True)  # 25
    add_trial(study, [0.25, 0.5], 0.20, pruned=True)  # 50
    add_trial(study, [0.25, 0.5, 1.0], 0.30, duplicate=True)  # a copy: 0
    add_trial(study, [0.25, 0.5, 1.0], 0.395)  # 100: within 1 point of 0.40
    add_trial(study, [0.25, 0.5, 1.0], 0.41)  # 100, after the target
    cost = search_cost.cost_to_target(study, count, target=0.40 - 0.01)
    assert cost["reached"]["questions"] == 100 + 25 + 50 + 0 + 100
    assert cost["reached"]["trial"] == 4 and cost["reached"]["recipe"] == "recipe 4"
    assert cost["questions_total"] == 375 and cost["best"] == pytest.approx(0.41)
    assert search_cost.cost_to_target(study, count, target=0.5)["reached"] is None


def test_methods_are_pruners_with_an_optional_sampler_and_anchors():
    Method = search_cost.Method
    assert search_cost.parse_methods("none,halving/cmaes,halving,median+anchors30,median+warm", "tpe") == [
        Method("none", "none", "tpe"),
        Method("halving/cmaes", "halving", "cmaes"),
        Method("halving", "halving", "tpe"),
        Method("median+anchors30", "median", "tpe", anchors=30),
        Method("median+warm", "median", "tpe", warm=True),
    ]


def test_an_estimated_trial_costs_its_anchors():
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    trial.set_user_attr("items_scored", 30)
    trial.set_user_attr("accuracy@1.0", 0.5)
    study.tell(trial, 0.5)
    assert search_cost.trial_questions(study.trials[0], lambda fraction: 400) == 30


@pytest.mark.parametrize("methods", ["sometimes", "halving/annealing", ",", "median+anchors", "median+anchors0", "median+tiny5", "median+warm+cold"])
def test_an_unknown_method_is_one_line_and_exit_2(methods, capsys):
    with pytest.raises(SystemExit) as stopped:
        search_cost.parse_methods(methods, "tpe")
    assert stopped.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_an_estimated_trial_reaches_the_target_only_if_its_full_score_does():
    """An estimate above the target whose recipe scores below it on every item has not reached it."""
    study = optuna.create_study(direction="maximize")
    add_trial(study, [0.25, 0.5, 1.0], 0.30)  # 100
    add_trial(study, [], 0.45)  # an estimate (no fractions: its own items_scored would count)
    add_trial(study, [0.25, 0.5, 1.0], 0.40)  # 100
    cost = search_cost.cost_to_target(study, count, target=0.39, full_scores={1: 0.35})
    assert cost["reached"]["trial"] == 2 and cost["best"] == pytest.approx(0.40)
    assert search_cost.cost_to_target(study, count, target=0.39)["reached"]["trial"] == 1  # judged by the estimate

"""The rung pruners (`search/pruners/rungs.py`): a trial reports at the items it has scored, and
successive halving and Hyperband still judge each benchmark fraction, exactly as Optuna's own
pruners do when the same trials report at steps 1, 3, 9 (and as Ray's ASHA, whose rungs are those
steps). Real Optuna studies in memory; the values are a seeded random stream."""

from __future__ import annotations

import random

import optuna
import pytest
from optuna.trial import TrialState

from evomerge.search.pruners import make_pruner
from evomerge.search.pruners.rungs import RungHalvingPruner, RungHyperbandPruner, rung_view
from evomerge.search.study import PRUNING_FACTOR, SearchSettings, fidelity_rung, last_fidelity_rung

optuna.logging.set_verbosity(optuna.logging.WARNING)
ITEM_COUNTS = [12, 25, 50]  # fractions 0.25, 0.5, 1 of 50 items: not a geometric series of 3
FRACTIONS = [0.25, 0.5, 1.0]


def decisions(pruner, steps, trials=40, seed=0) -> list[int]:
    """Run `trials` trials reporting the same seeded values at `steps` (the partial fractions);
    the number of fractions each trial passed before it was pruned (len(steps) = never)."""
    # One name: Hyperband assigns a trial its bracket from the study name and the trial number.
    study = optuna.create_study(study_name="s", direction="maximize", pruner=pruner, sampler=optuna.samplers.RandomSampler(seed))
    values = random.Random(seed)
    passed = []
    for _ in range(trials):
        trial = study.ask()
        reached = len(steps)
        for index, step in enumerate(steps):
            trial.report(values.random(), step)
            if trial.should_prune():
                reached = index
                break
        for _ in range(len(steps) - reached - 1):
            values.random()  # keep the stream aligned whatever was pruned
        if reached < len(steps):
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, values.random())
        passed.append(reached)
    return passed


def test_rung_view_puts_the_kth_report_at_rung_k():
    trial = optuna.trial.create_trial(value=0.5, intermediate_values={25: 0.4, 12: 0.3})
    assert rung_view(trial).intermediate_values == {1: 0.3, PRUNING_FACTOR: 0.4}
    assert trial.intermediate_values == {25: 0.4, 12: 0.3}, "the stored trial keeps its item counts"
    assert [fidelity_rung(k) for k in range(3)] == [1, 3, 9]


def test_halving_on_item_counts_prunes_as_optunas_halving_on_rungs():
    partial = ITEM_COUNTS[:-1]
    rungs = [fidelity_rung(k) for k in range(len(partial))]
    expected = decisions(optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3, min_early_stopping_rate=0), rungs)
    got = decisions(RungHalvingPruner(min_resource=1, reduction_factor=3, min_early_stopping_rate=0), partial)
    assert got == expected
    assert 0 < expected.count(0) < len(expected) and 1 in expected, "both fractions prune some trials"
    # Optuna's pruner on raw item counts judges every rung at the first report: not the same search.
    raw = decisions(optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3, min_early_stopping_rate=0), partial)
    assert raw != expected


def test_hyperband_on_item_counts_prunes_as_optunas_hyperband_on_rungs():
    partial = ITEM_COUNTS[:-1]
    rungs = [fidelity_rung(k) for k in range(len(partial))]
    expected = decisions(optuna.pruners.HyperbandPruner(min_resource=1, max_resource=9, reduction_factor=3), rungs, trials=60)
    got = decisions(RungHyperbandPruner(min_resource=1, max_resource=9, reduction_factor=3), partial, trials=60)
    assert got == expected and min(expected) == 0


@pytest.mark.parametrize("name, cls", [("halving", RungHalvingPruner), ("hyperband", RungHyperbandPruner)])
def test_the_registry_builds_the_rung_pruners(name, cls):
    settings = SearchSettings(parents=["a", "b"], benchmarks=["x"], pruner=name, fidelities=FRACTIONS)
    assert type(make_pruner(settings)) is cls
    assert last_fidelity_rung(settings) == 9

"""Optuna's rung pruners, judging benchmark fractions rather than steps.

A trial reports each partial fraction at the number of items scored so far (what the dashboard
plots). Successive halving and Hyperband promote at steps min_resource · factor**k, which item
counts (12, 25, … for fractions 0.25, 0.5 of 50 items) do not follow. These subclasses hand
Optuna's own pruners each trial with its k-th report at step PRUNING_FACTOR**k (a view; the
stored trial keeps its item counts), so every partial fraction is a rung, whatever its size, as
Ray's ASHA sees them (`fidelity_rung`). The rungs a pruner records on the trial are by number,
so trials compare at equal fractions.
"""

from __future__ import annotations

import copy

import optuna

from evomerge.search.study import fidelity_rung


def rung_view(trial: optuna.trial.FrozenTrial) -> optuna.trial.FrozenTrial:
    """`trial` with its reports re-keyed from item counts to rungs: its k-th smallest step (its
    k-th fraction: every trial reports the same fractions in the same order) at `fidelity_rung(k)`."""
    view = copy.copy(trial)
    view.intermediate_values = {fidelity_rung(k): trial.intermediate_values[step] for k, step in enumerate(sorted(trial.intermediate_values))}
    return view


class RungHalvingPruner(optuna.pruners.SuccessiveHalvingPruner):
    """Optuna's successive halving with a rung at each partial fraction (see the module)."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return super().prune(study, rung_view(trial))


class RungHyperbandPruner(optuna.pruners.HyperbandPruner):
    """Optuna's Hyperband with a rung at each partial fraction (see the module)."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return super().prune(study, rung_view(trial))

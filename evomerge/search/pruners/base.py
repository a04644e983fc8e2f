"""The pruner choice's small base class (see the package's docstring)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

    from evomerge.search.study import SearchSettings


class PrunerChoice:
    """One `--pruner` name: its Optuna pruner, and the Ray Tune scheduler that prunes alike."""

    name = ""
    description = ""

    def optuna(self, settings: SearchSettings) -> optuna.pruners.BasePruner:
        """The pruner an Optuna-backend study uses (`settings.prunes` is true)."""
        raise NotImplementedError

    def tune(self, settings: SearchSettings, *, time_attr: str, metric: str):
        """The Ray Tune scheduler (`settings.prunes` is true): `time_attr` is the result key of
        the fidelity step a trial has reached, `metric` the value's key."""
        raise NotImplementedError

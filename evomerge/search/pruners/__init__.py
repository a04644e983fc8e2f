"""The pruners `--pruner` chooses from: one class per file, one table.

A `PrunerChoice` builds the Optuna pruner of an Optuna-backend study and the Ray Tune scheduler
that prunes the same way on Ray. A study that cannot prune (one fraction, two benchmarks) gets
`none` whatever was asked (`SearchSettings.prunes`). Adding a pruner is one new file here with a
subclass, and one line in `PRUNERS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from evomerge.errors import EvomergeError
from evomerge.search.pruners.base import PrunerChoice
from evomerge.search.pruners.halving import HalvingPruner
from evomerge.search.pruners.hyperband import HyperbandPruner
from evomerge.search.pruners.median import MedianPruner
from evomerge.search.pruners.none import NoPruner

if TYPE_CHECKING:
    import optuna

    from evomerge.search.study import SearchSettings

PRUNERS: dict[str, type[PrunerChoice]] = {
    "halving": HalvingPruner,
    "hyperband": HyperbandPruner,
    "median": MedianPruner,
    "none": NoPruner,
}


def pruner_choice(name: str) -> PrunerChoice:
    """The pruner registered under `name`; an EvomergeError naming the known ones."""
    if name not in PRUNERS:
        raise EvomergeError(f"unknown pruner {name!r}; choose from {', '.join(PRUNERS)}")
    return PRUNERS[name]()


def effective_pruner(settings: SearchSettings) -> PrunerChoice:
    """The study's pruner: --pruner where the study can prune, else `none`."""
    return pruner_choice(settings.pruner if settings.prunes else "none")


def make_pruner(settings: SearchSettings) -> optuna.pruners.BasePruner:
    """The Optuna pruner of a study with these settings."""
    return effective_pruner(settings).optuna(settings)


__all__ = ["PRUNERS", "PrunerChoice", "effective_pruner", "make_pruner", "pruner_choice"]

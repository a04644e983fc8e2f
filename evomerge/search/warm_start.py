"""`--warm-start STUDY[@STORAGE]`: a search starts from the best recipes of a finished study.

The finished study's best completed trials (up to `WARM_START_RECIPES`, best first, distinct after
mapping) are queued as this study's first trials, after the paper's recipe. Their values are mapped
onto this search's space and depth by `SearchSpace.map_params`: a per-layer-group value is read at
the same relative depth, so a study on 2-layer parents can start a search on 32-layer ones;
gradients' anchors (already relative to depth) and single values are kept.

Where the study is found: in `STORAGE` when given; else in this search's `--storage` when it holds
a study of that name; else in that study's default place (results/STUDY/study.db).
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from evomerge.errors import EvomergeError
from evomerge.search.study import SearchSettings, default_storage_url, load_existing_study, open_existing_storage
from evomerge.space import SearchSpace

WARM_START_RECIPES = 3  # the finished study's best recipes queued


@dataclass
class WarmStart:
    """The recipes to queue: each source trial's number and its values mapped to this search."""

    study: str
    storage: str
    params: list[tuple[int, dict[str, float]]]

    def label(self, number: int) -> str:
        return f"{self.study}#{number}"


def source_of(settings: SearchSettings) -> tuple[str, str]:
    """(study name, storage URL) of `settings.warm_start` (see the module's docstring)."""
    reference = settings.warm_start or ""
    name, _, storage = reference.partition("@")
    if not name:
        raise EvomergeError(f"--warm-start takes STUDY or STUDY@STORAGE, got {reference!r}")
    if name == settings.study and storage in ("", settings.storage_url()):
        raise EvomergeError(f"--warm-start {reference} names this study itself; name a finished study")
    if storage:
        return name, storage
    if settings.storage:
        try:  # an existing storage only: looking must not create an empty database
            if name in optuna.study.get_all_study_names(open_existing_storage(settings.storage)):
                return name, settings.storage
        except EvomergeError:  # no storage there yet: it holds no study
            pass
    return name, default_storage_url(name)


def load_warm_start(settings: SearchSettings, space: SearchSpace, num_layers: int) -> WarmStart:
    """The finished study's best recipes as values of this search (checked before any work):
    a clear EvomergeError if the study is missing, is this one, has two objectives, has no
    completed trial, or shares no searched value with this space."""
    name, storage = source_of(settings)
    try:
        source = load_existing_study(name, storage)
    except EvomergeError as error:
        raise EvomergeError(f"--warm-start: {error}") from None
    if len(source.directions) > 1:
        raise EvomergeError(f"--warm-start: study {name} has two objectives; warm start takes a one-benchmark study")
    complete = [t for t in source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not complete:
        raise EvomergeError(f"--warm-start: study {name} has no completed trial")
    picks: list[tuple[int, dict[str, float]]] = []
    seen: set[tuple] = set()
    for trial in sorted(complete, key=lambda t: (-t.value, t.number)):
        mapped = space.map_params(trial.params, num_layers, n_models=len(settings.parents))
        key = tuple(sorted(mapped.items()))
        if mapped and key not in seen:
            seen.add(key)
            picks.append((trial.number, mapped))
        if len(picks) == WARM_START_RECIPES:
            break
    if not picks:
        raise EvomergeError(f"--warm-start: study {name}'s trials search none of the values of space {space.name}")
    return WarmStart(name, storage, picks)


def enqueue_warm_start(study: optuna.Study, warm: WarmStart) -> None:
    """Queue the recipes once per study (a trial with the same values is not queued again)."""
    for number, params in warm.params:
        study.enqueue_trial(params, user_attrs={"warm_start": warm.label(number)}, skip_if_exists=True)

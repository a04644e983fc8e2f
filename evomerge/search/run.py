"""Run a search: check everything, create or resume the study, optimise, score the held-out items.

Order matters: every bad input (flags, space, parents, benchmark files, storage) is reported
before the study is created; weights load once per process; `--trials` is the study's total, so
rerunning the same command continues it; Ctrl-C stops cleanly after marking the running trial.
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass
from typing import Callable, Optional

import optuna
from optuna.trial import TrialState

from evomerge.errors import EvomergeError
from evomerge.evaluate.benchmark import load_benchmark
from evomerge.evaluate.harness import find_task, is_lm_eval_spec
from evomerge.merge.merger import resolve_device, resolve_dtype
from evomerge.merge.parents import check_parents, inspect_parent
from evomerge.search.objective import TrialRunner
from evomerge.search.study import (
    SearchSettings,
    create_or_load_study,
    finished_count,
    load_settings,
    open_existing_storage,
    open_storage,
)
from evomerge.space import SearchSpace, load_space

MAX_CONSECUTIVE_FAILURES = 5
HOLDOUT_ATTR = "holdout_scores"


class TooManyFailures(EvomergeError):
    pass


@dataclass
class Prepared:
    settings: SearchSettings
    space: SearchSpace
    infos: list
    storage: object
    grid: Optional[dict] = None  # the grid sampler's values, when --sampler grid


def prepare(settings: SearchSettings, preflight: Optional[Callable[[], None]] = None) -> Prepared:
    """All checks that need no weights: flags, space, parents' headers, benchmark files, storage.
    `preflight` runs after the inputs are checked and before the storage is opened (the Ray
    backend reaches its cluster there), so it too fails before a study file exists."""
    settings.check()
    if settings.executor != "ray":  # on Ray the trials' device is the one Ray assigns them
        resolve_device(settings.device)
    resolve_dtype(settings.dtype)
    space = load_space(settings.space)
    infos = [inspect_parent(parent) for parent in settings.parents]
    check_parents(infos)
    space.check_parents(settings.parents, settings.base)
    for benchmark in settings.benchmarks:
        if is_lm_eval_spec(benchmark):
            find_task(benchmark, settings.tasks_dir)  # an unknown task is reported now
        else:
            load_benchmark(benchmark)
    grid = None
    if settings.sampler == "grid":
        grid = space.grid(infos[0].num_layers, settings.parents, settings.base)
        if grid is None:
            raise EvomergeError(f"--sampler grid needs a step on every searched value of space {space.name}")
    if preflight is not None:
        preflight()
    return Prepared(settings, space, infos, open_storage(settings.storage_url()), grid)


class StopAtTotal:
    """Stop this worker once finished plus running trials reach the study's total (across every
    worker), so N trials asked are N recorded; a failure reopens room for another trial."""

    def __init__(self, total: int):
        self.total = total

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        if len(study.get_trials(deepcopy=False, states=states)) >= self.total:
            study.stop()


def failure_guard(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Stop after several failures in a row: something is wrong with the setup, not one recipe."""
    if record_failure_streak(study):
        study.stop()


def record_failure_streak(study: optuna.Study) -> bool:
    """Whether the last finished trials all failed; if so the reason is stored on the study."""
    finished = [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    recent = finished[-MAX_CONSECUTIVE_FAILURES:]
    if len(recent) == MAX_CONSECUTIVE_FAILURES and all(t.state == TrialState.FAIL for t in recent):
        study.set_user_attr("stopped_because", f"{MAX_CONSECUTIVE_FAILURES} trials failed in a row; last: {recent[-1].user_attrs.get('fail_reason', '?')}")
        return True
    return False


def check_stopped(study: optuna.Study, settings: SearchSettings) -> None:
    """Raise if a run of failures stopped the study before it had its trials."""
    if "stopped_because" in study.user_attrs and finished_count(study) < settings.trials:
        raise TooManyFailures(f"search stopped: {study.user_attrs['stopped_because']}")


def optimise(
    prepared: Prepared,
    *,
    timeout: Optional[float] = None,
    on_trial: Optional[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = None,
    runner: Optional[TrialRunner] = None,
) -> tuple[optuna.Study, TrialRunner]:
    """Create or resume the study and run trials in this process until the study has its total."""
    settings = prepared.settings
    runner = runner or TrialRunner(settings, prepared.infos, prepared.space)
    study = create_or_load_study(settings, prepared.storage, prepared.grid)
    runner.total_trials = settings.trials
    # A trial whose process was killed (kill -9) has stopped beating: mark it failed now.
    optuna.storages.fail_stale_trials(study)
    runner.score_parents(study)
    enqueue_baseline(study, prepared.space, runner.merger.num_layers)
    remaining = settings.trials - finished_count(study)
    if remaining > 0:
        callbacks = [StopAtTotal(settings.trials), failure_guard]
        if on_trial is not None:
            callbacks.append(on_trial)
        # Failed trials do not count towards --trials: leave room to replace a few (the guard stops
        # a run of failures); MaxTrialsCallback ends the run at the study's total, across workers.
        n_trials = remaining + MAX_CONSECUTIVE_FAILURES
        study.optimize(runner, n_trials=n_trials, timeout=timeout, callbacks=callbacks, catch=(Exception,))
    check_stopped(study, settings)
    return study, runner


def enqueue_baseline(study: optuna.Study, space: SearchSpace, num_layers: int) -> None:
    """The paper's hand-made recipe as a trial, where the space can express it, once per study."""
    params = space.baseline_params(num_layers)
    if params is None or any(t.user_attrs.get("baseline") for t in study.get_trials(deepcopy=False)):
        return
    study.enqueue_trial(params, user_attrs={"baseline": True}, skip_if_exists=True)


def score_holdout(study: optuna.Study, runner: TrialRunner) -> Optional[dict]:
    """Score the best recipe on the held-out items the search never saw; stored on the study.
    `runner` is anything with `settings` and `holdout_score(recipe_yaml)` (the Ray backend scores
    on a worker)."""
    if not runner.settings.holdout or runner.settings.multi_objective:
        return None
    best = best_trial(study)
    if best is None:
        return None
    result = runner.holdout_score(best.user_attrs["recipe"])
    if result is None:
        return None
    scores = {"trial": best.number, "search_accuracy": best.user_attrs.get("accuracy"), "holdout_accuracy": result.accuracy, "holdout_n": result.n}
    study.set_user_attr(HOLDOUT_ATTR, scores)
    return scores


def best_trial(study: optuna.Study) -> Optional[optuna.trial.FrozenTrial]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    if len(study.directions) > 1:
        front = study.best_trials
        return max(front, key=lambda t: t.values[0]) if front else None
    return study.best_trial


# ----- several worker processes on one machine ----------------------------------------------


def _worker_main(settings_json: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = SearchSettings.from_json(settings_json)
    optimise(prepare(settings))


def start_workers(settings: SearchSettings, count: int) -> list[multiprocessing.Process]:
    """`count` extra processes that join the same study (each loads the parents once)."""
    threads = max(1, (os.cpu_count() or 1) // (count + 1))
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker_main, args=(settings.to_json(), threads), daemon=True) for _ in range(count)]
    for process in processes:
        process.start()
    return processes


def join_study(study_name: str, storage_url: str) -> SearchSettings:
    """The settings of an existing study, so `evomerge worker` needs nothing but its name and storage."""
    storage = open_existing_storage(storage_url)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise EvomergeError(f"no study {study_name!r} in {storage_url}") from None
    settings = load_settings(study).in_process()  # whichever backend started the study
    settings.storage = storage_url
    return settings

"""Run a search: check everything, open (create or resume) the study, optimise, score the held-out items.

Order matters: every bad input (flags, space, parents, benchmark files, storage) is reported
before the study is created; weights load once per process; the study is opened (its parents
scored, the paper's recipe queued) by one process before any other joins it; `--trials` is the
study's total, so rerunning the same command continues it; Ctrl-C stops cleanly after marking the
running trial.

`run_search(settings)` is a whole search as `evomerge search`, `evomerge worker` and
`evomerge.search()` run it: the executor that `--backend` names (`search/executors/`), the held-out
score, the results folder, and a `SearchProgress` told what happens.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from evomerge.errors import EvomergeError
from evomerge.evaluate.benchmark import load_benchmark
from evomerge.evaluate.harness import find_task, is_lm_eval_spec
from evomerge.evaluate.scorer import ScoreResult
from evomerge.devices import resolve_device, resolve_dtype
from evomerge.merge.parents import ParentInfo, check_parents, inspect_parent
from evomerge.search.locks import study_lock
from evomerge.search.objective import TrialRunner, ensure_parent_scores
from evomerge.search.study import (
    TAKEN,
    SearchSettings,
    best_trial,
    create_or_load_study,
    finished_count,
    load_existing_study,
    load_settings,
    open_storage,
)
from evomerge.space import SearchSpace, load_space

MAX_CONSECUTIVE_FAILURES = 5
HOLDOUT_ATTR = "holdout_scores"

OnTrial = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


class TooManyFailures(EvomergeError):
    pass


@dataclass
class Prepared:
    settings: SearchSettings
    space: SearchSpace
    infos: list[ParentInfo]
    storage: object = None  # None until the storage is opened (see `prepare`)
    grid: Optional[dict] = None  # the grid sampler's values, when --sampler grid


def check_search(settings: SearchSettings, infos: Optional[Sequence[ParentInfo]] = None) -> Prepared:
    """Every check that needs neither weights nor the storage: flags, space, parents' headers,
    benchmark files. `infos`: the parents' headers, inspected and checked by the caller already."""
    settings.check()
    if settings.executor != "ray":  # on Ray the trials' device is the one Ray assigns them
        resolve_device(settings.device)
    resolve_dtype(settings.dtype)
    space = load_space(settings.space)
    if infos is None:
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
    return Prepared(settings, space, list(infos), grid=grid)


def prepare(settings: SearchSettings, preflight: Optional[Callable[[], None]] = None) -> Prepared:
    """All checks that need no weights (`check_search`), then the storage. `preflight` runs after
    the inputs are checked and before the storage is opened (the Ray backend reaches its cluster
    there), so it too fails before a study file exists."""
    checked = check_search(settings)
    if preflight is not None:
        preflight()
    return replace(checked, storage=open_storage(settings.storage_url()))


# ----- the study: opened once, then trials until it has its total ------------------------------


def open_study(prepared: Prepared, compute_parent_scores: Callable[[], dict]) -> tuple[optuna.Study, dict]:
    """Create or resume the study: fail the trials of a killed process, score the parents once
    (`compute_parent_scores`, only if the study has no scores yet), queue the paper's recipe once.
    The study and its parents' scores. Every process that runs trials opens the study this way;
    a process that starts others opens it first, so they find it ready."""
    study = create_or_load_study(prepared.settings, prepared.storage, prepared.grid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
        optuna.storages.fail_stale_trials(study)  # a trial whose process was killed has stopped beating
    parent_scores = ensure_parent_scores(study, compute_parent_scores)
    with study_lock(prepared.settings.storage_url(), study.study_name):  # two processes opening it queue it once
        enqueue_baseline(study, prepared.space, prepared.infos[0].num_layers)
    return study, parent_scores


def trial_budget(study: optuna.Study, settings: SearchSettings) -> int:
    """How many trials this process may start: those still due, plus room to replace a few
    failures (a failed trial does not count towards --trials; a run of them stops the study).
    0 when the study already has its total."""
    due = settings.trials - finished_count(study)
    return due + MAX_CONSECUTIVE_FAILURES if due > 0 else 0


def optimise(
    prepared: Prepared,
    *,
    timeout: Optional[float] = None,
    on_trial: Optional[OnTrial] = None,
    runner: Optional[TrialRunner] = None,
    parent_scores: Optional[Callable[[], dict]] = None,
    workers: int = 0,
) -> tuple[optuna.Study, TrialRunner]:
    """Open the study and run trials in this process (and `workers` more processes on this
    machine, started once the study is open) until the study has its total. `parent_scores`
    computes the parents' scores if the study has none (default: the runner scores them)."""
    settings = prepared.settings
    runner = runner or TrialRunner.load(settings, prepared.infos, prepared.space)
    study, scores = open_study(prepared, parent_scores or runner.compute_parent_scores)
    processes = start_workers(settings, workers, timeout) if workers else []
    try:
        budget = trial_budget(study, settings)
        if budget:
            # The callback ends the run at the study's total, across every worker: N trials
            # asked are N recorded.
            callbacks = [MaxTrialsCallback(settings.trials, states=TAKEN), failure_guard]
            if on_trial is not None:
                callbacks.append(on_trial)
            study.optimize(runner.objective(scores), n_trials=budget, timeout=timeout, callbacks=callbacks, catch=(Exception,))
        for process in processes:
            process.join()
    finally:
        for process in processes:
            if process.is_alive():  # Ctrl-C or an error here: the workers' trials end with this run
                process.terminate()
    check_stopped(study, settings)
    return study, runner


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


def enqueue_baseline(study: optuna.Study, space: SearchSpace, num_layers: int) -> None:
    """The paper's hand-made recipe as a trial, where the space can express it, once per study
    (a trial with the same values, whatever its state, is not queued again)."""
    params = space.baseline_params(num_layers)
    if params is not None:
        study.enqueue_trial(params, user_attrs={"baseline": True}, skip_if_exists=True)


# ----- the held-out items ----------------------------------------------------------------------


@dataclass
class HeldOut:
    """The best trial's recipe scored on the held-out items, and what is stored on the study."""

    trial: optuna.trial.FrozenTrial
    result: ScoreResult  # per item, in the held-out items' order
    scores: dict  # the study's HOLDOUT_ATTR: trial, search_accuracy, holdout_accuracy, holdout_n


def holdout_result(study: optuna.Study, runner) -> Optional[HeldOut]:
    """Score the best recipe on the held-out items the search never saw, and store its scores on
    the study; None without held-out items. `runner` is anything with `settings` and
    `holdout_score(recipe_yaml)` (the Ray backend scores on a worker)."""
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
    return HeldOut(best, result, scores)


def score_holdout(study: optuna.Study, runner) -> Optional[dict]:
    """`holdout_result`'s stored scores (what the summary and the command line show)."""
    held = holdout_result(study, runner)
    return held.scores if held is not None else None


# ----- several worker processes on one machine ----------------------------------------------


def _worker_main(settings_json: str, threads: int, timeout: Optional[float]) -> None:
    import torch

    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = SearchSettings.from_json(settings_json)
    optimise(prepare(settings), timeout=timeout)


def start_workers(settings: SearchSettings, count: int, timeout: Optional[float] = None) -> list[multiprocessing.Process]:
    """`count` extra processes that join the same study (each loads the parents once); start
    them once the study is open, so they find its parents' scores and do not score them again."""
    threads = max(1, (os.cpu_count() or 1) // (count + 1))
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker_main, args=(settings.to_json(), threads, timeout), daemon=True) for _ in range(count)]
    for process in processes:
        process.start()
    return processes


def join_study(study_name: str, storage_url: str) -> SearchSettings:
    """The settings of an existing study, so `evomerge worker` needs nothing but its name and storage."""
    settings = load_settings(load_existing_study(study_name, storage_url)).in_process()  # whichever backend started the study
    settings.storage = storage_url
    return settings


# ----- a whole search: what `evomerge search`, `evomerge worker` and `evomerge.search()` run ----


class SearchProgress:
    """What a running search tells whoever started it; every method does nothing here. The
    command line subclasses it to draw a progress bar; a notebook may, or may ignore it."""

    def started(self, settings: SearchSettings) -> None:
        """The inputs are checked and the storage is open; trials are about to start."""

    def say(self, message: str) -> None:
        """A line for the user (the parents are being scored, Ray's resources, an interruption)."""

    def trial_finished(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """A trial of the study finished (complete, pruned or failed), in any process."""

    def stopped(self) -> None:
        """The search ended (normally or not); `started` was called before."""


@dataclass
class SearchRun:
    """A finished (or interrupted) search: the study, what `export_all` wrote, the held-out score."""

    study: optuna.Study
    settings: SearchSettings
    summary: dict  # summary.json's content
    holdout: Optional[dict]  # the HOLDOUT_ATTR scores, when the study has held-out items
    folder: Path  # results/<study>/


def run_search(
    settings: SearchSettings, *, timeout: Optional[float] = None, jobs: int = 1, progress: Optional[SearchProgress] = None
) -> SearchRun:
    """Check everything, open (create or resume) the study, run trials with the executor that
    `settings.executor` names until the study has its total, score the best recipe on the held-out
    items and write the results folder. Ctrl-C marks the running trials failed, exports what
    exists and re-raises the KeyboardInterrupt."""
    import time

    from evomerge.search.executors import executor_class
    from evomerge.search.export import export_all

    progress = progress or SearchProgress()
    start = time.perf_counter()
    executor_class(settings.executor).check_settings(settings, jobs)
    executor = executor_class(settings.executor)(settings, jobs)
    with executor:
        # Every bad input (and, on Ray, an unreachable cluster or a GPU it lacks) is reported here,
        # before the study exists.
        prepared = prepare(settings, preflight=executor.start)
        folder = settings.results_dir
        progress.started(settings)
        try:
            progress.say("Loading parents and scoring each alone …")
            study, runner = executor.run(prepared, timeout=timeout, on_trial=progress.trial_finished, say=progress.say)
            holdout = score_holdout(study, runner)
        except KeyboardInterrupt:
            progress.say("Interrupted: the running trial is marked failed; exporting what exists.")
            export_after_interrupt(settings, folder, time.perf_counter() - start, progress.say)
            raise
        finally:
            progress.stopped()
    summary = export_all(study, folder, time.perf_counter() - start)
    return SearchRun(study, settings, summary, holdout, folder)


def export_after_interrupt(settings: SearchSettings, folder: Path, wall_s: float, say: Callable[[str], None]) -> None:
    """Export what an interrupted study holds (nothing, if it has nothing yet)."""
    from evomerge.search.export import export_all

    try:
        export_all(load_existing_study(settings.study, settings.storage_url()), folder, wall_s)
    except Exception as error:  # nothing to export yet
        say(f"Nothing exported: {error}")

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

import datetime
import math
import multiprocessing
import os
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from evomerge.devices import resolve_device, resolve_dtype
from evomerge.errors import EvomergeError, deferred_interrupts
from evomerge.evaluate.benchmark import Benchmark, fraction_count, load_benchmark
from evomerge.evaluate.harness import find_task, is_lm_eval_spec
from evomerge.evaluate.scorer import ScoreResult
from evomerge.merge.parents import ParentInfo, check_finite, check_parents, fingerprint, inspect_parent
from evomerge.search.locks import study_lock
from evomerge.search.objective import CLAIM_ATTR, TrialRunner, ensure_parent_scores
from evomerge.search.study import (
    HEARTBEAT_S,
    TAKEN,
    WORKER_ATTR,
    SearchSettings,
    best_trial,
    create_or_load_study,
    finished_count,
    load_existing_study,
    load_settings,
    open_storage,
    process_is_gone,
    stored_parent_scores,
    trial_attr,
)
from evomerge.search.warm_start import WarmStart, enqueue_warm_start, load_warm_start
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
    warm_start: Optional[WarmStart] = None  # a finished study's best recipes, when --warm-start
    notes: list[str] = field(default_factory=list)  # warnings for the user: searched values that cannot change the merge


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
        check_parents(infos, vocabularies_may_differ=settings.tokenizer is not None)
        for info in infos:
            check_finite(info)
    space.check_parents(settings.parents, settings.base)
    for benchmark in settings.benchmarks:
        if is_lm_eval_spec(benchmark):
            find_task(benchmark, settings.tasks_dir)  # an unknown task is reported now
        else:
            check_benchmark_size(load_benchmark(benchmark), settings)
    grid = None
    if settings.sampler == "grid":
        grid = space.grid(infos[0].num_layers, settings.parents, settings.base)
        if grid is None:
            raise EvomergeError(f"--sampler grid needs a step on every searched value of space {space.name}")
        points = math.prod(len(values) for values in grid.values())
        if points > settings.grid_limit:
            raise EvomergeError(
                f"--sampler grid on space {space.name} has {points:.3g} points ({len(grid)} values, "
                f"{'×'.join(str(len(v)) for v in grid.values())}), more than --grid-limit {settings.grid_limit}; "
                "search fewer values (e.g. --space slerp_global) or raise --grid-limit"
            )
    warm = load_warm_start(settings, space, infos[0].num_layers) if settings.warm_start else None
    notes = space.inert_parameters(list(settings.parents), settings.base)
    return Prepared(settings, space, list(infos), grid=grid, warm_start=warm, notes=notes)


def check_benchmark_size(benchmark: Benchmark, settings: SearchSettings) -> None:
    """Refuse a benchmark too small for the held-out split and the fractions asked: each fraction
    must score more items than the one before, and --holdout must hold at least one item out."""
    search, held = benchmark.split_holdout(settings.holdout)
    needed = minimum_search_items(settings.fidelities)
    if len(search) >= needed and (not settings.holdout or len(held) >= 1):
        return
    least = math.ceil(needed / (1 - settings.holdout)) + (1 if settings.holdout else 0)
    fractions = ",".join(f"{f:g}" for f in settings.fidelities)
    raise EvomergeError(
        f"benchmark {benchmark.source or benchmark.name} has {len(benchmark)} items, too few for --fidelities {fractions}"
        f" and --holdout {settings.holdout:g}: a search needs at least {least} ({needed} to search on, growing at each fraction"
        + (", and at least one held out)" if settings.holdout else ")")
    )


def minimum_search_items(fidelities: Sequence[float]) -> int:
    """The fewest search items for which every fraction scores more items than the one before
    (and at least two: one item cannot tell recipes apart)."""
    n = 2
    while any(fraction_count(a, n) >= fraction_count(b, n) for a, b in zip(fidelities, fidelities[1:])):
        n += 1
    return n


def prepare(settings: SearchSettings, preflight: Optional[Callable[[], None]] = None) -> Prepared:
    """All checks that need no weights (`check_search`), then the storage. `preflight` runs after
    the inputs are checked and before the storage is opened (the Ray backend reaches its cluster
    there), so it too fails before a study file exists."""
    checked = check_search(settings)
    if preflight is not None:
        preflight()
    return replace(checked, storage=open_storage(settings.storage_url()))


@contextmanager
def nothing_left_on_bad_input(settings: SearchSettings) -> Iterator[None]:
    """Bad input found only once the storage is open (weights holding NaN, say) leaves nothing
    behind: a results folder this run created for a default SQLite study with no trial yet is
    removed when an EvomergeError ends the run. A study with trials is kept, whatever happened."""
    folder = settings.results_dir
    created = not folder.exists() and settings.storage is None
    try:
        yield
    except EvomergeError:
        if created and folder.exists() and not _has_trials(settings):
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _has_trials(settings: SearchSettings) -> bool:
    try:
        study = optuna.load_study(study_name=settings.study, storage=settings.storage_url())
    except Exception:  # no study (or no readable database): nothing worth keeping
        return False
    return bool(study.get_trials(deepcopy=False))


# ----- the study: opened once, then trials until it has its total ------------------------------


def open_study(prepared: Prepared, compute_parent_scores: Callable[[], dict]) -> tuple[optuna.Study, dict]:
    """Create or resume the study: fail the trials of a killed process, score the parents once
    (`compute_parent_scores`, only if the study has no scores yet), queue the paper's recipe once.
    The study and its parents' scores. Every process that runs trials opens the study this way;
    a process that starts others opens it first, so they find it ready."""
    fingerprints = [fingerprint(info) for info in prepared.infos]
    study = create_or_load_study(prepared.settings, prepared.storage, prepared.grid, fingerprints)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
        optuna.storages.fail_stale_trials(study)  # a trial whose process was killed has stopped beating
    fail_orphaned_trials(study)  # on this machine, no need to wait for its heartbeat to go stale
    parent_scores = ensure_parent_scores(study, compute_parent_scores)
    with study_lock(prepared.settings.storage_url(), study.study_name):  # two processes opening it queue it once
        enqueue_baseline(study, prepared.space, prepared.infos[0].num_layers, prepared.settings.parents, prepared.settings.base)
        if prepared.warm_start is not None:
            enqueue_warm_start(study, prepared.warm_start)
    return study, parent_scores


def fail_orphaned_trials(study: optuna.Study) -> int:
    """Fail the running trials whose process has ended (a `kill -9`, a crash), so that they
    neither hold a place in --trials nor block their recipe; how many. A trial names its process
    within milliseconds of starting ("worker" in this process, "claimed_by" on Ray's driver): one
    whose process on this machine is gone is failed at once, and one that never named its process
    (killed in those milliseconds, so it has no heartbeat either) once it is older than the
    heartbeat's grace period."""
    unnamed_before = datetime.datetime.now() - datetime.timedelta(seconds=2 * HEARTBEAT_S)

    def orphaned(trial: optuna.trial.FrozenTrial) -> bool:
        owner = trial.user_attrs.get(WORKER_ATTR) or trial.user_attrs.get(CLAIM_ATTR)
        if owner is None:
            return trial.datetime_start is not None and trial.datetime_start < unnamed_before
        return process_is_gone(owner)

    orphans = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if orphaned(t)]
    for trial in orphans:
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError):  # another process failed it first
            pass
    return len(orphans)


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
    if settings.population > 1:  # before the study opens: K resident copies must fit
        from evomerge.search.population import check_population_memory

        check_population_memory(settings.population, runner.merger.model, runner.merger.device)
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
            if settings.population > 1:
                from evomerge.search.population import PopulationRunner

                with deferred_interrupts():
                    PopulationRunner(runner, settings.population).optimise(study, scores, budget, timeout=timeout, on_trial=on_trial)
            else:
                with deferred_interrupts():  # Ctrl-C and SIGTERM stop a trial between steps, never mid-commit
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


def enqueue_baseline(study: optuna.Study, space: SearchSpace, num_layers: int, parents: Sequence[str], base: Optional[str]) -> None:
    """The paper's hand-made recipe as a trial for each (base, child) pair the space can express
    it with (`SearchSpace.baseline_trials`), once per study (a trial with the same values,
    whatever its state, is not queued again); each names its child as `baseline_child`."""
    for params, child in space.baseline_trials(num_layers, parents, base):
        study.enqueue_trial(params, user_attrs={"baseline": True, "baseline_child": child}, skip_if_exists=True)


# ----- the held-out items ----------------------------------------------------------------------


@dataclass
class HeldOut:
    """The best trial's recipe scored on the held-out items, and what is stored on the study."""

    trial: optuna.trial.FrozenTrial
    result: ScoreResult  # per item, in the held-out items' order
    scores: dict  # the study's HOLDOUT_ATTR (see `holdout_scores`)


def holdout_result(study: optuna.Study, runner) -> Optional[HeldOut]:
    """Score the best recipe on the held-out items the search never saw, measure it against the
    parents on the same items (their per-item results, stored with the parents' scores once per
    study, so nothing is scored twice), and store the scores on the study; None without held-out
    items. `runner` is anything with `settings` and `holdout_score(recipe_yaml)` (the Ray backend
    scores on a worker)."""
    if not runner.settings.holdout or runner.settings.multi_objective:
        return None
    best = best_trial(study)
    if best is None:
        return None
    result = runner.holdout_score(trial_attr(best, "recipe"))
    if result is None:
        return None
    scores = holdout_scores(best, result, stored_parent_scores(study) or {}, runner.settings.seed)
    study.set_user_attr(HOLDOUT_ATTR, scores)
    return HeldOut(best, result, scores)


def holdout_scores(best: optuna.trial.FrozenTrial, result: ScoreResult, parent_scores: dict, seed: int) -> dict:
    """What the study stores about its held-out items: the best trial, its accuracy on the search
    and on the held-out items (with a 95% interval), each parent's held-out accuracy, the gain over
    the best parent with its paired 95% bootstrap interval, and a one-line verdict that calls the
    gain a gain only when the whole interval lies above zero. A study whose parents' held-out
    per-item results were not stored (made by an older evomerge) gets the gain without interval."""
    from evomerge.analysis.metrics import DEFAULT_RESAMPLES, Bootstrap, accuracy_interval, gain_over_parents, gain_verdict

    entries = {parent: per_benchmark[0] for parent, per_benchmark in parent_scores.items() if per_benchmark}
    parents = {parent: entry.get("holdout") for parent, entry in entries.items()}
    scores = {
        "trial": best.number,
        "search_accuracy": best.user_attrs.get("accuracy"),
        "holdout_accuracy": result.accuracy,
        "holdout_n": result.n,
        "holdout_interval": None,
        "parents": parents,
        "best_parent": max(parents.values()) if parents and None not in parents.values() else None,
        "gain": None,
        "gain_interval": None,
        "verdict": None,
    }
    if scores["best_parent"] is None:
        scores["verdict"] = "No held-out scores of the parents in this study: no gain can be measured on the held-out items."
        return scores
    scores["gain"] = result.accuracy - scores["best_parent"]
    vectors = [entry.get("holdout_correct") for entry in entries.values()]
    if any(vector is None or len(vector) != result.n for vector in vectors):
        scores["verdict"] = (
            f"Gain {scores['gain']:+.3f} on {result.n} held-out items, without an interval: this study did not keep the "
            "parents' per-item held-out results (rerun the search in a new study for one)."
        )
        return scores
    bootstrap = Bootstrap(result.n, DEFAULT_RESAMPLES, seed=seed)
    gain = gain_over_parents(result.correct, [[c == "1" for c in vector] for vector in vectors], bootstrap)
    accuracy = accuracy_interval(result.correct, bootstrap)
    scores["holdout_interval"] = [accuracy.low, accuracy.high]
    scores["gain_interval"] = [gain.low, gain.high]
    scores["verdict"] = gain_verdict(gain, result.n)
    return scores


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
    settings.warm_start = None  # its creator queued the warm start; the source may not be reachable from here
    return settings


# ----- a whole search: what `evomerge search`, `evomerge worker` and `evomerge.search()` run ----


class SearchProgress:
    """What a running search tells whoever started it; every method does nothing here. The
    command line subclasses it to draw a progress bar; a notebook may, or may ignore it."""

    def started(self, settings: SearchSettings) -> None:
        """The inputs are checked and the storage is open; trials are about to start."""

    def say(self, message: str) -> None:
        """A line for the user (the parents are being scored, Ray's resources, an interruption)."""

    def trial_finished(self, study: optuna.Study, trial: Optional[optuna.trial.FrozenTrial]) -> None:
        """A trial of the study finished (complete, pruned or failed), in any process; `trial` is
        None when a resumed study shows the trials it has already."""

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


def run_search(settings: SearchSettings, *, timeout: Optional[float] = None, jobs: int = 1, progress: Optional[SearchProgress] = None) -> SearchRun:
    """Check everything, open (create or resume) the study, run trials with the executor that
    `settings.executor` names until the study has its total, score the best recipe on the held-out
    items and write the results folder. Ctrl-C (or SIGTERM) marks the running trials failed,
    exports what exists with the reason and re-raises the KeyboardInterrupt. Bad input found only
    once the storage is open leaves no results folder behind (`nothing_left_on_bad_input`)."""
    with nothing_left_on_bad_input(settings):
        return _run_search(settings, timeout=timeout, jobs=jobs, progress=progress or SearchProgress())


def _run_search(settings: SearchSettings, *, timeout: Optional[float], jobs: int, progress: SearchProgress) -> SearchRun:
    import time

    from evomerge.errors import interrupt_reason
    from evomerge.search.executors import executor_class
    from evomerge.search.export import export_all

    start = time.perf_counter()
    executor_class(settings.executor).check_settings(settings, jobs)
    executor = executor_class(settings.executor)(settings, jobs)
    with executor:
        # Every bad input (and, on Ray, an unreachable cluster or a GPU it lacks) is reported here,
        # before the study exists.
        prepared = prepare(settings, preflight=executor.start)
        folder = settings.results_dir
        progress.started(settings)
        for note in prepared.notes:
            progress.say(f"warning: {note}")
        complete = say_if_complete(prepared, progress)
        try:
            progress.say("Loading parents …" if complete else "Loading parents and scoring each alone …")
            study, runner = executor.run(prepared, timeout=timeout, on_trial=progress.trial_finished, say=progress.say)
            holdout = score_holdout(study, runner)
            if settings.anchors:
                from evomerge.search.anchoring import check_best_estimate

                check_best_estimate(study, runner)
        except KeyboardInterrupt as interrupt:
            progress.stopped()
            progress.say("Interrupted: the running trial is marked failed; exporting what exists.")
            export_after_interrupt(settings, folder, time.perf_counter() - start, progress.say, interrupt_reason(interrupt))
            raise
        finally:
            progress.stopped()
    summary = export_all(study, folder, time.perf_counter() - start)
    return SearchRun(study, settings, summary, holdout, folder)


def say_if_complete(prepared: Prepared, progress: SearchProgress) -> bool:
    """A resumed study shows the trials it has; one that has its total already says so (rather
    than a bar at 0 of N that never moves). Whether it has its total."""
    try:
        study = optuna.load_study(study_name=prepared.settings.study, storage=prepared.storage)
    except KeyError:  # a new study
        return False
    done = finished_count(study)
    if done:
        progress.trial_finished(study, None)
    if done >= prepared.settings.trials:
        progress.say(f"study {prepared.settings.study} is complete ({done} trials); raise --trials to continue")
        return True
    return False


def export_after_interrupt(settings: SearchSettings, folder: Path, wall_s: float, say: Callable[[str], None], reason: Optional[str] = None) -> None:
    """Export what an interrupted study holds, with why it stopped (nothing, if it has nothing yet)."""
    from evomerge.search.export import export_all

    try:
        export_all(load_existing_study(settings.study, settings.storage_url()), folder, wall_s, stopped_because=reason)
    except Exception as error:  # nothing to export yet
        say(f"Nothing exported: {error}")

"""`--backend ray`: a search's trials on a Ray cluster, one GPU each, stopped early by ASHA, in the
same Optuna study as the Optuna backend.

The driver (this process) owns the study. `StudySearch`, a Tune `Searcher` written on Optuna's
public ask-and-tell API (as Tune's own `OptunaSearch` works, without reaching into it), asks it for
every trial, with the sampler `make_sampler` builds and the search space run define-by-run on the
`optuna.Trial`, so a trial gets the same parameters as under the Optuna backend; the driver writes everything a trial records
(recipe, values, attributes, reports, its final state), so workers never open the storage. A
worker runs `TrialRunner.evaluate`, the Optuna backend's own per-trial code, with a `TuneReporter`
in place of the `optuna.Trial`: each benchmark fraction becomes one Tune result, and ASHA's rungs
are those fractions.

Each worker process keeps one `TrialRunner` (parents resident on its GPU) between the trials Tune
hands it: Tune reuses its actors, and the runner is cached per process, keyed by the settings. The
parents' own scores and the held-out score run once per study as Ray tasks with a trial's
resources, so the driver never loads weights and needs no GPU.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Mapping, Optional

import optuna
from optuna.trial import TrialState

from evomerge.extras import require

require("ray", "--backend ray")  # one line naming the extra, not an ImportError, without Ray

import ray
from ray import tune
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from evomerge.errors import EvomergeError, deferred_interrupts, first_line, interrupt_reason, raise_if_interrupted
from evomerge.evaluate.scorer import ScoreResult
from evomerge.search.objective import (
    ParentScores,
    TrialRunner,
    Values,
    claim_recipe,
    copied_attrs,
    failure_reason,
    free_accelerator_memory,
    recipe_dtype_name,
    with_tokenizer,
)
from evomerge.search.pruners import effective_pruner
from evomerge.search.run import Prepared, check_stopped, open_study, record_failure_streak, trial_budget
from evomerge.search.study import (
    HEARTBEAT_S,
    SearchSettings,
    fidelity_rung,
    finished_count,
    last_fidelity_rung,
    make_sampler,
    set_trial_attr,
    study_is_full,
)

logger = logging.getLogger("evomerge.ray")
OnTrial = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]

# What a Tune result carries (flat keys: Tune flattens nested dicts into "a/b" columns).
VALUE = "value"  # the first objective; a second benchmark adds "value_1"
STEP = "fidelity_step"  # the step the Optuna backend reports a fraction at: the items scored so far
RUNG = "fidelity_rung"  # ASHA's resource: fraction k at study.fidelity_rung(k), so its rungs fall on the fractions
STATE = "evomerge_state"  # "running" after a partial fraction, then "complete" or "fail"
ATTRS = "evomerge_attrs"  # the trial attributes recorded since the last result, as JSON
PID, LOADS = "worker_pid", "worker_parent_loads"
RECIPE = "recipe"  # the one key of a Ray trial's config


# ----- what a trial asks of the cluster ----------------------------------------------------------


@dataclass(frozen=True)
class TrialResources:
    """The Ray resources one trial reserves, and how many trials run at once."""

    cpus: float
    gpus: float
    concurrent: int

    def as_ray(self) -> dict[str, float]:
        return {"cpu": self.cpus, "gpu": self.gpus}

    @property
    def device(self) -> str:
        """Where a trial merges and scores: the GPU Ray assigned it, else the CPU."""
        return "cuda" if self.gpus > 0 else "cpu"


def plan_resources(settings: SearchSettings, cluster: Mapping[str, float]) -> TrialResources:
    """Per-trial CPUs and GPUs from the flags and what the cluster has (Ray's `cluster_resources()`),
    and the number of concurrent trials: --concurrent, else as many as the cluster holds."""
    cpus_total, gpus_total = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    gpus = settings.gpus_per_trial
    if gpus is None:  # a GPU each where there are GPUs, unless the trials were asked to run on CPU
        gpus = 1.0 if gpus_total >= 1 and settings.device != "cpu" else 0.0
    if gpus > 1:
        raise EvomergeError(f"--gpus-per-trial {gpus:g}: a trial merges and scores on one GPU, so more would sit idle")
    if gpus > 0 and settings.device == "cpu":
        raise EvomergeError(f"--device cpu with --gpus-per-trial {gpus:g}: a trial would reserve GPUs it does not use")
    if gpus == 0 and settings.device == "cuda":
        raise EvomergeError("--device cuda needs --gpus-per-trial above 0: Ray lets a trial see only the GPUs it reserved")
    if gpus > gpus_total:
        raise EvomergeError(f"--gpus-per-trial {gpus:g}, but the Ray cluster has {gpus_total:g} GPU(s)")
    if settings.cpus_per_trial > cpus_total:
        raise EvomergeError(f"--cpus-per-trial {settings.cpus_per_trial:g}, but the Ray cluster has {cpus_total:g} CPU(s)")
    slots = _fits(cpus_total, settings.cpus_per_trial)
    if gpus > 0:
        slots = min(slots, _fits(gpus_total, gpus))
    concurrent = min(settings.concurrent or slots, settings.trials)
    return TrialResources(cpus=settings.cpus_per_trial, gpus=gpus, concurrent=max(1, concurrent))


def _fits(total: float, per_trial: float) -> int:
    return int(math.floor(total / per_trial + 1e-9))  # 1 // 0.1 is 9 in floating point


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """Refuse a malformed or unreachable --ray-address now, rather than after Ray's own retries."""
    if address == "auto":
        return  # a cluster this machine is a node of (`ray start`); ray.init finds it
    if address.startswith("ray://"):
        # Under Ray Client, Tune runs its whole experiment on the head node, away from this
        # process: the searcher that writes the study could not live here.
        raise EvomergeError(
            f"--ray-address {address}: Ray Client runs Ray Tune on the head node, away from the study; "
            "run evomerge on a node of the cluster with --ray-address auto (or submit it with `ray job submit`)"
        )
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise EvomergeError(f"--ray-address expects auto or HOST:PORT (the head's GCS address), got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise EvomergeError(f"cannot reach the Ray cluster at {address}: {error.strerror or error}") from None


def local_resources() -> dict[str, float]:
    """What a local Ray started with no address gets: this machine's CPUs and GPUs."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def make_scheduler(settings: SearchSettings) -> TrialScheduler:
    """The Ray Tune scheduler of --pruner (the pruners' table): ASHA with a rung at each partial
    benchmark fraction for halving and hyperband (the best third goes on, as on the Optuna
    backend), the median stopping rule for median, none for one fraction or two benchmarks."""
    return effective_pruner(settings).tune(settings, time_attr=RUNG, metric=VALUE)


def metric_names(settings: SearchSettings) -> list[str]:
    return [VALUE] + [f"{VALUE}_{index}" for index in range(1, len(settings.benchmarks))]


# ----- the cluster connection ------------------------------------------------------------------


class RaySession:
    """Starts a local Ray or connects to a cluster, checks the trials fit, and shuts Ray down.

    `start` is the search's preflight: it runs after the inputs are checked and before the study
    is created. A Ray already initialised in this process (a notebook, a test) is used as it is
    (whatever --ray-address says) and left running.
    """

    def __init__(self, settings: SearchSettings):
        self.settings = settings
        self.resources: Optional[TrialResources] = None
        self._started = False
        self._temp_dir: Optional[str] = None

    def start(self) -> None:
        if not ray.is_initialized():
            self._init()
        try:
            self.resources = plan_resources(self.settings, ray.cluster_resources())
        except EvomergeError:
            self.close()
            raise

    def _init(self) -> None:
        address = self.settings.ray_address
        if address:
            check_address(address)
        else:
            plan_resources(self.settings, local_resources())  # a GPU this machine lacks fails before Ray starts
            # Ray's Unix sockets live in its temp dir, and their paths must stay short: system temp.
            self._temp_dir = tempfile.mkdtemp(prefix="evomerge-ray-")
        try:
            ray.init(
                address=address,
                _temp_dir=self._temp_dir,
                include_dashboard=False,
                log_to_driver=False,  # evomerge reports what the workers did; Ray's logs stay in its folder
                logging_level=logging.ERROR,  # its start-up notes (e.g. on token authentication) are noise here
                # Workers that `ray start` launched on other machines do not inherit this process's environment.
                runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}} if address else None,
            )
        except (ConnectionError, RuntimeError, ValueError) as error:
            self.close()
            raise EvomergeError(f"cannot start or reach Ray ({address or 'local'}): {first_line(error)}") from None
        self._started = True
        logging.getLogger("ray").setLevel(logging.WARNING)  # Tune's own warnings, once Ray is up

    def close(self) -> None:
        if self._started:
            ray.shutdown()
            self._started = False
        if self._temp_dir:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def __enter__(self) -> "RaySession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----- the worker side -------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerJob:
    """What a worker needs to build the study's TrialRunner (sent once through Ray's object store)."""

    settings_json: str  # with the device the trial's resources give it
    cwd: str  # relative parent and benchmark paths mean what they meant on the driver
    threads: int
    parent_scores: Optional[dict] = None  # what gain and synergy are measured against

    @property
    def key(self) -> str:
        """Jobs with the same key can share resident parents (the study's name and size do not matter)."""
        data = json.loads(self.settings_json)
        for name in ("trials", "study", "storage", "concurrent"):
            data.pop(name, None)
        return json.dumps(data, sort_keys=True)


_resident: dict = {}  # this process's one runner: {"key": …, "runner": TrialRunner}
_parent_loads = 0  # how many times this process loaded parents


def resident_runner(job: WorkerJob) -> TrialRunner:
    """The runner for this job, its parents loaded in this process once and kept."""
    global _parent_loads
    if os.path.isdir(job.cwd) and os.getcwd() != job.cwd:
        os.chdir(job.cwd)  # Tune starts each trial in a folder of its own
    if _resident.get("key") != job.key:
        import torch

        from evomerge.merge.parents import inspect_parent
        from evomerge.space import load_space

        _resident.clear()  # one pair of parents at a time: two would not fit on one GPU
        free_accelerator_memory()
        torch.set_num_threads(job.threads)
        settings = SearchSettings.from_json(job.settings_json)
        infos = [inspect_parent(parent) for parent in settings.parents]
        _resident.update(key=job.key, runner=TrialRunner.load(settings, infos, load_space(settings.space)))
        _parent_loads += 1
        logger.info("worker pid %d loaded the parents (load %d in this process)", os.getpid(), _parent_loads)
    return _resident["runner"]


class TuneReporter:
    """The `TrialRecord` a worker hands to `TrialRunner.evaluate`: attributes are buffered and sent
    with the next Tune result, and the driver writes them into the Optuna trial."""

    def __init__(self, metrics: list[str]):
        self.metrics = metrics
        self.attrs: dict = {}
        self.reports = 0

    def set_user_attr(self, key: str, value) -> None:
        self.attrs[key] = value

    def report(self, value: float, step: int) -> None:
        """A partial fraction's value at `step` (items scored); the k-th report is rung k."""
        self._send({STATE: "running", self.metrics[0]: value, STEP: step, RUNG: fidelity_rung(self.reports)})
        self.reports += 1

    def should_prune(self) -> bool:
        return False  # Ray's scheduler decides: a trial it stops never returns from its report

    def complete(self, values: Values, last_rung: int) -> None:
        values = values if isinstance(values, tuple) else (values,)
        self._send({STATE: "complete", **dict(zip(self.metrics, values)), RUNG: last_rung})

    def fail(self, reason: str) -> None:
        self.attrs["fail_reason"] = reason
        # Tune wants every metric in every result: NaN, which no scheduler ranks (and no rung, so ASHA skips it).
        self._send({STATE: "fail", **{metric: float("nan") for metric in self.metrics}})

    def _send(self, metrics: dict) -> None:
        metrics.update({ATTRS: json.dumps(self.attrs), PID: os.getpid(), LOADS: _parent_loads})
        self.attrs = {}
        tune.report(metrics)


def run_trial(config: dict, job: WorkerJob) -> None:
    """A Ray Tune trial: the recipe the driver suggested, evaluated by the resident runner. A trial
    that raises is reported failed with its reason and the actor (with its parents) lives on; only
    a process that dies is a Ray error, which the driver records as a failed trial too."""
    from evomerge.recipe import Recipe

    settings = SearchSettings.from_json(job.settings_json)
    reporter = TuneReporter(metric_names(settings))
    try:
        values = resident_runner(job).evaluate(Recipe.from_yaml(config[RECIPE]), reporter, ParentScores(job.parent_scores))
    except Exception as error:
        free_accelerator_memory()
        reporter.fail(failure_reason(error))
        return
    reporter.complete(values, last_rung=1 if settings.multi_objective else last_fidelity_rung(settings))


def _score_parents_task(job: WorkerJob) -> tuple[dict, int, int]:
    return resident_runner(job).compute_parent_scores(), os.getpid(), _parent_loads


def _holdout_task(job: WorkerJob, recipe_yaml: str) -> tuple[Optional[ScoreResult], int, int]:
    return resident_runner(job).holdout_score(recipe_yaml), os.getpid(), _parent_loads


# ----- the driver side -------------------------------------------------------------------------


@dataclass
class WorkerLoads:
    """Parent loads per worker process, as the workers report them."""

    by_pid: dict[int, int] = field(default_factory=dict)
    log: Callable[[str], None] = logger.info

    def note(self, pid: int, loads: int) -> None:
        if loads > self.by_pid.get(pid, 0):
            self.log(f"Ray worker pid {pid} loaded the parents (load {loads} in that process)")
            self.by_pid[pid] = loads

    @property
    def total(self) -> int:
        return sum(self.by_pid.values())


class RemoteRunner:
    """What the driver holds in place of a TrialRunner: the settings, and Ray tasks for the work
    done once per study (parents' scores, the held-out score) on a worker with a trial's resources.
    `run.score_holdout` takes it as it takes a TrialRunner."""

    def __init__(self, settings: SearchSettings, resources: TrialResources, loads: WorkerLoads):
        worker_settings = replace(settings, device=resources.device)
        self.settings = settings
        self.resources = resources
        self.loads = loads
        self.job = WorkerJob(worker_settings.to_json(), os.getcwd(), threads=max(1, int(resources.cpus)))

    def with_parent_scores(self, parent_scores: dict) -> WorkerJob:
        return WorkerJob(self.job.settings_json, self.job.cwd, self.job.threads, parent_scores)

    def compute_parent_scores(self) -> dict:
        return self._remote(_score_parents_task, self.job)

    def holdout_score(self, recipe_yaml: str) -> Optional[ScoreResult]:
        return self._remote(_holdout_task, self.job, recipe_yaml)

    def _remote(self, function: Callable, *args):
        # max_calls=1: the task's process exits afterwards, so its resident parents do not keep the
        # GPU that a trial gets next.
        task = ray.remote(num_cpus=self.resources.cpus, num_gpus=self.resources.gpus, max_calls=1)(function)
        result, pid, loads = ray.get(task.remote(*args))
        self.loads.note(pid, loads)
        return result


class StudySearch(Searcher):
    """A Tune searcher on the evomerge study, recording what the Optuna backend records.

    It asks the study as Tune's stock `OptunaSearch` does (`study.ask()`, then the space's
    define-by-run suggestions on that trial); where it departs from that searcher, each time so the
    study matches an Optuna-backend one:
    a duplicate of a finished recipe is answered here, without a Ray trial; partial fractions are
    reported at the Optuna backend's steps; a trial the scheduler stops is PRUNED (not COMPLETE at
    its partial value); a failed trial keeps its reason; the study's total, --timeout and a run of
    failures stop new trials while running ones finish.
    """

    def __init__(
        self,
        prepared: Prepared,
        *,
        num_layers: int,
        dtype_name: str,
        timeout: Optional[float],
        on_trial: Optional[OnTrial],
        loads: WorkerLoads,
        error_dir: str,
        sampler: Optional[optuna.samplers.BaseSampler] = None,
    ):
        """`sampler`: the opened study's (default: a new one with --seed)."""
        settings = prepared.settings
        space = prepared.space

        def define_by_run(trial: optuna.Trial) -> dict:
            recipe = with_tokenizer(space.suggest(trial, settings.parents, settings.base, num_layers, dtype_name), settings.tokenizer)
            return {RECIPE: recipe.to_yaml()}

        metrics = metric_names(settings)
        super().__init__(
            metric=metrics if settings.multi_objective else metrics[0],
            mode=["max"] * len(metrics) if settings.multi_objective else "max",
        )
        self.define_by_run = define_by_run
        self.settings = settings
        self.storage = prepared.storage
        self.study = optuna.create_study(
            storage=prepared.storage,
            sampler=sampler or make_sampler(settings, prepared.grid),
            pruner=optuna.pruners.NopPruner(),  # Tune's scheduler prunes
            study_name=settings.study,
            directions=["maximize"] * len(metrics),
            load_if_exists=True,
        )
        self._study_id = self.storage.get_study_id_from_name(settings.study)
        self._trials: dict[str, optuna.Trial] = {}  # Tune's trial id → the Optuna trial in flight
        self._storage_ids: dict[int, int] = {}  # trial number → the storage's trial id (heartbeats)
        self.deadline = time.monotonic() + timeout if timeout else None
        self.max_asks = trial_budget(self.study, settings)  # as the Optuna backend's n_trials
        self.asked = 0
        self.started = 0  # trials handed to Ray (a duplicate is answered without one)
        self.stopped = False
        self.on_trial = on_trial
        self.loads = loads
        self.error_dir = error_dir
        self.grid_size = math.prod(len(values) for values in prepared.grid.values()) if prepared.grid else None
        self._taken: dict[str, int] = {}  # trial id → the last Tune iteration whose result is recorded
        self._last_beat = 0.0

    # -- asking

    def suggest(self, trial_id: str) -> Optional[dict | str]:
        while True:
            verdict = self._may_ask()
            if verdict is not True:
                return verdict
            self.asked += 1
            try:
                with warnings.catch_warnings():
                    # Optuna's note that heartbeats are meant for Study.optimize: the driver beats itself.
                    warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
                    if trial_id not in self._trials:  # Tune may ask again under the same id
                        self._trials[trial_id] = self.study.ask()
                    config = self.define_by_run(self._trials[trial_id])
            except Exception as error:  # the space could not turn these values into a recipe
                if trial_id not in self._trials:
                    raise  # the storage itself failed: nothing to record
                self._finish(trial_id, TrialState.FAIL, attrs={"fail_reason": failure_reason(error)})
                continue
            trial = self._trials[trial_id]
            self._beat(trial)
            original = claim_recipe(trial, config[RECIPE], self.settings.storage_url(), wait=False)  # the driver must not block
            if original is None:
                self.started += 1
                return {RECIPE: config[RECIPE]}
            # An identical recipe is not evaluated twice: the earlier outcome, and ask again.
            pruned = original.state == TrialState.PRUNED
            self._finish(trial_id, TrialState.PRUNED if pruned else TrialState.COMPLETE, None if pruned else original.values, copied_attrs(original))

    def _may_ask(self) -> bool | str | None:
        """True, or what Tune gets instead of a trial: FINISHED (no more) or None (not now)."""
        if self.stopped or self.asked >= self.max_asks:
            return Searcher.FINISHED
        if self.deadline is not None and time.monotonic() > self.deadline:
            return Searcher.FINISHED  # --timeout: stop starting trials; running ones finish
        if self.grid_size is not None and self._grid_points_started() >= self.grid_size:
            # Optuna's grid sampler would hand out a point still running again; wait for it instead.
            return None if self._trials else Searcher.FINISHED
        if finished_count(self.study) >= self.settings.trials:
            return Searcher.FINISHED
        if study_is_full(self.study, self.settings.trials):
            # Wait for ours: one may fail and leave room for another.
            return None if self._trials else Searcher.FINISHED
        return True

    def _grid_points_started(self) -> int:
        """Distinct grid points that trials have finished or are running (the grid sampler's marks)."""
        trials = self.study.get_trials(deepcopy=False)
        return len({t.system_attrs["grid_id"] for t in trials if "grid_id" in t.system_attrs and t.state != TrialState.WAITING})

    # -- results

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._trials:
            self._take(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if trial_id not in self._trials:
            return  # already finished here (a duplicate, a refused recipe, an abandoned trial)
        if result:
            self._take(trial_id, result)  # the result a scheduler stops a trial at reaches only this hook
        state = (result or {}).get(STATE)
        if error:
            reason = f"the Ray trial errored outside evomerge's code (a worker process died, a node was lost); Ray's error file is under {self.error_dir}"
            self._finish(trial_id, TrialState.FAIL, attrs={"fail_reason": reason})
        elif state == "complete":
            self._finish(trial_id, TrialState.COMPLETE, [result[name] for name in metric_names(self.settings)])
        elif state == "fail":
            self._finish(trial_id, TrialState.FAIL)
        elif state == "running":  # stopped by the scheduler after a partial fraction
            self._finish(trial_id, TrialState.PRUNED)
        else:  # removed before it reported anything
            self._finish(trial_id, TrialState.FAIL, attrs={"fail_reason": "not run: the Ray run ended first"})

    def abandon(self, reason: str) -> int:
        """Mark every trial still in flight failed (Ctrl-C, or the run ended); how many."""
        in_flight = list(self._trials)
        for trial_id in in_flight:
            self._finish(trial_id, TrialState.FAIL, attrs={"fail_reason": reason})
        return len(in_flight)

    def _take(self, trial_id: str, result: dict) -> None:
        """Record a result's attributes, and a partial fraction's value as a report."""
        iteration = result.get("training_iteration", 0)
        if self._taken.get(trial_id) == iteration:
            return  # Tune hands the last result to on_trial_complete again
        self._taken[trial_id] = iteration
        trial = self._trials[trial_id]
        for key, value in json.loads(result.get(ATTRS, "{}")).items():
            set_trial_attr(trial, key, value)
        if result.get(STATE) == "running":
            trial.report(result[VALUE], int(result[STEP]))  # the Optuna backend's step, not Tune's iteration
        if PID in result:
            self.loads.note(int(result[PID]), int(result[LOADS]))
        self._beat(trial)

    def _finish(self, trial_id: str, state: TrialState, values: Optional[list] = None, attrs: Optional[dict] = None) -> None:
        trial = self._trials[trial_id]
        for key, value in (attrs or {}).items():
            set_trial_attr(trial, key, value)
        try:
            frozen = self.study.tell(trial, values, state=state)
        except RuntimeError:
            # The grid sampler calls study.stop() once its grid is done, which Optuna allows only
            # inside study.optimize; tell has stored the trial all the same, and _may_ask sees the
            # finished grid.
            if not isinstance(self.study.sampler, optuna.samplers.GridSampler):
                raise
            frozen = self.study.get_trials(deepcopy=False)[trial.number]
        finally:
            # A trial in this dict is one in flight; Tune may ask again under the same id.
            del self._trials[trial_id]
            self._taken.pop(trial_id, None)
        if record_failure_streak(self.study):
            self.stopped = True
        if self.on_trial is not None:
            self.on_trial(self.study, frozen)

    # -- liveness

    def beat(self) -> None:
        """Heartbeats for the trials in flight (throttled), so a killed driver's trials are failed
        when the study resumes, as the Optuna backend's are."""
        if time.monotonic() - self._last_beat >= HEARTBEAT_S / 2:
            self._last_beat = time.monotonic()
            for trial in self._trials.values():
                self._beat(trial)

    def _beat(self, trial: optuna.Trial) -> None:
        if hasattr(self.storage, "record_heartbeat") and self.storage.get_heartbeat_interval():
            self.storage.record_heartbeat(self._storage_id(trial))  # the id Optuna's own heartbeat thread uses

    def _storage_id(self, trial: optuna.Trial) -> int:
        """The storage's id of a trial, through the storage's public API (looked up once)."""
        if trial.number not in self._storage_ids:
            self._storage_ids[trial.number] = self.storage.get_trial_id_from_study_id_trial_number(self._study_id, trial.number)
        return self._storage_ids[trial.number]

    # The Optuna storage is the search's state, so Tune's checkpoints of the searcher are not needed:
    # Tune pickles its configuration for `Tuner.restore` (which evomerge does not use), and a live
    # study, storage and progress bar do not pickle.
    def save_to_dir(self, *args, **kwargs) -> None:
        pass

    def __getstate__(self) -> dict:
        return {"settings": self.settings}


class Heartbeat(tune.Callback):
    """Calls the searcher's heartbeat on every step of Tune's loop; the start of a step is where
    a Ctrl-C or SIGTERM noted during the last one is raised (see `errors.deferred_interrupts`)."""

    def __init__(self, searcher: StudySearch):
        self.searcher = searcher

    def on_step_begin(self, iteration, trials, **info) -> None:
        raise_if_interrupted()
        self.searcher.beat()


# Ray Tune's switches, set only while Tune runs:
TUNE_ENVIRONMENT = {
    # Tune turns Ctrl-C into a quiet stop; evomerge wants the KeyboardInterrupt, to mark the running
    # trials failed and export, as the Optuna backend does.
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
    # Tune's newer console output prints its experiment table even when told to be silent.
    "RAY_AIR_NEW_OUTPUT": "0",
}


@contextmanager
def _tune_environment() -> Iterator[None]:
    before = {name: os.environ.get(name) for name in TUNE_ENVIRONMENT}
    os.environ.update(TUNE_ENVIRONMENT)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def optimise_on_ray(
    prepared: Prepared,
    session: RaySession,
    *,
    timeout: Optional[float] = None,
    on_trial: Optional[OnTrial] = None,
    log: Callable[[str], None] = logger.info,
) -> tuple[optuna.Study, RemoteRunner]:
    """`run.optimise` on Ray: open the study as the Optuna backend does (the parents scored once,
    on a worker), and run trials on the cluster until the study has its total."""
    settings = prepared.settings
    loads = WorkerLoads(log=log)
    runner = RemoteRunner(settings, session.resources, loads)
    study, parent_scores = open_study(prepared, runner.compute_parent_scores)
    if trial_budget(study, settings):
        ray_dir = str((settings.results_dir / "ray").resolve())  # Tune's per-trial folders and error files
        searcher = StudySearch(
            prepared,
            num_layers=prepared.infos[0].num_layers,
            dtype_name=recipe_dtype_name(settings.dtype, prepared.infos),
            timeout=timeout,
            on_trial=on_trial,
            loads=loads,
            error_dir=ray_dir,
            sampler=study.sampler,  # a resumed study's own seed, not --seed again
        )
        resources = session.resources
        trainable = tune.with_resources(tune.with_parameters(run_trial, job=runner.with_parent_scores(parent_scores)), resources.as_ray())
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=make_scheduler(settings),
                num_samples=-1,  # the searcher says when the study has its trials
                max_concurrent_trials=resources.concurrent,
                reuse_actors=True,  # an actor (a process with resident parents) runs trial after trial
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_name,
            ),
            run_config=tune.RunConfig(
                name=f"{settings.study}-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=ray_dir,
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),  # a failed trial, not a failed run
                verbose=0,
                callbacks=[Heartbeat(searcher)],
            ),
        )
        log(f"Ray: {resources.concurrent} trial(s) at once, each with {resources.cpus:g} CPU(s) and {resources.gpus:g} GPU(s)")
        try:
            with _tune_environment(), deferred_interrupts():
                tuner.fit()
        except KeyboardInterrupt as interrupt:
            searcher.abandon(interrupt_reason(interrupt))
            raise
        searcher.abandon("not run: the Ray run ended first")  # normally none is left
        log(f"Ray: {searcher.started} trial(s) ran; parents loaded {loads.total} time(s) in {len(loads.by_pid)} worker process(es)")
    check_stopped(study, settings)
    return study, runner


def _trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"  # Tune's default names the folder after the config: a whole recipe

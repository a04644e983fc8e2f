"""A study: its settings (stored on it, so a worker needs no flags), storage, sampler and pruner.

Storage URLs: any Optuna RDB URL (`sqlite:///results/s/study.db`, `postgresql://…`), or
`journal:PATH` for Optuna's JournalFileBackend (many processes on one machine). RDB storages run a
heartbeat, so a trial whose process was killed is marked failed when the study resumes.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import socket
import warnings
from dataclasses import asdict, field, fields, replace
from pathlib import Path
from typing import Optional

import optuna
from optuna.trial import TrialState
from pydantic import ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

from evomerge.errors import EvomergeError, first_line
from evomerge.extras import require
from evomerge.search.locks import study_lock
from evomerge.search.pruners import PRUNERS, make_pruner, pruner_choice  # noqa: F401 (PRUNERS: re-exported)
from evomerge.search.samplers import SAMPLERS, multi_objective_samplers, sampler_choice  # noqa: F401 (SAMPLERS: re-exported)

# A trial reports each partial fraction at the number of items scored so far (the dashboard's
# "step"); a pruner that works in rungs (successive halving, Hyperband, Ray's ASHA) sees the k-th
# fraction at rung PRUNING_FACTOR**k (1, 3, …), so it judges every partial fraction, keeping the
# best third each time, whatever the fractions' sizes, and both backends prune alike.
PRUNING_FACTOR = 3
OBJECTIVES = ("accuracy", "gain")
RESULTS_ROOT = Path("results")  # one folder per study under it: database, best recipe, tables, plots
SETTINGS_ATTR = "evomerge_settings"
PARENT_SCORES_ATTR = "parent_scores"
FINGERPRINTS_ATTR = "parent_fingerprints"  # one per parent, in --parents order
# Long values kept in system attributes, not user attributes: Optuna stores both alike, but the
# dashboard prints user attributes inline (a 600-character '0110…' string pushes its page
# sideways) and system attributes not at all. On a trial: its recipe YAML (the dashboard shows it
# as the trial's note), its per-item results and its per-category accuracies (a dict as long as
# the benchmark has categories); on the study: the parents' scores (which hold their per-item results).
TRIAL_DATA_ATTRS = ("recipe", "correct", "per_category")  # and correct_b1, per_category_b1, … for a second benchmark
# A running trial beats every HEARTBEAT_S; one silent for twice that (a killed process) is failed.
HEARTBEAT_S = int(os.environ.get("EVOMERGE_HEARTBEAT_S", "30"))
WORKER_ATTR = "worker"  # a trial's process, as `process_name` gives it: a rerun fails the trials of one that has ended
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@pydantic_dataclass
class SearchSettings:
    """Everything a search needs, as plain data (stored on the study as JSON). A pydantic
    dataclass: values are checked and coerced to these types when it is made (`settings_from`
    turns a type problem into an EvomergeError naming the option); `check` does the rest."""

    parents: list[str]
    benchmarks: list[str]
    base: Optional[str] = None
    space: str = "slerp_gradient"
    sampler: str = "tpe"
    grid_limit: int = 100_000  # --sampler grid: the most points a grid may have (Optuna holds them all)
    pruner: str = "median"
    fidelities: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])
    holdout: float = 0.0
    objective: str = "accuracy"
    seed: int = 0
    device: str = "auto"
    dtype: Optional[str] = None
    protocol: str = "paper"
    backend: str = "builtin"
    batch_size: int = 16
    chat: Optional[bool] = None
    tasks_dir: Optional[str] = None
    # The merged vocabulary every recipe asks for (mergekit's `tokenizer_source`: base, union or a
    # model folder); the scorer reads with that tokenizer. None: the parents share one vocabulary.
    tokenizer: Optional[str] = None
    trials: int = 30
    study: str = "search"
    storage: Optional[str] = None
    # The trial executor (`--backend optuna|ray` on the command line; `backend` above is the scorer's).
    executor: str = "optuna"
    ray_address: Optional[str] = None  # auto or HOST:PORT of a cluster; None: a local Ray with this machine's CPUs and GPUs
    gpus_per_trial: Optional[float] = None  # None: 1 where the Ray cluster has GPUs, else 0
    cpus_per_trial: float = 1.0
    concurrent: Optional[int] = None  # None: as many trials as the cluster's resources hold
    population: int = 1  # recipes asked, merged into resident models and scored together (search/population.py)
    warm_start: Optional[str] = None  # STUDY[@STORAGE]: queue that finished study's best recipes first (search/warm_start.py)
    anchors: int = 0  # K > 0: estimate later trials from K anchor items once enough are scored in full (search/anchoring.py)

    @property
    def multi_objective(self) -> bool:
        return len(self.benchmarks) > 1

    @property
    def prunes(self) -> bool:
        """Whether trials can be stopped early: a pruner, more than one fraction, one benchmark
        (a two-benchmark trial is scored on every item of both)."""
        return self.pruner != "none" and len(self.fidelities) > 1 and not self.multi_objective

    @property
    def results_dir(self) -> Path:
        return RESULTS_ROOT / self.study

    def storage_url(self) -> str:
        return self.storage or default_storage_url(self.study)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def in_process(self) -> "SearchSettings":
        """The same search with its trials run by Optuna in this process (an `evomerge worker`
        joining a study that Ray ran keeps none of the Ray options)."""
        return replace(self, executor="optuna", ray_address=None, gpus_per_trial=None, cpus_per_trial=1.0, concurrent=None)

    @classmethod
    def from_json(cls, text: str) -> "SearchSettings":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    def check(self) -> None:
        """Flag-level checks, before anything is loaded or created."""
        if not _SAFE_NAME.match(self.study):
            raise EvomergeError(f"--study {self.study!r} is not a safe folder name (letters, digits, _ . -)")
        sampler = sampler_choice(self.sampler)
        pruner_choice(self.pruner)
        if self.objective not in OBJECTIVES:
            raise EvomergeError(f"unknown objective {self.objective!r}; choose from {', '.join(OBJECTIVES)}")
        if self.trials < 1:
            raise EvomergeError(f"--trials must be at least 1, got {self.trials}")
        if self.population < 1:
            raise EvomergeError(f"--population must be at least 1, got {self.population}")
        if self.anchors < 0:
            raise EvomergeError(f"--anchors must be 0 (off) or a number of items, got {self.anchors}")
        if self.anchors and (self.multi_objective or self.population > 1 or self.executor != "optuna" or self.backend != "builtin"):
            raise EvomergeError(
                "--anchors estimates one benchmark's accuracy with the built-in scorer, trial by trial: not with two benchmarks, --population, --backend ray or an lm-eval scorer"
            )
        if len(self.parents) < 2:
            raise EvomergeError("--parents needs at least two model folders, comma-separated")
        if len(set(self.parents)) != len(self.parents):
            raise EvomergeError(f"--parents lists a folder twice: {','.join(self.parents)}")
        if self.base is not None and self.base not in self.parents:
            raise EvomergeError(f"--base {self.base} is not one of --parents")
        if not self.fidelities or any(not 0 < f <= 1 for f in self.fidelities) or self.fidelities != sorted(self.fidelities):
            raise EvomergeError(f"--fidelities must be increasing fractions in (0, 1], got {self.fidelities}")
        if self.fidelities[-1] != 1.0:
            raise EvomergeError("--fidelities must end with 1 (the full benchmark)")
        if not 0 <= self.holdout < 1:
            raise EvomergeError(f"--holdout must be in [0, 1), got {self.holdout}")
        from evomerge.evaluate.harness import is_lm_eval_spec

        if self.holdout and any(is_lm_eval_spec(b) for b in self.benchmarks):
            raise EvomergeError("--holdout applies to evomerge benchmarks; an lm-eval task has its own splits (use --holdout 0)")
        if len(self.benchmarks) > 2:
            raise EvomergeError("--benchmark takes one benchmark, or two (domain,general) for a multi-objective study")
        if self.multi_objective and not sampler.multi_objective:
            names = multi_objective_samplers()
            raise EvomergeError(f"a two-benchmark study is multi-objective: use --sampler {', '.join(names[:-1])} or {names[-1]}, not {self.sampler}")
        from evomerge.search.executors import executor_class

        executor_class(self.executor).check_settings(self)
        if self.prunes and sampler.ignores_pruned:
            warnings.warn(pruned_ignored_warning(self), UserWarning, stacklevel=2)


def pruned_ignored_warning(settings: SearchSettings) -> str:
    """Why a sampler that learns only from completed trials is a poor match for a pruning study."""
    return (
        f"--sampler {settings.sampler} learns only from completed trials: the trials --pruner {settings.pruner} stops "
        "(most of them) teach it nothing; use --sampler tpe or cmaes, which learn from pruned trials too, or --pruner none"
    )


def settings_from(**values) -> SearchSettings:
    """`SearchSettings(**values)`, with a value of the wrong type reported as one EvomergeError
    naming the option (`trials="many"` → "--trials: Input should be a valid integer …")."""
    try:
        return SearchSettings(**values)
    except ValidationError as problem:
        first = problem.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "settings"
        flag = {"executor": "backend", "benchmarks": "benchmark"}.get(name, name)
        raise EvomergeError(f"--{flag.replace('_', '-')}: {first['msg']} (got {first.get('input')!r})") from None


def open_storage(url: str):
    """An Optuna storage for a URL; a clear EvomergeError when it cannot be reached."""
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url.split(":", 1)[1].removeprefix("//"))  # journal:rel/path or journal:///abs/path
            path.parent.mkdir(parents=True, exist_ok=True)
            return owned_trials_journal()(JournalFileBackend(str(path)))
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        if url.startswith(("postgresql:", "postgresql+psycopg2:")):  # SQLAlchemy's default driver for postgresql://
            require("psycopg2", "a PostgreSQL storage")
        from optuna.exceptions import ExperimentalWarning

        # Two processes opening a new database at once would both create its tables, and the one
        # that loses fails ("table trials already exists"): creation runs under the storage's lock.
        with warnings.catch_warnings(), study_lock(url, "(tables)"):
            warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeats are "experimental"
            return owned_trials_storage()(url, heartbeat_interval=HEARTBEAT_S, grace_period=2 * HEARTBEAT_S)
    except EvomergeError:
        raise
    except Exception as error:  # SQLAlchemy and drivers raise many types for a bad URL
        raise EvomergeError(f"cannot open storage {url}: {first_line(error)}") from None


def running_trial_template() -> optuna.trial.FrozenTrial:
    """A new trial as `study.ask` makes one (running, started now), already naming its process."""
    return optuna.trial.FrozenTrial(
        number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.datetime.now(), datetime_complete=None,
        params={}, distributions={}, user_attrs={WORKER_ATTR: process_name()}, system_attrs={}, intermediate_values={}, trial_id=-1,
    )  # fmt: skip


def owned_trials_storage() -> type:
    """Optuna's RDBStorage whose trials name the process that runs them (user attribute
    WORKER_ATTR) in the same transaction that makes them running. Without it a process killed
    between `study.ask` and its first write leaves a running trial nobody owns, which a rerun must
    count as taken until its grace period ends (a rerun right after `kill -9` then ran one trial
    short). The class is built on first use: importing Optuna's storages costs a second."""
    global _OwnedTrialsStorage
    if _OwnedTrialsStorage is None:
        from optuna.storages import RDBStorage
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        class OwnedTrialsStorage(RDBStorage):
            def _create_new_trial(self, study_id, template_trial=None):  # what study.ask calls (through Optuna's cache)
                return super()._create_new_trial(study_id, template_trial or running_trial_template())

            def set_trial_state_values(self, trial_id, state, values=None):
                if state != TrialState.RUNNING or values is not None:
                    return super().set_trial_state_values(trial_id, state, values)
                # A queued trial taken by `study.ask`: running and named in one transaction, as
                # RDBStorage.set_trial_state_values takes it, plus the name.
                with _create_scoped_session(self.scoped_session) as session:
                    trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
                    self.check_trial_is_updatable(trial_id, trial.state)
                    if trial.state != TrialState.WAITING:
                        return False  # another process took it
                    trial.state = TrialState.RUNNING
                    trial.datetime_start = datetime.datetime.now()
                    session.flush()
                    self._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial_id, WORKER_ATTR, process_name())
                return True

        _OwnedTrialsStorage = OwnedTrialsStorage
    return _OwnedTrialsStorage


def owned_trials_journal() -> type:
    """Optuna's JournalStorage whose new trials name their process as they are made (as
    `owned_trials_storage`; a queued trial is named a moment after it is taken)."""
    global _OwnedTrialsJournal
    if _OwnedTrialsJournal is None:
        from optuna.storages import JournalStorage

        class OwnedTrialsJournal(JournalStorage):
            def create_new_trial(self, study_id, template_trial=None):
                return super().create_new_trial(study_id, template_trial or running_trial_template())

        _OwnedTrialsJournal = OwnedTrialsJournal
    return _OwnedTrialsJournal


_OwnedTrialsStorage: Optional[type] = None
_OwnedTrialsJournal: Optional[type] = None


def open_existing_storage(url: str):
    """Like open_storage, but a sqlite or journal file must already exist (no empty file on a typo)."""
    for prefix in ("sqlite:///", "journal:"):
        if url.startswith(prefix):
            path = Path(url[len(prefix) :].removeprefix("//") if prefix == "journal:" else url[len(prefix) :])
            if not path.is_file():
                raise EvomergeError(f"no study storage at {path}")
    return open_storage(url)


def default_storage_url(study: str) -> str:
    """Where a study lives when no --storage is given: a SQLite file in its results folder."""
    return f"sqlite:///{RESULTS_ROOT / study / 'study.db'}"


def load_existing_study(study_name: str, url: str) -> optuna.Study:
    """A study that must already exist (export, worker); a clear EvomergeError otherwise."""
    storage = open_existing_storage(url)
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise EvomergeError(f"no study {study_name!r} in {url}") from None


def close_storage(storage) -> None:
    """Release a storage's database connections (before its SQLite file is moved, say)."""
    engine = getattr(storage, "engine", None)  # RDBStorage's SQLAlchemy engine; a journal has none
    if engine is not None:
        engine.dispose()


def process_name() -> str:
    """This process, as a trial records who ran it: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def process_is_gone(name: str) -> bool:
    """Whether a process named as `process_name` gives it ran on this machine and has ended."""
    host, _, pid = name.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's: its heartbeat tells
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def make_sampler(settings: SearchSettings, grid: Optional[dict[str, list[float]]] = None, seed: Optional[int] = None):
    """The study's sampler (`--sampler`, from the samplers' table), seeded with `seed` (default --seed)."""
    return sampler_choice(settings.sampler).make(settings.seed if seed is None else seed, grid)


def fidelity_rung(index: int) -> int:
    """The rung a pruner sees a trial's `index`-th benchmark fraction at (see PRUNING_FACTOR)."""
    return PRUNING_FACTOR**index


def last_fidelity_rung(settings: SearchSettings) -> int:
    """The rung of the full benchmark: the largest resource a rung pruner or scheduler sees."""
    return fidelity_rung(len(settings.fidelities) - 1)


def metric_names(settings: SearchSettings) -> list[str]:
    """What the study's values are called (the dashboard's axis labels, instead of "Objective 0"):
    `accuracy` or `gain`; with two benchmarks, the domain's and the general one's."""
    if settings.multi_objective:
        return [f"domain {settings.objective}", "general accuracy"]
    return [settings.objective]


def is_trial_data(key: str) -> bool:
    """Whether a trial attribute is kept out of its user attributes (see TRIAL_DATA_ATTRS)."""
    return key in TRIAL_DATA_ATTRS or re.fullmatch(r"(correct|per_category)_b\d+", key) is not None


def set_trial_attr(trial, key: str, value) -> None:
    """Record one attribute of a running trial: a long one (`is_trial_data`) among an
    `optuna.Trial`'s system attributes, any other among its user attributes. Anything else with
    `set_user_attr` (the Ray backend's reporter, which forwards to the driver's `optuna.Trial`)
    gets every attribute there."""
    if is_trial_data(key) and isinstance(trial, optuna.Trial):
        trial.storage.set_trial_system_attr(trial._trial_id, key, value)
    else:
        trial.set_user_attr(key, value)


def trial_attr(trial: optuna.trial.FrozenTrial, key: str, default=None):
    """A recorded attribute of a trial, wherever `set_trial_attr` put it (a study made before
    long values moved to system attributes has them among the user attributes)."""
    if is_trial_data(key) and key in trial.system_attrs:
        return trial.system_attrs[key]
    return trial.user_attrs.get(key, default)


def trial_data(trial: optuna.trial.FrozenTrial) -> dict:
    """A trial's long attributes (recipe, per-item results), wherever they are stored."""
    found = {key: value for key, value in trial.user_attrs.items() if is_trial_data(key)}
    found.update({key: value for key, value in trial.system_attrs.items() if is_trial_data(key)})
    return found


def set_parent_scores(study: optuna.Study, scores: dict) -> None:
    """Store the parents' scores on the study (a system attribute: they hold per-item results)."""
    study._storage.set_study_system_attr(study._study_id, PARENT_SCORES_ATTR, scores)


def stored_parent_scores(study: optuna.Study) -> Optional[dict]:
    """The parents' scores stored on the study, or None (older studies keep them as a user attribute)."""
    stored = study._storage.get_study_system_attrs(study._study_id).get(PARENT_SCORES_ATTR)
    return stored if stored is not None else study.user_attrs.get(PARENT_SCORES_ATTR)


def name_metrics(study: optuna.Study, settings: SearchSettings) -> None:
    """Set the study's metric names (once; an older study gets them when it is resumed)."""
    names = metric_names(settings)
    if study.metric_names != names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)


def create_or_load_study(settings: SearchSettings, storage, grid=None, fingerprints: Optional[list[str]] = None) -> optuna.Study:
    """The study, created with the settings stored on it, or loaded if it exists (a resume, or a
    worker joining). Safe when several processes open it at once: Optuna's create-or-load is one
    step in the storage. The process that creates the study samples with --seed (a new search is
    reproducible); one that loads it samples with a seed of its own (`joining_seed`).
    `fingerprints`: the parents' (`merge.parents.fingerprint`), stored on a new study and checked
    against a resumed one's."""
    study = optuna.create_study(
        study_name=settings.study,
        storage=storage,
        sampler=make_sampler(settings, grid),
        pruner=make_pruner(settings),
        directions=["maximize"] * (2 if settings.multi_objective else 1),
        load_if_exists=True,
    )
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        study.set_user_attr(SETTINGS_ATTR, settings.to_json())
        if fingerprints is not None:
            study.set_user_attr(FINGERPRINTS_ATTR, fingerprints)
        name_metrics(study, settings)
        return study
    before = SearchSettings.from_json(stored)
    for key in ("space", "benchmarks", "objective", "fidelities", "holdout", "protocol"):
        if getattr(before, key) != getattr(settings, key):
            raise EvomergeError(f"study {settings.study} exists with {key}={getattr(before, key)!r}, not {getattr(settings, key)!r}; use another --study name")
    check_same_parents(settings, before, study.user_attrs.get(FINGERPRINTS_ATTR), fingerprints)
    name_metrics(study, settings)
    study.sampler = make_sampler(settings, grid, seed=joining_seed(settings.seed, len(study.get_trials(deepcopy=False))))
    return study


def check_same_parents(settings: SearchSettings, before: SearchSettings, stored: Optional[list], now: Optional[list]) -> None:
    """A resumed or joined study must merge the parents it started with. Paths are compared
    resolved (./a and /home/me/a are one folder); with fingerprints, the weights themselves: the
    same weights under another path are the same parents, changed weights under the same path are
    not."""
    same_paths = [_resolved(p) for p in before.parents] == [_resolved(p) for p in settings.parents] and _resolved(before.base) == _resolved(settings.base)
    if stored is not None and now is not None:
        if list(stored) == list(now) and _base_index(before) == _base_index(settings):
            return
        if same_paths:
            changed = next(p for p, a, b in zip(settings.parents, stored, now) if a != b)
            raise EvomergeError(f"parent {changed} has changed since study {settings.study} started (its weights or config differ); use another --study name")
    if not same_paths:
        raise EvomergeError(
            f"study {settings.study} exists with parents {','.join(before.parents)} (base {before.base}), "
            f"not {','.join(settings.parents)} (base {settings.base}); use another --study name"
        )


def _base_index(settings: SearchSettings) -> Optional[int]:
    return settings.parents.index(settings.base) if settings.base in settings.parents else None


def _resolved(path: Optional[str]) -> Optional[str]:
    return os.path.realpath(path) if path is not None else None


def joining_seed(seed: int, trials_so_far: int) -> int:
    """The sampler's seed in a process that loads an existing study: --seed mixed with this
    process and the study's trials so far. With --seed itself, workers would all propose the same
    recipes (the same random start, then the same choice from the same history), and a resumed run
    would propose its first run's recipes again; either way trials spent on copies."""
    digest = hashlib.sha256(f"{seed}:{process_name()}:{trials_so_far}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def load_settings(study: optuna.Study) -> SearchSettings:
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if not stored:
        raise EvomergeError(f"study {study.study_name} was not made by evomerge search (no settings on it)")
    return SearchSettings.from_json(stored)


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts towards --trials (a failure does not)
TAKEN = FINISHED + (TrialState.RUNNING,)  # trials that hold a place in the study's total


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def study_is_full(study: optuna.Study, total: int, before: Optional[int] = None) -> bool:
    """Whether finished and running trials (only those numbered below `before`, if given) reach
    `total`: no further trial may start, though a running one may still fail and free a place."""
    taken = study.get_trials(deepcopy=False, states=TAKEN)
    if before is not None:
        taken = [trial for trial in taken if trial.number < before]
    return len(taken) >= total


def ranked_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Complete trials, best first: the one ranking behind the best trial, the exported recipe and
    `evomerge export --rank`. One benchmark: by value. Two: the Pareto front first (no other trial
    is at least as good on both and better on one), each group by its values in order (domain, then
    general); ties go to the earlier trial."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front = {trial.number for trial in study.best_trials} if len(study.directions) > 1 else set()
    return sorted(complete, key=lambda t: (t.number not in front, [-v for v in t.values], t.number))


def best_trial(study: optuna.Study) -> Optional[optuna.trial.FrozenTrial]:
    ranked = ranked_trials(study)
    return ranked[0] if ranked else None

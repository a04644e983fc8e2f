"""`--population K`: ask the sampler for K recipes at once, merge them into K resident models,
score them together fraction by fraction, tell the study all K.

The one-at-a-time path (`study.optimize` calling `TrialRunner.run_trial`) is untouched; this is
the same trial, with Optuna's ask/tell interface: `study.ask()` K times, each recipe claimed (or
copied from a finished duplicate) as there, merged by the one `Merger` and copied into its own
resident model, then every fraction scored for every model still running (each item batch of the
same scorer, so the per-item results are those of K = 1), each fraction reported for all K before
the pruner is asked about any of them. A trial that fails (its merge, a NaN score) is told FAIL
with its reason and the others go on; a pruned one stops there. The K resident copies are checked
against the free memory before anything starts (`check_population_memory`).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable, Optional

import optuna
import torch
from optuna.trial import TrialState

from evomerge.errors import EvomergeError, interrupt_reason, raise_if_interrupted
from evomerge.evaluate.scorer import ScoreResult
from evomerge.search.objective import (
    ParentScores,
    TrialRunner,
    claim_recipe,
    failure_reason,
    free_accelerator_memory,
    recipe_key,
    record_recipe,
    with_tokenizer,
)
from evomerge.search.study import TAKEN, WORKER_ATTR, SearchSettings, process_name, study_is_full

OnTrial = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def model_bytes(model) -> int:
    """The bytes of a model's tensors (a tied tensor counted once)."""
    seen, total = set(), 0
    for tensor in model.state_dict().values():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


def available_bytes(device: torch.device) -> int:
    """Free memory where the models live: the GPU's (`torch.cuda.mem_get_info`), else the machine's."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def check_population_memory(population: int, model, device: torch.device) -> None:
    """Refuse a population whose K resident copies of the model do not fit in the free memory."""
    if population <= 1:
        return
    each, free = model_bytes(model), available_bytes(device)
    if population * each > free:
        raise EvomergeError(
            f"--population {population} needs {population} resident copies of the model ({population} × {each / 2**20:.1f} MiB = "
            f"{population * each / 2**30:.2f} GiB) but {free / 2**30:.2f} GiB of {device.type} memory is free; use a smaller --population"
        )


class ModelSlots:
    """K resident models, each filled with a copy of the model a merge wrote (allocated once;
    a result with another layout gets a copy of its own model)."""

    def __init__(self) -> None:
        self.models: list = []

    @torch.inference_mode()
    def fill(self, index: int, source) -> object:
        """Slot `index` holding `source`'s weights now; the slot's model."""
        if index < len(self.models) and same_shapes(self.models[index], source):
            target = self.models[index].state_dict()
            for name, tensor in source.state_dict().items():
                target[name].copy_(tensor)
            return self.models[index]
        with torch.inference_mode(False):
            model = copy.deepcopy(source)
        if index < len(self.models):
            self.models[index] = model
        else:
            self.models.append(model)
        return model


def same_shapes(a, b) -> bool:
    """Whether two models hold tensors of the same names and shapes (and classes)."""
    if type(a) is not type(b):
        return False
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype for k in sa)


@dataclass
class Member:
    """One trial of a population and where it stands."""

    trial: optuna.Trial
    state: Optional[TrialState] = None  # None: still running
    values: Optional[list[float]] = None
    model: object = None
    result: Optional[ScoreResult] = None
    copy_of: Optional["Member"] = None  # the same recipe as an earlier member of this population
    original: Optional[optuna.trial.FrozenTrial] = None  # the same recipe as a finished trial
    score_s: float = 0.0
    told: bool = False
    recipe: object = field(default=None, repr=False)

    def fail(self, error: BaseException) -> None:
        self.trial.set_user_attr("fail_reason", failure_reason(error))
        self.state = TrialState.FAIL

    @property
    def running(self) -> bool:
        return self.state is None


class PopulationRunner:
    """Runs a study's trials K at a time with one `TrialRunner` (its merger, scorers, settings)."""

    def __init__(self, runner: TrialRunner, population: int):
        self.runner = runner
        self.population = population
        self.slots = ModelSlots()

    @property
    def settings(self) -> SearchSettings:
        return self.runner.settings

    def optimise(self, study: optuna.Study, parent_scores: dict, budget: int, *, timeout: Optional[float] = None, on_trial: Optional[OnTrial] = None) -> None:
        """Ask, evaluate and tell populations until the study has its total, `budget` trials were
        asked, `timeout` seconds have passed, or a run of failures stopped it."""
        from evomerge.search.run import record_failure_streak

        scores = ParentScores(parent_scores)
        start = time.perf_counter()
        asked = 0
        while asked < budget:
            if timeout is not None and time.perf_counter() - start > timeout:
                return
            room = self.settings.trials - len(study.get_trials(deepcopy=False, states=TAKEN))
            count = min(self.population, budget - asked, room)
            if count <= 0:
                return
            with warnings.catch_warnings():  # heartbeats are kept here as `optimize` keeps them (see `heartbeat`)
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
                members = [Member(study.ask()) for _ in range(count)]
            asked += count
            stop = self.run_population(study, members, scores)
            for member in members:
                if on_trial is not None:
                    on_trial(study, study._storage.get_trial(member.trial._trial_id))
            if stop or record_failure_streak(study):
                return

    def run_population(self, study: optuna.Study, members: list[Member], scores: ParentScores) -> bool:
        """Evaluate and tell one population; whether the study must stop (it is full)."""
        with ExitStack() as stack:
            heartbeat(stack, study, members)
            try:
                full = self._evaluate(study, members, scores)
                for member in members:
                    self._tell(study, member)
                return full
            except KeyboardInterrupt as interrupt:
                for member in members:
                    if not member.told:
                        member.trial.set_user_attr("fail_reason", interrupt_reason(interrupt))
                        member.state = TrialState.FAIL
                        self._tell(study, member)
                raise

    # ----- one population ----------------------------------------------------------------

    def _evaluate(self, study: optuna.Study, members: list[Member], scores: ParentScores) -> bool:
        runner, settings = self.runner, self.settings
        full = False
        keys: dict[str, Member] = {}
        for member in members:
            trial = member.trial
            trial.set_user_attr(WORKER_ATTR, process_name())
            raise_if_interrupted()
            if study_is_full(study, settings.trials, before=trial.number):
                member.fail(RuntimeError(f"not run: the study already has its {settings.trials} trials"))
                full = True
                continue
            try:
                recipe = with_tokenizer(
                    runner.space.suggest(trial, settings.parents, settings.base, runner.merger.num_layers, runner.dtype_name), settings.tokenizer
                )
                text = recipe.to_yaml()
                key = recipe_key(text)
                if key in keys:  # the same recipe as an earlier member: copy its outcome once told
                    record_recipe(trial, text)
                    member.copy_of = keys[key]
                    continue
                member.original = claim_recipe(trial, text, settings.storage_url())
                if member.original is not None:
                    continue
                keys[key] = member
                member.recipe = recipe
            except Exception as error:
                member.fail(error)
        evaluated = [m for m in members if m.running and m.copy_of is None and m.original is None]
        for index, member in enumerate(evaluated):
            self._merge(member, index)
        self._score(evaluated, scores)
        return full

    def _merge(self, member: Member, index: int) -> None:
        runner = self.runner
        try:
            start = time.perf_counter()
            runner.merger.apply(member.recipe, seed=self.settings.seed)
            member.model = self.slots.fill(index, runner.merger.active_model)
            member.trial.set_user_attr("merge_s", round(time.perf_counter() - start, 4))
            if runner.merger.last_rebuild_s is not None:
                member.trial.set_user_attr("rebuild_s", round(runner.merger.last_rebuild_s, 4))
        except Exception as error:
            member.fail(error)
            free_accelerator_memory()
        raise_if_interrupted()

    def _score(self, members: list[Member], scores: ParentScores) -> None:
        """Each fraction for every running member, reported for all before any is pruned."""
        runner, settings = self.runner, self.settings
        primary = runner.objectives[0]
        fidelities = [1.0] if settings.multi_objective else settings.fidelities
        for fidelity in fidelities:
            for member in members:
                if member.running:
                    self._step(member, primary.scorer, fidelity)
            if not settings.multi_objective and fidelity < 1.0:
                reported = [m for m in members if m.running]
                for member in reported:
                    member.trial.set_user_attr("score_s", round(member.score_s, 4))
                    member.trial.report(runner._value(member.result.accuracy, 0, fidelity, scores), member.result.n)
                for member in reported:
                    if member.trial.should_prune():
                        member.state = TrialState.PRUNED
        for member in members:
            if not member.running:
                continue
            try:
                runner._record(member.trial, member.result, 0, scores)
                values = [runner._value(member.result.accuracy, 0, 1.0, scores)]
                for index, objective in enumerate(runner.objectives[1:], start=1):
                    begin = time.perf_counter()
                    extra = objective.scorer.score(member.model, 1.0)
                    member.score_s += time.perf_counter() - begin
                    runner._record(member.trial, extra, index, scores)
                    values.append(extra.accuracy)
                member.trial.set_user_attr("score_s", round(member.score_s, 4))
                member.values, member.state = values, TrialState.COMPLETE
            except Exception as error:
                member.fail(error)

    def _step(self, member: Member, scorer, fidelity: float) -> None:
        """Score one member up to `fidelity` (only the items beyond its last fraction)."""
        begin = time.perf_counter()
        try:
            result = scorer.score(member.model, fidelity, previous=member.result)
            if math.isnan(result.accuracy):
                raise FloatingPointError("the score is NaN")
        except Exception as error:
            member.fail(error)
            free_accelerator_memory()
            return
        finally:
            member.score_s += time.perf_counter() - begin
        member.result = result
        member.trial.set_user_attr(f"accuracy@{fidelity}", result.accuracy)
        raise_if_interrupted()

    def _tell(self, study: optuna.Study, member: Member) -> None:
        """Tell the study one member's outcome (a duplicate's: its original's, copied)."""
        if member.told:
            return
        original = member.original
        if member.copy_of is not None:
            self._tell(study, member.copy_of)
            original = study._storage.get_trial(member.copy_of.trial._trial_id)
            if original.state == TrialState.FAIL:  # as K = 1 would: the recipe is tried again next time
                member.trial.set_user_attr("fail_reason", f"same recipe as failed trial {original.number}")
                member.state = TrialState.FAIL
                original = None
        if original is not None:
            try:
                value = self.runner._copy_result(member.trial, original)
                member.values, member.state = list(value) if isinstance(value, tuple) else [value], TrialState.COMPLETE
            except optuna.TrialPruned:
                member.state = TrialState.PRUNED
        member.told = True
        member.model = None
        if member.state == TrialState.COMPLETE:
            study.tell(member.trial, member.values)
        else:
            study.tell(member.trial, state=member.state)


def heartbeat(stack: ExitStack, study: optuna.Study, members: list[Member]) -> None:
    """Each member's heartbeat while the population runs, where the storage keeps heartbeats (as
    `study.optimize` does for its one trial), so a killed process's trials go stale."""
    from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled

    if is_heartbeat_enabled(study._storage):
        for member in members:
            stack.enter_context(get_heartbeat_thread(member.trial._trial_id, study._storage))

"""What one trial does: suggest → Recipe → merge in place → score at growing fractions → value.

A `TrialRunner` lives once per process (`TrialRunner.load`): the parents stay resident in one
`Merger`, the benchmark items are tokenised once per scorer, and the parents' own scores are
computed once per study and stored on it; every call that measures against them takes them as an
argument. A trial that raises (a merge error, out of memory, a NaN score) is recorded as failed
with its reason; Optuna's `catch` then lets the study go on.

`TrialRunner.evaluate(recipe, trial, parent_scores)` is the part both executors share: merge one
recipe, score it at each fidelity, report each to whatever decides pruning, record. The Optuna
backend hands it the `optuna.Trial` itself (through `runner.objective(parent_scores)`, what
`study.optimize` calls); the Ray backend hands it a reporter that sends the same values to Ray Tune.
"""

from __future__ import annotations

import gc
import hashlib
import math
import time
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Mapping, Optional, Protocol, Sequence, Union

import optuna
from optuna.trial import TrialState

from evomerge.errors import interrupt_reason, raise_if_interrupted
from evomerge.evaluate.anchors import Anchors
from evomerge.evaluate.benchmark import Benchmark
from evomerge.evaluate.objective import Objective, make_objective
from evomerge.evaluate.scorer import Scorer, ScoreResult, make_result
from evomerge.merge.merger import Merger
from evomerge.merge.parents import ParentInfo
from evomerge.recipe import Recipe
from evomerge.search.anchoring import ESTIMATED_ATTR, study_anchors
from evomerge.search.locks import study_lock
from evomerge.search.study import (
    FINISHED,
    WORKER_ATTR,
    SearchSettings,
    process_is_gone,
    process_name,
    set_parent_scores,
    set_trial_attr,
    stored_parent_scores,
    study_is_full,
    trial_data,
)
from evomerge.space import SearchSpace

Values = Union[float, tuple[float, ...]]
# What a duplicate does not copy from the trial it repeats: its own recipe bookkeeping, timings
# and the process that ran it (a duplicate runs nowhere).
NOT_COPIED = ("recipe", "recipe_key", "baseline", "baseline_child", "duplicate_of", "merge_s", "rebuild_s", "score_s", "worker", "claimed_by")
# Set on the one trial that evaluates a recipe (by its process's name), under the study's lock.
CLAIM_ATTR = "claimed_by"
WAIT_POLL_S = 0.5


class TrialRecord(Protocol):
    """What a trial's evaluation writes to: `optuna.Trial`, or the Ray backend's reporter."""

    def set_user_attr(self, key: str, value) -> None: ...

    def report(self, value: float, step: int) -> None: ...

    def should_prune(self) -> bool: ...


def recipe_key(recipe_yaml: str) -> str:
    return hashlib.sha256(recipe_yaml.encode()).hexdigest()[:16]


def correctness_string(result: ScoreResult) -> str:
    """Per-item correctness as '0110…' in the benchmark's order (compact in the storage)."""
    return "".join("1" if ok else "0" for ok in result.correct)


@dataclass
class ParentScores:
    """Each parent's accuracy per benchmark and fidelity, stored on the study once."""

    by_parent: dict[str, list[dict]]  # parent → per benchmark {"fidelity": {f: acc}, "correct": str, "holdout": acc}

    def at(self, benchmark: int, fidelity: float) -> list[float]:
        return [scores[benchmark]["fidelity"][str(fidelity)] for scores in self.by_parent.values()]


def recipe_dtype_name(dtype: Optional[str], infos: Sequence[ParentInfo]) -> str:
    """The dtype a recipe names: --dtype, else the parents' own (what the Merger keeps resident),
    read from the headers so a process that never loads the weights names it too."""
    return dtype or infos[0].stored_dtype


def ensure_parent_scores(study: optuna.Study, compute: Callable[[], dict]) -> dict:
    """The parents' scores stored on the study, computed (once per study) if they are not there."""
    stored = stored_parent_scores(study)
    if stored is None:
        stored = compute()
        set_parent_scores(study, stored)
    return stored


def parent_entry(fidelity: Mapping[str, float], search: ScoreResult, holdout: Optional[ScoreResult]) -> dict:
    """What the study stores for one parent on one benchmark: its accuracy at each fidelity (by
    `str(fraction)`), its per-item results on every search item, and its held-out accuracy with
    its per-item results (so the best recipe's held-out gain gets a paired interval)."""
    entry = {"fidelity": dict(fidelity), "correct": correctness_string(search), "per_category": search.per_category}
    if holdout is not None:
        entry["holdout"] = holdout.accuracy
        entry["holdout_correct"] = correctness_string(holdout)
    return entry


def subset_result(result: ScoreResult, item_ids: Sequence[str]) -> ScoreResult:
    """`result` on these items only, in this order (each must be among its items)."""
    position = {item_id: index for index, item_id in enumerate(result.item_ids)}
    picked = [position[item_id] for item_id in item_ids]
    predictions = [result.predictions[i] for i in picked] if result.predictions else [None] * len(picked)
    categories = [result.categories[i] for i in picked] if result.categories else [None] * len(picked)
    return make_result(list(item_ids), categories, [result.correct[i] for i in picked], predictions, 0.0)


def parent_scores_from_results(results: Mapping[str, ScoreResult], search: Benchmark, held: Optional[Benchmark], fidelities: Sequence[float]) -> dict:
    """The study's parent scores (as `TrialRunner.compute_parent_scores` stores them, one
    benchmark) from each parent's results on every item of a benchmark whose search and held-out
    splits are `search` and `held`: fraction f is the first `search.count(f)` search items, as a
    trial scores it. For a caller that scored the parents on the whole benchmark already."""
    search_ids = [item.id for item in search.items]
    by_parent = {}
    for parent, result in results.items():
        on_search = subset_result(result, search_ids)
        fidelity = {str(f): subset_result(on_search, search_ids[: search.count(f)]).accuracy for f in fidelities}
        holdout = subset_result(result, [item.id for item in held.items]) if held is not None and len(held) else None
        by_parent[parent] = [parent_entry(fidelity, on_search, holdout)]
    return by_parent


def record_recipe(trial, recipe_yaml: str) -> str:
    """Store a trial's recipe and its key (and, where optuna-dashboard is installed, a note that
    shows the recipe on the trial's dashboard page); the key."""
    key = recipe_key(recipe_yaml)
    set_trial_attr(trial, "recipe", recipe_yaml)
    trial.set_user_attr("recipe_key", key)
    save_recipe_note(trial, recipe_yaml)
    return key


def recipe_note(recipe_yaml: str) -> str:
    """The Markdown note the dashboard shows on a trial's page: its recipe as mergekit YAML."""
    return f"**Recipe** (mergekit YAML; `evomerge export --study NAME --rank K` writes it with absolute paths)\n\n```yaml\n{recipe_yaml.rstrip()}\n```\n"


def save_recipe_note(trial, recipe_yaml: str) -> None:
    """The recipe as the trial's dashboard note (optuna-dashboard's own `save_note`), when the
    `[dashboard]` extra is installed and `trial` is an `optuna.Trial`; otherwise nothing."""
    if not isinstance(trial, optuna.Trial):
        return
    try:
        from optuna_dashboard import save_note
    except ImportError:
        return
    save_note(trial, recipe_note(recipe_yaml))


def same_recipe(study: optuna.Study, number: int, key: str) -> list[optuna.trial.FrozenTrial]:
    """The study's other running or finished trials with this recipe key, oldest first."""
    states = (TrialState.RUNNING,) + FINISHED
    return [t for t in study.get_trials(deepcopy=False, states=states) if t.number != number and t.user_attrs.get("recipe_key") == key]


def claim_recipe(trial, recipe_yaml: str, storage_url: str, *, wait: bool = True) -> Optional[optuna.trial.FrozenTrial]:
    """Decide who evaluates a recipe, atomically across every process on the study: None when
    this trial claimed it (evaluate it), else the finished trial with the same recipe (copy its
    outcome). The check and the claim happen under the study's lock, so two workers proposing the
    same recipe at once never both evaluate it. With `wait`, a recipe another running trial has
    claimed is waited for; if that trial fails, the recipe is claimed again. Without it (a driver
    that must not block) that trial is not waited for and this one claims the recipe too."""
    key = record_recipe(trial, recipe_yaml)
    study = trial.study
    while True:
        with study_lock(storage_url, study.study_name):
            others = same_recipe(study, trial.number, key)
            # The trial that evaluated it, rather than an earlier copy of its outcome.
            finished = sorted((t for t in others if t.state in FINISHED), key=lambda t: CLAIM_ATTR not in t.user_attrs)
            if finished:
                return finished[0]
            claimed = [t for t in others if t.state == TrialState.RUNNING and CLAIM_ATTR in t.user_attrs]
            if not claimed or not wait:
                trial.set_user_attr(CLAIM_ATTR, process_name())
                return None
        wait_while_running(study, claimed[0])


def wait_while_running(study: optuna.Study, other: optuna.trial.FrozenTrial) -> None:
    """Wait until another process's trial is no longer running. A killed process's trial stops
    running when its heartbeat goes stale (RDB storages fail it here), or, without heartbeats
    (a journal file), when its process on this machine no longer exists."""
    while True:
        time.sleep(WAIT_POLL_S)
        raise_if_interrupted()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        current = next(t for t in study.get_trials(deepcopy=False) if t.number == other.number)
        if current.state != TrialState.RUNNING:
            return
        if process_is_gone(current.user_attrs.get(CLAIM_ATTR, "")):
            try:
                study.tell(current.number, state=TrialState.FAIL)
            except (RuntimeError, ValueError):  # it finished after all (or another waiter failed it)
                pass
            return


def copied_attrs(original: optuna.trial.FrozenTrial) -> dict:
    """What a duplicate records (with `set_trial_attr`): the earlier trial's outcome, its per-item
    results included, and which trial that was."""
    attrs = {key: value for key, value in {**original.user_attrs, **trial_data(original)}.items() if key not in NOT_COPIED}
    return {"duplicate_of": original.number, **attrs}


class SurplusTrial(RuntimeError):
    """A trial started after the study had reached its total (a race between workers)."""


class TrialRunner:
    """Holds what every trial of a study shares in this process, and runs trials.

    `TrialRunner.load(settings, parent infos, space)` loads the parents and tokenises the
    benchmarks; the constructor only stores what it is given. What a trial is measured against
    (the parents' scores, stored on the study) is an argument of every call that needs it."""

    def __init__(self, settings: SearchSettings, space: SearchSpace, merger: Merger, tokenizer, objectives: Sequence[Objective], dtype_name: str):
        self.settings = settings
        self.space = space
        self.merger, self.tokenizer = merger, tokenizer
        self.objectives: list[Objective] = list(objectives)
        self.dtype_name = dtype_name  # the dtype the recipes name (the resident one)
        self._anchors: Optional[Anchors] = None  # --anchors: fitted once per study (search/anchoring.py)

    @classmethod
    def load(
        cls, settings: SearchSettings, infos: Sequence[ParentInfo], space: SearchSpace, *, merger: Optional[Merger] = None, tokenizer=None
    ) -> "TrialRunner":
        """Load the parents (unless a caller shares its own `merger` and `tokenizer` for these
        parents, from `load_pair`) and tokenise every benchmark's search items once."""
        if merger is None:
            merger, tokenizer = load_pair(infos, settings.base, device=settings.device, dtype=settings.dtype, tokenizer_source=settings.tokenizer)
        objectives = [
            make_objective(
                benchmark,
                tokenizer,
                protocol=settings.protocol,
                backend=settings.backend,
                batch_size=settings.batch_size,
                chat=settings.chat,
                tasks_dir=settings.tasks_dir,
                holdout=settings.holdout,
            )
            for benchmark in settings.benchmarks
        ]
        return cls(settings, space, merger, tokenizer, objectives, recipe_dtype_name(settings.dtype, infos))

    @cached_property
    def holdout_scorers(self) -> dict[int, Scorer]:
        """The held-out items of each benchmark, tokenised once, when first needed: by the parents'
        scores and the best recipe's, once per study, never by a trial."""
        settings = self.settings
        return {
            index: Scorer.load(objective.holdout, self.tokenizer, protocol=objective.protocol, batch_size=settings.batch_size, chat=settings.chat)
            for index, objective in enumerate(self.objectives)
            if objective.holdout is not None
        }

    # ----- once per study --------------------------------------------------------------------

    def compute_parent_scores(self) -> dict:
        """Each parent alone: accuracy at every fidelity, per-item results, held-out accuracy."""
        by_parent = {}
        for parent in self.settings.parents:
            model = self.merger.show_parent(parent)
            per_benchmark = []
            for index, objective in enumerate(self.objectives):
                fidelity, full = {}, None
                for f in self.settings.fidelities:  # one pass: each fraction extends the last
                    full = objective.scorer.score(model, f, previous=full)
                    fidelity[str(f)] = full.accuracy
                held = self.holdout_scorers.get(index)
                per_benchmark.append(parent_entry(fidelity, full, held.score(model, 1.0) if held else None))
            by_parent[parent] = per_benchmark
        return by_parent

    def holdout_score(self, recipe_yaml: str) -> Optional[ScoreResult]:
        """A recipe scored on the first benchmark's held-out items (None when it has none)."""
        if 0 not in self.holdout_scorers:
            return None
        model = self.merger.apply(Recipe.from_yaml(recipe_yaml), seed=self.settings.seed)
        return self.holdout_scorers[0].score(model, 1.0)

    # ----- one trial -------------------------------------------------------------------------

    def objective(self, parent_scores: dict) -> Callable[[optuna.Trial], Values]:
        """The function `study.optimize` calls per trial, measuring against `parent_scores` (as
        stored on the study)."""
        scores = ParentScores(parent_scores)
        return lambda trial: self.run_trial(trial, scores)

    def run_trial(self, trial: optuna.Trial, parent_scores: ParentScores) -> Values:
        """One Optuna trial: suggest, claim the recipe (or copy a duplicate's outcome), evaluate;
        a failure is recorded on the trial with its reason and raised."""
        try:
            return self._run(trial, parent_scores)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt as interrupt:
            trial.set_user_attr("fail_reason", interrupt_reason(interrupt))
            raise
        except Exception as error:
            trial.set_user_attr("fail_reason", failure_reason(error))
            free_accelerator_memory()
            raise

    def _run(self, trial: optuna.Trial, parent_scores: ParentScores):
        settings = self.settings
        trial.set_user_attr(WORKER_ATTR, process_name())  # first: a rerun can tell a killed process's trial
        raise_if_interrupted()
        self._refuse_surplus(trial)
        recipe = with_tokenizer(self.space.suggest(trial, settings.parents, settings.base, self.merger.num_layers, self.dtype_name), settings.tokenizer)
        duplicate = claim_recipe(trial, recipe.to_yaml(), settings.storage_url())
        if duplicate is not None:
            return self._copy_result(trial, duplicate)
        return self.evaluate(recipe, trial, parent_scores)

    def evaluate(self, recipe: Recipe, trial: TrialRecord, parent_scores: ParentScores) -> Values:
        """Merge the recipe, score it at each fidelity (only the new items each time), report each
        partial value to `trial` and stop if it says prune, record everything (gain and synergy
        against `parent_scores`); the trial's value(s)."""
        settings = self.settings
        trial.set_user_attr(WORKER_ATTR, process_name())  # which process ran it
        start = time.perf_counter()
        model = self.merger.apply(recipe, seed=settings.seed)
        trial.set_user_attr("merge_s", round(time.perf_counter() - start, 4))
        if self.merger.last_rebuild_s is not None:  # a result with other layers: its model's build, within merge_s (0: reused)
            trial.set_user_attr("rebuild_s", round(self.merger.last_rebuild_s, 4))
        raise_if_interrupted()

        score_start = time.perf_counter()
        primary = self.objectives[0]
        anchors = self.anchors(trial.study, parent_scores) if settings.anchors else None
        if anchors is not None:
            return self._estimate(model, anchors, trial, parent_scores, score_start)
        fidelities = [1.0] if settings.multi_objective else settings.fidelities
        result = None
        for fidelity in fidelities:
            result = primary.scorer.score(model, fidelity, previous=result)  # only the new items
            if math.isnan(result.accuracy):
                raise FloatingPointError("the score is NaN")
            trial.set_user_attr(f"accuracy@{fidelity}", result.accuracy)
            trial.set_user_attr("items_scored", result.n)
            value = self._value(result.accuracy, 0, fidelity, parent_scores)
            if not settings.multi_objective and fidelity < 1.0:
                # Recorded before the report: a trial stopped at this fraction keeps its time so far.
                trial.set_user_attr("score_s", round(time.perf_counter() - score_start, 4))
                trial.report(value, result.n)  # step: the items scored so far (the pruners see rungs)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at fraction {fidelity}")
        self._record(trial, result, 0, parent_scores)
        values = [self._value(result.accuracy, 0, 1.0, parent_scores)]
        for index, objective in enumerate(self.objectives[1:], start=1):
            extra = objective.scorer.score(model, 1.0)
            self._record(trial, extra, index, parent_scores)
            values.append(extra.accuracy)  # retention of general skill: plain accuracy
        trial.set_user_attr("score_s", round(time.perf_counter() - score_start, 4))
        return values[0] if len(values) == 1 else tuple(values)

    def anchors(self, study: optuna.Study, parent_scores: ParentScores) -> Optional[Anchors]:
        """The study's anchors (`--anchors`), once fitted; None until then (score in full)."""
        if self._anchors is None:
            self._anchors = study_anchors(study, self.settings, parent_scores.by_parent, len(self.objectives[0].scorer.benchmark))
        return self._anchors

    def _estimate(self, model, anchors: Anchors, trial: TrialRecord, parent_scores: ParentScores, score_start: float) -> float:
        """Score the anchor items only; the trial's value is the accuracy they estimate."""
        result = self.objectives[0].scorer.score_items(model, anchors.indices)
        estimate = anchors.estimate(result.correct)
        parents = parent_scores.at(0, 1.0)
        trial.set_user_attr(ESTIMATED_ATTR, True)
        trial.set_user_attr("items_scored", result.n)
        trial.set_user_attr("accuracy", estimate)
        trial.set_user_attr("gain", estimate - max(parents))
        trial.set_user_attr("synergy", estimate - sum(parents) / len(parents))
        trial.set_user_attr("score_s", round(time.perf_counter() - score_start, 4))
        return self._value(estimate, 0, 1.0, parent_scores)

    def full_search_score(self, recipe_yaml: str) -> ScoreResult:
        """A recipe scored on every search item of the first benchmark (an estimate's check)."""
        model = self.merger.apply(Recipe.from_yaml(recipe_yaml), seed=self.settings.seed)
        return self.objectives[0].scorer.score(model, 1.0)

    def _refuse_surplus(self, trial: optuna.Trial) -> None:
        """Workers that start a trial at the same moment could overshoot --trials: a trial with
        the total already reached before it is not run (recorded as failed, which does not count)."""
        total = self.settings.trials
        if study_is_full(trial.study, total, before=trial.number):
            trial.study.stop()
            raise SurplusTrial(f"not run: the study already has its {total} trials")

    def _value(self, accuracy: float, benchmark: int, fidelity: float, parent_scores: ParentScores) -> float:
        if self.settings.objective == "gain":
            return accuracy - max(parent_scores.at(benchmark, fidelity))
        return accuracy

    def _record(self, trial: TrialRecord, result: ScoreResult, benchmark: int, parent_scores: ParentScores) -> None:
        parents = parent_scores.at(benchmark, 1.0)
        suffix = "" if benchmark == 0 else f"_b{benchmark}"
        trial.set_user_attr(f"accuracy{suffix}", result.accuracy)
        trial.set_user_attr(f"gain{suffix}", result.accuracy - max(parents))
        trial.set_user_attr(f"synergy{suffix}", result.accuracy - sum(parents) / len(parents))
        set_trial_attr(trial, f"per_category{suffix}", result.per_category)
        set_trial_attr(trial, f"correct{suffix}", correctness_string(result))

    def _copy_result(self, trial: optuna.Trial, original: optuna.trial.FrozenTrial):
        """An identical recipe is not evaluated twice: reuse the earlier trial's outcome."""
        for key, value in copied_attrs(original).items():
            set_trial_attr(trial, key, value)
        if original.state == optuna.trial.TrialState.PRUNED:
            raise optuna.TrialPruned(f"same recipe as pruned trial {original.number}")
        return original.values[0] if len(original.values) == 1 else tuple(original.values)


def failure_reason(error: BaseException) -> str:
    """A failed trial's `fail_reason`: the exception's type and message, short enough to store."""
    return f"{type(error).__name__}: {error}"[:500]


def load_pair(infos: Sequence[ParentInfo], base: Optional[str], *, device: str = "auto", dtype: Optional[str] = None, tokenizer_source: Optional[str] = None):
    """The parents resident in one Merger, and the tokenizer every score uses: the base parent's
    (the model SLERP starts from, as the paper), else the first parent's; with `tokenizer_source`
    (base, union or a model folder) the merged one mergekit builds for it, whose vocabulary the
    parents' rows are then laid out in (so a parent scored alone reads the same tokens)."""
    from transformers import AutoTokenizer

    merger = Merger.load(list(infos), device=device, dtype=dtype)
    names = [info.name for info in infos]
    if tokenizer_source is not None:
        # Any recipe over these parents with this base and setting has the same vocabulary.
        probe = Recipe.from_dict(
            {
                "merge_method": "linear",
                "base_model": base,
                "models": [{"model": n, "parameters": {"weight": 1.0}} for n in names],
                "tokenizer_source": tokenizer_source,
            }
        )
        return merger, merger.use_vocabulary(probe, names)
    tokenizer_info = infos[names.index(base)] if base in names else infos[0]
    return merger, AutoTokenizer.from_pretrained(str(tokenizer_info.tokenizer_dir))


def with_tokenizer(recipe: Recipe, tokenizer_source: Optional[str]) -> Recipe:
    """The recipe asking for the search's merged vocabulary (`tokenizer_source`), if it has one."""
    return recipe if tokenizer_source is None else recipe.model_copy(update={"tokenizer_source": tokenizer_source})


def free_accelerator_memory() -> None:
    """Free what Python no longer references, then the accelerator's cached blocks."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

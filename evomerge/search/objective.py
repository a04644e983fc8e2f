"""What one trial does: suggest → Recipe → merge in place → score at growing fractions → value.

A `TrialRunner` lives once per process: the parents stay resident in one `Merger`, the benchmark
items are tokenised once per scorer, and the parents' own scores are computed once per study and
stored on it. A trial that raises (a merge error, out of memory, a NaN score) is recorded as failed
with its reason; Optuna's `catch` then lets the study go on.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import optuna

from evomerge.evaluate.objective import Objective, make_objective
from evomerge.evaluate.scorer import ScoreResult, Scorer
from evomerge.merge.merger import DTYPE_NAMES, Merger
from evomerge.merge.parents import ParentInfo
from evomerge.search.study import PARENT_SCORES_ATTR, SearchSettings
from evomerge.space import SearchSpace



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


class SurplusTrial(RuntimeError):
    """A trial started after the study had reached its total (a race between workers)."""


class TrialRunner:
    """Holds what every trial of a study shares in this process, and runs trials."""

    def __init__(self, settings: SearchSettings, infos: Sequence[ParentInfo], space: SearchSpace):
        from transformers import AutoTokenizer

        self.settings = settings
        self.space = space
        self.merger = Merger(list(infos), device=settings.device, dtype=settings.dtype)
        self.dtype_name = settings.dtype or DTYPE_NAMES[self.merger.dtype]
        tokenizer_info = infos[settings.parents.index(settings.base)] if settings.base else infos[0]
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_info.tokenizer_dir))
        self.objectives: list[Objective] = [
            make_objective(
                benchmark,
                self.tokenizer,
                protocol=settings.protocol,
                backend=settings.backend,
                batch_size=settings.batch_size,
                chat=settings.chat,
                tasks_dir=settings.tasks_dir,
                holdout=settings.holdout,
            )
            for benchmark in settings.benchmarks
        ]
        # The held-out items of each benchmark, tokenised once (parents and the best recipe use them).
        self.holdout_scorers: dict[int, Scorer] = {
            index: Scorer(objective.holdout, self.tokenizer, protocol=objective.protocol, batch_size=settings.batch_size, chat=settings.chat)
            for index, objective in enumerate(self.objectives)
            if objective.holdout is not None
        }
        self.parent_scores: Optional[ParentScores] = None
        self.trials_run = 0
        self.total_trials: Optional[int] = None  # set by the run: the study's --trials

    # ----- once per study --------------------------------------------------------------------

    def score_parents(self, study: optuna.Study) -> ParentScores:
        """Each parent scored alone at every fidelity (and on the held-out items); stored on the study."""
        stored = study.user_attrs.get(PARENT_SCORES_ATTR)
        if stored is None:
            by_parent = {}
            for parent in self.settings.parents:
                model = self.merger.show_parent(parent)
                per_benchmark = []
                for index, objective in enumerate(self.objectives):
                    fidelity, full = {}, None
                    for f in self.settings.fidelities:  # one pass: each fraction extends the last
                        full = objective.scorer.score(model, f, previous=full)
                        fidelity[str(f)] = full.accuracy
                    entry = {"fidelity": fidelity, "correct": correctness_string(full), "per_category": full.per_category}
                    if index in self.holdout_scorers:
                        entry["holdout"] = self.holdout_scorers[index].score(model, 1.0).accuracy
                    per_benchmark.append(entry)
                by_parent[parent] = per_benchmark
            study.set_user_attr(PARENT_SCORES_ATTR, by_parent)
            stored = by_parent
        self.parent_scores = ParentScores(stored)
        return self.parent_scores

    # ----- one trial -------------------------------------------------------------------------

    def __call__(self, trial: optuna.Trial):
        try:
            return self._run(trial)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted (Ctrl-C)")
            raise
        except Exception as error:
            trial.set_user_attr("fail_reason", f"{type(error).__name__}: {error}"[:500])
            _free_accelerator_memory()
            raise

    def _run(self, trial: optuna.Trial):
        settings = self.settings
        self._refuse_surplus(trial)
        recipe = self.space.suggest(trial, settings.parents, settings.base, self.merger.num_layers, self.dtype_name)
        recipe_yaml = recipe.to_yaml()
        key = recipe_key(recipe_yaml)
        trial.set_user_attr("recipe", recipe_yaml)
        trial.set_user_attr("recipe_key", key)
        duplicate = self._duplicate_of(trial, key)
        if duplicate is not None:
            return self._copy_result(trial, duplicate)

        start = time.perf_counter()
        model = self.merger.apply(recipe, seed=settings.seed)
        trial.set_user_attr("merge_s", round(time.perf_counter() - start, 4))
        self.trials_run += 1

        score_start = time.perf_counter()
        primary = self.objectives[0]
        fidelities = [1.0] if settings.multi_objective else settings.fidelities
        result = None
        for step, fidelity in enumerate(fidelities):
            result = primary.scorer.score(model, fidelity, previous=result)  # only the new items
            if math.isnan(result.accuracy):
                raise FloatingPointError("the score is NaN")
            trial.set_user_attr(f"accuracy@{fidelity}", result.accuracy)
            value = self._value(result.accuracy, 0, fidelity)
            if not settings.multi_objective and fidelity < 1.0:
                trial.report(value, step)
                if trial.should_prune():
                    trial.set_user_attr("score_s", round(time.perf_counter() - score_start, 4))
                    raise optuna.TrialPruned(f"pruned at fraction {fidelity}")
        self._record(trial, result, 0)
        values = [self._value(result.accuracy, 0, 1.0)]
        for index, objective in enumerate(self.objectives[1:], start=1):
            extra = objective.scorer.score(model, 1.0)
            self._record(trial, extra, index)
            values.append(extra.accuracy)  # retention of general skill: plain accuracy
        trial.set_user_attr("score_s", round(time.perf_counter() - score_start, 4))
        return values[0] if len(values) == 1 else tuple(values)

    def _refuse_surplus(self, trial: optuna.Trial) -> None:
        """Workers that start a trial at the same moment could overshoot --trials: a trial with
        the total already reached before it is not run (recorded as failed, which does not count)."""
        if self.total_trials is None:
            return
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
        earlier = [t for t in trial.study.get_trials(deepcopy=False, states=states) if t.number < trial.number]
        if len(earlier) >= self.total_trials:
            trial.study.stop()
            raise SurplusTrial(f"not run: the study already has its {self.total_trials} trials")

    def _value(self, accuracy: float, benchmark: int, fidelity: float) -> float:
        if self.settings.objective == "gain":
            return accuracy - max(self.parent_scores.at(benchmark, fidelity))
        return accuracy

    def _record(self, trial: optuna.Trial, result: ScoreResult, benchmark: int) -> None:
        parents = self.parent_scores.at(benchmark, 1.0)
        suffix = "" if benchmark == 0 else f"_b{benchmark}"
        trial.set_user_attr(f"accuracy{suffix}", result.accuracy)
        trial.set_user_attr(f"gain{suffix}", result.accuracy - max(parents))
        trial.set_user_attr(f"synergy{suffix}", result.accuracy - sum(parents) / len(parents))
        trial.set_user_attr(f"per_category{suffix}", result.per_category)
        trial.set_user_attr(f"correct{suffix}", correctness_string(result))

    def _duplicate_of(self, trial: optuna.Trial, key: str) -> Optional[optuna.trial.FrozenTrial]:
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        for other in trial.study.get_trials(deepcopy=False, states=states):
            if other.number != trial.number and other.user_attrs.get("recipe_key") == key:
                return other
        return None

    def _copy_result(self, trial: optuna.Trial, original: optuna.trial.FrozenTrial):
        """An identical recipe is not evaluated twice: reuse the earlier trial's outcome."""
        trial.set_user_attr("duplicate_of", original.number)
        for key, value in original.user_attrs.items():
            if key not in ("recipe", "recipe_key", "baseline", "duplicate_of", "merge_s", "score_s"):
                trial.set_user_attr(key, value)
        if original.state == optuna.trial.TrialState.PRUNED:
            raise optuna.TrialPruned(f"same recipe as pruned trial {original.number}")
        return original.values[0] if len(original.values) == 1 else tuple(original.values)


def _free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()

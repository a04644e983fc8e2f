"""What a study leaves in `results/<study>/`: the best recipe, the trials table, a summary, plots.

`best-recipe.yaml` is a mergekit YAML with absolute parent paths; `mergekit-yaml` on it builds the
same tensors as `evomerge merge` (the engine's contract). A two-benchmark study also writes its
Pareto front (`pareto.csv`, `pareto/trial-N.yaml`). Which trial is best, second best, …: one
ranking (`study.ranked_trials`), so summary.json's best trial is the one best-recipe.yaml holds.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional

import optuna
from optuna.importance import PedAnovaImportanceEvaluator
from optuna.trial import TrialState

from evomerge.errors import EvomergeError
from evomerge.files import atomic_path, write_text_atomic
from evomerge.recipe import Recipe, export_metadata_line, layer_position, paper_recipe
from evomerge.search.anchoring import ANCHOR_CHECK_ATTR
from evomerge.search.objective import ParentScores
from evomerge.search.run import HOLDOUT_ATTR
from evomerge.search.study import SearchSettings, load_settings, ranked_trials, stored_parent_scores, trial_attr
from evomerge.space import load_space


def recipe_of(trial: optuna.trial.FrozenTrial) -> Recipe:
    """A trial's recipe with absolute parent paths (so it works from any folder)."""
    recipe = Recipe.from_yaml(trial_attr(trial, "recipe"), source=f"trial {trial.number}")
    return recipe.with_models({name: str(Path(name).resolve()) for name in recipe.model_names})


def export_recipe(study: optuna.Study, out: Path, rank: int = 1) -> optuna.trial.FrozenTrial:
    ranked = ranked_trials(study)
    if not ranked:
        raise EvomergeError(f"study {study.study_name} has no complete trial yet")
    if not 1 <= rank <= len(ranked):
        raise EvomergeError(f"--rank {rank} is out of range: the study has {len(ranked)} complete trials")
    trial = ranked[rank - 1]
    out.parent.mkdir(parents=True, exist_ok=True)
    header = f"# evomerge study {study.study_name}, trial {trial.number}, rank {rank}: value {trial.values[0]:.4f}\n"
    write_text_atomic(out, header + export_metadata_line(export_metadata(study, trial, rank)) + recipe_of(trial).to_yaml())
    return trial


def export_metadata(study: optuna.Study, trial: optuna.trial.FrozenTrial, rank: int) -> dict:
    """Where an exported recipe came from, for the model card `evomerge merge` writes: the study,
    the trial and its rank, the benchmarks, the parents' and the trial's scores on the search
    items, and (for the study's best trial) the held-out scores with their interval and verdict."""
    settings = load_settings(study)
    parent_scores = ParentScores(stored_parent_scores(study) or {})
    held = study.user_attrs.get(HOLDOUT_ATTR) or {}
    return {
        "study": study.study_name,
        "trial": trial.number,
        "rank": rank,
        "objective": settings.objective,
        "value": trial.values[0],
        "benchmarks": settings.benchmarks,
        "parents": dict(zip(parent_scores.by_parent, parent_scores.at(0, 1.0))) if parent_scores.by_parent else {},
        "accuracy": trial.user_attrs.get("accuracy"),
        "gain": trial.user_attrs.get("gain"),
        "synergy": trial.user_attrs.get("synergy"),
        "holdout": {key: value for key, value in held.items()} if held.get("trial") == trial.number else None,
    }


def summarise(study: optuna.Study, wall_s: Optional[float] = None) -> dict:
    settings = load_settings(study)
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    parent_scores = ParentScores(stored_parent_scores(study) or {})
    parents = dict(zip(parent_scores.by_parent, parent_scores.at(0, 1.0)))
    ranked = ranked_trials(study)
    best = ranked[0] if ranked else None
    # The paper's recipe with each child it was queued for (one pair for two parents).
    baselines = {
        t.user_attrs.get("baseline_child", "?"): t.user_attrs.get("accuracy") for t in trials if t.user_attrs.get("baseline") and t.state == TrialState.COMPLETE
    }
    summary = {
        "study": study.study_name,
        "benchmarks": settings.benchmarks,
        "objective": settings.objective,
        "parents": parents,
        "best_parent": max(parents.values()) if parents else None,
        "parents_mean": sum(parents.values()) / len(parents) if parents else None,
        "best_trial": best.number if best else None,
        "best_value": best.values[0] if best else None,
        "best_accuracy": best.user_attrs.get("accuracy") if best else None,
        "gain": best.user_attrs.get("gain") if best else None,
        "gain_interval": gain_interval(best, parent_scores, settings.seed) if best else None,
        "synergy": best.user_attrs.get("synergy") if best else None,
        "best_models": Recipe.from_yaml(trial_attr(best, "recipe")).model_names if best else None,
        "labels": model_labels(settings),
        "baseline_accuracy": max(baselines.values()) if baselines else None,
        "baselines": baselines,
        "holdout": study.user_attrs.get(HOLDOUT_ATTR),
        "anchors": study.user_attrs.get(ANCHOR_CHECK_ATTR),  # --anchors: the estimate's fit error and the best trial's check
        "trials": counts,
        "duplicates_skipped": sum("duplicate_of" in t.user_attrs for t in trials),
        "stopped_because": study.user_attrs.get("stopped_because"),
    }
    if wall_s is not None:
        summary["wall_s"] = round(wall_s, 2)
    return summary


def model_labels(settings: SearchSettings) -> dict[str, str]:
    """What the labels in the trials' parameter names stand for (`weight.m1`, `child: m1` → a
    parent), from the study's space; {} if the space has none or its file is gone."""
    try:
        return load_space(settings.space).model_labels(settings.parents, settings.base)
    except EvomergeError:
        return {}


def gain_interval(trial: optuna.trial.FrozenTrial, parent_scores: ParentScores, seed: int) -> Optional[list[float]]:
    """[low, high]: the 95% paired bootstrap interval of the trial's gain over the best parent, from
    the per-item results the trial and the parents keep on the study (None if some are missing)."""
    from evomerge.analysis.metrics import DEFAULT_RESAMPLES, Bootstrap, gain_over_parents

    merged = trial_attr(trial, "correct")
    parents = [scores[0].get("correct") for scores in parent_scores.by_parent.values()]
    if not merged or not parents or any(p is None or len(p) != len(merged) for p in parents):
        return None

    def as_bools(text: str) -> list[bool]:
        return [c == "1" for c in text]

    bootstrap = Bootstrap(len(merged), DEFAULT_RESAMPLES, seed=seed)
    interval = gain_over_parents(as_bools(merged), [as_bools(p) for p in parents], bootstrap)
    return [interval.low, interval.high]


def write_trials_csv(study: optuna.Study, out: Path) -> None:
    trials = study.get_trials(deepcopy=False)
    param_names = sorted({name for t in trials for name in t.params})
    attr_names = ["baseline", "accuracy", "gain", "synergy", "merge_s", "score_s", "duplicate_of", "fail_reason", "worker"]
    fidelity_names = sorted({k for t in trials for k in t.user_attrs if k.startswith("accuracy@")})
    with atomic_path(out) as partial, open(partial, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["number", "state", "values", *attr_names, *fidelity_names, *param_names])
        for t in trials:
            values = ";".join(f"{v:.6g}" for v in t.values) if t.values else ""
            writer.writerow(
                [t.number, t.state.name, values]
                + [t.user_attrs.get(name, "") for name in attr_names + fidelity_names]
                + [t.params.get(name, "") for name in param_names]
            )


def write_pareto(study: optuna.Study, folder: Path) -> None:
    on_front = {t.number for t in study.best_trials}
    front = [t for t in ranked_trials(study) if t.number in on_front]  # in the study's ranking
    (folder / "pareto").mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "pareto.csv") as partial, open(partial, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["number", "domain", "general", "recipe"])
        for t in front:
            path = folder / "pareto" / f"trial-{t.number}.yaml"
            write_text_atomic(path, recipe_of(t).to_yaml())
            writer.writerow([t.number, t.values[0], t.values[1], path.name])


def write_plots(study: optuna.Study, folder: Path, summary: dict) -> list[Path]:
    """The optimisation history, the parameters' importances and (SLERP) t over depth against the
    paper's schedule, for a one-benchmark study; `summary` is `summarise(study)`. The numbers are
    read here, the figures drawn by `analysis.plots`."""
    from evomerge.analysis import plots

    written = []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete or len(study.directions) > 1:
        return written
    baseline = next(((t.number, t.values[0]) for t in complete if t.user_attrs.get("baseline")), None)
    best_parent = summary["best_parent"] if summary["objective"] == "accuracy" else None
    written.append(
        plots.optimisation_history(
            [t.number for t in complete],
            [t.values[0] for t in complete],
            folder / "history.png",
            title=f"{study.study_name}: optimisation history",
            ylabel=summary["objective"],
            baseline=baseline,
            best_parent=best_parent,
            pruned=pruned_points(study),
        )
    )
    try:
        importances = optuna.importance.get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
    except Exception:  # too few or identical trials: no importances to draw
        importances = {}
    if importances:
        written.append(plots.importances(importances, folder / "importances.png"))

    best = next(t for t in complete if t.number == summary["best_trial"])
    recipe = Recipe.from_yaml(trial_attr(best, "recipe"))
    if recipe.merge_method == "slerp":
        layers = load_num_layers(recipe)
        paper = paper_recipe(*recipe.model_names[:2])
        positions = [layer_position(i, layers) for i in range(layers)]
        curves = {}
        for module in ("self_attn", "mlp"):
            names = [f"model.layers.{i}.{module}.x.weight" for i in range(layers)]
            curves[module] = tuple([r.parameter("t", n, p) for n, p in zip(names, positions)] for r in (recipe, paper))
        title = f"SLERP t over depth, trial {best.number} vs the paper's schedule"
        written.append(plots.t_over_layers(curves, folder / "t-over-layers.png", title=title))
    return written


def pruned_points(study: optuna.Study) -> list[tuple[int, float, float]]:
    """Each pruned trial as (number, fraction, value): the value it reported at the last benchmark
    fraction it was scored on (its k-th report is the k-th fraction of --fidelities). A duplicate
    of a pruned recipe reported nothing of its own and is left out (its original is drawn)."""
    fidelities = load_settings(study).fidelities
    points = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)):
        reports = trial.intermediate_values
        if reports:
            points.append((trial.number, fidelities[len(reports) - 1], reports[max(reports)]))
    return points


def load_num_layers(recipe: Recipe) -> int:
    from evomerge.merge.parents import inspect_parent

    return inspect_parent(recipe.model_names[0]).num_layers


def export_all(study: optuna.Study, folder: Path, wall_s: Optional[float] = None, stopped_because: Optional[str] = None) -> dict:
    """Everything a finished (or interrupted) study leaves in its results folder.
    `stopped_because`: why this run ended early (an interrupt), recorded in the summary."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarise(study, wall_s)
    if stopped_because is not None:
        summary["stopped_because"] = stopped_because
    if summary["best_trial"] is not None:
        export_recipe(study, folder / "best-recipe.yaml")
        if len(study.directions) > 1:
            write_pareto(study, folder)
        write_plots(study, folder, summary)
    write_trials_csv(study, folder / "trials.csv")
    write_text_atomic(folder / "summary.json", json.dumps(summary, indent=2))
    return summary

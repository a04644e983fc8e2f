"""What a search costs to reach the best recipe: questions scored (and seconds) until the best so far
comes within 1 point of a reference best, per method, over several seeds, in one run.

The reference is one long unpruned search of the same pair, space and benchmark (`--reference-trials`,
cached on disk under `--cache-dir`, keyed on everything that changes it, the parents' weights
included). Each method (a pruner, optionally with its own sampler: `halving/cmaes`) then runs
`--trials` trials per seed; walking its trials in order, "questions" adds up the search items each
trial actually scored (a trial pruned after the first fraction scored only that fraction; a
duplicate of an earlier recipe scored none), and the target is reached at the first completed
trial whose value is within `--target-points` of the reference best. That trial's recipe is then
scored on the held-out items the search never saw. The parents are loaded, and scored alone, once
for the whole run (what every study does first is the same for all methods and is not counted).

Output: progress and one JSON line per seed and method; the last line is one JSON object with
`baseline` (the reference), and per method `questions_to_target` (mean over the seeds that reached
it; null if none did), `reached` (how many seeds did), `seconds_to_target`, `holdout_at_target`,
`best_found` and `questions_total`.

    python perf/search_cost.py [--parents A,B] [--benchmark PATH] [--methods none,halving,hyperband,median]
        [--trials 30] [--seeds 0,1,2] [--reference-trials 100] [--space slerp_gradient] [--sampler tpe]

A method `PRUNER+warm` runs with `--warm-start` (this script's); `PRUNER+anchorsK` with `--anchors K` (search/anchoring.py); its rows also give the
estimates' error against each estimated recipe's score on every search item (scored apart, not
counted as questions).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import optuna
from optuna.trial import TrialState

from evomerge.errors import EvomergeError
from evomerge.evaluate.benchmark import load_benchmark
from evomerge.merge.parents import fingerprint
from evomerge.search.objective import TrialRunner
from evomerge.search.run import optimise, prepare
from evomerge.search.study import PRUNERS, SAMPLERS, SearchSettings, trial_attr

TOY = Path("results/toy")


def trial_questions(trial: optuna.trial.FrozenTrial, count) -> int:
    """Search items this trial scored: up to the largest fraction it reached, or its anchors
    (none for a duplicate)."""
    if "duplicate_of" in trial.user_attrs:
        return 0
    if "items_scored" in trial.user_attrs:
        return int(trial.user_attrs["items_scored"])
    reached = [float(key.split("@", 1)[1]) for key in trial.user_attrs if key.startswith("accuracy@")]
    return count(max(reached)) if reached else 0


def trial_seconds(trial: optuna.trial.FrozenTrial) -> float:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return 0.0
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def cost_to_target(study: optuna.Study, count, target: float, full_scores: Optional[dict[int, float]] = None) -> dict:
    """Walk the study's trials in order: questions and seconds until the best completed value
    reaches `target` (None if it never does), the recipe that reached it, and the totals. An
    estimated trial (`--anchors`) is judged by its score on every search item (`full_scores`, by
    trial number): what its recipe is really worth, not what the estimate said."""
    full_scores = full_scores or {}
    questions = seconds = 0.0
    best, reached = float("-inf"), None
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        questions += trial_questions(trial, count)
        seconds += trial_seconds(trial)
        if trial.state == TrialState.COMPLETE:
            value = full_scores.get(trial.number, trial.value)
            best = max(best, value)
            if reached is None and value >= target - 1e-12:
                reached = {"questions": int(questions), "seconds": round(seconds, 2), "trial": trial.number, "recipe": trial_attr(trial, "recipe")}
    return {"reached": reached, "best": best, "questions_total": int(questions), "seconds_total": round(seconds, 2)}


@dataclass(frozen=True)
class Method:
    label: str
    pruner: str
    sampler: str
    anchors: int = 0  # `+anchorsK`: --anchors K
    warm: bool = False  # `+warm`: --warm-start (this script's --warm-start study)


def parse_methods(text: str, default_sampler: str) -> list[Method]:
    """`none,halving/cmaes,median+anchors30,median+warm` → Methods; SystemExit(2) on an unknown name."""
    methods = []
    usage = f"each is PRUNER[/SAMPLER][+anchorsK][+warm], pruners {', '.join(PRUNERS)}, samplers {', '.join(SAMPLERS)}, K > 0"
    for label in dict.fromkeys(m.strip() for m in text.split(",") if m.strip()):
        method, *modifiers = label.split("+")
        pruner, _, sampler = method.partition("/")
        sampler = sampler or default_sampler
        if pruner not in PRUNERS or sampler not in SAMPLERS:
            fail(f"--methods: {usage}; got {label!r}")
        anchors, warm = 0, False
        for modifier in modifiers:
            count = modifier.removeprefix("anchors")
            if modifier == "warm":
                warm = True
            elif modifier.startswith("anchors") and count.isdigit() and int(count) > 0:
                anchors = int(count)
            else:
                fail(f"--methods: {usage}; got {label!r}")
        methods.append(Method(label, pruner, sampler, anchors, warm))
    if not methods:
        fail("--methods: name at least one pruner")
    return methods


def full_scores_of_estimates(study: optuna.Study, runner: TrialRunner) -> dict[int, float]:
    """Each estimated trial's (`--anchors`) accuracy on every search item, by trial number
    (scored here, not counted as the search's questions; a copy of a trial gets its score)."""
    scores: dict[str, float] = {}  # by recipe key
    result = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if "estimated" in trial.user_attrs:
            key = trial.user_attrs["recipe_key"]
            if key not in scores:
                scores[key] = runner.full_search_score(trial_attr(trial, "recipe")).accuracy
            result[trial.number] = scores[key]
    return result


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def reference_key(settings: SearchSettings, fingerprints: list[str], benchmark_path: Path) -> str:
    fields = {
        "fingerprints": fingerprints,
        "benchmark": hashlib.sha256(benchmark_path.read_bytes()).hexdigest(),
        **{k: getattr(settings, k) for k in ("base", "space", "sampler", "fidelities", "holdout", "objective", "seed", "protocol", "trials", "dtype")},
    }
    if settings.base in settings.parents:
        fields["base"] = settings.parents.index(settings.base)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def run_study(settings: SearchSettings, runner: TrialRunner, parent_scores: dict) -> optuna.Study:
    """One search on the shared runner (parents loaded once, scored once for the whole run)."""
    runner.settings = settings  # the study's fidelities, seed and storage; the benchmark is the same
    study, _ = optimise(prepare(settings), runner=runner, parent_scores=lambda: parent_scores)
    return study


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parents", default=f"{TOY}/xs/instruct,{TOY}/xs/instruct-CPT-SFT", help="two model folders; the first is the base")
    parser.add_argument("--benchmark", default=f"{TOY}/world/domain_benchmark.jsonl")
    parser.add_argument("--space", default="slerp_gradient")
    parser.add_argument("--sampler", default="tpe", help="the sampler of the reference and of every method without its own")
    parser.add_argument("--methods", default="none,halving,hyperband,median", help="comma-separated PRUNER[/SAMPLER][+anchorsK]")
    parser.add_argument("--trials", type=int, default=30, help="trials per method and seed")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--reference-trials", type=int, default=100, help="trials of the unpruned reference search (cached)")
    parser.add_argument("--target-points", type=float, default=1.0, help="within this many accuracy points of the reference best")
    parser.add_argument("--holdout", type=float, default=0.2)
    parser.add_argument("--protocol", default="paper")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warm-start", help="STUDY[@STORAGE]: what a `+warm` method starts from (a finished study, e.g. at a smaller scale)")
    parser.add_argument("--cache-dir", default="results/search-cost", help="where the reference search's result is kept")
    args = parser.parse_args(argv)

    methods = parse_methods(args.methods, args.sampler)
    if any(method.warm for method in methods) and not args.warm_start:
        fail("--methods: a +warm method needs --warm-start STUDY[@STORAGE]")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        fail(f"--seeds: comma-separated integers, got {args.seeds!r}")
    if not seeds or args.trials < 1 or args.reference_trials < 1:
        fail("--seeds needs at least one seed; --trials and --reference-trials at least 1")
    parents = [p.strip() for p in args.parents.split(",") if p.strip()]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()

    base = SearchSettings(
        parents=parents,
        benchmarks=[args.benchmark],
        base=parents[0] if parents else None,
        space=args.space,
        sampler=args.sampler,
        pruner="none",
        holdout=args.holdout,
        protocol=args.protocol,
        device=args.device,
        trials=args.reference_trials,
        seed=10_000,  # the reference's own seed: none of the methods' seeds
    )
    try:
        prepared = prepare(replace(base, storage="sqlite:///:memory:"))
    except EvomergeError as error:
        fail(str(error))
    search_items, _ = load_benchmark(args.benchmark).split_holdout(args.holdout)
    count = search_items.count
    say = lambda text: print(f"[{time.perf_counter() - started:7.1f}s] {text}", flush=True)
    say(f"{len(search_items)} search items; loading the parents and scoring each alone once")
    runner = TrialRunner.load(prepared.settings, prepared.infos, prepared.space)
    parent_scores = runner.compute_parent_scores()
    parents_full = {Path(p).name: round(scores[0]["fidelity"]["1.0"], 4) for p, scores in parent_scores.items()}

    cache = Path(args.cache_dir)
    key = reference_key(base, [fingerprint(info) for info in prepared.infos], Path(args.benchmark))
    cached_file = cache / f"reference-{key}.json"
    with tempfile.TemporaryDirectory() as tmp:
        if cached_file.is_file():
            reference = json.loads(cached_file.read_text())
            say(f"reference: cached in {cached_file} (best {reference['best']:.4f})")
        else:
            say(f"reference: {args.reference_trials} unpruned trials with {args.sampler} (cached afterwards in {cached_file})")
            settings = replace(base, study="reference", storage=f"sqlite:///{Path(tmp) / 'reference.db'}")
            study = run_study(settings, runner, parent_scores)
            best = max((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))), key=lambda t: (t.value, -t.number))
            held = runner.holdout_score(trial_attr(best, "recipe"))
            reference = {
                "best": best.value,
                "trial": best.number,
                "holdout": held.accuracy if held else None,
                "trials": args.reference_trials,
                "sampler": args.sampler,
                "seconds": round(time.perf_counter() - started, 1),
                "recipe": trial_attr(best, "recipe"),
            }
            cache.mkdir(parents=True, exist_ok=True)
            cached_file.write_text(json.dumps(reference, indent=1))
            say(f"reference best {reference['best']:.4f} (trial {best.number}), held-out {reference['holdout']}")
        target = reference["best"] - args.target_points / 100

        runs: dict[str, list[dict]] = {method.label: [] for method in methods}
        for seed in seeds:
            for method in methods:
                label, anchors = method.label, method.anchors
                name = f"{label.replace('/', '-').replace('+', '-')}-{seed}"
                settings = replace(
                    base, pruner=method.pruner, sampler=method.sampler, anchors=anchors, seed=seed, trials=args.trials,
                    study=name, storage=f"sqlite:///{Path(tmp) / name}.db", warm_start=args.warm_start if method.warm else None,
                )  # fmt: skip
                runner._anchors = None  # a new study fits its own
                study = run_study(settings, runner, parent_scores)
                full = full_scores_of_estimates(study, runner) if anchors else {}
                cost = cost_to_target(study, count, target, full)
                reached = cost.pop("reached")
                row = {"method": label, "seed": seed, **cost, "questions_to_target": None, "seconds_to_target": None, "holdout_at_target": None}
                if anchors:
                    errors = [study.trials[number].value - score for number, score in full.items()]
                    row["estimate_error_mean_abs"] = round(statistics.mean(abs(e) for e in errors), 4) if errors else None
                    row["estimate_error_mean"] = round(statistics.mean(errors), 4) if errors else None
                    row["estimated_trials"] = len(errors)
                    row["anchors_used"] = len(runner._anchors.indices) if runner._anchors else None
                if reached is not None:
                    held = runner.holdout_score(reached["recipe"])
                    row.update(questions_to_target=reached["questions"], seconds_to_target=reached["seconds"], trial_at_target=reached["trial"])
                    row["holdout_at_target"] = held.accuracy if held else None
                print(json.dumps(row), flush=True)
                runs[label].append(row)

    def mean(values: list) -> Optional[float]:
        values = [v for v in values if v is not None]
        return round(statistics.mean(values), 4) if values else None

    summary = {
        "parents": parents,
        "parents_accuracy": parents_full,
        "benchmark": args.benchmark,
        "space": args.space,
        "sampler": args.sampler,
        "search_items": len(search_items),
        "fidelities": base.fidelities,
        "trials": args.trials,
        "seeds": seeds,
        "target_points": args.target_points,
        "baseline": {k: v for k, v in reference.items() if k != "recipe"} | {"target": round(target, 4)},
        "questions_to_target": {label: mean([r["questions_to_target"] for r in rows]) for label, rows in runs.items()},
        "reached": {label: f"{sum(r['questions_to_target'] is not None for r in rows)}/{len(rows)}" for label, rows in runs.items()},
        "seconds_to_target": {label: mean([r["seconds_to_target"] for r in rows]) for label, rows in runs.items()},
        "holdout_at_target": {label: mean([r["holdout_at_target"] for r in rows]) for label, rows in runs.items()},
        "best_found": {label: mean([r["best"] for r in rows]) for label, rows in runs.items()},
        "questions_total": {label: mean([r["questions_total"] for r in rows]) for label, rows in runs.items()},
        "estimate_error_mean_abs": {label: mean([r.get("estimate_error_mean_abs") for r in rows]) for label, rows in runs.items() if "+" in label},
        "estimate_error_mean": {label: mean([r.get("estimate_error_mean") for r in rows]) for label, rows in runs.items() if "+" in label},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

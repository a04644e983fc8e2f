"""What pruning saves, measured: the same search with each pruner and without, in one run.

On the xs toy parents (Instruct × Instruct-CPT-SFT, built or reused under results/toy), the demo's
search (default space, fidelities and holdout) runs for each seed once with `--pruner none` and
once with each pruner of `--pruners`, for the same number of trials. "Questions" counts the
benchmark items each trial actually scored (a trial pruned after the first fidelity scored only
that fraction; an identical recipe copied from an earlier trial scored none). Target, per pruner:
the best accuracy found within 1 point of the unpruned search's, with at most half the questions.

Output, one JSON object per line: the setup (the number of search items among them), one line per
seed, then one summary line per pruner against `none`.

    python perf/pruning.py [--pruners halving,hyperband] [--trials 30] [--seeds 0,1,2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import optuna
from optuna.trial import TrialState

from evomerge.demo import build_demo_parents, demo_settings
from evomerge.evaluate.benchmark import load_benchmark
from evomerge.search.run import optimise, prepare
from evomerge.search.study import PRUNERS, SearchSettings

REFERENCE = "none"


def questions_scored(study: optuna.Study, count) -> int:
    """Items scored across the study's trials: each trial up to the largest fraction it reached."""
    total = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if "duplicate_of" in trial.user_attrs:
            continue  # its result was copied, nothing was scored
        reached = [float(key.split("@", 1)[1]) for key in trial.user_attrs if key.startswith("accuracy@")]
        total += count(max(reached)) if reached else 0
    return total


def run_search(settings: SearchSettings) -> dict:
    start = time.perf_counter()
    study, runner = optimise(prepare(settings))
    count = runner.objectives[0].scorer.benchmark.count
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {
        "best": max(t.value for t in complete),
        "questions": questions_scored(study, count),
        "pruned": states.count(TrialState.PRUNED),
        "complete": states.count(TrialState.COMPLETE),
        "seconds": round(time.perf_counter() - start, 1),
    }


def search_item_count(settings: SearchSettings) -> int:
    """The items a trial is scored on: the benchmark less its held-out split."""
    search, _ = load_benchmark(settings.benchmarks[0]).split_holdout(settings.holdout)
    return len(search)


def parse_pruners(text: str) -> list[str]:
    pruners = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in pruners if name not in PRUNERS]
    if not pruners or unknown:
        raise SystemExit(f"--pruners: choose from {', '.join(PRUNERS)}, comma-separated; got {text!r}")
    return [name for name in dict.fromkeys(pruners) if name != REFERENCE]  # each is compared with none


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pruners", default=SearchSettings.pruner, help=f"comma-separated, from {', '.join(PRUNERS)} (default: the search's)")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--toy-dir", default="results/toy")
    args = parser.parse_args()
    pruners = parse_pruners(args.pruners)
    seeds = [int(s) for s in args.seeds.split(",")]
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    build = build_demo_parents(Path(args.toy_dir), device=args.device, progress=print)
    base = demo_settings(build, trials=args.trials, device=args.device)
    print(json.dumps({"search_items": search_item_count(base), "holdout": base.holdout, "fidelities": base.fidelities, "trials": args.trials, "seeds": seeds}))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            row = {"seed": seed}
            for pruner in [REFERENCE, *pruners]:
                settings = replace(base, seed=seed, pruner=pruner, study=f"pruning-{pruner}-{seed}", storage=f"sqlite:///{Path(tmp) / f'{pruner}-{seed}.db'}")
                row[pruner] = run_search(settings)
            print(json.dumps(row))
            rows.append(row)

    best_unpruned = statistics.mean(r[REFERENCE]["best"] for r in rows)
    questions_unpruned = sum(r[REFERENCE]["questions"] for r in rows)
    for pruner in pruners:
        best = statistics.mean(r[pruner]["best"] for r in rows)
        questions = sum(r[pruner]["questions"] for r in rows)
        ratio = questions / questions_unpruned
        print(json.dumps({
            "pruner": pruner,
            "best": round(best, 4),
            "best_unpruned": round(best_unpruned, 4),
            "best_gap_points": round(100 * (best_unpruned - best), 2),
            "questions": questions,
            "questions_unpruned": questions_unpruned,
            "question_ratio": round(ratio, 3),
            "pruned_trials": [r[pruner]["pruned"] for r in rows],
            "target_met": abs(best_unpruned - best) <= 0.01 and ratio <= 0.5,
        }))  # fmt: skip


if __name__ == "__main__":
    main()

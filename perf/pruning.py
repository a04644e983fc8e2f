"""What pruning saves, measured: the same search with the default pruner and without, in one run.

On the xs toy parents (Instruct × Instruct-CPT-SFT, built or reused under results/toy), the demo's
search (default space, fidelities and holdout) runs for each seed twice, with `--pruner` as the
defaults set it and with `--pruner none`, for the same number of trials. "Questions" counts the
benchmark items each trial actually scored (a trial pruned after the first fidelity scored only
that fraction; an identical recipe copied from an earlier trial scored none). Target: the best
accuracy found within 1 point, with at most half the questions. The last line is one JSON object.

    python perf/pruning.py [--trials 30] [--seeds 0,1,2] [--device cpu]
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

from evomerge.demo import demo_settings
from evomerge.search.run import optimise, prepare
from evomerge.search.study import SearchSettings
from evomerge.toy.build import build_toy


def questions_scored(study: optuna.Study, count) -> int:
    """Items scored across the study's trials: each trial up to the largest fraction it reached."""
    total = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if "duplicate_of" in trial.user_attrs:
            continue  # its result was copied, nothing was scored
        reached = [float(key.split("@", 1)[1]) for key in trial.user_attrs if key.startswith("accuracy@")]
        total += count(max(reached)) if reached else 0
    return total


def run_search(settings: SearchSettings) -> tuple[float, int, dict]:
    start = time.perf_counter()
    study, runner = optimise(prepare(settings))
    count = runner.objectives[0].scorer.benchmark.count
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = max(t.value for t in complete)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    stats = {"pruned": states.count(TrialState.PRUNED), "complete": states.count(TrialState.COMPLETE), "seconds": round(time.perf_counter() - start, 1)}
    return best, questions_scored(study, count), stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--toy-dir", default="results/toy")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    build = build_toy("xs", args.toy_dir, device=args.device, parents=("instruct", "instruct-CPT-SFT"), progress=print)
    base = demo_settings(build, trials=args.trials, device=args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            row = {"seed": seed}
            for label, pruner in (("pruned", base.pruner), ("unpruned", "none")):
                settings = replace(base, seed=seed, pruner=pruner, study=f"pruning-{label}-{seed}", storage=f"sqlite:///{Path(tmp) / f'{label}-{seed}.db'}")
                best, questions, stats = run_search(settings)
                row.update({f"best_{label}": best, f"questions_{label}": questions, f"{label}_trials": stats})
            print(json.dumps(row))
            rows.append(row)

    best_pruned = statistics.mean(r["best_pruned"] for r in rows)
    best_unpruned = statistics.mean(r["best_unpruned"] for r in rows)
    questions_pruned = sum(r["questions_pruned"] for r in rows)
    questions_unpruned = sum(r["questions_unpruned"] for r in rows)
    ratio = questions_pruned / questions_unpruned
    print(json.dumps({
        "best_pruned": round(best_pruned, 4),
        "best_unpruned": round(best_unpruned, 4),
        "best_gap_points": round(100 * (best_unpruned - best_pruned), 2),
        "questions_pruned": questions_pruned,
        "questions_unpruned": questions_unpruned,
        "question_ratio": round(ratio, 3),
        "target_met": abs(best_unpruned - best_pruned) <= 0.01 and ratio <= 0.5,
        "pruner": base.pruner,
        "fidelities": base.fidelities,
        "trials": args.trials,
        "seeds": [r["seed"] for r in rows],
    }))  # fmt: skip


if __name__ == "__main__":
    main()

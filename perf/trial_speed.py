"""One search trial in memory against the on-disk loop mergekit-evolve runs, in one run.

Two ~20M-parameter parents (random init; a child perturbed from an "instruct" model), the paper's
SLERP recipe, 200 multiple-choice items scored by log-likelihood:
  (a) evomerge: `Merger.apply(recipe)` into the resident model, then `Scorer.score` (items
      tokenised once per study);
  (b) on disk, as mergekit-evolve runs each trial: mergekit's `run_merge` (what `mergekit-yaml`
      runs) to a folder, then mergekit-evolve's own `evaluate_model`: lm-eval loads the folder and
      scores the same items (its task index built once, as mergekit-evolve does).
Both give the same accuracy. The last line is one JSON object with the medians and the speed-up.

    python perf/trial_speed.py [--shape llama-vocab|narrow-vocab] [--repeats 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import tempfile
from pathlib import Path

import torch
from _common import SHAPES, make_model, median_time, synthetic_items  # first: it sets the offline environment

from evomerge.evaluate.benchmark import make_benchmark
from evomerge.evaluate.harness import export_lm_eval_task, find_task
from evomerge.evaluate.scorer import Scorer
from evomerge.merge.merger import Merger, resolve_device
from evomerge.recipe import paper_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-vocab")
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import logging

    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    device = resolve_device(args.device)
    benchmark = make_benchmark("perf", synthetic_items(args.items))
    with tempfile.TemporaryDirectory() as tmp:
        instruct, child = Path(tmp) / "instruct", Path(tmp) / "child"
        state = make_model(instruct, args.shape, benchmark.items, seed=0)
        make_model(child, args.shape, benchmark.items, seed=1, from_state=state, noise=0.1)
        recipe = paper_recipe(str(instruct), str(child), dtype="float32")
        tokenizer = AutoTokenizer.from_pretrained(instruct)

        # (a) in memory: what every trial after the first costs in a study
        merger = Merger.load([instruct, child], device=device, dtype=torch.float32)
        scorer = Scorer.load(benchmark, tokenizer, protocol="loglik", chat=False)
        merger.apply(recipe)  # the first trial also computes the angles once per study
        evomerge_s, memory_result = median_time(lambda: scorer.score(merger.apply(recipe)), args.repeats, device)

        # (b) on disk, as mergekit-evolve's per-trial helpers do: run_merge to a temporary folder,
        # lm-eval loads it (HFLM), scores it, and the folder is deleted
        from lm_eval import simple_evaluate

        task_dir = Path(tmp) / "tasks"
        task = export_lm_eval_task(benchmark, task_dir)
        task_manager = find_task(task, task_dir)  # built once per search, as mergekit-evolve does
        repeats = itertools.count()

        def on_disk_trial() -> float:
            out = Path(tmp) / f"merged-{next(repeats)}"
            run_merge(recipe.to_mergekit(), str(out), options=MergeOptions(device=str(device), quiet=True))
            # The call mergekit.evo.helpers.evaluate_model makes (importing it needs vllm).
            result = simple_evaluate(
                model="huggingface",
                model_args={"pretrained": str(out), "dtype": "float32", "use_cache": True, "device": str(device)},
                tasks=[task],
                log_samples=False,
                verbosity="WARNING",
                task_manager=task_manager,
                batch_size=16,
            )
            shutil.rmtree(out)
            return result["results"][task]["acc,none"]

        disk_s, disk_accuracy = median_time(on_disk_trial, args.repeats, device)

    print(f"parents: 2 x {sum(t.numel() for t in state.values()) / 1e6:.1f}M parameters on {device}; {len(benchmark)} items (loglik)")
    print(f"evomerge in-memory trial   median {evomerge_s:.3f} s  accuracy {memory_result.accuracy:.3f}")
    print(f"mergekit-evolve on-disk loop   median {disk_s:.3f} s  accuracy {disk_accuracy:.3f}")
    print(
        json.dumps(
            {
                "shape": args.shape,
                "items": len(benchmark),
                "evomerge_trial_s": round(evomerge_s, 4),
                "on_disk_trial_s": round(disk_s, 4),
                "speedup": round(disk_s / evomerge_s, 2),
                "same_accuracy": abs(memory_result.accuracy - disk_accuracy) < 1e-12,
            }
        )
    )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()

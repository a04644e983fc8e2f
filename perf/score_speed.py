"""How fast does the builtin scorer score a resident model, against lm-eval, in one run?

A ~20M-parameter Llama-shaped model (random init) with a byte-level BPE tokenizer scores 200
multiple-choice items in `loglik` mode (a) with evomerge's Scorer (items tokenised once, batched,
logits only where an option is read) and (b) through lm-eval's `simple_evaluate` on the same items
exported as an lm-eval task, with the model passed in memory (no reload). Both must give the same
accuracy, item for item: the script exits with status 1 when they do not. Also reports items/second
for the paper protocol (greedy decoding).

    python perf/score_speed.py [--items 200] [--device cpu|cuda] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import SHAPES, make_model, median_time, synthetic_items  # first: it sets the offline environment

from evomerge.devices import resolve_device
from evomerge.evaluate.benchmark import make_benchmark
from evomerge.evaluate.harness import HarnessScorer, export_lm_eval_task
from evomerge.evaluate.scorer import Scorer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-vocab")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(args.device)
    benchmark = make_benchmark("perf", synthetic_items(args.items))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        make_model(model_dir, args.shape, benchmark.items)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir).to(device).eval()
        n_params = sum(p.numel() for p in model.parameters())
        print(f"model: {n_params / 1e6:.1f}M parameters on {device}; {len(benchmark)} mc items")

        start = time.perf_counter()
        builtin = Scorer.load(benchmark, tokenizer, protocol="loglik", batch_size=args.batch_size, chat=False)
        tokenise_s = time.perf_counter() - start
        builtin_s, builtin_result = median_time(lambda: builtin.score(model), args.repeats, device)

        task_dir = Path(tmp) / "tasks"
        task = export_lm_eval_task(benchmark, task_dir)
        harness = HarnessScorer.load(task, tokenizer, task_dir, batch_size=args.batch_size)
        lm_eval_s, lm_eval_result = median_time(lambda: harness.score(model), args.repeats, device)

        paper = Scorer.load(benchmark, tokenizer, protocol="paper", batch_size=args.batch_size, chat=False)
        paper_s, _ = median_time(lambda: paper.score(model), args.repeats, device)

    same = builtin_result.accuracy == lm_eval_result.accuracy
    same_items = builtin_result.correct == lm_eval_result.correct
    print(f"builtin loglik  median {builtin_s:.3f} s  (tokenising once: {tokenise_s:.3f} s)  accuracy {builtin_result.accuracy:.3f}")
    print(f"lm-eval loglik  median {lm_eval_s:.3f} s  accuracy {lm_eval_result.accuracy:.3f}")
    print(f"paper protocol  median {paper_s:.3f} s  ({len(benchmark) / paper_s:.0f} items/s)")
    print(
        json.dumps(
            {
                "shape": args.shape,
                "items": len(benchmark),
                "params": n_params,
                "device": str(device),
                "builtin_s": round(builtin_s, 4),
                "lm_eval_s": round(lm_eval_s, 4),
                "speedup": round(lm_eval_s / builtin_s, 2),
                "same_accuracy": same,
                "same_per_item": same_items,
                "accuracy": builtin_result.accuracy,
                "paper_items_per_s": round(len(benchmark) / paper_s, 1),
            }
        )
    )
    return 0 if same and same_items else 1


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())

"""Choose a scorer from what the user asked for: a shipped benchmark, a JSONL path, or lm-eval:TASK."""

from __future__ import annotations

import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from evomerge.errors import EvomergeError
from evomerge.evaluate.benchmark import Benchmark, load_benchmark
from evomerge.evaluate.harness import HarnessScorer, export_lm_eval_task, is_lm_eval_spec
from evomerge.evaluate.scorer import Scorer

BACKENDS = ("builtin", "lm-eval")


@dataclass
class Objective:
    """A ready scorer, and the benchmark split it scores (None for an lm-eval task)."""

    scorer: Union[Scorer, HarnessScorer]
    benchmark: Optional[Benchmark]
    holdout: Optional[Benchmark]
    backend: str
    protocol: str


def make_objective(
    benchmark: str,
    tokenizer,
    *,
    protocol: str = "paper",
    backend: str = "builtin",
    batch_size: int = 16,
    chat: Optional[bool] = None,
    tasks_dir: Optional[Union[str, Path]] = None,
    holdout: float = 0.0,
) -> Objective:
    if backend not in BACKENDS:
        raise EvomergeError(f"unknown backend {backend!r}; expected builtin or lm-eval")
    if is_lm_eval_spec(benchmark):
        if holdout:
            raise EvomergeError("--holdout applies to evomerge benchmarks; an lm-eval task has its own splits")
        return Objective(HarnessScorer(benchmark, tokenizer, tasks_dir, batch_size), None, None, "lm-eval", "loglik")
    loaded = load_benchmark(benchmark)
    # Items marked `split: holdout` are held out even without --holdout.
    search, held = loaded.split_holdout(holdout)
    held = held if len(held) else None
    if backend == "lm-eval":
        if protocol != "loglik":
            raise EvomergeError("the lm-eval backend scores by log-likelihood: use --protocol loglik")
        folder = tempfile.mkdtemp(prefix="evomerge-lm-eval-")
        # The same prompts as the builtin scorer: with the chat template when it would use one.
        use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
        try:
            task = export_lm_eval_task(search, folder, tokenizer if use_chat else None)
            scorer = HarnessScorer(task, tokenizer, folder, batch_size)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        # The exported task lives as long as the scorer that reads it (removed at exit at the latest).
        weakref.finalize(scorer, shutil.rmtree, folder, ignore_errors=True)
        return Objective(scorer, search, held, "lm-eval", "loglik")
    scorer = Scorer(search, tokenizer, protocol=protocol, batch_size=batch_size, chat=chat)
    return Objective(scorer, search, held, "builtin", protocol)

"""`--backend lm-eval`: lm-eval's `simple_evaluate` on an `lm-eval:TASK`, or on a benchmark file
exported as an lm-eval task (log-likelihood, the same prompts as the builtin scorer)."""

from __future__ import annotations

import shutil
import tempfile
import weakref

from evomerge.errors import EvomergeError
from evomerge.evaluate.backends.base import Objective, ScorerBackend
from evomerge.evaluate.benchmark import load_benchmark
from evomerge.evaluate.harness import HarnessScorer, export_lm_eval_task, is_lm_eval_spec


class LmEvalBackend(ScorerBackend):
    name = "lm-eval"
    description = "lm-eval's simple_evaluate (log-likelihood), on its tasks or an exported benchmark"

    def objective(self, benchmark, tokenizer, *, protocol="paper", batch_size=16, chat=None, tasks_dir=None, holdout=0.0) -> Objective:
        if is_lm_eval_spec(benchmark):
            if holdout:
                raise EvomergeError("--holdout applies to evomerge benchmarks; an lm-eval task has its own splits")
            return Objective(HarnessScorer.load(benchmark, tokenizer, tasks_dir, batch_size), None, None, self.name, "loglik")
        if protocol != "loglik":
            raise EvomergeError("the lm-eval backend scores by log-likelihood: use --protocol loglik")
        search, held = load_benchmark(benchmark).split_holdout(holdout)
        folder = tempfile.mkdtemp(prefix="evomerge-lm-eval-")
        # The same prompts as the builtin scorer: with the chat template when it would use one.
        use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
        try:
            task = export_lm_eval_task(search, folder, tokenizer if use_chat else None)
            scorer = HarnessScorer.load(task, tokenizer, folder, batch_size)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        # The exported task lives as long as the scorer that reads it (removed at exit at the latest).
        weakref.finalize(scorer, shutil.rmtree, folder, ignore_errors=True)
        return Objective(scorer, search, held if len(held) else None, self.name, "loglik")

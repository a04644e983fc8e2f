"""`--backend builtin`: evomerge's own `Scorer` (paper protocol or log-likelihood) on a benchmark file."""

from __future__ import annotations

from evomerge.evaluate.backends.base import Objective, ScorerBackend
from evomerge.evaluate.benchmark import load_benchmark
from evomerge.evaluate.scorer import Scorer


class BuiltinBackend(ScorerBackend):
    name = "builtin"
    description = "evomerge's batched scorer: the paper's protocol or option log-likelihood"

    def objective(self, benchmark, tokenizer, *, protocol="paper", batch_size=16, chat=None, tasks_dir=None, holdout=0.0) -> Objective:
        # Items marked `split: holdout` are held out even without --holdout.
        search, held = load_benchmark(benchmark).split_holdout(holdout)
        scorer = Scorer.load(search, tokenizer, protocol=protocol, batch_size=batch_size, chat=chat)
        return Objective(scorer, search, held if len(held) else None, self.name, protocol)

"""Choose a scorer from what the user asked for: a shipped benchmark, a JSONL path, or lm-eval:TASK.

The scorers are the table in `evaluate/backends`; an `lm-eval:TASK` is always lm-eval's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from evomerge.evaluate.backends import SCORERS, Objective, scorer_backend
from evomerge.evaluate.harness import is_lm_eval_spec

BACKENDS = tuple(SCORERS)


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
    """The objective for `benchmark` scored by the `backend` scorer (lm-eval's for an lm-eval task)."""
    chosen = scorer_backend(backend)
    if is_lm_eval_spec(benchmark):
        chosen = scorer_backend("lm-eval")
    return chosen.objective(benchmark, tokenizer, protocol=protocol, batch_size=batch_size, chat=chat, tasks_dir=tasks_dir, holdout=holdout)


__all__ = ["BACKENDS", "Objective", "make_objective"]

"""The scorers `--backend` chooses from (builtin, lm-eval): one class per file, one table.

A `ScorerBackend` turns what the user asked for (a benchmark's name, path or `lm-eval:TASK`, a
protocol, the held-out fraction) into an `Objective`: a ready scorer with the one `score(model,
fraction, progress=None, previous=None) -> ScoreResult` method every caller uses, and the split
of items it scores. Adding a scorer is one new file here with a subclass, and one line in `SCORERS`.
"""

from __future__ import annotations

from evomerge.errors import EvomergeError
from evomerge.evaluate.backends.base import Objective, ScorerBackend, ScoringScorer
from evomerge.evaluate.backends.builtin import BuiltinBackend
from evomerge.evaluate.backends.lm_eval import LmEvalBackend

SCORERS: dict[str, type[ScorerBackend]] = {
    "builtin": BuiltinBackend,
    "lm-eval": LmEvalBackend,
}


def scorer_backend(name: str) -> ScorerBackend:
    """The scorer registered under `name`; an EvomergeError naming the known ones."""
    if name not in SCORERS:
        raise EvomergeError(f"unknown backend {name!r}; expected {' or '.join(SCORERS)}")
    return SCORERS[name]()


__all__ = ["SCORERS", "Objective", "ScorerBackend", "ScoringScorer", "scorer_backend"]

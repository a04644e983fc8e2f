"""What every scorer offers, and the scorer backend's small base class."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol, Union

from evomerge.evaluate.benchmark import Benchmark
from evomerge.evaluate.scorer import ScoreResult


class ScoringScorer(Protocol):
    """A scorer: tokenises its items once, then scores whatever weights a model holds now."""

    def score(
        self, model, fraction: float = 1.0, progress: Optional[Callable[[int, int], None]] = None, previous: Optional[ScoreResult] = None
    ) -> ScoreResult: ...


@dataclass
class Objective:
    """A ready scorer, and the benchmark split it scores (None for an lm-eval task)."""

    scorer: ScoringScorer
    benchmark: Optional[Benchmark]
    holdout: Optional[Benchmark]
    backend: str
    protocol: str


class ScorerBackend:
    """One `--backend` name: builds the objective for a benchmark reference."""

    name = ""
    description = ""

    def objective(
        self,
        benchmark: str,
        tokenizer,
        *,
        protocol: str = "paper",
        batch_size: int = 16,
        chat: Optional[bool] = None,
        tasks_dir: Optional[Union[str, Path]] = None,
        holdout: float = 0.0,
    ) -> Objective:
        raise NotImplementedError

"""`evomerge demo`: the whole tool on a laptop CPU in a few minutes, on the toy domain.

It builds (or reuses) the xs toy parents the paper would merge, "Instruct" and "Instruct-CPT-SFT",
then runs the same search `evomerge search` runs: the default space, pruning, a held-out split, the
paper's recipe as trial 0. What a user sees is what the search command prints, then the best
recipe's gain over the best parent on the held-out items, with its 95% interval and a verdict.

Importing this module is cheap (the command line reads its defaults at start-up): what it needs
of the toy domain and the search is imported when it is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from evomerge.analysis.metrics import MergeMetrics
    from evomerge.search.study import SearchSettings
    from evomerge.toy.build import ToyBuild

DEMO_SCALE = "xs"
DEMO_STUDY = "demo"
DEMO_TRIALS = 30


def build_demo_parents(
    root: Optional[Path] = None,
    device: str = "auto",
    progress: Optional[Callable[[str], None]] = None,
    on_step: Optional[Callable[[str, int, int, float], None]] = None,
) -> ToyBuild:
    """The pair the demo merges, at the demo's scale, under `root` (default: results/toy)."""
    from evomerge.toy.build import build_toy
    from evomerge.toy.pair import TOY_PAIR

    return build_toy(DEMO_SCALE, root, device=device, parents=TOY_PAIR, progress=progress, on_step=on_step)


def demo_settings(build: ToyBuild, trials: int = DEMO_TRIALS, device: str = "auto", study: str = DEMO_STUDY) -> SearchSettings:
    """Instruct × Instruct-CPT-SFT on the toy domain benchmark, base = Instruct (as the paper)."""
    from evomerge.search.study import SearchSettings
    from evomerge.toy.pair import TOY_PAIR

    instruct, child = (str(build.parents[name].resolve()) for name in TOY_PAIR)
    return SearchSettings(
        parents=[instruct, child],
        benchmarks=[str(build.domain_benchmark.resolve())],
        base=instruct,
        holdout=0.2,
        device=device,
        trials=trials,
        study=study,
    )


@dataclass(frozen=True)
class HeldOutGain:
    """The search's best recipe against both parents on the items the search never saw."""

    trial: int
    metrics: MergeMetrics
    parents: tuple[str, ...] = ()  # the parents' labels, in the order of metrics.parent_1 and parent_2

    @property
    def verdict(self) -> str:
        """One line that calls a difference a gain only when its whole 95% interval lies above zero."""
        gain = self.metrics.gain
        interval = f"{gain.estimate:+.3f} [95% CI {gain.low:+.3f}, {gain.high:+.3f}] on {self.metrics.n} held-out items"
        if gain.above_zero:
            return f"Gain: the searched merge beats the best parent by more than the noise, {interval}."
        if gain.below_zero:
            return f"Loss: the searched merge is worse than the best parent, {interval}."
        return f"No gain shown: {interval}; the interval contains zero, so the difference is within the noise."


def holdout_gain(settings: SearchSettings, resamples: int = 2000, seed: int = 0, names: Optional[list[str]] = None) -> Optional[HeldOutGain]:
    """Score the study's best recipe and both parents on the held-out items and measure the gain
    over the best parent with a paired bootstrap interval (as `evomerge map` does for its search).
    None when the study has no held-out items or no completed trial."""
    from evomerge.analysis.metrics import Bootstrap, merge_metrics
    from evomerge.evaluate.benchmark import load_benchmark
    from evomerge.evaluate.scorer import Scorer
    from evomerge.merge.parents import inspect_parent
    from evomerge.recipe import Recipe
    from evomerge.search.objective import load_pair
    from evomerge.search.study import best_trial, load_existing_study, trial_attr

    best = best_trial(load_existing_study(settings.study, settings.storage_url()))
    if best is None or not settings.holdout:
        return None
    _, held = load_benchmark(settings.benchmarks[0]).split_holdout(settings.holdout)
    merger, tokenizer = load_pair([inspect_parent(parent) for parent in settings.parents], settings.base, device=settings.device)
    scorer = Scorer.load(held, tokenizer, protocol=settings.protocol, batch_size=settings.batch_size, chat=settings.chat)
    parents = [scorer.score(merger.show_parent(parent)).correct for parent in settings.parents]
    merged = scorer.score(merger.apply(Recipe.from_yaml(trial_attr(best, "recipe")), seed=settings.seed)).correct
    metrics = merge_metrics(merged, parents[0], parents[1], Bootstrap(len(merged), resamples, seed=seed))
    return HeldOutGain(best.number, metrics, tuple(names or settings.parents))

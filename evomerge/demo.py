"""`evomerge demo`: the whole tool on a laptop CPU in a few minutes, on the toy domain.

It builds (or reuses) the xs toy parents the paper would merge, "Instruct" and "Instruct-CPT-SFT",
then runs the same search `evomerge search` runs: the default space, pruning, a held-out split, the
paper's recipe as trial 0. What a user sees is what the search command prints: the parents' and
the best recipe's scores on the search items and on the held-out items, the gain over the best
parent on the held-out items with its 95% interval, and a verdict (every search ends that way).

Importing this module is cheap (the command line reads its defaults at start-up): what it needs
of the toy domain and the search is imported when it is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
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

"""`evomerge demo`: the whole tool on a laptop CPU in a few minutes, on the toy domain.

It builds (or reuses) the xs toy parents the paper would merge, "Instruct" and "Instruct-CPT-SFT",
then runs the same search `evomerge search` runs: the default space, pruning, a held-out split, the
paper's recipe as trial 0. What a user sees is what the search command prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from evomerge.search.study import SearchSettings
from evomerge.toy.build import DEFAULT_ROOT, ToyBuild, build_toy

DEMO_SCALE = "xs"
DEMO_PARENTS = ("instruct", "instruct-CPT-SFT")
DEMO_STUDY = "demo"
DEMO_TRIALS = 30


def build_demo_parents(
    root: Path = DEFAULT_ROOT,
    device: str = "auto",
    progress: Optional[Callable[[str], None]] = None,
    on_step: Optional[Callable[[str, int, int, float], None]] = None,
) -> ToyBuild:
    return build_toy(DEMO_SCALE, root, device=device, parents=DEMO_PARENTS, progress=progress, on_step=on_step)


def demo_settings(build: ToyBuild, trials: int = DEMO_TRIALS, device: str = "auto", study: str = DEMO_STUDY) -> SearchSettings:
    """Instruct × Instruct-CPT-SFT on the toy domain benchmark, base = Instruct (as the paper)."""
    instruct, child = (str(build.parents[name].resolve()) for name in DEMO_PARENTS)
    return SearchSettings(
        parents=[instruct, child],
        benchmarks=[str(build.domain_benchmark.resolve())],
        base=instruct,
        holdout=0.2,
        device=device,
        trials=trials,
        study=study,
    )

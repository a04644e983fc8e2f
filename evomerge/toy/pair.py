"""The pair of toy parents the paper would merge, at any scale: the demo's and the map's.

SLERP's base is the toy's Instruct model (t = 0), the other parent its Instruct-CPT-SFT child;
the map measures their kinship against the toy's Base, their common ancestor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

TOY_PAIR = ("instruct", "instruct-CPT-SFT")
TOY_PARENTS = ("base", *TOY_PAIR)


@dataclass(frozen=True)
class ToyPair:
    """One scale's pair: SLERP's base, the fine-tuned child, their ancestor and the domain benchmark."""

    scale: str
    base: Path
    other: Path
    ancestor: Optional[Path]
    benchmark: Path


def toy_pair(
    scale: str,
    root: Optional[Union[str, Path]] = None,
    *,
    device: str = "auto",
    ancestor: bool = True,
    say: Optional[Callable[[str], None]] = None,
    on_step: Optional[Callable[[str, int, int, float], None]] = None,
    names: Sequence[str] = TOY_PAIR,
    seed: int = 0,
) -> ToyPair:
    """Build (or reuse) the pair `names` (SLERP's base first; default Instruct × Instruct-CPT-SFT) at
    `scale` under `root` (default results/toy), with the toy's Base too when `ancestor`; `seed`: the
    training seed (N > 0: the `<scale>-seedN` builds)."""
    from evomerge.toy.build import build_toy

    wanted = ["base", *names] if ancestor else list(names)
    build = build_toy(scale, root, device=device, parents=wanted, progress=say, on_step=on_step, seed=seed)
    base, other = (build.parents[name] for name in names)
    return ToyPair(scale, base, other, build.parents["base"] if ancestor else None, build.domain_benchmark)

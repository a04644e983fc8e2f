"""Depth-wise search spaces: which parent supplies each block of layers, and how many the result keeps.

A depth-wise space cuts the parents' layers into `blocks` blocks of equal size (the last may be
shorter) and builds a result of `depth` × that many blocks: output block j takes source block
round(j · (B − 1)/(n − 1)) of B, so depth 1 keeps every block in order, a larger depth repeats
blocks (layer stacking) and a smaller one drops some, always in order. Per output block it searches

- `method: passthrough`: which parent the block's layers come from (a categorical `block.j`), or
- `method: slerp`: a SLERP t between the base and the other parent inside the block (`t.j`; with
  `anchors: N`, a gradient over the block's layers); t = 0 is the base's block, t = 1 the other's.

    method: passthrough
    depthwise:
      blocks: 8                                   # the parents' layers in 8 blocks (fewer if shallower)
      depth: {choices: [0.75, 1, 1.25, 1.5]}      # output blocks, as a multiple of the parents'

The recipe is a mergekit `slices:` recipe, so `mergekit-yaml` rebuilds the exported best one. The
in-memory engine builds a model of the new depth when the depth changes (merge/layout.py), and a
passthrough result whenever its blocks change: a trial records that time as `rebuild_s` (SLERP
blocks at depth 1 keep the parents' layers in place and merge into the resident model: no rebuild).
Embeddings come from the first output block's source, the final norm and head from the last's, as
mergekit plans them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, field_validator

from evomerge.config import YamlDocument, validate
from evomerge.recipe import Recipe
from evomerge.space import SearchSpace, SpaceError, Trial, ValueConfig, ValueSpec, _checked, _RecordingTrial

METHODS = ("passthrough", "slerp")


@dataclass
class DepthwiseSpace(SearchSpace):
    """A depth-wise space (see the module's docstring); a `SearchSpace` to the search."""

    blocks: int = 8
    depth: ValueSpec = field(default_factory=lambda: ValueSpec(fixed=1.0))
    t: Optional[ValueSpec] = None

    def block_ranges(self, num_layers: int) -> list[tuple[int, int]]:
        """The parents' blocks as layer ranges [start, stop)."""
        size = math.ceil(num_layers / min(self.blocks, num_layers))
        return [(start, min(num_layers, start + size)) for start in range(0, num_layers, size)]

    @staticmethod
    def source_blocks(count: int, output_blocks: int) -> list[int]:
        """Which of `count` source blocks each of `output_blocks` output blocks takes (in order)."""
        if output_blocks == 1:
            return [0]
        return [math.floor(j * (count - 1) / (output_blocks - 1) + 0.5) for j in range(output_blocks)]

    def output_blocks(self, count: int, depth: float) -> int:
        return max(1, math.floor(count * depth + 0.5))

    def check_parents(self, parents: list[str], base: Optional[str]) -> None:
        if len(parents) < 2:
            raise SpaceError("a search needs at least two parents")
        if base is not None and base not in parents:
            raise SpaceError(f"--base {base} is not among the parents")
        if self.method == "slerp" and len(parents) != 2:
            raise SpaceError(f"space {self.name}: a depth-wise SLERP merges exactly two parents, got {len(parents)}")

    def suggest(self, trial: Trial, parents: list[str], base: Optional[str], num_layers: int, dtype: Optional[str] = None) -> Recipe:
        ranges = self.block_ranges(num_layers)
        depth = self.depth.suggest(trial, "depth", num_layers)
        slices = []
        base = base if base is not None else parents[0]
        other = next(p for p in parents if p != base)
        for j, source in enumerate(self.source_blocks(len(ranges), self.output_blocks(len(ranges), depth))):
            layer_range = list(ranges[source])
            if self.method == "passthrough":
                choice = trial.suggest_categorical(f"block.{j}", list(range(len(parents))))
                slices.append({"sources": [{"model": parents[choice], "layer_range": layer_range}]})
            else:
                t = self.t.suggest(trial, f"t.{j}", layer_range[1] - layer_range[0])
                sources = [{"model": base, "layer_range": layer_range}, {"model": other, "layer_range": layer_range}]
                slices.append({"sources": sources, "parameters": {"t": t}})
        data: dict[str, Any] = {"merge_method": self.method, "slices": slices}
        if self.method == "slerp":
            data["base_model"] = base
        if dtype:
            data["dtype"] = dtype
        return Recipe.from_dict(data, source=f"space {self.name}")

    def dimension(self, num_layers: int, n_models: int = 2) -> int:
        """Values one trial suggests at the space's largest depth."""
        depths = self.depth.choices or (self.depth.fixed,)
        most = max(depths)
        recorder = _RecordingTrial()
        parents = [f"parent-{index}" for index in range(n_models)]
        fixed = DepthwiseSpace(self.name, self.method, [], blocks=self.blocks, depth=ValueSpec(fixed=most), t=self.t)
        fixed.suggest(recorder, parents, parents[0], num_layers)
        return recorder.count + (1 if len(depths) > 1 else 0)

    def grid(self, num_layers: int, parents: list[str], base: Optional[str]) -> None:
        """No grid: which values a trial asks for depends on its depth."""
        return None

    def baseline_params(self, num_layers: int) -> None:
        return None


class DepthwiseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    blocks: int = 8
    depth: ValueConfig = ValueConfig(value=1.0)
    t: Optional[ValueConfig] = None

    @field_validator("blocks")
    @classmethod
    def _blocks(cls, value: int) -> int:
        if value < 1:
            raise ValueError("blocks must be at least 1")
        return value


class DepthwiseFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Optional[str] = None
    description: Optional[str] = None
    method: str
    depthwise: DepthwiseConfig


def depthwise_from_document(document: YamlDocument, default_name: str = "space") -> DepthwiseSpace:
    """The `DepthwiseSpace` a space file with a `depthwise:` section describes."""
    parsed = validate(DepthwiseFile, document, SpaceError)
    where = document.where(("depthwise",))
    if parsed.method not in METHODS:
        raise SpaceError(f"{document.where(('method',))}: a depth-wise space merges with {' or '.join(METHODS)}, not {parsed.method!r}")
    config = parsed.depthwise
    depth = config.depth.spec()
    if depth.fixed is None and not depth.choices:
        raise SpaceError(f"{where}: depth is a number or {{choices: [...]}} (multiples of the parents' depth)")
    if any(not isinstance(d, (int, float)) or isinstance(d, bool) or d <= 0 for d in (depth.choices or (depth.fixed,))):
        raise SpaceError(f"{where}: every depth must be a positive number")
    t = None
    if parsed.method == "slerp":
        if config.t is None:
            raise SpaceError(f"{where}: a depth-wise SLERP needs 't' (how t is searched inside each block)")
        t = _checked("t", config.t.spec(), f"{where}.t")
        if t.group_size:
            raise SpaceError(f"{where}.t: group_size does not apply inside a block; use anchors")
    elif config.t is not None:
        raise SpaceError(f"{where}: 't' is for method slerp; passthrough chooses a parent per block")
    return DepthwiseSpace(
        parsed.name or default_name,
        parsed.method,
        [],
        parsed.description or "",
        document.source,
        blocks=config.blocks,
        depth=depth,
        t=t,
    )

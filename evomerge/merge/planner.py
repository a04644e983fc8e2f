"""Recipe → MergePlan: for each tensor of the parents, its method's resolved parameters.

A `Planner` knows the parents' layout (tensor names in the model's order, which layer each tensor
sits in, the parents' names and folders, the resident dtype); `plan(recipe)` checks the recipe
against it with mergekit's own method contract and resolves every parameter for every tensor with
mergekit's rules (filters, gradients over each slice's depth, per-model settings), once per
recipe, before the merger touches a tensor. The merger then executes the plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from evomerge.errors import RecipeError
from evomerge.merge.parents import layer_index
from evomerge.recipe import ParameterReader, Recipe, layer_position, mergekit_method

# Recipe keys mergekit-yaml honours when it writes the model folder; the in-memory engine does not.
# (`tokenizer_source` and `tokenizer` it does apply: see merge/vocabulary.py.)
FOLDER_KEYS = ("chat_template",)


@dataclass
class TensorPlan:
    """Resolved values for one tensor of one recipe."""

    name: str
    shared: dict[str, Any]  # parameter → value
    per_model: dict[str, dict[str, Any]]  # parameter → {parent name → value}


@dataclass
class MergePlan:
    """One recipe, resolved: the method, the parents it merges (by name, in the recipe's order),
    its base, and a `TensorPlan` per tensor in the model's order (iterating the plan gives those)."""

    method: str
    models: list[str]
    base: Optional[str]
    tensors: list[TensorPlan]

    @property
    def others(self) -> list[str]:
        """The parents other than the base, in the recipe's order."""
        return [m for m in self.models if m != self.base]

    def __iter__(self) -> Iterator[TensorPlan]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __getitem__(self, row: int) -> TensorPlan:
        return self.tensors[row]


class Planner:
    """Plans recipes for one set of parents (their layout is all it needs: no weights)."""

    def __init__(self, tensor_names: Sequence[str], num_layers: int, parents: Mapping[str, Path], dtype_name: str):
        """`tensor_names` in the model's order (embeddings, layers, final norm, head): it tells which
        tensors mergekit plans before the layers and which after; `parents` maps each parent's name
        to its folder; `dtype_name` is the dtype the parents are resident in."""
        self.tensor_names = list(tensor_names)
        self.num_layers = num_layers
        self.parents = dict(parents)
        self.dtype_name = dtype_name
        self._layer_of = [layer_index(name) for name in self.tensor_names]
        first_layer_at = next((i for i, layer in enumerate(self._layer_of) if layer is not None), 0)
        self._is_pre_weight = [i < first_layer_at for i in range(len(self.tensor_names))]
        self._references: dict[str, str] = {}  # a recipe's model reference → parent name
        self._placements: dict[tuple[tuple[int, int], ...], list[tuple[int, float]]] = {}

    def parent_name(self, reference: str) -> str:
        """The parent a recipe's model reference points to (by name, then by path)."""
        if reference in self.parents:
            return reference
        if reference not in self._references:
            wanted = Path(reference).expanduser().resolve()
            found = next((name for name, path in self.parents.items() if Path(path).resolve() == wanted), None)
            if found is None:
                raise RecipeError(f"the recipe names {reference!r}, which is not among the parents ({', '.join(self.parents)})")
            self._references[reference] = found
        return self._references[reference]

    def plan(self, recipe: Recipe) -> MergePlan:
        """Check a recipe against the parents and resolve every parameter for every tensor; raises
        RecipeError naming the problem."""
        method = mergekit_method(recipe.merge_method)
        ignored = [key for key in FOLDER_KEYS if getattr(recipe, key) is not None]
        if ignored:
            raise RecipeError(
                f"the in-memory engine does not apply the recipe's {', '.join(ignored)}; remove it, or merge with `evomerge merge --engine mergekit`"
            )
        if recipe.dtype is not None and recipe.dtype != self.dtype_name:
            raise RecipeError(f"the recipe asks for dtype {recipe.dtype} but the parents are resident in torch.{self.dtype_name}")
        references = recipe.model_names
        models = [self.parent_name(ref) for ref in references]
        if len(set(models)) != len(models):
            raise RecipeError(f"the recipe lists a parent twice: {references}")
        base = self.parent_name(recipe.base_model) if recipe.base_model else None
        try:
            method.validate_inputs(models, base)
        except ValueError as error:
            raise RecipeError(f"{recipe.merge_method}: {error}") from None
        specs = method.spec.parameters
        used = {name for _, settings in recipe.all_settings() for name in settings}
        unknown = sorted(used - {spec.name for spec in specs})
        if unknown:
            raise RecipeError(f"{recipe.merge_method} has no parameter {unknown[0]!r}; it takes: {', '.join(spec.name for spec in specs) or 'none'}")
        placements = self._placements_for(self._slice_layout(recipe))
        slice_count = len(recipe.slices) if recipe.slices else 1
        # One reader per parameter, parent (None: shared) and slice, so each setting is validated
        # once per recipe rather than once per tensor.
        readers = []
        for spec in specs:
            is_shared = spec.scope.value == "shared"
            if is_shared:
                whose = [(None, None)]
            else:
                whose = [(m, ref) for m, ref in zip(models, references) if spec.scope.value == "input" or m != base]
            default = None if spec.required else spec.validate(spec.default)
            by_model = [(m, ref, [recipe.reader(spec.name, ref, index, spec.validate) for index in range(slice_count)]) for m, ref in whose]
            readers.append((spec, is_shared, default, by_model))
        tensors = []
        for tensor_name, (slice_index, position) in zip(self.tensor_names, placements):
            shared: dict[str, Any] = {}
            per_model: dict[str, dict[str, Any]] = {}
            for spec, is_shared, default, by_model in readers:
                values = {m: _resolve(recipe.merge_method, spec, default, slices[slice_index], tensor_name, position, ref) for m, ref, slices in by_model}
                if is_shared:
                    shared[spec.name] = values[None]
                else:
                    per_model[spec.name] = values
            tensors.append(TensorPlan(tensor_name, shared, per_model))
        return MergePlan(recipe.merge_method, models, base, tensors)

    def _slice_layout(self, recipe: Recipe) -> tuple[tuple[int, int], ...]:
        """Layer ranges of the output slices; the engine supports slices that keep layers in place."""
        if not recipe.slices:
            return ((0, self.num_layers),)
        layout, expected_start = [], 0
        for index, out_slice in enumerate(recipe.slices):
            ranges = {tuple(source.layer_range) for source in out_slice.sources}
            start, stop = next(iter(ranges))
            if len(ranges) != 1 or start != expected_start or stop <= start:
                raise RecipeError(
                    f"slices[{index}]: the in-memory engine merges layer-aligned slices only "
                    "(consecutive, same range for every source); use `evomerge merge --engine mergekit`"
                )
            layout.append((start, stop))
            expected_start = stop
        if expected_start != self.num_layers:
            raise RecipeError(f"slices cover layers 0–{expected_start} but the parents have {self.num_layers}")
        return tuple(layout)

    def _placements_for(self, slices: tuple[tuple[int, int], ...]) -> list[tuple[int, float]]:
        """(slice index, gradient position) of every tensor as mergekit plans it, once per layout;
        tensors outside the layers sit at 0 in the first slice (before the layers) or the last."""
        if slices not in self._placements:
            placements = []
            for row, layer in enumerate(self._layer_of):
                if layer is None:
                    placements.append((0 if self._is_pre_weight[row] else len(slices) - 1, 0.0))
                    continue
                index = next((i for i, (start, stop) in enumerate(slices) if start <= layer < stop), None)
                if index is None:
                    raise RecipeError(f"{self.tensor_names[row]} lies outside every slice")
                start, stop = slices[index]
                placements.append((index, layer_position(layer - start, stop - start)))
            self._placements[slices] = placements
        return self._placements[slices]


def _resolve(method: str, spec, default: Any, reader: ParameterReader, tensor_name: str, position: float, model: Optional[str]) -> Any:
    """One parameter's value for one tensor (for `model`, a recipe reference, if per model)."""
    try:
        value = reader.value(tensor_name, position)
    except ValueError as error:  # pydantic's ValidationError is a ValueError
        reason = error.errors()[0]["msg"] if hasattr(error, "errors") else str(error)
        raise RecipeError(f"parameter {spec.name!r} is not valid for {tensor_name}: {reason}") from None
    if value is not None:
        return value
    if spec.required:
        whose = f" for {model}" if model else ""
        raise RecipeError(f"{method} needs parameter {spec.name!r}{whose} (no value for {tensor_name})")
    return default

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
from evomerge.merge.parents import layer_index, with_layer_index
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
    sources: Optional[dict[str, str]] = None  # with a layout: parent name → the tensor it gives (another layer's)


def execution_key(tensor: TensorPlan) -> tuple[str, str]:
    """Where mergekit-yaml merges a tensor in its schedule: by the largest name among the tensors
    it reads (its task's group label), then by its own name. Methods that draw random masks (DARE,
    DELLA) draw them in this order, so the engine merges in it too."""
    return (max(tensor.sources.values()) if tensor.sources else tensor.name, tensor.name)


@dataclass(frozen=True)
class Layout:
    """The layers of a result whose layers are not the parents' own, layer for layer (passthrough,
    layer stacking, slices that take other layers): how many it has, which parents' layer each
    output layer is made from (the first source's), and whether its tensors are the sources
    themselves (passthrough: shared by reference) or merged into tensors of its own."""

    num_layers: int
    layer_sources: tuple[int, ...]
    shared: bool


@dataclass
class MergePlan:
    """One recipe, resolved: the method, the parents it merges (by name, in the recipe's order),
    its base, and a `TensorPlan` per tensor in the model's order (iterating the plan gives those)."""

    method: str
    models: list[str]
    base: Optional[str]
    tensors: list[TensorPlan]
    layout: Optional[Layout] = None  # None: the parents' own layers, tensor for tensor

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
        specs = method.spec.parameters
        used = {name for _, settings in recipe.all_settings() for name in settings}
        unknown = sorted(used - {spec.name for spec in specs})
        if unknown:
            raise RecipeError(f"{recipe.merge_method} has no parameter {unknown[0]!r}; it takes: {', '.join(spec.name for spec in specs) or 'none'}")
        if recipe.merge_method == "passthrough" or (recipe.slices and not self._aligned(recipe)):
            return self._plan_layout(recipe, method, specs)
        references = recipe.model_names
        models = [self.parent_name(ref) for ref in references]
        if len(set(models)) != len(models):
            raise RecipeError(f"the recipe lists a parent twice: {references}")
        base = self.parent_name(recipe.base_model) if recipe.base_model else None
        try:
            method.validate_inputs(models, base)
        except ValueError as error:
            raise RecipeError(f"{recipe.merge_method}: {error}") from None
        placements = self._placements_for(self._slice_layout(recipe))
        slice_count = len(recipe.slices) if recipe.slices else 1
        readers = self._readers(recipe, specs, models, references, base, slice_count)
        tensors = [
            self._tensor_plan(recipe.merge_method, readers, tensor_name, slice_index, position)
            for tensor_name, (slice_index, position) in zip(self.tensor_names, placements)
        ]
        return MergePlan(recipe.merge_method, models, base, tensors)

    def _readers(self, recipe: Recipe, specs, models: list[str], references: list[str], base: Optional[str], slice_count: int) -> list:
        """One reader per parameter, parent (None: shared) and slice, so each setting is validated
        once per recipe rather than once per tensor."""
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
        return readers

    @staticmethod
    def _tensor_plan(method: str, readers: list, tensor_name: str, slice_index: int, position: float, only: Optional[set] = None) -> TensorPlan:
        """One tensor's resolved values (per model: of the models in `only`, if given)."""
        shared: dict[str, Any] = {}
        per_model: dict[str, dict[str, Any]] = {}
        for spec, is_shared, default, by_model in readers:
            values = {
                m: _resolve(method, spec, default, slices[slice_index], tensor_name, position, ref)
                for m, ref, slices in by_model
                if only is None or m is None or m in only
            }
            if is_shared:
                shared[spec.name] = values[None]
            else:
                per_model[spec.name] = values
        return TensorPlan(tensor_name, shared, per_model)

    # ----- layouts: results whose layers are not the parents' own -------------------------------

    def _aligned(self, recipe: Recipe) -> bool:
        """Whether every output slice takes the same layers from every source, the slices one after
        another from layer 0 to the last (the parents' own layers, merged in place)."""
        expected = 0
        for out_slice in recipe.slices:
            ranges = {tuple(source.layer_range) for source in out_slice.sources}
            if len(ranges) != 1 or next(iter(ranges))[0] != expected:
                return False
            expected = next(iter(ranges))[1]
        return expected == self.num_layers

    def _plan_layout(self, recipe: Recipe, method, specs) -> MergePlan:
        """A recipe whose output layers are other layers of the parents (passthrough, layer
        stacking): each output tensor planned as mergekit plans it, with the tensors it is made from."""
        slices = recipe.slices
        if not slices:  # passthrough of `models:` (one model, every layer)
            slices = [{"sources": [{"model": entry.model, "layer_range": [0, self.num_layers], "parameters": entry.parameters}]} for entry in recipe.models]
            recipe = Recipe.from_dict({**recipe.to_dict(), "models": None, "slices": slices})
            slices = recipe.slices
        references = list(dict.fromkeys(source.model for out_slice in slices for source in out_slice.sources))
        models = [self.parent_name(ref) for ref in references]
        base = self.parent_name(recipe.base_model) if recipe.base_model else None
        shared_sources = recipe.merge_method == "passthrough"
        slice_models = []
        for index, out_slice in enumerate(slices):
            names = [self.parent_name(source.model) for source in out_slice.sources]
            slice_base = self.parent_name(out_slice.base_model) if out_slice.base_model else base
            try:
                method.validate_inputs(names, slice_base)
            except ValueError as error:
                raise RecipeError(f"{recipe.merge_method}: slices[{index}]: {error}") from None
            lengths = {source.layer_range[1] - source.layer_range[0] for source in out_slice.sources}
            if len(lengths) != 1:
                raise RecipeError(f"slices[{index}]: every source of a slice must give the same number of layers, got {sorted(lengths)}")
            for source in out_slice.sources:
                start, stop = source.layer_range
                if not 0 <= start < stop <= self.num_layers:
                    raise RecipeError(f"slices[{index}]: layer_range [{start}, {stop}] of {source.model} is outside its {self.num_layers} layers")
            slice_models.append(names)
        if not shared_sources and (any(set(names) != set(slice_models[0]) for names in slice_models) or any(out.base_model for out in slices)):
            raise RecipeError(
                f"{recipe.merge_method} on slices of other layers: the in-memory engine needs the same parents in every slice; use `evomerge merge --engine mergekit`"
            )
        readers = self._readers(recipe, specs, models, references, base, len(slices))
        first_layer = [name for name, layer in zip(self.tensor_names, self._layer_of) if layer == 0]
        tensors: list[TensorPlan] = []
        pre = [name for row, name in enumerate(self.tensor_names) if self._layer_of[row] is None and self._is_pre_weight[row]]
        post = [name for row, name in enumerate(self.tensor_names) if self._layer_of[row] is None and not self._is_pre_weight[row]]
        for name in pre:
            tensors.append(self._layout_tensor(recipe.merge_method, readers, name, 0, 0.0, {m: name for m in slice_models[0]}))
        layer_sources = []
        for index, out_slice in enumerate(slices):
            length = out_slice.sources[0].layer_range[1] - out_slice.sources[0].layer_range[0]
            for offset in range(length):
                out_layer = len(layer_sources)
                layer_sources.append(out_slice.sources[0].layer_range[0] + offset)
                position = layer_position(offset, length)
                for template in first_layer:
                    sources = {self.parent_name(source.model): with_layer_index(template, source.layer_range[0] + offset) for source in out_slice.sources}
                    tensors.append(self._layout_tensor(recipe.merge_method, readers, with_layer_index(template, out_layer), index, position, sources))
        for name in post:
            tensors.append(self._layout_tensor(recipe.merge_method, readers, name, len(slices) - 1, 0.0, {m: name for m in slice_models[-1]}))
        layout = Layout(len(layer_sources), tuple(layer_sources), shared_sources)
        plan_models = models if shared_sources else slice_models[0]
        return MergePlan(recipe.merge_method, plan_models, base, tensors, layout)

    def _layout_tensor(self, method: str, readers: list, name: str, slice_index: int, position: float, sources: dict[str, str]) -> TensorPlan:
        plan = self._tensor_plan(method, readers, name, slice_index, position, only=set(sources))
        plan.sources = sources
        return plan

    def _slice_layout(self, recipe: Recipe) -> tuple[tuple[int, int], ...]:
        """Layer ranges of the output slices of a recipe that keeps the parents' layers in place."""
        if not recipe.slices:
            return ((0, self.num_layers),)
        return tuple(tuple(out_slice.sources[0].layer_range) for out_slice in recipe.slices)

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

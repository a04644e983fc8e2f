"""The merge engine: parents resident on the device, one resident model, recipes applied in place.

`Merger(parents)` checks and loads the parents once and allocates one transformers model.
`merger.apply(recipe)` resolves every parameter for every tensor with mergekit's rules (checking the
recipe before touching a tensor), then writes the merged tensors into that model and returns it: no
disk I/O and no allocation of a new model per call. What does not depend on the recipe (SLERP
angles, task vectors, magnitude order) is computed the first time a recipe needs it and kept.
Methods outside the fast path go through mergekit's own in-memory API, so any recipe works.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from evomerge.errors import EvomergeError, ParentError, RecipeError
from evomerge.merge import fused, methods
from evomerge.merge.parents import Parent, ParentInfo, check_parents, inspect_parent, layer_index, load_parent
from evomerge.recipe import DTYPES as DTYPE_CHOICES
from evomerge.recipe import ParameterReader, Recipe, layer_position, mergekit_method

LOG = logging.getLogger(__name__)

DTYPES = {name: getattr(torch, name) for name in DTYPE_CHOICES}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
# Recipe keys mergekit-yaml honours when it writes the model folder; the in-memory engine does not.
FOLDER_KEYS = ("tokenizer_source", "tokenizer", "chat_template")


def resolve_device(device: Union[str, torch.device] = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise EvomergeError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvomergeError("--device cuda asked for, but torch sees no CUDA device")
    return device


def resolve_dtype(dtype: Union[str, torch.dtype, None]) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise RecipeError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


@dataclass
class TensorPlan:
    """Resolved values for one tensor of one recipe."""

    name: str
    shared: dict[str, Any]  # parameter → value
    per_model: dict[str, dict[str, Any]]  # parameter → {parent name → value}


@dataclass
class _SlerpPair:
    """What every SLERP trial of one (base, other) pair reuses: the floating tensors' rows in the
    plan list, their stacked geometry, and the tensors (or the fused kernel's arguments)."""

    rows: list[int]
    geometry: methods.SlerpGeometry
    outs: list[torch.Tensor]
    firsts: list[torch.Tensor]
    seconds: list[torch.Tensor]
    kernel: Optional[fused.WeightedPairs]


class Merger:
    """Keeps parents and one merged model resident; `apply(recipe)` rewrites the model in place."""

    def __init__(
        self,
        parents: Sequence[Union[str, Path, ParentInfo]],
        *,
        device: Union[str, torch.device] = "auto",
        dtype: Union[str, torch.dtype, None] = None,
        allow_pickle: bool = False,
        trust_remote_code: bool = False,
    ):
        infos = [
            p if isinstance(p, ParentInfo) else inspect_parent(p, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
            for p in parents
        ]
        names = [info.name for info in infos]
        if len(set(names)) != len(names):
            raise ParentError(f"a parent is listed twice: {names}")
        check_parents(infos)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype) or DTYPES[infos[0].stored_dtype]
        self.trust_remote_code = trust_remote_code
        self.infos = infos
        self.parents: dict[str, Parent] = {
            info.name: load_parent(info, dtype=self.dtype, device=self.device) for info in infos
        }
        self.model = self._build_resident_model(infos[0])
        # In the model's own order (embeddings, layers, final norm, head), not the file's
        # alphabetical one: it tells which tensors mergekit plans before the layers and which after.
        self.tensor_names = list(self._targets)
        self.num_layers = infos[0].num_layers
        self._layer_of = [layer_index(name) for name in self.tensor_names]
        first_layer_at = next((i for i, layer in enumerate(self._layer_of) if layer is not None), 0)
        self._is_pre_weight = [i < first_layer_at for i in range(len(self.tensor_names))]
        # mergekit merges tensors in name order; DARE's random draws follow it.
        self._merge_order = sorted(range(len(self.tensor_names)), key=self.tensor_names.__getitem__)
        first = next(iter(self.parents.values())).tensors
        self._floating_rows = [row for row in self._merge_order if first[self.tensor_names[row]].is_floating_point()]
        # Non-floating buffers that all parents share sit in the model from the start and are never
        # rewritten; the ones some parents disagree on are checked and copied per recipe.
        self._mixed_buffers = [
            name
            for name in self.tensor_names
            if not first[name].is_floating_point()
            and any(not torch.equal(parent.tensors[name], first[name]) for parent in self.parents.values())
        ]
        self._agreeing_sets: set[frozenset[str]] = set()
        self._references: dict[str, str] = {}  # a recipe's model reference → parent name
        self._placements: dict[tuple[tuple[int, int], ...], list[tuple[int, float]]] = {}
        self._scratch = methods.ChunkScratch()
        self._slerp_pairs: dict[tuple[str, str], _SlerpPair] = {}
        self._deltas: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        self._orders: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        self.apply_count = 0

    # ----- public API ----------------------------------------------------------------------

    def parent_name(self, reference: str) -> str:
        """The loaded parent a recipe's model reference points to (by name, then by path)."""
        if reference in self.parents:
            return reference
        if reference not in self._references:
            wanted = Path(reference).expanduser().resolve()
            found = next((name for name, parent in self.parents.items() if parent.path.resolve() == wanted), None)
            if found is None:
                raise RecipeError(
                    f"the recipe names {reference!r}, which is not among the parents ({', '.join(self.parents)})"
                )
            self._references[reference] = found
        return self._references[reference]

    def plan(self, recipe: Recipe) -> list[TensorPlan]:
        """Check a recipe against the parents and resolve every parameter for every tensor (in
        `tensor_names` order); raises RecipeError."""
        return self._plan(recipe)[0]

    @torch.inference_mode()
    def apply(self, recipe: Recipe, seed: Optional[int] = None):
        """Write the recipe's merge into the resident model and return the model.

        `seed` seeds torch before merging, as `mergekit-yaml --random-seed` does, so DARE's random
        masks are mergekit's own; tensors are merged in mergekit's execution order (by name).
        """
        plans, models, base = self._plan(recipe)
        if seed is not None:
            torch.manual_seed(seed)
        name = recipe.merge_method
        for buffer in self._mixed_buffers:  # the recipe's parents agree on it (checked by _plan)
            self._targets[buffer].copy_(self.parents[models[0]].tensors[buffer])
        if name == "slerp":
            self._apply_slerp(plans, base, next(m for m in models if m != base))
        elif name == "linear":
            self._apply_linear(plans, models)
        elif name in methods.fast_task_arithmetic_methods():
            self._apply_task_arithmetic(plans, name, base, [m for m in models if m != base])
        else:
            self._apply_with_mergekit(plans, name, models, base)
        self.apply_count += 1
        return self.model

    @torch.inference_mode()
    def show_parent(self, reference: str):
        """Load one parent's own weights into the resident model (to score a parent alone)."""
        parent = self.parents[self.parent_name(reference)]
        for name, target in self._targets.items():
            target.copy_(parent.tensors[name])
        return self.model

    def merged_state_dict(self) -> dict[str, torch.Tensor]:
        """The merged tensors under the checkpoint's names (views into the resident model)."""
        return dict(self._targets)

    # ----- fast paths ----------------------------------------------------------------------

    def _apply_slerp(self, plans: list[TensorPlan], base: str, other: str) -> None:
        pair = self._slerp_pair(base, other)
        c0, c1 = methods.slerp_coefficient_columns([plans[row].shared["t"] for row in pair.rows], pair.geometry)
        if pair.kernel is not None:
            pair.kernel(c0, c1)
            return
        for target, a, b, x, y in zip(pair.outs, pair.firsts, pair.seconds, c0.tolist(), c1.tolist()):
            methods.weighted_pair_into(target, a, b, x, y, self._scratch)

    def _apply_linear(self, plans: list[TensorPlan], models: list[str]) -> None:
        for row in self._floating_rows:
            plan = plans[row]
            tensors = [self.parents[m].tensors[plan.name] for m in models]
            weights = [plan.per_model["weight"][m] for m in models]
            methods.linear(tensors, weights, normalize=plan.shared["normalize"], out=self._targets[plan.name])

    def _apply_task_arithmetic(self, plans: list[TensorPlan], method_name: str, base: str, others: list[str]) -> None:
        deltas = [self._task_vectors(base, other) for other in others]
        method = methods.fast_task_arithmetic_methods()[method_name]
        magnitude = method.sparsification_method == "magnitude"
        orders = [self._magnitude_orders(base, other) for other in others] if magnitude else None
        for row in self._floating_rows:
            plan = plans[row]
            name = plan.name
            parameters = {
                **plan.shared,
                "weight": [plan.per_model["weight"][m] for m in others],
                "density": [plan.per_model["density"][m] for m in others],
            }
            methods.merge_task_arithmetic(
                method_name,
                self.parents[base].tensors[name],
                [d[name] for d in deltas],
                parameters,
                orders=[o[name] for o in orders] if orders else None,
                out=self._targets[name],
            )

    def _apply_with_mergekit(self, plans: list[TensorPlan], method_name: str, models: list[str], base: Optional[str]) -> None:
        from mergekit.merge_methods import PerGroupValues, merge_state_dicts

        parameters: dict[str, Any] = {}
        for key in plans[0].shared:
            parameters[key] = PerGroupValues([plan.shared[key] for plan in plans])
        for key in plans[0].per_model:
            parameters[key] = PerGroupValues([plan.per_model[key] for plan in plans])
        merged = merge_state_dicts(
            {m: {n: self.parents[m].tensors[n] for n in self.tensor_names} for m in models},
            method_name,
            base=base,
            parameters=parameters,
        )
        for tensor_name, tensor in merged.items():
            self._targets[tensor_name].copy_(tensor)

    # ----- per-study caches ----------------------------------------------------------------

    def _slerp_pair(self, base: str, other: str) -> _SlerpPair:
        key = (base, other)
        if key not in self._slerp_pairs:
            rows = self._floating_rows
            names = [self.tensor_names[row] for row in rows]
            outs = [self._targets[name] for name in names]
            firsts = [self.parents[base].tensors[name] for name in names]
            seconds = [self.parents[other].tensors[name] for name in names]
            geometry = methods.stack_geometries([methods.slerp_geometry(a, b) for a, b in zip(firsts, seconds)])
            kernel = fused.plan_weighted_pairs(outs, firsts, seconds) if geometry.theta.dtype == torch.float32 else None
            self._slerp_pairs[key] = _SlerpPair(rows, geometry, outs, firsts, seconds, kernel)
        return self._slerp_pairs[key]

    def _task_vectors(self, base: str, other: str) -> dict[str, torch.Tensor]:
        key = (base, other)
        if key not in self._deltas:
            base_tensors, other_tensors = self.parents[base].tensors, self.parents[other].tensors
            names = [self.tensor_names[row] for row in self._floating_rows]
            self._deltas[key] = {name: other_tensors[name] - base_tensors[name] for name in names}
        return self._deltas[key]

    def _magnitude_orders(self, base: str, other: str) -> dict[str, torch.Tensor]:
        key = (base, other)
        if key not in self._orders:
            self._orders[key] = {name: methods.magnitude_order(d) for name, d in self._task_vectors(base, other).items()}
        return self._orders[key]

    # ----- recipe resolution -----------------------------------------------------------------

    def _plan(self, recipe: Recipe) -> tuple[list[TensorPlan], list[str], Optional[str]]:
        """(plans in `tensor_names` order, the recipe's parents, its base); raises RecipeError."""
        method = mergekit_method(recipe.merge_method)
        ignored = [key for key in FOLDER_KEYS if getattr(recipe, key) is not None]
        if ignored:
            raise RecipeError(
                f"the in-memory engine does not apply the recipe's {', '.join(ignored)}; "
                "remove it, or merge with `evomerge merge --engine mergekit`"
            )
        if recipe.dtype is not None and DTYPES[recipe.dtype] != self.dtype:
            raise RecipeError(f"the recipe asks for dtype {recipe.dtype} but the parents are resident in {self.dtype}")
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
            raise RecipeError(
                f"{recipe.merge_method} has no parameter {unknown[0]!r}; it takes: {', '.join(spec.name for spec in specs) or 'none'}"
            )
        self._check_buffers(models)
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
            by_model = [
                (m, ref, [recipe.reader(spec.name, ref, index, spec.validate) for index in range(slice_count)])
                for m, ref in whose
            ]
            readers.append((spec, is_shared, default, by_model))
        plans = []
        for tensor_name, (slice_index, position) in zip(self.tensor_names, placements):
            shared: dict[str, Any] = {}
            per_model: dict[str, dict[str, Any]] = {}
            for spec, is_shared, default, by_model in readers:
                values = {
                    m: _resolve(recipe.merge_method, spec, default, slices[slice_index], tensor_name, position, ref)
                    for m, ref, slices in by_model
                }
                if is_shared:
                    shared[spec.name] = values[None]
                else:
                    per_model[spec.name] = values
            plans.append(TensorPlan(tensor_name, shared, per_model))
        return plans, models, base

    def _check_buffers(self, models: list[str]) -> None:
        """Non-floating buffers must agree between the recipe's parents (mergekit copies them, or refuses)."""
        if not self._mixed_buffers or frozenset(models) in self._agreeing_sets:
            return
        for name in self._mixed_buffers:
            first = self.parents[models[0]].tensors[name]
            if any(not torch.equal(self.parents[m].tensors[name], first) for m in models[1:]):
                raise RecipeError(f"non-floating tensor {name} differs between parents")
        self._agreeing_sets.add(frozenset(models))

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

    def _build_resident_model(self, info: ParentInfo):
        """Allocate one model of the parents' architecture, without random init, on the device;
        `self._targets` maps each checkpoint tensor to its parameter, in the model's order."""
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.initialization import no_init_weights

        config_dir = info.adapter_base.path if info.adapter_base is not None else info.path
        config = AutoConfig.from_pretrained(str(config_dir), trust_remote_code=self.trust_remote_code)
        with no_init_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=self.dtype, trust_remote_code=self.trust_remote_code)
        # No requires_grad_(False): on torch 2.13 CPU it makes forward passes ~2× slower, and every
        # merge and score runs under inference_mode anyway.
        model.to(self.device).eval()
        model.tie_weights()  # a tied lm_head is absent from the files and must share the embeddings
        state = model.state_dict()
        first = next(iter(self.parents.values())).tensors
        for name, tensor in first.items():
            if name not in state or tuple(state[name].shape) != tuple(tensor.shape):
                raise ParentError(f"transformers' {info.architecture} has no tensor {name} of shape {list(tensor.shape)}")
        self._targets: dict[str, torch.Tensor] = {name: state[name] for name in state if name in first}
        for name, target in self._targets.items():
            target.copy_(first[name])
        return model


def _resolve(
    method: str, spec, default: Any, reader: ParameterReader, tensor_name: str, position: float, model: Optional[str]
) -> Any:
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

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

from evomerge.errors import ParentError, RecipeError
from evomerge.merge import fused, methods
from evomerge.merge.parents import Parent, ParentInfo, check_parents, inspect_parent, layer_index, load_parent
from evomerge.recipe import Recipe, layer_position

LOG = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def resolve_device(device: Union[str, torch.device] = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ParentError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParentError("--device cuda asked for, but torch sees no CUDA device")
    return device


def resolve_dtype(dtype: Union[str, torch.dtype, None]) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise RecipeError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def mergekit_method(name: str):
    """mergekit's registered method object, or a RecipeError naming the known ones."""
    from mergekit import merge_methods

    try:
        return merge_methods.get(name)
    except RuntimeError:
        known = sorted(method.spec.name for method in merge_methods.registered_methods())
        raise RecipeError(f"unknown merge method {name!r}; known: {', '.join(known)}") from None


@dataclass
class TensorPlan:
    """Resolved values for one tensor of one recipe."""

    name: str
    shared: dict[str, Any]  # parameter → value
    per_model: dict[str, dict[str, Any]]  # parameter → {parent name → value}


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
        # The model's own order (embeddings, layers, final norm, head), not the file's alphabetical
        # one, tells which tensors mergekit plans before the layers and which after.
        model_order = [name for name in self.model.state_dict() if name in infos[0].shapes]
        self.tensor_names = model_order
        self._layer_of = {name: layer_index(name) for name in self.tensor_names}
        self.num_layers = infos[0].num_layers
        first_layer_at = next((i for i, n in enumerate(model_order) if self._layer_of[n] is not None), 0)
        self._is_pre_weight = {name: i < first_layer_at for i, name in enumerate(model_order)}
        self._scratch = methods.ChunkScratch()
        self._slerp_geometry: dict[tuple[str, str], tuple[dict[str, int], methods.SlerpGeometry]] = {}
        self._deltas: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        self._orders: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        self.apply_count = 0

    # ----- public API ----------------------------------------------------------------------

    def parent_name(self, reference: str) -> str:
        """The loaded parent a recipe's model reference points to (by name, then by path)."""
        if reference in self.parents:
            return reference
        wanted = Path(reference).expanduser().resolve()
        for name, parent in self.parents.items():
            if parent.path.resolve() == wanted:
                return name
        raise RecipeError(f"the recipe names {reference!r}, which is not among the parents ({', '.join(self.parents)})")

    def plan(self, recipe: Recipe) -> list[TensorPlan]:
        """Check a recipe against the parents and resolve every parameter; raises RecipeError."""
        method = mergekit_method(recipe.merge_method)
        if recipe.dtype is not None and DTYPES[recipe.dtype] != self.dtype:
            raise RecipeError(f"the recipe asks for dtype {recipe.dtype} but the parents are resident in {self.dtype}")
        models = [self.parent_name(ref) for ref in recipe.model_names]
        if len(set(models)) != len(models):
            raise RecipeError(f"the recipe lists a parent twice: {recipe.model_names}")
        base = self.parent_name(recipe.base_model) if recipe.base_model else None
        try:
            method.validate_inputs(models, base)
        except ValueError as error:
            raise RecipeError(f"{recipe.merge_method}: {error}") from None
        specs = {spec.name: spec for spec in method.spec.parameters}
        used = {name for _, settings in recipe._all_settings() for name in settings}
        unknown = sorted(used - set(specs))
        if unknown:
            raise RecipeError(
                f"{recipe.merge_method} has no parameter {unknown[0]!r}; it takes: {', '.join(specs) or 'none'}"
            )
        slices = self._slice_layout(recipe)
        plans = []
        for tensor_name in self.tensor_names:
            slice_index, position = self._placement(tensor_name, slices)
            shared, per_model = {}, {}
            for spec in method.spec.parameters:
                if spec.scope.value == "shared":
                    shared[spec.name] = self._resolve(recipe, spec, tensor_name, position, slice_index, None)
                else:
                    inputs = [m for m in models if spec.scope.value == "input" or m != base]
                    per_model[spec.name] = {
                        m: self._resolve(recipe, spec, tensor_name, position, slice_index, self._reference(recipe, m))
                        for m in inputs
                    }
            plans.append(TensorPlan(tensor_name, shared, per_model))
        return plans

    @torch.inference_mode()
    def apply(self, recipe: Recipe, seed: Optional[int] = None):
        """Write the recipe's merge into the resident model and return the model.

        `seed` seeds torch before merging, as `mergekit-yaml --random-seed` does, so DARE's random
        masks are mergekit's own; tensors are merged in mergekit's execution order (by name).
        """
        plans = self.plan(recipe)
        models = [self.parent_name(ref) for ref in recipe.model_names]
        base = self.parent_name(recipe.base_model) if recipe.base_model else None
        if seed is not None:
            torch.manual_seed(seed)
        name = recipe.merge_method
        ordered = sorted(plans, key=lambda plan: plan.name)
        if name == "slerp":
            other = next(m for m in models if m != base)
            self._apply_slerp(ordered, base, other)
        elif name == "linear":
            self._apply_linear(ordered, models)
        elif name in methods.TASK_ARITHMETIC_FAMILY:
            self._apply_task_arithmetic(ordered, name, base, [m for m in models if m != base])
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
        if (base, other) not in self._slerp_geometry:
            names = [n for n in self.tensor_names if self.parents[base].tensors[n].is_floating_point()]
            geometries = [methods.slerp_geometry(self.parents[base].tensors[n], self.parents[other].tensors[n]) for n in names]
            self._slerp_geometry[(base, other)] = ({n: i for i, n in enumerate(names)}, methods.stack_geometries(geometries))
        rows, geometry = self._slerp_geometry[(base, other)]
        floating = [plan for plan in plans if plan.name in rows]
        for plan in plans:
            if plan.name not in rows:
                tensors = [self.parents[m].tensors[plan.name] for m in (base, other)]
                self._targets[plan.name].copy_(_agreed_buffer(tensors, plan.name))
        t_by_row = [0.0] * len(rows)
        for plan in floating:
            t_by_row[rows[plan.name]] = plan.shared["t"]
        c0_by_row, c1_by_row = methods.slerp_coefficients(t_by_row, geometry)
        outs = [self._targets[plan.name] for plan in floating]
        firsts = [self.parents[base].tensors[plan.name] for plan in floating]
        seconds = [self.parents[other].tensors[plan.name] for plan in floating]
        c0s = [c0_by_row[rows[plan.name]] for plan in floating]
        c1s = [c1_by_row[rows[plan.name]] for plan in floating]
        if not fused.weighted_pairs(outs, firsts, seconds, c0s, c1s):
            for target, a, b, c0, c1 in zip(outs, firsts, seconds, c0s, c1s):
                methods.weighted_pair_into(target, a, b, c0, c1, self._scratch)

    def _apply_linear(self, plans: list[TensorPlan], models: list[str]) -> None:
        for plan in plans:
            tensors = [self.parents[m].tensors[plan.name] for m in models]
            target = self._targets[plan.name]
            if not tensors[0].is_floating_point():
                target.copy_(_agreed_buffer(tensors, plan.name))
                continue
            weights = [plan.per_model["weight"][m] for m in models]
            target.copy_(methods.linear(tensors, weights, normalize=plan.shared["normalize"]))

    def _apply_task_arithmetic(self, plans: list[TensorPlan], method_name: str, base: str, others: list[str]) -> None:
        family = methods.TASK_ARITHMETIC_FAMILY[method_name]
        deltas = [self._task_vectors(base, other) for other in others]
        orders = [self._magnitude_orders(base, other) for other in others] if family["sparsification"] == "magnitude" else None
        for plan in plans:
            base_tensor = self.parents[base].tensors[plan.name]
            target = self._targets[plan.name]
            if not base_tensor.is_floating_point():
                target.copy_(_agreed_buffer([self.parents[m].tensors[plan.name] for m in [base, *others]], plan.name))
                continue
            shared = plan.shared
            target.copy_(
                methods.task_arithmetic(
                    base_tensor,
                    [d[plan.name] for d in deltas],
                    [plan.per_model["weight"][m] for m in others],
                    densities=[plan.per_model["density"][m] for m in others],
                    sparsification=family["sparsification"],
                    consensus=family["consensus"],
                    normalize=shared["normalize"],
                    rescale=shared["rescale"],
                    lam=shared["lambda"],
                    int8_mask=shared["int8_mask"],
                    orders=[o[plan.name] for o in orders] if orders else None,
                )
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

    def _task_vectors(self, base: str, other: str) -> dict[str, torch.Tensor]:
        key = (base, other)
        if key not in self._deltas:
            base_tensors, other_tensors = self.parents[base].tensors, self.parents[other].tensors
            self._deltas[key] = {
                name: other_tensors[name] - base_tensors[name]
                for name in self.tensor_names
                if base_tensors[name].is_floating_point()
            }
        return self._deltas[key]

    def _magnitude_orders(self, base: str, other: str) -> dict[str, torch.Tensor]:
        key = (base, other)
        if key not in self._orders:
            self._orders[key] = {name: methods.magnitude_order(d) for name, d in self._task_vectors(base, other).items()}
        return self._orders[key]

    # ----- recipe resolution -----------------------------------------------------------------

    def _reference(self, recipe: Recipe, parent: str) -> str:
        """The reference the recipe uses for a loaded parent (per-model settings are keyed by it)."""
        return next(ref for ref in recipe.model_names if self.parent_name(ref) == parent)

    def _resolve(self, recipe: Recipe, spec, tensor_name: str, position: float, slice_index: int, model: Optional[str]):
        try:
            value = recipe.parameter(spec.name, tensor_name, position, model, slice_index, validate=spec.validate)
            if value is None:
                if spec.required:
                    whose = f" for {model}" if model else ""
                    raise RecipeError(f"{recipe.merge_method} needs parameter {spec.name!r}{whose} (no value for {tensor_name})")
                value = spec.validate(spec.default)
            return value
        except ValueError as error:  # pydantic's ValidationError is a ValueError
            raise RecipeError(f"parameter {spec.name!r} is not valid for {tensor_name}: {error.errors()[0]['msg'] if hasattr(error, 'errors') else error}") from None

    def _slice_layout(self, recipe: Recipe) -> list[tuple[int, int]]:
        """Layer ranges of the output slices; the engine supports slices that keep layers in place."""
        if not recipe.slices:
            return [(0, self.num_layers)]
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
        return layout

    def _placement(self, tensor_name: str, slices: list[tuple[int, int]]) -> tuple[int, float]:
        """(slice index, gradient position) as mergekit plans it; non-layer tensors sit at 0."""
        layer = self._layer_of[tensor_name]
        if layer is None:
            return (0 if self._is_pre_weight[tensor_name] else len(slices) - 1), 0.0
        for index, (start, stop) in enumerate(slices):
            if start <= layer < stop:
                return index, layer_position(layer - start, stop - start)
        raise RecipeError(f"{tensor_name} lies outside every slice")

    def _build_resident_model(self, info: ParentInfo):
        """Allocate one model of the parents' architecture, without random init, on the device."""
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
        self._targets: dict[str, torch.Tensor] = {}
        first = next(iter(self.parents.values()))
        for name, tensor in first.tensors.items():
            if name not in state or tuple(state[name].shape) != tuple(tensor.shape):
                raise ParentError(f"transformers' {info.architecture} has no tensor {name} of shape {list(tensor.shape)}")
            state[name].copy_(tensor)
            self._targets[name] = state[name]
        return model



def _agreed_buffer(tensors: list[torch.Tensor], name: str) -> torch.Tensor:
    """Non-floating buffers must agree between parents (mergekit copies them, or refuses)."""
    if any(not torch.equal(t, tensors[0]) for t in tensors[1:]):
        raise RecipeError(f"non-floating tensor {name} differs between parents")
    return tensors[0]

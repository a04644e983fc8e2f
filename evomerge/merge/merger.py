"""The merge engine's resident part: parents on the device, one model, plans executed in place.

`Merger.load(parents)` checks and loads the parents once and allocates one transformers model.
`merger.apply(recipe)` asks the planner (`merge/planner.py`) for the recipe's `MergePlan` (every
parameter of every tensor resolved, the recipe checked before a tensor is touched), then executes
it: the method's fast path (`merge/fast/`) writes the merged tensors into the resident model, with
what it prepared once per study (SLERP angles, task vectors, magnitude orders); any other method
goes through mergekit's own in-memory API, so any recipe works. No disk I/O and no allocation of a
new model per call.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Hashable, Optional, Sequence, Union

import torch

from evomerge.devices import DTYPE_CHOICES, resolve_device, resolve_dtype
from evomerge.errors import ParentError, RecipeError
from evomerge.merge import methods
from evomerge.merge.conversion import to_model_layout
from evomerge.merge.fast import fast_method
from evomerge.merge.layout import LayoutModel, apply_passthrough, build_layout_model, layout_key, sources_key, view_of
from evomerge.merge.parents import Parent, ParentInfo, check_parents, inspect_parent, load_parent
from evomerge.merge.planner import FOLDER_KEYS, MergePlan, Planner, TensorPlan, execution_key
from evomerge.recipe import Recipe

LOG = logging.getLogger(__name__)

DTYPES = {name: getattr(torch, name) for name in DTYPE_CHOICES}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
__all__ = ["DTYPES", "DTYPE_NAMES", "FOLDER_KEYS", "MergePlan", "Merger", "TensorPlan", "resolve_device", "resolve_dtype"]


class Merger:
    """Keeps parents and one merged model resident; `apply(recipe)` rewrites the model in place.

    `Merger.load(parent folders, device=…, dtype=…)` checks and loads the parents and allocates the
    model; the constructor only indexes what it is given."""

    def __init__(self, parents: dict[str, Parent], model, targets: dict[str, torch.Tensor], *, infos: Sequence[ParentInfo], device: torch.device):
        """`parents` loaded on one device in one dtype, `model` of their architecture with
        `targets` its tensors by checkpoint name, in the model's order (see `load`)."""
        self.parents = parents
        self.model = model
        self.targets = targets
        self.infos = list(infos)
        first = next(iter(parents.values())).tensors
        self.device = device
        self.dtype = next(t.dtype for t in first.values() if t.is_floating_point())
        # In the model's own order (embeddings, layers, final norm, head), not the file's
        # alphabetical one: it tells which tensors mergekit plans before the layers and which after.
        self.tensor_names = list(targets)
        self.num_layers = self.infos[0].num_layers
        self.planner = Planner(self.tensor_names, self.num_layers, {name: p.path for name, p in parents.items()}, DTYPE_NAMES[self.dtype])
        # mergekit merges tensors in name order; DARE's random draws follow it.
        merge_order = sorted(range(len(self.tensor_names)), key=self.tensor_names.__getitem__)
        self.floating_rows = [row for row in merge_order if first[self.tensor_names[row]].is_floating_point()]
        # Non-floating buffers that all parents share sit in the model from the start and are never
        # rewritten; the ones some parents disagree on are checked and copied per recipe.
        self._mixed_buffers = [
            name
            for name in self.tensor_names
            if not first[name].is_floating_point() and any(not torch.equal(parent.tensors[name], first[name]) for parent in parents.values())
        ]
        self._agreeing_sets: set[frozenset[str]] = set()
        self.scratch = methods.ChunkScratch()  # the chunked writers' reusable buffers
        self.prepared: dict[Hashable, Any] = {}  # each fast method's per-study preparation, by its key
        from evomerge.merge.vocabulary import vocabulary_axes

        self._vocabulary_axes = vocabulary_axes(model.config, self.tensor_names)
        self._own_vocabulary: Optional[dict[str, dict[str, torch.Tensor]]] = None  # set when first replaced
        self._vocabularies: dict[tuple, Any] = {}  # tokenizer setting → `Vocabulary`
        self.vocabulary = None  # the `Vocabulary` whose rows the parents hold now (None: their own)
        self.apply_count = 0
        # A result with other layers than the parents' (passthrough, layer stacking) lives in a
        # second model, rebuilt only when its layout changes (see merge/layout.py).
        self.layout_model: Optional[LayoutModel] = None
        self.on_layout = False  # whether the last apply wrote the layout model
        self.last_rebuild_s: Optional[float] = None  # the last apply's rebuild time (0: reused); None: no layout

    @classmethod
    def load(
        cls,
        parents: Sequence[Union[str, Path, ParentInfo]],
        *,
        device: Union[str, torch.device] = "auto",
        dtype: Union[str, torch.dtype, None] = None,
        allow_pickle: bool = False,
        trust_remote_code: bool = False,
    ) -> "Merger":
        """Check the parents (folders or inspected `ParentInfo`s), load them on `device` in `dtype`
        (default: their own) and allocate the resident model."""
        infos = [p if isinstance(p, ParentInfo) else inspect_parent(p, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code) for p in parents]
        names = [info.name for info in infos]
        if len(set(names)) != len(names):
            raise ParentError(f"a parent is listed twice: {names}")
        # One parent: a passthrough recipe may restack its layers; differing vocabularies: a recipe's
        # tokenizer setting reconciles them (plan refuses a recipe without one).
        check_parents(infos, minimum=1, vocabularies_may_differ=True)
        device = resolve_device(device)
        dtype = resolve_dtype(dtype) or DTYPES[infos[0].stored_dtype]
        model = allocate_resident_model(infos[0], dtype, device, trust_remote_code)
        loaded = {}
        for info in infos:  # each in the model's layout (renamed, MoE experts fused), as mergekit reads it
            parent = load_parent(info, dtype=dtype, device=device)
            loaded[info.name] = Parent(info, to_model_layout(parent.tensors, model, label=str(info.path)))
        targets = fill_resident_model(model, info=infos[0], first=next(iter(loaded.values())).tensors)
        return cls(loaded, model, targets, infos=infos, device=device)

    # ----- public API ----------------------------------------------------------------------

    def parent_name(self, reference: str) -> str:
        """The loaded parent a recipe's model reference points to (by name, then by path)."""
        return self.planner.parent_name(reference)

    def plan(self, recipe: Recipe) -> MergePlan:
        """Check a recipe against the parents and resolve every parameter for every tensor (a
        `TensorPlan` per tensor, in `tensor_names` order); raises RecipeError. A recipe with a
        tokenizer setting lays the parents' vocabulary tensors out in its merged vocabulary first
        (once per setting: see `use_vocabulary`)."""
        plan = self.planner.plan(recipe)
        self._check_buffers(plan.models)
        self.use_vocabulary(recipe, plan.models)
        return plan

    def use_vocabulary(self, recipe: Recipe, models: Sequence[str]):
        """Make the parents' embedding and lm_head rows those of the recipe's merged vocabulary
        (`tokenizer_source` / `tokenizer`), or their own when it has none; returns the merged
        tokenizer (None: the base parent's applies). Built once per setting and set of parents;
        switching costs a copy of the vocabulary tensors and a fresh fast-path preparation."""
        from evomerge.merge import vocabulary

        setting = vocabulary.tokenizer_setting(recipe)
        if setting is None:
            sizes = {self._own_vocabulary_size(m) for m in models}
            if len(sizes) > 1:
                raise RecipeError(
                    f"the parents' vocabularies differ ({' vs '.join(str(n) for n in sorted(sizes))} tokens): add "
                    "`tokenizer: {source: union}` (or base, or a parent) to the recipe, as mergekit asks"
                )
            self._install_vocabulary(None)
            return None
        key = vocabulary.vocabulary_key(recipe, setting, self.parent_name)
        if key not in self._vocabularies:
            if self._own_vocabulary is None:
                self._own_vocabulary = self._vocabulary_tensors()
            self._vocabularies[key] = vocabulary.build_vocabulary(recipe, setting, self.parent_name, self._own_vocabulary, self._vocabulary_axes)
        self._install_vocabulary(self._vocabularies[key])
        return self._vocabularies[key].tokenizer

    @property
    def tokenizer(self):
        """The merged tokenizer of the vocabulary in use (None: the parents' own)."""
        return self.vocabulary.tokenizer if self.vocabulary is not None else None

    @torch.inference_mode()
    def apply(self, recipe: Union[Recipe, MergePlan], seed: Optional[int] = None):
        """Write the recipe's merge (or an already made plan's) into the resident model and return the model.

        `seed` seeds torch before merging, as `mergekit-yaml --random-seed` does, so DARE's random
        masks are mergekit's own; tensors are merged in mergekit's execution order (by name).
        """
        plan = recipe if isinstance(recipe, MergePlan) else self.plan(recipe)
        if seed is not None:
            torch.manual_seed(seed)
        if plan.layout is not None:
            model = self._apply_layout(plan)
            self.apply_count += 1
            return model
        self.on_layout, self.last_rebuild_s = False, None
        for buffer in self._mixed_buffers:  # the plan's parents agree on it (checked by plan)
            self.targets[buffer].copy_(self.parents[plan.models[0]].tensors[buffer])
        fast = fast_method(plan.method)
        if fast is not None:
            key = (type(fast), fast.key(plan))
            if key not in self.prepared:
                self.prepared[key] = fast.prepare(self, plan)
            fast.apply(self, plan, self.prepared[key])
        else:
            self._apply_with_mergekit(plan)
        self.apply_count += 1
        return self.model

    @torch.inference_mode()
    def show_parent(self, reference: str):
        """Load one parent's own weights into the resident model (to score a parent alone)."""
        parent = self.parents[self.parent_name(reference)]
        for name, target in self.targets.items():
            target.copy_(parent.tensors[name])
        self.on_layout, self.last_rebuild_s = False, None
        return self.model

    @property
    def active_model(self):
        """The model the last `apply` wrote: the resident model, or the layout model of a result
        whose layers are not the parents' own."""
        return self.layout_model.model if self.on_layout else self.model

    def merged_state_dict(self) -> dict[str, torch.Tensor]:
        """The merged tensors under the checkpoint's names (views into the model the last `apply`
        wrote; a passthrough result's are the parents' own tensors: read them, never write)."""
        return dict(self.layout_model.targets if self.on_layout else self.targets)

    # ----- results with other layers -------------------------------------------------------

    def _apply_layout(self, plan: MergePlan):
        """A plan with a layout: rebuild the layout model if the layout changed, then merge into it."""
        key = layout_key(plan, getattr(self.model.config, "layer_types", None))
        rebuilt = self.layout_model is None or self.layout_model.key != key
        if rebuilt:
            self.layout_model = None  # the old one's memory goes before the new one is built
            self.layout_model = build_layout_model(self, plan)
        layout_model = self.layout_model
        self.on_layout, self.last_rebuild_s = True, (layout_model.build_s if rebuilt else 0.0)
        if plan.layout.shared:
            apply_passthrough(self, plan, layout_model)
            return layout_model.model
        view = view_of(self, plan, layout_model)
        for tensor in plan.tensors:
            target = layout_model.targets[tensor.name]
            if not target.is_floating_point():
                target.copy_(view.parents[plan.models[0]].tensors[tensor.name])
        fast = fast_method(plan.method)
        if fast is not None:
            prepared_key = (type(fast), fast.key(plan), sources_key(plan))
            if prepared_key not in layout_model.prepared:
                layout_model.prepared[prepared_key] = fast.prepare(view, plan)
            fast.apply(view, plan, layout_model.prepared[prepared_key])
        else:
            self._apply_with_mergekit(plan, view.parents, view.targets)
        return layout_model.model

    # ----- what no fast path computes ------------------------------------------------------

    def _apply_with_mergekit(self, plan: MergePlan, parents=None, targets=None) -> None:
        """mergekit's in-memory merge of the plan into `targets` (default: the resident model's),
        reading `parents` (default: the loaded ones; a `LayoutView`'s for a layout)."""
        from mergekit.merge_methods import PerGroupValues, merge_state_dicts

        parents = self.parents if parents is None else parents
        targets = self.targets if targets is None else targets

        # In mergekit-yaml's execution order: methods that draw random masks (DARE, DELLA) then
        # draw them in the same order.
        tensors = sorted(plan.tensors, key=execution_key)
        parameters: dict[str, Any] = {}
        for key in tensors[0].shared:
            parameters[key] = PerGroupValues([tensor.shared[key] for tensor in tensors])
        for key in tensors[0].per_model:
            parameters[key] = PerGroupValues([tensor.per_model[key] for tensor in tensors])
        merged = merge_state_dicts(
            {m: {tensor.name: parents[m].tensors[tensor.name] for tensor in tensors} for m in plan.models},
            plan.method,
            base=plan.base,
            parameters=parameters,
        )
        for tensor_name, tensor in merged.items():
            targets[tensor_name].copy_(tensor)

    # ----- vocabularies (tokenizer settings) -------------------------------------------------

    def _vocabulary_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        return {name: {t: parent.tensors[t] for t in self._vocabulary_axes} for name, parent in self.parents.items()}

    def _own_vocabulary_size(self, parent: str) -> int:
        tensors = (self._own_vocabulary or {}).get(parent) or self.parents[parent].tensors
        name, axis = next(iter(self._vocabulary_axes.items()), (None, 0))
        return tensors[name].shape[axis] if name is not None else 0

    def _install_vocabulary(self, chosen) -> None:
        """Put `chosen`'s aligned rows (None: the parents' own) into the parents and size the
        resident model's vocabulary tensors to match."""
        if chosen is self.vocabulary:
            return
        if self._own_vocabulary is None:
            self._own_vocabulary = self._vocabulary_tensors()
        rows = chosen.tensors if chosen is not None else self._own_vocabulary
        for parent, tensors in rows.items():
            self.parents[parent].tensors.update(tensors)
        first = next(iter(rows.values()))
        name, axis = next(iter(self._vocabulary_axes.items()))
        size = first[name].shape[axis]
        if self.targets[name].shape[axis] != size:
            self.model.resize_token_embeddings(size, mean_resizing=False)
            state = self.model.state_dict()
            for tensor_name in self.targets:
                self.targets[tensor_name] = state[tensor_name]
        self.vocabulary = chosen
        self.prepared.clear()  # what fast paths prepared was computed from the previous rows

    def _check_buffers(self, models: list[str]) -> None:
        """Non-floating buffers must agree between the recipe's parents (mergekit copies them, or refuses)."""
        if not self._mixed_buffers or frozenset(models) in self._agreeing_sets:
            return
        for name in self._mixed_buffers:
            first = self.parents[models[0]].tensors[name]
            if any(not torch.equal(self.parents[m].tensors[name], first) for m in models[1:]):
                raise RecipeError(f"non-floating tensor {name} differs between parents")
        self._agreeing_sets.add(frozenset(models))


def build_resident_model(info: ParentInfo, first: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device, trust_remote_code: bool = False):
    """(model, targets): one model of the parents' architecture, allocated without random init on
    the device and holding the first parent's tensors (`first`, in the model's layout); `targets`
    maps each of those tensors to its parameter, in the model's order."""
    model = allocate_resident_model(info, dtype, device, trust_remote_code)
    return model, fill_resident_model(model, info=info, first=first)


def allocate_resident_model(info: ParentInfo, dtype: torch.dtype, device: torch.device, trust_remote_code: bool = False):
    """One model of the parent's architecture on the device, allocated without random init."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    config_dir = info.adapter_base.path if info.adapter_base is not None else info.path
    config = AutoConfig.from_pretrained(str(config_dir), trust_remote_code=trust_remote_code)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    # No requires_grad_(False): on torch 2.13 CPU it makes forward passes ~2× slower, and every
    # merge and score runs under inference_mode anyway.
    model.to(device).eval()
    model.tie_weights()  # a tied lm_head is absent from the files and must share the embeddings
    return model


def fill_resident_model(model, *, info: ParentInfo, first: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy `first` into the model; {tensor name: the model's parameter}, in the model's order."""
    state = model.state_dict()
    for name, tensor in first.items():
        if name not in state or tuple(state[name].shape) != tuple(tensor.shape):
            raise ParentError(f"transformers' {info.architecture} has no tensor {name} of shape {list(tensor.shape)}")
    targets: dict[str, torch.Tensor] = {name: state[name] for name in state if name in first}
    with torch.no_grad():
        for name, target in targets.items():
            target.copy_(first[name])
    return targets

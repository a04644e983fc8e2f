"""Results whose layers are not the parents' own: passthrough, layer stacking, depth-wise merges.

A plan with a `Layout` (see `merge/planner.py`) is executed on a second resident model of the
layout's depth, built when the layout first appears and kept until another layout replaces it: a
search whose trials keep one depth (a layer-wise SLERP inside fixed blocks) builds it once. A
passthrough result holds the parents' tensors themselves (a layer used twice is one tensor, not a
copy), so its model is rebuilt whenever the sources change; any other method writes into tensors
of the layout model's own, with the fast paths (`merge/fast/`) or mergekit's in-memory merge
reading each output tensor's sources through a `LayoutView`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Hashable, Optional, Sequence

import torch

from evomerge.errors import RecipeError
from evomerge.merge.parents import layer_index, with_layer_index
from evomerge.merge.planner import MergePlan, execution_key


@dataclass
class SourceParent:
    """A parent as a layout sees it: each output tensor's name → the parent's tensor it is made from."""

    tensors: dict[str, torch.Tensor]


@dataclass
class LayoutModel:
    """The resident model of one layout: the model, its tensors by checkpoint name (in the model's
    order), and what the fast paths prepared for it."""

    key: Hashable
    model: Any
    targets: dict[str, torch.Tensor]
    build_s: float
    prepared: dict[Hashable, Any] = field(default_factory=dict)


@dataclass
class LayoutView:
    """What a fast path reads of a `Merger` (parents, targets, tensor order, scratch buffers), for
    one plan on a layout model: the parents' tensors under the output names they are merged into."""

    parents: dict[str, SourceParent]
    targets: dict[str, torch.Tensor]
    tensor_names: list[str]
    floating_rows: list[int]
    scratch: Any


def layout_key(plan: MergePlan, layer_types: Optional[Sequence[str]] = None) -> Hashable:
    """What decides whether the layout model must be rebuilt: its depth and (for models with
    `layer_types`, the parents' config's) each layer's type, and for a passthrough result (whose
    tensors are the sources) which tensor each output tensor is."""
    layout = plan.layout
    if not layout.shared:
        types = tuple(layer_types[source] for source in layout.layer_sources) if isinstance(layer_types, (list, tuple)) else None
        return ("owned", layout.num_layers, types)
    return ("shared", tuple((tensor.name, tuple(tensor.sources.items()), _scale(tensor) is not None) for tensor in plan.tensors))


def _scale(tensor) -> Optional[float]:
    """A passthrough tensor's scale; None when it has none or 1 (x · 1.0 is x exactly: shared)."""
    scales = tensor.per_model.get("scale") or {}
    return next((value for value in scales.values() if value is not None and value != 1), None)


def build_layout_model(merger, plan: MergePlan) -> LayoutModel:
    """A model of the layout's depth on the merger's device: passthrough tensors are the parents'
    own (by reference), scaled or merged ones new tensors; non-persistent buffers (rotary
    frequencies) come from the resident model."""
    start = time.perf_counter()
    layout = plan.layout
    config = copy.deepcopy(merger.model.config)
    config.num_hidden_layers = layout.num_layers
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, (list, tuple)):
        config.layer_types = [layer_types[source] for source in layout.layer_sources]
    with torch.inference_mode(False), torch.no_grad():
        with torch.device("meta"):
            model = type(merger.model)(config)
        state: dict[str, torch.Tensor] = {}
        for tensor in plan.tensors:
            first_model, first_name = next(iter(tensor.sources.items()))
            source = merger.parents[first_model].tensors[first_name]
            if layout.shared and _scale(tensor) is None:
                state[tensor.name] = source  # the parent's own tensor: shared, not copied
            else:
                state[tensor.name] = torch.empty_like(source)
                if not source.is_floating_point():
                    state[tensor.name].copy_(source)
        model.load_state_dict(state, strict=False, assign=True)
        model.tie_weights()
        resident_buffers = dict(merger.model.named_buffers())
        for name, buffer in list(model.named_buffers()):
            if buffer.device.type != "meta":
                continue
            layer = layer_index(name)
            source_name = name if layer is None else with_layer_index(name, layout.layer_sources[layer])
            if source_name not in resident_buffers:
                raise RecipeError(f"cannot build the restacked model: no buffer {source_name} to take {name} from")
            module_name, _, leaf = name.rpartition(".")
            model.get_submodule(module_name)._buffers[leaf] = resident_buffers[source_name]
        missing = [name for name, parameter in model.named_parameters() if parameter.device.type == "meta"]
        if missing:
            raise RecipeError(f"cannot build the restacked model: the parents have no tensor for {missing[0]}")
    model.eval()
    state_dict = model.state_dict()
    targets = {tensor.name: state_dict[tensor.name] for tensor in plan.tensors}
    return LayoutModel(layout_key(plan, getattr(merger.model.config, "layer_types", None)), model, targets, time.perf_counter() - start)


def view_of(merger, plan: MergePlan, layout_model: LayoutModel) -> LayoutView:
    """The plan's sources as a merger-like view onto the layout model's tensors."""
    names = [tensor.name for tensor in plan.tensors]
    parents = {m: SourceParent({}) for m in plan.models}
    for tensor in plan.tensors:
        for model_name, source_name in tensor.sources.items():
            parents[model_name].tensors[tensor.name] = merger.parents[model_name].tensors[source_name]
    order = sorted(range(len(names)), key=lambda row: execution_key(plan.tensors[row]))  # mergekit's execution order
    floating = [row for row in order if layout_model.targets[names[row]].is_floating_point()]
    return LayoutView(parents, layout_model.targets, names, floating, merger.scratch)


def sources_key(plan: MergePlan) -> Hashable:
    """Which tensors a plan reads, per output tensor (what a fast path's preparation depends on)."""
    return tuple((tensor.name, tuple(tensor.sources.items())) for tensor in plan.tensors)


def apply_passthrough(merger, plan: MergePlan, layout_model: LayoutModel) -> None:
    """Scaled tensors, computed by mergekit's own passthrough; the others are the sources already."""
    from mergekit.merge_methods import merge_tensors

    for tensor in plan.tensors:
        scale = _scale(tensor)
        if scale is not None:
            (model_name, source_name), *_ = tensor.sources.items()
            source = merger.parents[model_name].tensors[source_name]
            layout_model.targets[tensor.name].copy_(merge_tensors([source], "passthrough", parameters={"scale": [scale]}))

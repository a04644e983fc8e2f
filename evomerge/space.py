"""Search spaces: a YAML file that turns a trial's suggested numbers into a `Recipe`.

A space names a mergekit method and, per parameter, how its value is searched:

    method: slerp
    parameters:
      t:
        filters:                                   # one entry per tensor-name filter, in order
          self_attn: {anchors: 5, low: 0, high: 1, step: 0.05}
          mlp:       {anchors: 5, low: 0, high: 1, step: 0.05}
        default: {low: 0, high: 1, step: 0.05}     # the catch-all (embeddings, norms, head)

A value spec is a fixed number (`0.5` or `{value: 0.5}`), a range (`{low, high, step?, log?}`), a
gradient (`{anchors: N, low, high, step?}`: N searched anchors over depth), per layer group
(`{group_size: G, low, high, step?}`: one value per G layers) or one of a list (`{choices: [false,
true]}`: a categorical value, for switches such as model_stock's `filter_wise`). `per_model: true`
searches the parameter once per non-base parent (weight, density), so such a space has one value
per child for however many parents a search gives (`weight.m0` is the first child's, in --parents
order). `choose_child: true` makes the space merge the base with one child, chosen per trial by a
categorical value `child` among the non-base parents (`m0`, `m1`, …, labelled as per-model values
are); the recipe names those two models only. Nothing here imports Optuna:
values are asked for through the trial's `suggest_float(name, low, high, step=…, log=…)` and
`suggest_categorical(name, choices)`, so any such object works.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional, Protocol, Sequence, Union

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from evomerge.config import YamlDocument, load_yaml_file, validate
from evomerge.errors import EvomergeError, RecipeError
from evomerge.recipe import PAPER_T, Recipe, layer_position, mergekit_method, outside_range


class SpaceError(EvomergeError):
    """A search space file that is malformed, or that does not fit the parents."""


# mergekit's contract for the shipped spaces' methods, as `method_contract` reads it from mergekit
# (tests/test_space.py checks the two agree): listing or sizing a shipped space then needs no
# mergekit import (which loads torch, seconds), and `evomerge spaces` answers at once.
KNOWN_CONTRACTS: dict[str, tuple[bool, Optional[int], frozenset[str]]] = {
    "slerp": (True, 2, frozenset()),
    "linear": (False, None, frozenset()),
    "task_arithmetic": (True, None, frozenset({"weight", "density"})),
    "ties": (True, None, frozenset({"weight", "density"})),
    "dare_ties": (True, None, frozenset({"weight", "density"})),
    "dare_linear": (True, None, frozenset({"weight", "density"})),
    "della": (True, None, frozenset({"weight", "density", "epsilon"})),
    "della_linear": (True, None, frozenset({"weight", "density", "epsilon"})),
    "breadcrumbs": (True, None, frozenset({"weight", "density", "gamma"})),
    "breadcrumbs_ties": (True, None, frozenset({"weight", "density", "gamma"})),
    "model_stock": (True, None, frozenset()),
    "sce": (True, None, frozenset()),
    "nuslerp": (False, None, frozenset({"weight"})),
    "karcher": (False, None, frozenset()),
    "passthrough": (False, 1, frozenset()),  # per slice: a depth-wise recipe's slices each take one parent
}
# Whether each of these methods normalises the weights by their sum unless told otherwise.
KNOWN_NORMALIZE: dict[str, Optional[bool]] = {
    "slerp": None,
    "linear": True,
    "task_arithmetic": False,
    "ties": True,
    "dare_ties": False,
    "dare_linear": False,
    "della": True,
    "della_linear": False,
    "breadcrumbs": False,
    "breadcrumbs_ties": False,
    "model_stock": None,
    "sce": None,
    "nuslerp": None,
    "karcher": None,
    "passthrough": None,
}


def method_contract(method: str) -> tuple[bool, Optional[int], set[str]]:
    """From mergekit's own registry: (needs a base, most inputs, parameters weighed per non-base
    parent only). A clear SpaceError for a method mergekit does not know."""
    from mergekit.merge_methods.base import BasePolicy, ParameterScope

    spec = _mergekit_spec(method)
    non_base = {p.name for p in spec.parameters if p.scope == ParameterScope.NON_BASE}
    return spec.contract.base == BasePolicy.REQUIRED, spec.contract.max_inputs, non_base


def method_normalizes(method: str) -> Optional[bool]:
    """mergekit's default for the method's `normalize` option (None: it has none)."""
    return next((bool(p.default) for p in _mergekit_spec(method).parameters if p.name == "normalize"), None)


def _mergekit_spec(method: str):
    try:
        return mergekit_method(method).spec
    except RecipeError as error:
        raise SpaceError(str(error)) from None


def gradient_at(anchors: list[float], position: float) -> float:
    """A gradient read at a position in [0, 1], as mergekit reads it."""
    scaled = position * (len(anchors) - 1)
    low = math.floor(scaled)
    high = min(len(anchors) - 1, low + 1)
    fraction = scaled - low
    return (1 - fraction) * anchors[low] + fraction * anchors[high]


class Trial(Protocol):
    def suggest_float(self, name: str, low: float, high: float, *, step: Optional[float] = None, log: bool = False) -> float: ...

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


@dataclass(frozen=True)
class ValueSpec:
    """How one value (or one list of values) is searched."""

    fixed: Optional[float] = None
    low: float = 0.0
    high: float = 1.0
    step: Optional[float] = None
    log: bool = False
    anchors: int = 0  # > 0: a gradient of this many anchors
    group_size: int = 0  # > 0: one value per this many layers
    choices: tuple = ()  # non-empty: one of these (a categorical value)

    def suggest(self, trial: Trial, name: str, num_layers: int) -> Union[float, list[float]]:
        if self.fixed is not None:
            return self.fixed
        if self.choices:
            return trial.suggest_categorical(name, list(self.choices))
        if self.anchors:
            # Never more anchors than layers: mergekit reads anchor i at layer i when there are as
            # many, so more would add values no layer reads (on 2 layers, 3 of 5 anchors).
            count = min(self.anchors, num_layers)
            if count < 2:  # one layer reads one value
                return self._one(trial, f"{name}.0")
            return [self._one(trial, f"{name}.{i}") for i in range(count)]
        if self.group_size:
            groups = math.ceil(num_layers / self.group_size)
            values = [self._one(trial, f"{name}.g{g}") for g in range(groups)]
            # One anchor per layer: mergekit reads anchor i at layer i exactly.
            return [values[layer // self.group_size] for layer in range(num_layers)]
        return self._one(trial, name)

    def _one(self, trial: Trial, name: str) -> float:
        value = trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)
        return round(value, 10)  # "after the space's rounding": 0.30000000000000004 → 0.3


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    default: Optional[ValueSpec] = None
    filters: tuple[tuple[str, ValueSpec], ...] = ()
    per_model: bool = False

    def suggest(self, trial: Trial, prefix: str, num_layers: int) -> Any:
        if not self.filters:
            return self.default.suggest(trial, prefix, num_layers)
        entries = [{"filter": f, "value": spec.suggest(trial, f"{prefix}.{f}", num_layers)} for f, spec in self.filters]
        if self.default is not None:
            entries.append({"value": self.default.suggest(trial, f"{prefix}.default", num_layers)})
        return entries


@dataclass
class SearchSpace:
    name: str
    method: str
    parameters: list[ParameterSpec]
    description: str = ""
    source: str = ""
    options: dict[str, Any] = field(default_factory=dict)  # fixed shared settings (normalize, …)
    choose_child: bool = False  # merge the base with one child, chosen per trial (`child`)

    @cached_property
    def contract(self) -> tuple[bool, Optional[int], set[str]]:
        """`method_contract(self.method)`, asked of mergekit once per space (known without it
        for the shipped spaces' methods)."""
        if self.method in KNOWN_CONTRACTS:
            needs_base, max_inputs, non_base = KNOWN_CONTRACTS[self.method]
            return needs_base, max_inputs, set(non_base)
        return method_contract(self.method)

    def inert_parameters(self, parents: list[str], base: Optional[str]) -> list[str]:
        """Searched values that cannot change the merge for these parents, each as a line for the
        user: a per-model `weight` when the method normalises the weights by their sum and only
        one parent is weighed (its weight divides out: TIES with a base and one other parent)."""
        notes = []
        needs_base, _, non_base = self.contract
        normalize = self.options.get("normalize", KNOWN_NORMALIZE[self.method] if self.method in KNOWN_NORMALIZE else method_normalizes(self.method))
        for parameter in self.parameters:
            if parameter.name != "weight" or not parameter.per_model or not normalize:
                continue
            weighed = [p for p in parents if p != base] if needs_base and "weight" in non_base else list(parents)
            searched = [spec for spec in ([parameter.default] if parameter.default else []) + [v for _, v in parameter.filters] if spec.fixed is None]
            if len(weighed) == 1 and searched:
                notes.append(
                    f"space {self.name}: {self.method} normalises the weights by their sum, so with one weighed parent "
                    f"({Path(weighed[0]).name}) 'weight' cannot change the merge; fix it, or set options: {{normalize: false}}"
                )
        return notes

    def check_parents(self, parents: list[str], base: Optional[str]) -> None:
        """Refuse a space that cannot merge these parents (before any work): the flags' own errors
        first, then whatever else mergekit's input contract for the method refuses."""
        needs_base, max_inputs, _ = self.contract
        if needs_base and base is None:
            raise SpaceError(f"space {self.name}: {self.method} needs a base model (--base)")
        if base is not None and base not in parents:
            raise SpaceError(f"--base {base} is not among the parents")
        if self.choose_child:
            if base is None or len(parents) < 3:
                raise SpaceError(
                    f"space {self.name} chooses a child to merge with the base: it needs a base and at least two children (three parents), got {len(parents)}"
                )
            parents = [base, next(p for p in parents if p != base)]  # each recipe merges two of them
        if max_inputs is not None and len(parents) > max_inputs:
            raise SpaceError(f"space {self.name}: {self.method} merges at most {max_inputs} parents, got {len(parents)}")
        if len(parents) < 2:
            raise SpaceError("a search needs at least two parents")
        try:
            # The recipes name a base only where the method needs one (see `suggest`).
            mergekit_method(self.method).spec.contract.validate_ids(list(parents), base if needs_base else None)
        except ValueError as error:
            raise SpaceError(f"space {self.name}: {self.method}: {error}") from None

    def dimension(self, num_layers: int, n_models: int = 2) -> int:
        """How many values one trial suggests (what `evomerge spaces` reports), counted by
        recording one `suggest` for `n_models` parents (the first is the base if the method needs one)."""
        recorder = _RecordingTrial()
        parents = [f"parent-{index}" for index in range(n_models)]
        self.suggest(recorder, parents, parents[0] if self.contract[0] else None, num_layers)
        return recorder.count

    def children(self, parents: Sequence[str], base: Optional[str]) -> list[str]:
        """The parents a `choose_child` space chooses among: every parent but the base."""
        return [p for p in parents if p != base]

    def model_labels(self, parents: Sequence[str], base: Optional[str]) -> dict[str, str]:
        """What the labels in trial parameter names (`weight.m1`, `child: m1`) stand for: label →
        parent. Per-model values label the parents mergekit weighs (the non-base ones where the
        method needs a base), `child` the non-base parents; {} for a space with neither."""
        needs_base, _, non_base = self.contract
        if self.choose_child:
            weighed = self.children(parents, base)
        else:
            per_model = [p for p in self.parameters if p.per_model]
            if not per_model:
                return {}
            weighed = self.children(parents, base) if needs_base and per_model[0].name in non_base else list(parents)
        return {f"m{index}": parent for index, parent in enumerate(weighed)}

    def suggest(self, trial: Trial, parents: list[str], base: Optional[str], num_layers: int, dtype: Optional[str] = None) -> Recipe:
        """The recipe a trial's suggested values describe."""
        needs_base, _, non_base = self.contract
        if self.choose_child:
            labels = self.model_labels(parents, base)
            child = labels[trial.suggest_categorical("child", list(labels))]
            parents = [p for p in parents if p in (base, child)]
        shared: dict[str, Any] = dict(self.options)
        per_model: dict[str, dict[str, Any]] = {p: {} for p in parents}
        for parameter in self.parameters:
            if parameter.per_model:
                # Per-model values go to the parents mergekit weighs: non-base ones, or all inputs.
                weighed = [p for p in parents if p != base] if needs_base and parameter.name in non_base else list(parents)
                for index, parent in enumerate(weighed):
                    per_model[parent][parameter.name] = parameter.suggest(trial, f"{parameter.name}.m{index}", num_layers)
            else:
                shared[parameter.name] = parameter.suggest(trial, parameter.name, num_layers)
        models = []
        for parent in parents:
            entry: dict[str, Any] = {"model": parent}
            if per_model[parent]:
                entry["parameters"] = per_model[parent]
            models.append(entry)
        data: dict[str, Any] = {"merge_method": self.method, "models": models}
        if base is not None and needs_base:
            data["base_model"] = base
        if shared:
            data["parameters"] = shared
        if dtype:
            data["dtype"] = dtype
        return Recipe.from_dict(data, source=f"space {self.name}")

    def grid(self, num_layers: int, parents: list[str], base: Optional[str]) -> Optional[dict[str, list[float]]]:
        """Every searched value's steps, for a grid search; None if some value has no step."""
        recorder = _RecordingTrial()
        self.suggest(recorder, parents, base, num_layers)
        grid = {}
        for name, (low, high, step) in recorder.ranges.items():
            if step is None:
                return None
            count = int(round((high - low) / step))
            grid[name] = [round(low + i * step, 10) for i in range(count + 1)]
        grid.update(recorder.choices)
        return grid

    def searched_ranges(self, num_layers: int, n_models: int = 2) -> dict[str, tuple[float, float, Optional[float]]]:
        """Every value a trial suggests for parents of `num_layers` layers: name → (low, high, step)."""
        recorder = _RecordingTrial()
        parents = [f"parent-{index}" for index in range(n_models)]
        self.suggest(recorder, parents, parents[0] if self.contract[0] else None, num_layers)
        return recorder.ranges

    def map_params(self, params: Mapping[str, float], num_layers: int, n_models: int = 2) -> dict[str, float]:
        """A finished trial's values (from a study of this space on parents of any depth) as values
        of this space for parents of `num_layers` layers. A per-layer-group value (`NAME.gK`) is
        read at the same relative depth: target group k of n takes the source group whose span holds
        depth (k + ½)/n; anchors of a gradient and single values are kept as they are (a gradient
        is already relative to depth). Values this space does not search are dropped, values
        outside its range clipped, and values it searches that the trial lacks left to the sampler."""
        source_groups: dict[str, int] = {}
        for name in params:
            prefix, group = _group_of(name)
            if group is not None:
                source_groups[prefix] = max(source_groups.get(prefix, 0), group + 1)
        target = self.searched_ranges(num_layers, n_models)
        target_groups: dict[str, int] = {}
        for name in target:
            prefix, group = _group_of(name)
            if group is not None:
                target_groups[prefix] = max(target_groups.get(prefix, 0), group + 1)
        mapped: dict[str, float] = {}
        for name, (low, high, step) in target.items():
            prefix, group = _group_of(name)
            source = name
            if group is not None and prefix in source_groups:
                depth = (group + 0.5) / target_groups[prefix]
                source = f"{prefix}.g{min(source_groups[prefix] - 1, int(depth * source_groups[prefix]))}"
            if source not in params:
                continue
            value = min(high, max(low, float(params[source])))
            if step:  # back onto the space's steps (a clipped or differently stepped value)
                value = min(high, low + round((value - low) / step) * step)
            mapped[name] = round(value, 10)
        return mapped

    def baseline_trials(self, num_layers: int, parents: Sequence[str], base: Optional[str]) -> list[tuple[dict[str, Any], str]]:
        """The paper's hand-made recipe for each (base, child) pair the space can merge, as
        (trial values, child): one per child for a `choose_child` space, the base with the other
        parent for a two-parent search; [] if the space cannot express the recipe."""
        params = self.baseline_params(num_layers)
        if params is None:
            return []
        if self.choose_child:
            return [({**params, "child": label}, child) for label, child in self.model_labels(parents, base).items()]
        children = self.children(parents, base)
        return [(params, children[0])] if len(children) == 1 else []

    def baseline_params(self, num_layers: int) -> Optional[dict[str, float]]:
        """Trial values that reproduce the paper's hand-made recipe, or None if the space cannot
        express it (only a SLERP space with 5-anchor self_attn and mlp gradients and a default can)."""
        if self.method != "slerp" or len(self.parameters) != 1 or self.parameters[0].name != "t":
            return None
        t = self.parameters[0]
        filters = dict(t.filters)
        paper = {entry["filter"]: entry["value"] for entry in PAPER_T if "filter" in entry}
        if set(filters) != set(paper) or t.default is None or t.default.fixed is not None:
            return None
        params: dict[str, float] = {}
        for name, anchors in paper.items():
            spec = filters[name]
            if spec.anchors != len(anchors) or spec.fixed is not None:
                return None
            # With fewer layers than anchors the space has one anchor per layer: the paper's
            # gradient read at each layer's position, the same tensors.
            count = min(spec.anchors, num_layers)
            values = anchors if count == len(anchors) else [gradient_at(anchors, layer_position(i, count)) for i in range(count)]
            for index, value in enumerate(values):
                if not spec.low <= value <= spec.high:
                    return None
                params[f"t.{name}.{index}"] = round(float(value), 10)
        if not t.default.low <= 0.5 <= t.default.high:
            return None
        params["t.default"] = 0.5
        return params


# ----- loading ---------------------------------------------------------------------------


def shipped_spaces() -> list[str]:
    folder = resources.files("evomerge") / "data" / "search_spaces"
    return sorted(entry.name[:-5] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def load_space(name_or_path: Union[str, Path]) -> SearchSpace:
    """A shipped space by name, or a space YAML file (read with evomerge's one YAML loader)."""
    text = str(name_or_path)
    if text in shipped_spaces():
        path = Path(str(resources.files("evomerge") / "data" / "search_spaces" / f"{text}.yaml"))
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            raise SpaceError(f"unknown search space {text!r}; shipped: {', '.join(shipped_spaces())}, or give a YAML path")
    return space_from_document(load_yaml_file(path, SpaceError, what="search space"), default_name=path.stem)


def parse_space(data: Any, source: str, default_name: str = "space") -> SearchSpace:
    """A space from plain data (as a YAML file would hold it); `source` names it in errors."""
    return space_from_document(YamlDocument(data, source), default_name)


# ----- the file's schema (pydantic), checked at the edge ---------------------------------


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


class ValueConfig(BaseModel):
    """How one value is searched: fixed (`0.5` or `{value: 0.5}`), a range (`{low, high, step?,
    log?}`), a gradient of N anchors, or one value per layer group."""

    model_config = ConfigDict(extra="forbid")
    value: Optional[float] = None
    low: Optional[float] = None
    high: Optional[float] = None
    step: Optional[float] = None
    log: bool = False
    anchors: int = 0
    group_size: int = 0
    choices: Optional[list[Union[bool, int, float, str]]] = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            return {"value": data}
        if not isinstance(data, dict):
            raise ValueError("expected a number or a mapping like {low: 0, high: 1, step: 0.05}")
        if "choices" in data:
            choices = data["choices"]
            if not isinstance(choices, list) or not choices or not all(isinstance(c, (bool, int, float, str)) for c in choices):
                raise ValueError("choices must be a non-empty list of numbers, booleans or strings")
            if len(set(map(repr, choices))) != len(choices):
                raise ValueError(f"choices repeat a value: {choices}")
            others = sorted(set(data) - {"choices"})
            if others:
                raise ValueError(f"choices take no {others[0]!r}")
        return data

    @field_validator("value", "low", "high", "step", mode="before")
    @classmethod
    def _numbers(cls, value: Any) -> Optional[float]:
        return None if value is None else _number(value)

    @model_validator(mode="after")
    def _consistent(self) -> "ValueConfig":
        if self.value is not None or self.choices is not None:
            return self
        if self.low is None or self.high is None:
            raise ValueError("a searched value needs 'low' and 'high'")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.step is not None and (self.step <= 0 or self.step > self.high - self.low):
            raise ValueError(f"step {self.step} must be positive and at most high - low")
        if self.anchors and self.group_size:
            raise ValueError("give 'anchors' or 'group_size', not both")
        if self.anchors < 0 or self.anchors == 1 or self.group_size < 0:
            raise ValueError("anchors must be ≥ 2 and group_size ≥ 1")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("a log range needs low > 0 and no step")
        return self

    def spec(self) -> ValueSpec:
        if self.value is not None:
            return ValueSpec(fixed=self.value)
        if self.choices is not None:
            return ValueSpec(choices=tuple(self.choices))
        return ValueSpec(None, self.low, self.high, self.step, self.log, self.anchors, self.group_size)


class ParameterConfig(BaseModel):
    """One parameter: a value spec, or `{filters: {tensor filter: spec}, default: spec, per_model: bool}`."""

    model_config = ConfigDict(extra="forbid")
    filters: dict[str, ValueConfig] = {}
    default: Optional[ValueConfig] = None
    per_model: bool = False

    @model_validator(mode="before")
    @classmethod
    def _plain(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("filters" in data or "per_model" in data or "default" in data):
            if data.get("filters") is not None and not isinstance(data["filters"], dict):
                raise ValueError("filters must map a tensor-name filter to a value spec")
            return {**data, "filters": data.get("filters") or {}}
        return {"default": data}

    @model_validator(mode="after")
    def _has_default(self) -> "ParameterConfig":
        if self.default is None and not self.filters:
            raise ValueError("give 'default' or 'filters'")
        if self.filters and self.default is None:
            raise ValueError("filtered values need a 'default' for the tensors no filter matches")
        return self


class SpaceFile(BaseModel):
    """A search space file: the mergekit method, how each parameter is searched, fixed options."""

    model_config = ConfigDict(extra="forbid")
    name: Optional[str] = None
    description: Optional[str] = None
    method: str
    parameters: dict[str, ParameterConfig]
    options: Optional[dict[str, Any]] = None
    choose_child: bool = False

    @model_validator(mode="after")
    def _one_child(self) -> "SpaceFile":
        if self.choose_child and any(p.per_model for p in self.parameters.values()):
            raise ValueError("choose_child merges the base with one child: give its values without per_model")
        return self

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError("'method' (a mergekit merge method) is missing")
        return value

    @field_validator("parameters", mode="before")
    @classmethod
    def _parameters(cls, value: Any) -> Any:
        if not isinstance(value, dict) or not value:
            raise ValueError("'parameters' must map each parameter to how it is searched")
        return value

    @field_validator("options", mode="before")
    @classmethod
    def _options(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, dict):
            raise ValueError("'options' must be a mapping of fixed shared settings")
        return value


def space_from_document(document: YamlDocument, default_name: str = "space") -> SearchSpace:
    """The `SearchSpace` a (parsed) space file describes; SpaceError naming the file and line."""
    if not isinstance(document.data, dict):
        raise SpaceError(f"{document.source}: a search space is a mapping with 'method' and 'parameters'")
    if "method" not in document.data:
        raise SpaceError(f"{document.source}: 'method' (a mergekit merge method) is missing")
    if "depthwise" in document.data:  # which parent supplies each block of layers (evomerge/depthwise.py)
        from evomerge.depthwise import depthwise_from_document

        return depthwise_from_document(document, default_name)
    parsed = validate(SpaceFile, document, SpaceError)
    parameters = []
    for name, config in parsed.parameters.items():
        path = ("parameters", name)
        default = _checked(name, config.default.spec(), document.where(path)) if config.default else None
        filters = tuple((str(f), _checked(name, v.spec(), document.where(path + ("filters", f)))) for f, v in config.filters.items())
        parameters.append(ParameterSpec(name, default, filters, config.per_model))
    return SearchSpace(
        parsed.name or default_name, parsed.method, parameters, parsed.description or "", document.source, parsed.options or {}, parsed.choose_child
    )


def _checked(name: str, spec: ValueSpec, where: str) -> ValueSpec:
    """A range must stay inside what the parameter allows (t in [0, 1], density in (0, 1], …)."""
    if spec.fixed is not None:
        values = [spec.fixed]
    elif spec.choices:
        values = [c for c in spec.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
    else:
        values = [spec.low, spec.high]
    for value in values:
        interval = outside_range(name, value)
        if interval:
            raise SpaceError(f"{where}: {name} range reaches {value}, outside {interval}")
    return spec


_GROUP = re.compile(r"^(.*)\.g(\d+)$")


def _group_of(name: str) -> tuple[str, Optional[int]]:
    """`t.mlp.g3` → ("t.mlp", 3); a name of no layer group → (name, None)."""
    match = _GROUP.match(name)
    return (match.group(1), int(match.group(2))) if match else (name, None)


class _RecordingTrial:
    """A trial that answers with the low end and remembers each value's range."""

    def __init__(self) -> None:
        self.ranges: dict[str, tuple[float, float, Optional[float]]] = {}
        self.choices: dict[str, list[Any]] = {}

    def suggest_float(self, name: str, low: float, high: float, *, step: Optional[float] = None, log: bool = False) -> float:
        self.ranges[name] = (low, high, None if log else step)
        return low

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        self.choices[name] = list(choices)
        return choices[0]

    @property
    def count(self) -> int:
        """How many values were asked for."""
        return len(self.ranges) + len(self.choices)

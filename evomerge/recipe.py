"""A merge recipe in mergekit's own language, and mergekit's rule for reading its parameters.

A `Recipe` holds exactly what a mergekit YAML holds (method, models or slices, base model, dtype,
parameters) as plain data, so it dumps to a YAML that `mergekit-yaml` accepts and loads back
unchanged. Parameter settings stay in mergekit's raw form: a scalar, a gradient (a list of anchors)
or a list of `{filter, value}` entries; `evaluate_setting` reads one for a tensor at a depth, and
`Recipe.reader` gives the engine one reader per parameter that validates each setting only once.
This is the lowest layer that knows mergekit (imported lazily: mergekit's import is slow).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from evomerge.config import parse_yaml
from evomerge.devices import DTYPE_CHOICES
from evomerge.errors import EvomergeError, RecipeError
from evomerge.files import write_text_atomic

Scalar = Union[bool, int, float, str]
Setting = Any  # Scalar | list[Scalar] | {filter, value} | list[{filter, value}]

# Numeric ranges mergekit itself does not check but that make no sense to merge with.
PARAMETER_RANGES: dict[str, tuple[float, float, bool]] = {
    # name: (low, high, low_inclusive)
    "t": (0.0, 1.0, True),
    "density": (0.0, 1.0, False),
    "epsilon": (0.0, 1.0, True),
    "gamma": (0.0, 1.0, True),
}

DTYPES = DTYPE_CHOICES  # the dtype names a recipe may give


def outside_range(name: str, value: float) -> Optional[str]:
    """The interval `name` must lie in, written "[0, 1]" or "(0, 1]", if `value` is outside it;
    None if it is inside or `name` has no range."""
    if name not in PARAMETER_RANGES:
        return None
    low, high, low_inclusive = PARAMETER_RANGES[name]
    too_low = value < low if low_inclusive else value <= low
    if too_low or value > high:
        return f"{'[' if low_inclusive else '('}{low:g}, {high:g}]"
    return None


def load_yaml(text: str, source: str, error: type[EvomergeError] = RecipeError) -> Any:
    """YAML through evomerge's one loader (`config.parse_yaml`); malformed YAML raises `error`
    naming the source and line, on one line."""
    return parse_yaml(text, source, error).data


def mergekit_method(name: str):
    """mergekit's registered merge method object, or a RecipeError naming the known ones."""
    from mergekit import merge_methods

    try:
        return merge_methods.get(name)
    except RuntimeError:
        known = sorted(method.spec.name for method in merge_methods.registered_methods())
        raise RecipeError(f"unknown merge method {name!r}; known: {', '.join(known)}") from None


def coerce_number(value: Any) -> Any:
    """A numeric string (YAML reads `1e-1` as a string) as a float, as mergekit's float
    parameters validate it; anything else unchanged."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


class ModelEntry(BaseModel):
    """One input model of a `models:` recipe, with its per-model parameters (weight, density)."""

    model_config = ConfigDict(extra="forbid")
    model: str
    parameters: Optional[dict[str, Setting]] = None


class SliceSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    layer_range: tuple[int, int]
    parameters: Optional[dict[str, Setting]] = None


class OutputSlice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: list[SliceSource]
    base_model: Optional[str] = None
    parameters: Optional[dict[str, Setting]] = None


class Recipe(BaseModel):
    """A mergekit merge configuration. Field names and meaning are mergekit's."""

    model_config = ConfigDict(extra="forbid")

    merge_method: str
    base_model: Optional[str] = None
    models: Optional[list[ModelEntry]] = None
    slices: Optional[list[OutputSlice]] = None
    parameters: Optional[dict[str, Setting]] = None
    dtype: Optional[str] = None
    out_dtype: Optional[str] = None
    tokenizer_source: Optional[str] = None
    tokenizer: Optional[dict[str, Any]] = None
    chat_template: Optional[str] = None

    def model_post_init(self, _context: Any) -> None:
        if bool(self.models) == bool(self.slices):
            raise RecipeError("a recipe needs exactly one of 'models' or 'slices'")
        for dtype in (self.dtype, self.out_dtype):
            if dtype is not None and dtype not in DTYPES:
                raise RecipeError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
        for where, settings in self.all_settings():
            for name, setting in settings.items():
                _check_setting(name, setting, where)

    # ----- construction and serialisation ---------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any, source: str = "recipe") -> "Recipe":
        if not isinstance(data, dict):
            raise RecipeError(f"{source}: expected a mapping of mergekit keys, got {type(data).__name__}")
        if "modules" in data:
            raise RecipeError(f"{source}: 'modules' recipes are not supported; use 'models' or 'slices'")
        try:
            return cls.model_validate(data)
        except RecipeError as error:
            raise RecipeError(f"{source}: {error}") from None
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "recipe"
            raise RecipeError(f"{source}: {where}: {first['msg']}") from None

    @classmethod
    def from_yaml(cls, text: str, source: str = "recipe") -> "Recipe":
        return cls.from_dict(load_yaml(text, source), source)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Recipe":
        """A recipe from a YAML file, or a shipped recipe by name (`paper_slerp`)."""
        from evomerge.shipped import resolve_recipe

        path = resolve_recipe(path, RecipeError)
        return cls.from_yaml(path.read_text(encoding="utf-8"), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)

    def to_yaml(self) -> str:
        return yaml.dump(self.to_dict(), Dumper=_RecipeDumper, sort_keys=False, allow_unicode=True)

    def save(self, path: Union[str, Path]) -> None:
        write_text_atomic(path, self.to_yaml())

    def to_mergekit(self):
        """Validate with mergekit's own parser; returns a `mergekit.config.MergeConfiguration`."""
        from mergekit.config import MergeConfiguration

        try:
            return MergeConfiguration.model_validate(self.to_dict())
        except (ValidationError, RuntimeError) as error:
            raise RecipeError(f"mergekit rejects the recipe: {error}") from None

    # ----- queries --------------------------------------------------------------------------

    @property
    def model_names(self) -> list[str]:
        """Input models in mergekit's order: as listed, then the base if it was not listed."""
        if self.models:
            names = [entry.model for entry in self.models]
        else:  # every slice's sources: a layer-stacking recipe takes slices from different models
            names = list(dict.fromkeys(source.model for out_slice in self.slices for source in out_slice.sources))
        if self.base_model and self.base_model not in names:
            names.append(self.base_model)
        return names

    def with_models(self, renames: dict[str, str]) -> "Recipe":
        """A copy with model references replaced (placeholder paths → real parents). A name the
        recipe never uses is an error: a typo would otherwise merge the model it was meant to replace."""
        data = self.to_dict()
        used: set[str] = set()
        # A tokenizer taken from a model names it too (`tokenizer_source: M`, `tokenizer: {source: M}`).
        if data.get("tokenizer_source") in renames:
            used.add(data["tokenizer_source"])
            data["tokenizer_source"] = renames[data["tokenizer_source"]]
        tokenizer = data.get("tokenizer")
        if isinstance(tokenizer, dict) and tokenizer.get("source") in renames:
            used.add(tokenizer["source"])
            tokenizer["source"] = renames[tokenizer["source"]]

        def rename(node: Any) -> Any:
            if isinstance(node, dict):
                renamed = {}
                for key, value in node.items():
                    if key in ("model", "base_model") and isinstance(value, str):
                        used.add(value)
                        renamed[key] = renames.get(value, value)
                    else:
                        renamed[key] = rename(value)
                return renamed
            if isinstance(node, list):
                return [rename(item) for item in node]
            return node

        renamed = rename(data)
        unknown = [name for name in renames if name not in used]
        if unknown:
            raise RecipeError(f"the recipe has no model {unknown[0]!r} to replace (its models: {', '.join(sorted(used))})")
        return Recipe.from_dict(renamed)

    def parameter_sources(self, model: Optional[str] = None, slice_index: int = 0) -> list[dict[str, Setting]]:
        """Settings from highest to lowest precedence, as mergekit's ConfigReader yields them."""
        sources: list[Optional[dict[str, Setting]]] = []
        if self.models:
            if model is not None:
                sources += [entry.parameters for entry in self.models if entry.model == model]
        else:
            out_slice = self.slices[slice_index]
            if model is not None:
                sources += [src.parameters for src in out_slice.sources if src.model == model]
            sources.append(out_slice.parameters)
        sources.append(self.parameters)
        return [source for source in sources if source is not None]

    def parameter(
        self,
        name: str,
        tensor_name: str,
        position: float = 0.0,
        model: Optional[str] = None,
        slice_index: int = 0,
        validate: Callable[[Any], Any] = coerce_number,
    ) -> Any:
        """The value mergekit uses for `name` on `tensor_name` at depth `position`, or None if unset.

        `model` asks for a per-model parameter (weight, density); without it, only the shared
        (slice and global) settings are read, as mergekit does for shared parameters.
        """
        return self.reader(name, model, slice_index, validate).value(tensor_name, position)

    def reader(
        self,
        name: str,
        model: Optional[str] = None,
        slice_index: int = 0,
        validate: Callable[[Any], Any] = coerce_number,
    ) -> "ParameterReader":
        """`parameter(name, …, model, slice_index)` for any tensor and depth, each setting validated once."""
        return ParameterReader([SettingReader(settings[name], validate) for settings in self.parameter_sources(model, slice_index) if name in settings])

    def all_settings(self) -> Iterator[tuple[str, dict[str, Setting]]]:
        """Every parameter mapping of the recipe, with where it sits (`models[x].parameters`, …)."""
        if self.parameters:
            yield "parameters", self.parameters
        for entry in self.models or []:
            if entry.parameters:
                yield f"models[{entry.model}].parameters", entry.parameters
        for index, out_slice in enumerate(self.slices or []):
            if out_slice.parameters:
                yield f"slices[{index}].parameters", out_slice.parameters
            for source in out_slice.sources:
                if source.parameters:
                    yield f"slices[{index}].sources[{source.model}].parameters", source.parameters


# A search's export carries where the recipe came from on one comment line (YAML and mergekit
# ignore it): the study, the trial, its scores. `evomerge merge` puts them in the model card.
EXPORT_METADATA_PREFIX = "# evomerge-metadata: "


def export_metadata_line(metadata: dict) -> str:
    """The comment line that carries a search export's metadata (one line of JSON)."""
    import json

    return EXPORT_METADATA_PREFIX + json.dumps(metadata, separators=(", ", ": ")) + "\n"


def read_export_metadata(text: str) -> Optional[dict]:
    """The metadata a search export's comment carries, None for any other recipe (or a damaged line)."""
    import json

    for line in text.splitlines():
        if line.startswith(EXPORT_METADATA_PREFIX):
            try:
                data = json.loads(line[len(EXPORT_METADATA_PREFIX) :])
            except ValueError:
                return None
            return data if isinstance(data, dict) else None
        if line.strip() and not line.startswith("#"):
            return None  # only the header before the YAML counts
    return None


def layer_position(layer_in_slice: int, slice_length: int) -> float:
    """Where a layer sits in its slice for gradients: i/(L-1), and 1 for a one-layer slice."""
    return layer_in_slice / (slice_length - 1) if slice_length > 1 else 1.0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


def evaluate_setting(setting: Setting, tensor_name: str, position: float = 0.0, validate: Callable[[Any], Any] = coerce_number) -> Any:
    """mergekit's rule: first matching filter wins; numeric gradients interpolate linearly
    between evenly spaced anchors at `position` in [0, 1]; other lists step. `validate` converts
    each value as the parameter's type does (mergekit validates before interpolating)."""
    return SettingReader(setting, validate).value(tensor_name, position)


_SCALAR, _GRADIENT, _STEPS, _FILTERED, _NOTHING = range(5)


class SettingReader:
    """One raw setting read with mergekit's `evaluate_setting` rule, for any tensor and depth.

    mergekit validates a gradient's anchors on every read; a reader validates them the first time
    they are read (so an invalid value fails where mergekit would) and keeps them, since a recipe
    is read for every tensor of a model. The tests check it against mergekit's own function."""

    __slots__ = ("_setting", "_validate", "_kind", "_values", "_entries")

    def __init__(self, setting: Setting, validate: Callable[[Any], Any] = coerce_number):
        if isinstance(setting, dict):
            setting = [setting]
        self._setting = setting
        self._validate = validate
        self._values: Any = None
        self._entries: list[tuple[Optional[str], SettingReader]] = []
        if _is_scalar(setting):
            self._kind = _SCALAR
        elif not isinstance(setting, list) or not setting:
            self._kind = _NOTHING
        elif all(_is_scalar(item) for item in setting):
            self._kind = _GRADIENT
        else:
            self._kind = _FILTERED
            self._entries = [(entry.get("filter"), SettingReader(entry["value"], validate)) for entry in setting]

    def value(self, tensor_name: str, position: float = 0.0) -> Any:
        kind = self._kind
        if kind == _FILTERED:
            for filter_, reader in self._entries:
                if filter_ is None or filter_ == "*" or (tensor_name and filter_ in tensor_name):
                    return reader.value(tensor_name, position)
            return None
        if kind == _NOTHING:
            return None
        if self._values is None:
            self._validate_values()
        if self._kind == _SCALAR:
            return self._values
        values = self._values
        scaled = position * (len(values) - 1)
        if self._kind == _STEPS:
            return values[int(scaled)]
        i0 = int(scaled)
        i1 = min(len(values) - 1, i0 + 1)
        frac = scaled - i0
        return self._validate((1 - frac) * values[i0] + frac * values[i1])

    def _validate_values(self) -> None:
        if self._kind == _SCALAR:
            self._values = self._validate(self._setting)
            return
        values = [self._validate(item) for item in self._setting]
        if not all(_is_number(value) for value in values):
            self._kind = _STEPS
        self._values = values


class ParameterReader:
    """One parameter's settings from highest to lowest precedence; the first that gives a value wins."""

    __slots__ = ("_settings",)

    def __init__(self, settings: list[SettingReader]):
        self._settings = settings

    def value(self, tensor_name: str, position: float = 0.0) -> Any:
        for setting in self._settings:
            value = setting.value(tensor_name, position)
            if value is not None:
                return value
        return None


def _check_setting(name: str, setting: Setting, where: str) -> None:
    """Reject shapes mergekit would not parse and numbers outside the parameter's range."""
    label = f"{where}.{name}"
    entries = setting if isinstance(setting, list) else [setting]
    if isinstance(setting, list) and not setting:
        raise RecipeError(f"{label}: empty list")
    if all(isinstance(entry, dict) for entry in entries):
        for entry in entries:
            unknown = set(entry) - {"filter", "value"}
            if "value" not in entry or unknown:
                raise RecipeError(f"{label}: a filtered entry needs 'value' and optionally 'filter'")
            if entry.get("filter") is not None and not isinstance(entry["filter"], str):
                raise RecipeError(f"{label}: filter must be a string")
            _check_leaf_values(name, entry["value"], label)
        return
    if isinstance(setting, list) and any(isinstance(entry, dict) for entry in setting):
        raise RecipeError(f"{label}: do not mix filtered entries and plain values in one list")
    _check_leaf_values(name, setting, label)


def _check_leaf_values(name: str, value: Setting, label: str) -> None:
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not value:
        raise RecipeError(f"{label}: empty gradient")
    for item in values:
        if not _is_scalar(item):
            raise RecipeError(f"{label}: expected a number or a list of numbers, got {item!r}")
        item = coerce_number(item)
        if _is_number(item):
            if not math.isfinite(item):
                raise RecipeError(f"{label}: {item} is not a finite number")
            interval = outside_range(name, item)
            if interval:
                raise RecipeError(f"{label}: {name}={item} is outside {interval}")


class _RecipeDumper(yaml.SafeDumper):
    """Numeric lists in flow style (`[0, 0.5, 1]`), like mergekit's own dumper."""

    def represent_list(self, data: list) -> yaml.SequenceNode:
        flow = all(_is_number(item) for item in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)

    def represent_tuple(self, data: tuple) -> yaml.SequenceNode:
        return self.represent_list(list(data))


_RecipeDumper.add_representer(list, _RecipeDumper.represent_list)
_RecipeDumper.add_representer(tuple, _RecipeDumper.represent_tuple)


# The source paper's hand-made schedule (Lu, Luu & Buehler 2024): SLERP with the Instruct model
# as base, attention moving from Instruct to the child with depth and the MLPs the other way.
PAPER_T = [
    {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
    {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
    {"value": 0.5},
]


def slerp_recipe(base: str, other: str, t, dtype: str = "bfloat16") -> Recipe:
    """SLERP of two parents: t = 0 is `base`, t = 1 is `other`; `t` is a number or any mergekit
    parameter value (a gradient, a filter list)."""
    return Recipe.from_dict(
        {
            "merge_method": "slerp",
            "base_model": base,
            "models": [{"model": base}, {"model": other}],
            "parameters": {"t": t},
            "dtype": dtype,
        }
    )


def paper_recipe(instruct: str = "./instruct", fine_tuned: str = "./fine-tuned", dtype: str = "bfloat16") -> Recipe:
    """The paper's SLERP recipe for an Instruct parent and a fine-tuned child."""
    return slerp_recipe(instruct, fine_tuned, PAPER_T, dtype)

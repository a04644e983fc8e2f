"""Configuration at the edge: the one YAML loader, and pydantic validation that names the line.

Every YAML file evomerge reads (recipes, search spaces, pairs files, training pipelines) goes
through `parse_yaml` / `load_yaml_file`: PyYAML's safe loader only, and a `YamlDocument` that keeps
the line of every mapping key and list item. `validate(Model, document)` checks the data with a
pydantic model and turns the first problem into one line naming the file, the line and the key
("pairs.yaml: line 4: pairs[1].colour: unknown key 'colour'"); `document.where(path)` gives the
same prefix for the checks a model cannot make (paths that must exist, labels used twice).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, TypeVar, Union

import yaml
from pydantic import BaseModel, ValidationError

from evomerge.errors import EvomergeError

Key = Union[str, int]
Model = TypeVar("Model", bound=BaseModel)


@dataclass
class YamlDocument:
    """Parsed YAML (`data`) and where each part of it was written (`lines`: key path → line)."""

    data: Any
    source: str
    lines: dict[tuple[Key, ...], int] = field(default_factory=dict)

    def line_of(self, path: Sequence[Key]) -> Optional[int]:
        """The 1-based line of `path` (keys and list indices), or of its deepest part that has one."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None

    def where(self, path: Sequence[Key] = (), shown: Optional[Sequence[Key]] = None) -> str:
        """'source: line N: a.b[2]' for `path` (its line, as much of it as is known); `shown`:
        another path to name instead (the mapping that holds an unknown key, say)."""
        line = self.line_of(path)
        shown = path if shown is None else shown
        parts = [self.source] + ([f"line {line}"] if line is not None else []) + ([dotted(shown)] if shown else [])
        return ": ".join(parts)


def dotted(path: Sequence[Key]) -> str:
    """('pairs', 1, 'label') → 'pairs[1].label'."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def parse_yaml(text: str, source: str, error: type[EvomergeError] = EvomergeError) -> YamlDocument:
    """YAML text through the safe loader; malformed YAML raises `error` naming the source and line."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        line = f" line {mark.line + 1}:" if mark is not None else ""
        what = getattr(problem, "problem", None) or str(problem).splitlines()[0]
        raise error(f"{source}:{line} malformed YAML: {what}") from None
    finally:
        loader.dispose()
    lines: dict[tuple[Key, ...], int] = {}
    if node is not None:
        _record_lines(node, (), lines)
    return YamlDocument(data, source, lines)


def load_yaml_file(path: Union[str, Path], error: type[EvomergeError] = EvomergeError, what: str = "file") -> YamlDocument:
    """A YAML file (see `parse_yaml`); a missing file or one that is not UTF-8 raises `error`."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text") from None
    return parse_yaml(text, str(path), error)


def _record_lines(node: yaml.Node, path: tuple[Key, ...], lines: dict[tuple[Key, ...], int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key.value)
            lines[path + (name,)] = key.start_mark.line + 1
            _record_lines(value, path + (name,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, path + (index,), lines)


def validate(model: type[Model], document: YamlDocument, error: type[EvomergeError] = EvomergeError, data: Any = None) -> Model:
    """`document.data` (or `data`) checked by a pydantic model; the first problem raises `error` as
    one line naming the file, line and key."""
    try:
        return model.model_validate(document.data if data is None else data)
    except ValidationError as problem:
        errors = problem.errors()
        # An unknown key first: it is usually the misspelling of the key reported missing.
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        path = tuple(part for part in first["loc"] if isinstance(part, (str, int)))
        # An unknown key is named in the message: the place shown is the mapping that holds it.
        shown = path[:-1] if first["type"] == "extra_forbidden" else path
        raise error(f"{document.where(path, shown)}: {problem_text(first)}") from None


def problem_text(error: dict) -> str:
    """One pydantic error in evomerge's words: an unknown key named, a validator's own message."""
    if error["type"] == "extra_forbidden":
        return f"unknown key {error['loc'][-1]!r}"
    if error["type"] == "missing":
        return f"'{error['loc'][-1]}' is missing"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")

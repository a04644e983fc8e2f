"""Recipes and training pipelines that ship inside the package, addressable by name.

`evomerge merge paper_slerp …` and `evomerge train --pipeline small_cpu …` read the files under
`evomerge/data/recipes/` (merge recipes at the top, training pipelines and their example data in
`train/`), wherever the package is installed; a path to a file of one's own works everywhere a
name does. (Search spaces and benchmarks resolve their names the same way, in `space.py` and
`evaluate/benchmark.py`.)
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Union

from evomerge.config import parse_yaml
from evomerge.errors import EvomergeError


@dataclass(frozen=True)
class Shipped:
    name: str
    kind: str  # "merge" (a mergekit recipe) or "train" (a training pipeline)
    path: Path
    description: str


def data_folder() -> Path:
    """The package's data folder on disk (setuptools installs packages unzipped)."""
    return Path(str(resources.files("evomerge") / "data"))


def _describe(path: Path) -> str:
    """A shipped file's opening comment up to its first full stop, or else what a merge recipe
    merges, in one line."""
    text = path.read_text(encoding="utf-8")
    comment = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("#").strip())
    if comment:
        sentence = " ".join(comment)
        return sentence[: sentence.index(". ") + 1] if ". " in sentence else sentence
    data = parse_yaml(text, str(path)).data
    if isinstance(data, dict) and "merge_method" in data:
        models = [entry.get("model") for entry in data.get("models") or [] if isinstance(entry, dict)]
        return f"{data['merge_method']} of {', '.join(map(str, models))} (rename them with --parent NAME=PATH)"
    return ""


def shipped_recipes() -> list[Shipped]:
    """Every shipped merge recipe and training pipeline, merge recipes first, by name."""
    root = data_folder() / "recipes"
    found = []
    for kind, folder in (("merge", root), ("train", root / "train")):
        for path in sorted(folder.glob("*.yaml")):
            found.append(Shipped(path.stem, kind, path, _describe(path)))
    return found


def _resolve(name_or_path: Union[str, Path], kind: str, what: str, error: type[EvomergeError]) -> Path:
    """A shipped file's path by name, else the path given; a name that is neither says so with
    the shipped names (the phrase starts as a missing file's always did: "<what> file not found")."""
    text = str(name_or_path)
    for entry in shipped_recipes():
        if entry.kind == kind and text == entry.name:
            return entry.path
    path = Path(text).expanduser()
    if path.is_file():
        return path
    names = ", ".join(entry.name for entry in shipped_recipes() if entry.kind == kind)
    raise error(f"{what} file not found: {text} (nor a shipped {what}: {names}; see `evomerge recipes`)")


def resolve_recipe(name_or_path: Union[str, Path], error: type[EvomergeError] = EvomergeError) -> Path:
    """A shipped merge recipe's name (`paper_slerp`) or a path to a mergekit YAML."""
    return _resolve(name_or_path, "merge", "recipe", error)


def resolve_pipeline(name_or_path: Union[str, Path], error: type[EvomergeError] = EvomergeError) -> Path:
    """A shipped training pipeline's name (`small_cpu`) or a path to a pipeline YAML."""
    return _resolve(name_or_path, "train", "pipeline", error)

"""The model card (README.md) `evomerge merge` writes beside the merged weights, as `mergekit-yaml`
does: what was merged, how, with which evomerge, the recipe itself, and, for a recipe a search
exported, the study it came from and its scores (the held-out gain with its interval among them).

Only local text: a card never looks a model up on a hub. Its YAML front matter is the Hugging Face
model card's (`base_model` lists the parents that are hub ids, not local folders).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml

from evomerge.files import parent_labels
from evomerge.recipe import Recipe

CARD_FILE = "README.md"


def _is_hub_id(name: str) -> bool:
    """ "org/model" that is no folder here: what a hub would know it as."""
    return not name.startswith(("/", ".", "~")) and name.count("/") == 1 and not Path(name).exists()


def model_card(recipe: Recipe, name: str, version: str, search: Optional[dict] = None) -> str:
    """The card's Markdown: front matter, the method and parents, the search's scores when
    `search` (a search export's metadata) is given, and the recipe as mergekit YAML."""
    models = recipe.model_names
    labels = parent_labels(models)
    front = {"base_model": [m for m in models if _is_hub_id(m)], "tags": ["mergekit", "merge", "evomerge"], "library_name": "transformers"}
    base = recipe.base_model
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        f"# {name}",
        "",
        f"This is a merge of pre-trained language models made with evomerge {version}, in mergekit's language:",
        "`mergekit-yaml` on the configuration below builds the same tensors.",
        "",
        "## Merge details",
        "",
        "### Merge method",
        "",
        f"This model was merged with the `{recipe.merge_method}` method" + (f", with `{base}` as the base." if base else "."),
        "",
        "### Models merged",
        "",
        *[f"* `{model}`" + (f" ({labels[model]})" if labels[model] != model else "") for model in models],
        "",
    ]
    if search:
        lines += search_section(search, labels)
    lines += ["### Configuration", "", "The following YAML configuration was used to produce this model:", "", "```yaml", recipe.to_yaml().rstrip(), "```", ""]
    return "\n".join(lines)


def search_section(search: dict, labels: dict[str, str]) -> list[str]:
    """The study a searched recipe came from, and its scores: each parent and the recipe on the
    search items and on the held-out items, and the gain over the best parent."""

    def number(value, signed: bool = False) -> str:
        return "–" if value is None else (f"{value:+.3f}" if signed else f"{value:.3f}")

    def bounds(pair, signed: bool = False) -> str:
        return f" [{number(pair[0], signed)}, {number(pair[1], signed)}]" if pair else ""

    held = search.get("holdout") or {}
    benchmarks = ", ".join(f"`{b}`" for b in search.get("benchmarks") or []) or "its benchmark"
    lines = [
        "### Search",
        "",
        f"Found by the evomerge study `{search.get('study')}` on {benchmarks}: trial {search.get('trial')}, rank {search.get('rank')} "
        f"by {search.get('objective', 'accuracy')} ({number(search.get('value'))}).",
        "",
        "| | search items | held-out items" + (f" (n={held['holdout_n']})" if held.get("holdout_n") else "") + " |",
        "|---|---:|---:|",
    ]
    held_parents = held.get("parents") or {}
    for parent, accuracy in (search.get("parents") or {}).items():
        lines.append(f"| parent {labels.get(parent, Path(parent).name)} | {number(accuracy)} | {number(held_parents.get(parent))} |")
    best_held = number(held.get("holdout_accuracy")) + bounds(held.get("holdout_interval"))
    lines.append(f"| this merge | {number(search.get('accuracy'))} | {best_held} |")
    lines.append(
        f"| gain over the best parent | {number(search.get('gain'), True)} | {number(held.get('gain'), True)}{bounds(held.get('gain_interval'), True)} |"
    )
    lines.append("")
    if held.get("verdict"):
        lines += [f"On the items the search never saw: {held['verdict']}", ""]
    return lines

"""evomerge: search for the merge recipe that makes fine-tuned LLMs beat both parents.

The public API (see `evomerge.api` and the README's "From Python"):

    evomerge.search(parents=[...], benchmark=..., trials=...)  → SearchResult
    evomerge.merge(recipe, out=...)                            → MergeResult
    evomerge.evaluate(model=..., benchmark=...)                → Evaluation (accuracy, n, …)
    evomerge.train(strategy, model, data, out) / train(pipeline=...) → [TrainResult]
    evomerge.scale_map(pairs=... | toy=...)                    → MapResult
    evomerge.worker, export, spaces, recipes, benchmarks, export_benchmark, toy, toy_scales, demo, dashboard
    evomerge.Recipe, evomerge.EvomergeError (every bad input raises a subclass of it)

`merge`, `evaluate`, `train`, `search`, `toy` and `demo` are these functions, not the modules of the same
name: the subpackages are imported here first, so `from evomerge.merge.merger import Merger` (any
`from … import …` of them) works as before and the package's attributes stay the functions.
(`import evomerge.merge.merger as m` does not: it reads `evomerge.merge` as an attribute.)
Importing evomerge is cheap: torch, transformers and mergekit load when a function needs them.
"""

__version__ = "0.1.0"

import importlib as _importlib

# The subpackages first: importing one later would rebind the package attribute of its name.
for _subpackage in ("demo", "evaluate", "merge", "search", "toy", "train"):
    _importlib.import_module(f"{__name__}.{_subpackage}")

from evomerge.api import (  # noqa: E402
    BenchmarkInfo,
    Evaluation,
    Exported,
    MergeResult,
    SearchResult,
    ShippedFile,
    SpaceInfo,
    benchmarks,
    dashboard,
    demo,
    evaluate,
    export,
    export_benchmark,
    merge,
    recipes,
    scale_map,
    search,
    spaces,
    toy,
    toy_scales,
    train,
    worker,
)
from evomerge.errors import EvomergeError, ParentError, RecipeError  # noqa: E402


def __getattr__(name: str):
    """`Recipe` and `MapResult`, imported when first asked for (pydantic, numpy)."""
    if name == "Recipe":
        from evomerge.recipe import Recipe

        return Recipe
    if name == "MapResult":
        from evomerge.search.scale_map import MapResult

        return MapResult
    raise AttributeError(f"module 'evomerge' has no attribute {name!r}")


__all__ = [
    "BenchmarkInfo",
    "Evaluation",
    "EvomergeError",
    "Exported",
    "MapResult",
    "MergeResult",
    "ParentError",
    "Recipe",
    "RecipeError",
    "SearchResult",
    "ShippedFile",
    "SpaceInfo",
    "__version__",
    "benchmarks",
    "dashboard",
    "demo",
    "evaluate",
    "export",
    "export_benchmark",
    "merge",
    "recipes",
    "scale_map",
    "search",
    "spaces",
    "toy",
    "toy_scales",
    "train",
    "worker",
]

"""What runs a search's trials, chosen by name (`--backend`): one class per file, one table.

An `Executor` is made from the search's settings (it only stores them); `check` refuses options
that do not apply to it, `start` is the preflight that runs once the inputs are known good and
before the storage is opened (Ray reaches its cluster there), `run` opens the study and runs
trials until it has its total, and `close` releases what `start` took. Adding an executor is one
new file here with a subclass, and one line in `EXECUTORS`.
"""

from __future__ import annotations

from evomerge.errors import EvomergeError
from evomerge.search.executors.base import Executor, OnTrial, Say
from evomerge.search.executors.in_process import InProcessExecutor
from evomerge.search.executors.ray_cluster import RayExecutor

EXECUTORS: dict[str, type[Executor]] = {
    "optuna": InProcessExecutor,
    "ray": RayExecutor,
}


def executor_class(name: str) -> type[Executor]:
    """The executor registered under `name`; an EvomergeError naming the known ones."""
    if name not in EXECUTORS:
        raise EvomergeError(f"unknown --backend {name!r}; choose from {', '.join(EXECUTORS)}")
    return EXECUTORS[name]


__all__ = ["EXECUTORS", "Executor", "InProcessExecutor", "OnTrial", "RayExecutor", "Say", "executor_class"]

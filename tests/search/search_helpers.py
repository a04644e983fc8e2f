"""Helpers several search test modules share (plain functions and data, not fixtures): the
settings of a small study on the `search_parents` fixture's tiny parents, and a space file."""

from __future__ import annotations

from evomerge.search.study import SearchSettings

# mergekit's della raises ValueError when density ± epsilon leaves (0, 1): densities near 0 or 1
# fail their trial, 0.3 to 0.7 merge.
DELLA = """method: della
parameters:
  density: {per_model: true, default: {low: 0.05, high: 0.95, step: 0.05}}
  weight: {per_model: true, default: 1}
  epsilon: {per_model: true, default: 0.15}
"""


def settings_for(parents, folder, **overrides) -> SearchSettings:
    """A 4-trial slerp_gradient study of instruct × child, log-likelihood scoring on the CPU,
    no pruning, no held-out items, in a SQLite file under `folder`; `overrides` change any field."""
    values = dict(
        parents=[str(parents["instruct"]), str(parents["child"])],
        benchmarks=[str(parents["benchmark"])],
        base=str(parents["instruct"]),
        space="slerp_gradient",
        sampler="tpe",
        pruner="none",
        protocol="loglik",
        holdout=0.0,
        trials=4,
        device="cpu",
        seed=0,
        study="s",
        storage=f"sqlite:///{folder}/s.db",
    )
    values.update(overrides)
    return SearchSettings(**values)


def write_space(folder, text, name="space.yaml") -> str:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return str(path)

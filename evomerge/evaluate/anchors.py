"""Anchor points: estimate a model's accuracy on a benchmark from a few of its items.

The items are grouped by how the models scored so far answered them (each item's vector of
right/wrong across the models: the parents and the recipes already scored in full); one item per
group, the one nearest the group's centre, is its anchor, weighted by the group's share of the
items. A new model is scored on the anchors only, and its accuracy estimated as the weighted sum
of its anchors' results (the "anchor points" of tinyBenchmarks, arXiv 2402.14992, fitted here on
the models of one study). Items the fitting models all answered alike form one group, so with few
models there are few distinct groups and fewer anchors than asked for.

Pure Python and numpy: no model is loaded here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Anchors:
    """Which items stand for the benchmark, and what share of it each stands for."""

    indices: list[int]  # positions in the benchmark's item order, ascending
    weights: list[float]  # per anchor; they sum to 1
    fitted_on: int  # how many models' per-item results the groups were made from
    loo_error: float  # mean |estimate − accuracy| when each fitting model is left out in turn
    loo_error_max: float

    def estimate(self, correct: Sequence[bool]) -> float:
        """A model's estimated accuracy from its results on the anchors, in `indices` order."""
        if len(correct) != len(self.indices):
            raise ValueError(f"{len(correct)} results for {len(self.indices)} anchors")
        return float(sum(w for w, ok in zip(self.weights, correct) if ok))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Anchors":
        return cls(**data)


def fit_anchors(results: Sequence[str], count: int, seed: int = 0) -> Anchors:
    """Anchors for `count` items fitted on `results`: one '0110…' string per model, every string
    over the same items in the same order. Deterministic for the same inputs and seed."""
    matrix = as_matrix(results)
    indices, weights = _cluster(matrix, count, seed)
    errors = leave_one_out_errors(matrix, count, seed)
    return Anchors(
        indices=indices,
        weights=weights,
        fitted_on=matrix.shape[1],
        loo_error=float(np.mean(errors)) if errors else float("nan"),
        loo_error_max=float(np.max(errors)) if errors else float("nan"),
    )


def as_matrix(results: Sequence[str]) -> np.ndarray:
    """Items × models, 1.0 where the model was right."""
    if not results:
        raise ValueError("no per-item results to fit anchors on")
    lengths = {len(r) for r in results}
    if len(lengths) != 1:
        raise ValueError(f"per-item results of different lengths: {sorted(lengths)}")
    return np.array([[c == "1" for c in r] for r in results], dtype=np.float64).T


def leave_one_out_errors(matrix: np.ndarray, count: int, seed: int = 0) -> list[float]:
    """For each model, |estimate − accuracy| with anchors fitted on the other models only: how
    far off the estimate is for a model the anchors were not made from."""
    models = matrix.shape[1]
    if models < 2:
        return []
    errors = []
    for left_out in range(models):
        others = np.delete(matrix, left_out, axis=1)
        indices, weights = _cluster(others, count, seed)
        estimate = float(np.dot(weights, matrix[indices, left_out]))
        errors.append(abs(estimate - float(matrix[:, left_out].mean())))
    return errors


def _cluster(matrix: np.ndarray, count: int, seed: int) -> tuple[list[int], list[float]]:
    """k-means on the items' result vectors (k-means++ start, a fixed number of rounds); each
    cluster's anchor is its member nearest the centre (lowest index on a tie)."""
    items = matrix.shape[0]
    patterns = np.unique(matrix, axis=0)
    k = max(1, min(count, items, len(patterns)))
    rng = np.random.default_rng(seed)
    centres = _kmeans_pp(matrix, patterns, k, rng)
    k = len(centres)
    for _ in range(50):
        labels = np.argmin(((matrix[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2), axis=1)
        moved = np.array([matrix[labels == c].mean(axis=0) if np.any(labels == c) else centres[c] for c in range(k)])
        if np.allclose(moved, centres):
            break
        centres = moved
    labels = np.argmin(((matrix[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2), axis=1)
    indices, weights = [], []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        if members.size == 0:
            continue
        distance = ((matrix[members] - centres[c]) ** 2).sum(axis=1)
        indices.append(int(members[np.argmin(distance)]))
        weights.append(members.size / items)
    order = np.argsort(indices)
    return [indices[i] for i in order], [weights[i] for i in order]


def _kmeans_pp(matrix: np.ndarray, patterns: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct starting centres among the distinct result patterns, spread out (k-means++),
    each pattern weighted by how many items have it."""
    counts = np.array([np.all(matrix == p, axis=1).sum() for p in patterns], dtype=np.float64)
    chosen = [int(np.argmax(counts))]  # the most common pattern first: deterministic
    for _ in range(1, k):
        distance = np.min(((patterns[:, None, :] - patterns[chosen][None, :, :]) ** 2).sum(axis=2), axis=1) * counts
        if distance.sum() == 0:
            break
        chosen.append(int(rng.choice(len(patterns), p=distance / distance.sum())))
    return patterns[chosen].copy()


__all__ = ["Anchors", "as_matrix", "fit_anchors", "leave_one_out_errors"]

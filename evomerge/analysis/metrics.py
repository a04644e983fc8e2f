"""Numbers from per-item results: accuracy and gain with bootstrap intervals, synergy, diversity,
and the parents' kinship. Nothing here runs a model; kinship is arithmetic on given tensors.

Definitions follow the source paper (Lu, Luu & Buehler 2024): for a merge M of parents P1 and P2,
expected score E = (P1 + P2)/2, synergy = M − E, gain = M − max(P1, P2), diversity = |P1 − P2|.

Bootstrap: percentile intervals over items. One `Bootstrap` draws B resamples of item indices from
a seeded generator; every statistic of a pair (the merge's accuracy, both parents', the gain) is
computed on the same resamples, so the intervals are paired and the same seed gives the same numbers.
The gain's "best parent" is chosen in each resample (max(P1*, P2*)), not once on the full sample:
the question is whether the merge beats both parents, and when the parents are close, which one is
best is itself uncertain. This makes the interval a little conservative (the max of two noisy means
is biased up), never optimistic; the point estimate is the plain full-sample M − max(P1, P2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

if TYPE_CHECKING:  # torch only for the type hints: the bootstrap needs nothing but numpy
    import torch

DEFAULT_RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval."""

    estimate: float
    low: float
    high: float

    @property
    def above_zero(self) -> bool:
        return self.low > 0

    @property
    def below_zero(self) -> bool:
        return self.high < 0


class Bootstrap:
    """B resamples (with replacement) of n item indices, drawn once from a seeded generator."""

    def __init__(self, n: int, resamples: int = DEFAULT_RESAMPLES, seed: Union[int, Sequence[int]] = 0, confidence: float = CONFIDENCE):
        if n < 1:
            raise ValueError("a bootstrap needs at least one item")
        if resamples < 1:
            raise ValueError("a bootstrap needs at least one resample")
        self.n = n
        self.resamples = resamples
        self.confidence = confidence
        # int32 halves the memory of the (B, n) index table; n is a benchmark size, far below 2**31.
        self.indices = np.random.default_rng(seed).integers(0, n, size=(resamples, n), dtype=np.int32)

    def means(self, correct: Sequence[bool]) -> np.ndarray:
        """The mean of `correct` in each resample, shape (B,)."""
        values = _as_vector(correct, self.n)
        return values[self.indices].mean(axis=1)

    def interval(self, estimate: float, resampled: np.ndarray) -> Interval:
        tail = (1 - self.confidence) / 2
        low, high = np.quantile(resampled, [tail, 1 - tail])
        return Interval(float(estimate), float(low), float(high))


def _as_vector(correct: Sequence[bool], n: int) -> np.ndarray:
    values = np.asarray(correct, dtype=np.float64)
    if values.ndim != 1 or len(values) != n:
        raise ValueError(f"expected {n} per-item results, got shape {values.shape}")
    return values


def accuracy_interval(correct: Sequence[bool], bootstrap: Bootstrap) -> Interval:
    """Accuracy over items with its bootstrap interval."""
    values = _as_vector(correct, bootstrap.n)
    return bootstrap.interval(values.mean(), bootstrap.means(values))


@dataclass(frozen=True)
class MergeMetrics:
    """A merge judged against its two parents on the same items."""

    n: int
    accuracy: Interval
    parent_1: Interval
    parent_2: Interval
    expected: float  # E = (P1 + P2) / 2
    gain: Interval  # M − max(P1, P2), paired, best parent chosen per resample
    synergy: Interval  # M − E, paired
    diversity: float  # |P1 − P2|


def merge_metrics(merged: Sequence[bool], parent_1: Sequence[bool], parent_2: Sequence[bool], bootstrap: Bootstrap) -> MergeMetrics:
    """Every number of one merge, from per-item correctness in the same item order for all three."""
    m, p1, p2 = (_as_vector(v, bootstrap.n) for v in (merged, parent_1, parent_2))
    m_star, p1_star, p2_star = bootstrap.means(m), bootstrap.means(p1), bootstrap.means(p2)
    m_hat, p1_hat, p2_hat = m.mean(), p1.mean(), p2.mean()
    expected = (p1_hat + p2_hat) / 2
    return MergeMetrics(
        n=bootstrap.n,
        accuracy=bootstrap.interval(m_hat, m_star),
        parent_1=bootstrap.interval(p1_hat, p1_star),
        parent_2=bootstrap.interval(p2_hat, p2_star),
        expected=float(expected),
        gain=bootstrap.interval(m_hat - max(p1_hat, p2_hat), m_star - np.maximum(p1_star, p2_star)),
        synergy=bootstrap.interval(m_hat - expected, m_star - (p1_star + p2_star) / 2),
        diversity=float(abs(p1_hat - p2_hat)),
    )


def gain_over_parents(merged: Sequence[bool], parents: Sequence[Sequence[bool]], bootstrap: Bootstrap) -> Interval:
    """M − max(P1, …, Pk) over any number of parents, on the same items, with the best parent
    chosen in each resample (as `merge_metrics` does for two)."""
    m = _as_vector(merged, bootstrap.n)
    vectors = [_as_vector(p, bootstrap.n) for p in parents]
    best_star = np.max([bootstrap.means(v) for v in vectors], axis=0)
    return bootstrap.interval(m.mean() - max(v.mean() for v in vectors), bootstrap.means(m) - best_star)


def gain_verdict(gain: Interval, n: int, items: str = "held-out items") -> str:
    """One line that calls a difference a gain only when its whole 95% interval lies above zero
    (and a loss only when it lies below): the words every search, the demo and the map use."""
    interval = f"{gain.estimate:+.3f} [95% CI {gain.low:+.3f}, {gain.high:+.3f}] on {n} {items}"
    if gain.above_zero:
        return f"Gain: the searched merge beats the best parent by more than the noise, {interval}."
    if gain.below_zero:
        return f"Loss: the searched merge is worse than the best parent, {interval}."
    return f"No gain shown: {interval}; the interval contains zero, so the difference is within the noise."


# ----- kinship: how alike the parents' fine-tuning directions are --------------------------


@dataclass(frozen=True)
class Kinship:
    """Cosine similarity of the parents' task vectors (parent − ancestor): over all weights, and
    per decoder layer (index = layer; NaN where a task vector is zero)."""

    overall: float
    per_layer: list[float]


def kinship(
    parent_1: Mapping[str, torch.Tensor],
    parent_2: Mapping[str, torch.Tensor],
    ancestor: Iterable[tuple[str, torch.Tensor]],
    layer_of: Callable[[str], Optional[int]],
) -> Kinship:
    """cos(P1 − A, P2 − A) overall and per layer, accumulated tensor by tensor in float64.

    `ancestor` is an iterable of (name, tensor), so a caller can stream the ancestor from disk one
    tensor at a time instead of holding a third model; non-floating tensors are skipped."""
    totals: dict[Optional[int], np.ndarray] = {}  # layer (None: outside the layers) → [dot, |a|², |b|²]
    for name, base in ancestor:
        if not base.is_floating_point() or name not in parent_1 or name not in parent_2:
            continue
        layer = layer_of(name)
        totals[layer] = totals.get(layer, np.zeros(3)) + _delta_products(parent_1[name], parent_2[name], base)
    if not totals:
        raise ValueError("kinship: the ancestor shares no floating-point tensor with the parents")
    overall = _cosine(sum(totals.values()))
    layers = sorted(layer for layer in totals if layer is not None)
    per_layer = [math.nan] * (layers[-1] + 1 if layers else 0)
    for layer in layers:
        per_layer[layer] = _cosine(totals[layer])
    return Kinship(overall, per_layer)


KINSHIP_CHUNK = 1 << 22  # elements per float64 chunk: bounded extra memory even for an 8B embedding


def _delta_products(first: torch.Tensor, second: torch.Tensor, base: torch.Tensor) -> np.ndarray:
    """[d1·d2, d1·d1, d2·d2] for d = parent − ancestor, in float64, chunk by chunk."""
    first, second = first.flatten(), second.flatten()
    base = base.to(first.device).flatten()
    sums = np.zeros(3)
    for start in range(0, first.numel(), KINSHIP_CHUNK):
        stop = start + KINSHIP_CHUNK
        anchor = base[start:stop].double()
        delta_1 = first[start:stop].double() - anchor
        delta_2 = second[start:stop].double() - anchor
        sums += [float(delta_1 @ delta_2), float(delta_1 @ delta_1), float(delta_2 @ delta_2)]
    return sums


def _cosine(sums: np.ndarray) -> float:
    dot, norm_1, norm_2 = sums
    if norm_1 <= 0 or norm_2 <= 0:
        return math.nan  # a parent equal to the ancestor has no direction
    return float(dot / math.sqrt(norm_1 * norm_2))


# ----- the map's table -----------------------------------------------------------------------

MERGE_KINDS = ("parent", "sweep", "paper", "search")  # what a row of the map is


@dataclass
class MapRow:
    """One scored model of a scale map: a parent, a sweep point, the paper's schedule or the
    searched recipe, with every number judged against the pair's parents on the same items."""

    label: str  # the scale (a pair of parents)
    params: float  # parameters of one parent
    merge: str  # one of MERGE_KINDS
    name: str  # "t=0.30", "paper schedule", a parent's name, "searched (trial 7)"
    t: Optional[float]  # the global SLERP t for sweep points (and 0/1 for the parents), else None
    items: str  # "all" or "holdout": which items were scored
    n: int
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    parent_1: float
    parent_2: float
    expected: float
    gain: float
    gain_low: float
    gain_high: float
    synergy: float
    synergy_low: float
    synergy_high: float
    diversity: float
    significant: str  # "above" (gain interval > 0), "below" (< 0) or ""
    kinship: float  # overall task-vector cosine of the pair (NaN without an ancestor)

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_metrics(
        cls, metrics: MergeMetrics, *, label: str, params: float, merge: str, name: str, t: Optional[float], items: str, kinship: float
    ) -> "MapRow":
        if merge not in MERGE_KINDS:
            raise ValueError(f"unknown kind of map row {merge!r}; expected one of {', '.join(MERGE_KINDS)}")
        gain = metrics.gain
        return cls(
            label=label,
            params=params,
            merge=merge,
            name=name,
            t=t,
            items=items,
            n=metrics.n,
            accuracy=metrics.accuracy.estimate,
            accuracy_low=metrics.accuracy.low,
            accuracy_high=metrics.accuracy.high,
            parent_1=metrics.parent_1.estimate,
            parent_2=metrics.parent_2.estimate,
            expected=metrics.expected,
            gain=gain.estimate,
            gain_low=gain.low,
            gain_high=gain.high,
            synergy=metrics.synergy.estimate,
            synergy_low=metrics.synergy.low,
            synergy_high=metrics.synergy.high,
            diversity=metrics.diversity,
            significant="above" if gain.above_zero else "below" if gain.below_zero else "",
            kinship=kinship,
        )


def is_inner_sweep(row: MapRow) -> bool:
    """A sweep point strictly between the parents (the sweep's ends, t = 0 and 1, are the parents)."""
    return row.merge == "sweep" and 0 < row.t < 1


def is_merge(row: MapRow) -> bool:
    """A merged model: the paper's schedule, a searched recipe, or a sweep point between the parents."""
    return row.merge in ("paper", "search") or is_inner_sweep(row)

"""Metrics on hand-made per-item vectors: known gain, synergy and diversity; paired intervals; the
bootstrap's coverage in a simulation with a known truth; kinship on hand-made tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evomerge.analysis import metrics
from evomerge.analysis.metrics import Bootstrap, MapRow, accuracy_interval, is_inner_sweep, is_merge, kinship, merge_metrics
from evomerge.merge.parents import layer_index


def vector(hits: int, n: int) -> list[bool]:
    return [True] * hits + [False] * (n - hits)


def test_known_gain_synergy_and_diversity():
    merged, parent_1, parent_2 = vector(8, 10), vector(6, 10), vector(7, 10)
    result = merge_metrics(merged, parent_1, parent_2, Bootstrap(10, 500, seed=0))
    assert result.n == 10
    assert result.accuracy.estimate == pytest.approx(0.8)
    assert result.expected == pytest.approx(0.65)
    assert result.gain.estimate == pytest.approx(0.1)  # 0.8 − max(0.6, 0.7)
    assert result.synergy.estimate == pytest.approx(0.15)  # 0.8 − 0.65
    assert result.diversity == pytest.approx(0.1)
    for interval in (result.accuracy, result.gain, result.synergy, result.parent_1, result.parent_2):
        assert interval.low <= interval.estimate <= interval.high


def test_a_merge_that_dominates_both_parents_item_by_item_has_a_gain_interval_at_or_above_zero():
    # Paired resampling: on every resample the merge is right wherever a parent is, so the gain is
    # never negative; resampling the three independently would put the interval's low end below 0.
    rng = np.random.default_rng(0)
    parent_1 = rng.random(60) < 0.5
    parent_2 = parent_1 & (rng.random(60) < 0.8)
    merged = parent_1 | (rng.random(60) < 0.3)
    result = merge_metrics(merged, parent_1, parent_2, Bootstrap(60, 1000, seed=1))
    assert result.gain.estimate > 0
    assert result.gain.low >= 0


def test_the_best_parent_is_chosen_in_each_resample():
    # Parents equally good on different items, the merge a copy of the first: the point gain is 0,
    # and since max(P1*, P2*) ≥ P1* = M* in every resample, the whole interval lies at or below 0
    # (fixing the best parent on the full sample would centre it on 0 instead).
    parent_1 = [True, False] * 20
    parent_2 = [False, True] * 20
    result = merge_metrics(parent_1, parent_1, parent_2, Bootstrap(40, 1000, seed=0))
    assert result.gain.estimate == 0
    assert result.gain.high <= 0 and result.gain.low < 0


def test_identical_models_give_a_zero_width_gain_interval():
    same = vector(5, 12)
    result = merge_metrics(same, same, same, Bootstrap(12, 300, seed=0))
    assert (result.gain.low, result.gain.estimate, result.gain.high) == (0, 0, 0)
    assert not result.gain.above_zero and not result.gain.below_zero


def test_accuracy_interval_brackets_the_mean_and_narrows_with_more_items():
    small = accuracy_interval(vector(5, 10), Bootstrap(10, 1000, seed=0))
    large = accuracy_interval(vector(50, 100), Bootstrap(100, 1000, seed=0))
    assert small.estimate == large.estimate == 0.5
    assert small.low < 0.5 < small.high
    assert (large.high - large.low) < (small.high - small.low)


def test_same_seed_same_numbers_and_another_seed_other_resamples():
    merged, parent_1, parent_2 = vector(30, 50), vector(25, 50)[::-1], vector(20, 50)
    first = merge_metrics(merged, parent_1, parent_2, Bootstrap(50, 300, seed=7))
    again = merge_metrics(merged, parent_1, parent_2, Bootstrap(50, 300, seed=7))
    other = merge_metrics(merged, parent_1, parent_2, Bootstrap(50, 300, seed=8))
    assert first == again
    assert first.gain.estimate == other.gain.estimate
    assert (first.gain.low, first.gain.high) != (other.gain.low, other.gain.high)


def test_the_intervals_cover_a_known_truth_about_95_percent_of_the_time():
    """Simulated benchmarks with true accuracies 0.7 (merge), 0.6 and 0.45 (parents), so the true
    gain is 0.1: over 300 benchmarks of 200 items, the 95% intervals should cover it ~95% of the time."""
    repetitions, items = 300, 200
    covered_gain = covered_accuracy = 0
    for repetition in range(repetitions):
        rng = np.random.default_rng(10_000 + repetition)
        merged, parent_1, parent_2 = (rng.random(items) < p for p in (0.7, 0.6, 0.45))
        result = merge_metrics(merged, parent_1, parent_2, Bootstrap(items, 400, seed=repetition))
        covered_gain += result.gain.low <= 0.1 <= result.gain.high
        covered_accuracy += result.accuracy.low <= 0.7 <= result.accuracy.high
    assert 0.91 <= covered_gain / repetitions <= 0.99
    assert 0.91 <= covered_accuracy / repetitions <= 0.99


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError):
        merge_metrics(vector(3, 5), vector(3, 6), vector(3, 5), Bootstrap(5, 100, seed=0))
    with pytest.raises(ValueError):
        Bootstrap(0, 100)


# ----- kinship -------------------------------------------------------------------------------


def three_models():
    """Task vectors: layer 0 orthogonal (cos 0), layer 1 parallel (cos 1), embeddings opposite."""
    ancestor = {
        "model.embed_tokens.weight": torch.ones(2, 2),
        "model.layers.0.mlp.weight": torch.zeros(2),
        "model.layers.1.mlp.weight": torch.full((3,), 2.0),
        "model.layers.1.step": torch.tensor([1]),  # not floating: ignored
    }
    parent_1 = {
        "model.embed_tokens.weight": ancestor["model.embed_tokens.weight"] + 1,
        "model.layers.0.mlp.weight": torch.tensor([1.0, 0.0]),
        "model.layers.1.mlp.weight": torch.tensor([3.0, 2.0, 2.0]),
        "model.layers.1.step": torch.tensor([1]),
    }
    parent_2 = {
        "model.embed_tokens.weight": ancestor["model.embed_tokens.weight"] - 1,
        "model.layers.0.mlp.weight": torch.tensor([0.0, 3.0]),
        "model.layers.1.mlp.weight": torch.tensor([4.0, 2.0, 2.0]),
        "model.layers.1.step": torch.tensor([1]),
    }
    return parent_1, parent_2, ancestor


def test_kinship_per_layer_and_overall_on_hand_made_task_vectors():
    parent_1, parent_2, ancestor = three_models()
    result = kinship(parent_1, parent_2, iter(ancestor.items()), layer_index)  # a stream, read once
    assert result.per_layer == pytest.approx([0.0, 1.0])
    # Overall: dot = −4 (embeddings) + 0 + 2 = −2; |d1|² = 4 + 1 + 1 = 6; |d2|² = 4 + 9 + 4 = 17.
    assert result.overall == pytest.approx(-2 / math.sqrt(6 * 17))


def test_kinship_is_the_same_in_small_chunks(monkeypatch):
    parent_1, parent_2, ancestor = three_models()
    whole = kinship(parent_1, parent_2, ancestor.items(), layer_index)
    monkeypatch.setattr(metrics, "KINSHIP_CHUNK", 1)
    chunked = kinship(parent_1, parent_2, ancestor.items(), layer_index)
    assert chunked.overall == pytest.approx(whole.overall, abs=1e-12)
    assert chunked.per_layer == pytest.approx(whole.per_layer, abs=1e-12)


def test_a_parent_equal_to_the_ancestor_has_no_kinship():
    parent_1, parent_2, ancestor = three_models()
    result = kinship(ancestor, parent_2, ancestor.items(), layer_index)
    assert math.isnan(result.overall) and all(math.isnan(c) for c in result.per_layer)


def map_row(merged: int, parent_1: int, parent_2: int, merge: str = "sweep", t=0.5) -> MapRow:
    result = merge_metrics(vector(merged, 10), vector(parent_1, 10), vector(parent_2, 10), Bootstrap(10, 200, seed=0))
    return MapRow.from_metrics(result, label="xs", params=1e6, merge=merge, name=f"t={t}", t=t, items="all", kinship=0.4)


def test_map_row_carries_every_number_of_a_merge():
    row = map_row(8, 6, 7)
    assert row.gain == pytest.approx(0.1) and row.parent_2 == pytest.approx(0.7)
    # The gain's interval [0, 0.3] touches zero: not above it, not below.
    assert (row.gain_low, row.gain_high) == pytest.approx((0.0, 0.3))
    assert row.significant == ""
    assert MapRow.columns()[:3] == ["label", "params", "merge"]


def test_map_row_says_where_the_gain_interval_lies():
    assert map_row(10, 2, 3).significant == "above"
    assert map_row(0, 8, 9).significant == "below"
    with pytest.raises(ValueError, match="unknown kind"):
        map_row(8, 6, 7, merge="blend")


def test_merges_are_the_paper_search_and_inner_sweep_rows():
    rows = {(kind, t): map_row(8, 6, 7, merge=kind, t=t) for kind, t in
            [("parent", 0.0), ("sweep", 0.0), ("sweep", 0.3), ("sweep", 1.0), ("paper", None), ("search", None)]}  # fmt: skip
    assert [key for key, row in rows.items() if is_merge(row)] == [("sweep", 0.3), ("paper", None), ("search", None)]
    assert [key for key, row in rows.items() if is_inner_sweep(row)] == [("sweep", 0.3)]

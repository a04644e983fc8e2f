"""Anchor points (evaluate/anchors.py): pure arithmetic on per-item results, no model."""

from __future__ import annotations

import random

import pytest

from evomerge.evaluate.anchors import Anchors, fit_anchors


def correct_string(bits) -> str:
    return "".join("1" if b else "0" for b in bits)


def population(models: int, items: int, seed: int = 0) -> list[str]:
    """Models of growing skill on items of growing difficulty (a little noise): results a real
    benchmark gives, where an item's difficulty decides most of who gets it right."""
    rng = random.Random(seed)
    difficulty = [rng.random() for _ in range(items)]
    skills = [0.2 + 0.6 * m / max(1, models - 1) for m in range(models)]
    return [correct_string((d < s) != (rng.random() < 0.05) for d in difficulty) for s in skills]


def test_anchors_are_few_items_whose_weights_sum_to_one():
    anchors = fit_anchors(population(10, 200), 20)
    assert 1 < len(anchors.indices) <= 20
    assert anchors.indices == sorted(set(anchors.indices)) and all(0 <= i < 200 for i in anchors.indices)
    assert sum(anchors.weights) == pytest.approx(1.0)
    assert anchors.fitted_on == 10


def test_the_same_results_give_the_same_anchors():
    results = population(8, 150, seed=3)
    assert fit_anchors(results, 15, seed=0) == fit_anchors(results, 15, seed=0)


def test_with_as_many_anchors_as_result_patterns_the_estimate_is_exact_on_the_fitting_models():
    """Items every fitting model answered alike are one group: one anchor per distinct pattern
    reproduces each fitting model's accuracy exactly."""
    results = ["1100110011", "1111000011", "0000111100"]
    anchors = fit_anchors(results, 50)
    assert len(anchors.indices) == len({tuple(r[i] for r in results) for i in range(10)})
    for result in results:
        estimate = anchors.estimate([result[i] == "1" for i in anchors.indices])
        assert estimate == pytest.approx(result.count("1") / len(result))


def test_a_model_the_anchors_never_saw_is_estimated_within_a_few_points():
    results = population(13, 400, seed=1)
    held_out = results.pop(6)  # a middle skill, not among the fitting models
    anchors = fit_anchors(results, 40)
    estimate = anchors.estimate([held_out[i] == "1" for i in anchors.indices])
    truth = held_out.count("1") / len(held_out)
    assert abs(estimate - truth) < 0.05
    assert 0 <= anchors.loo_error < 0.1 and anchors.loo_error <= anchors.loo_error_max  # reported (the extremes extrapolate: larger)


def test_the_anchors_round_trip_through_plain_data():
    anchors = fit_anchors(population(5, 60), 8)
    assert Anchors.from_dict(anchors.to_dict()) == anchors


@pytest.mark.parametrize("results", [[], ["0101", "01"]])
def test_results_that_do_not_line_up_are_refused(results):
    with pytest.raises(ValueError):
        fit_anchors(results, 4)


def test_an_estimate_needs_one_result_per_anchor():
    anchors = fit_anchors(population(4, 50), 5)
    with pytest.raises(ValueError):
        anchors.estimate([True] * (len(anchors.indices) + 1))

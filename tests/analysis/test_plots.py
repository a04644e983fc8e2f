"""What the figures show, read off the matplotlib figures themselves (the save step is captured,
so the test sees the very axes that would be written): layers on a layer axis, pruned trials in
the history, points at their values (no nudge), parents told apart, legends beside the data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_report import rows_for

from evomerge.analysis import plots
from evomerge.analysis.metrics import Kinship


@pytest.fixture
def drawn(monkeypatch):
    """Every figure a plotting function would save, instead of saving it."""
    figures = []

    def keep(figure, path):
        figure.canvas.draw()  # lay it out as savefig would
        figures.append(figure)
        return path

    monkeypatch.setattr(plots, "_save", keep)
    return figures


@pytest.fixture
def pair_rows():
    # Parents of equal accuracy (20 of 40 each): the case where one line used to hide the other.
    rows = rows_for("xs", 1.6e5, {0.0: 20, 0.25: 24, 0.5: 26, 0.75: 21, 1.0: 20}, parents=(20, 20))
    return rows


def _inside(box, outer) -> bool:
    return box.x0 >= outer.x0 - 1 and box.x1 <= outer.x1 + 1 and box.y0 >= outer.y0 - 1 and box.y1 <= outer.y1 + 1


def _overlaps(box, outer) -> bool:
    return box.x0 < outer.x1 and box.x1 > outer.x0 and box.y0 < outer.y1 and box.y1 > outer.y0


def test_t_over_layers_counts_layers_in_whole_numbers(drawn, tmp_path):
    figure = plots.t_over_layers_figure({"self_attn": ([0.2, 0.8], [0.0, 1.0]), "mlp": ([0.6, 0.4], [1.0, 0.0])}, title="two layers")
    axis = figure.axes[0]
    low, high = axis.get_xlim()
    ticks = [tick for tick in axis.get_xticks() if low <= tick <= high]
    assert ticks == [0, 1], "a 2-layer model has layers 0 and 1, nothing between"
    assert all(float(tick).is_integer() for tick in ticks)
    assert all(len(line.get_xdata()) == 2 and line.get_marker() not in (None, "None", "") for line in axis.get_lines())


def test_history_draws_pruned_trials_beside_complete_ones(drawn, tmp_path):
    plots.optimisation_history(
        [0, 2, 5],
        [0.3, 0.5, 0.4],
        tmp_path / "h.png",
        title="t",
        ylabel="accuracy",
        pruned=[(1, 0.25, 0.1), (3, 0.5, 0.2), (4, 0.25, 0.05)],
        best_parent=0.45,
    )
    axis = drawn[0].axes[0]
    points = {tuple(xy) for collection in axis.collections for xy in np.asarray(collection.get_offsets()).tolist()}
    assert {(1.0, 0.1), (3.0, 0.2), (4.0, 0.05)} <= points, "each pruned trial at its last fraction's value"
    labels = [text.get_text() for text in axis.get_legend().get_texts()]
    assert "pruned at 25% of the items (2)" in labels and "pruned at 50% of the items (1)" in labels
    assert not _overlaps(axis.get_legend().get_window_extent(), axis.get_window_extent()), "the legend sits beside the data"


def test_gain_vs_diversity_draws_every_point_at_its_value(drawn, pair_rows, tmp_path):
    plots.gain_vs_diversity(pair_rows, tmp_path / "g.png")
    axis = drawn[0].axes[0]
    merges = [row for row in pair_rows if row.merge in ("sweep", "paper")]
    marked = [line for line in axis.get_lines() if line.get_marker() not in (None, "None", "")]  # points and bar caps
    xs = {float(x) for line in marked for x in np.atleast_1d(line.get_xdata())}
    assert merges and xs == {row.diversity for row in merges} == {0.0}, "equal parents: every merge drawn at diversity 0, none nudged"
    assert not _overlaps(axis.get_legend().get_window_extent(), axis.get_window_extent())


def test_accuracy_vs_t_tells_equal_parents_apart(drawn, pair_rows, tmp_path):
    plots.accuracy_vs_t(pair_rows, tmp_path / "a.png")
    axis = drawn[0].axes[0]
    parents = [line for line in axis.get_lines() if line.get_label().startswith("parent ")]
    assert len(parents) == 2 and parents[0].get_ydata()[0] == parents[1].get_ydata()[0]
    first, second = parents
    assert (first.get_color(), first.get_linestyle(), first.get_linewidth()) != (second.get_color(), second.get_linestyle(), second.get_linewidth())
    hatches = {patch.get_hatch() for patch in axis.patches if patch.get_hatch()}
    assert len(hatches) == 2, "each parent's band has its own hatch"
    assert not _overlaps(axis.get_legend().get_window_extent(), axis.get_window_extent())


def test_kinship_legend_says_what_the_whole_model_value_is(drawn, tmp_path):
    plots.kinship_profile({"xs": Kinship(0.393, [0.306, 0.31]), "s": Kinship(math.nan, [])}, tmp_path / "k.png")
    axis = drawn[0].axes[0]
    legend = axis.get_legend()
    labels = [text.get_text() for text in legend.get_texts()]
    assert labels == ["xs: per layer", "xs: whole model 0.393"]
    assert "embeddings included" in legend.get_title().get_text()
    overall = [line for line in axis.get_lines() if line.get_label() == "xs: whole model 0.393"][0]
    assert list(overall.get_ydata()) == [0.393, 0.393], "the whole-model value drawn as a line beside the per-layer points"
    assert not _overlaps(legend.get_window_extent(), axis.get_window_extent())

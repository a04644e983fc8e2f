"""Every figure evomerge draws: the scale map's (from its table of `MapRow`s and kinship profiles)
and a search's (history, importances, t over depth, from numbers the search layer reads off its study).

Matplotlib with the Agg backend (no display); every function takes plain numbers and a path and
returns the path it wrote.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from evomerge.analysis.metrics import Kinship, MapRow, is_merge
from evomerge.files import atomic_path

DPI = 110
KIND_NAMES = {"sweep": "global t sweep", "paper": "paper's schedule", "search": "searched (held-out)"}
# Each kind of merge drawn its own way, so points at the same x (every merge of a pair shares its
# diversity) stay apart to the eye without moving them: a hollow circle with a solid bar, a filled
# square with a dashed bar, a large star with a dotted bar.
KIND_STYLES = {
    "sweep": {"marker": "o", "markersize": 6, "fill": False, "bar": "-"},
    "paper": {"marker": "s", "markersize": 6, "fill": True, "bar": "--"},
    "search": {"marker": "*", "markersize": 12, "fill": True, "bar": ":"},
}
# The two parents of a pair: a colour, a line style, a marker and a band hatch each, so that equal
# accuracies draw both (a wide pale line under a narrow dashed one) and their bands stay apart.
PARENT_STYLES = (
    {"color": "tab:green", "linestyle": "-", "linewidth": 4.0, "alpha": 0.45, "marker": "v", "hatch": "//"},
    {"color": "tab:red", "linestyle": "--", "linewidth": 1.4, "alpha": 1.0, "marker": "^", "hatch": "\\\\"},
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    plt = _pyplot()
    figure.tight_layout()
    with atomic_path(path) as partial:  # a full disk leaves no half-drawn PNG
        # "tight": the legends, placed outside the axes so they cover no data, are kept in the image.
        figure.savefig(partial, dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return path


def _legend_outside(axis, **options):
    """The axis's legend to the right of its data, never over it."""
    return axis.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **{"fontsize": 7, **options})


def labels_of(rows: Sequence[MapRow]) -> list[str]:
    """Scales in the order the pairs were given."""
    return list(dict.fromkeys(row.label for row in rows))


def _colors(labels: Sequence[str]) -> dict[str, str]:
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]
    return {label: palette[i % len(palette)] for i, label in enumerate(labels)}


def format_params(params: float) -> str:
    """1.2e6 → '1.2M' (parameters of one parent)."""
    if not params or math.isnan(params):
        return "?"
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if params >= scale:
            return f"{params / scale:.3g}{suffix}"
    return f"{params:.0f}"


def scale_title(rows: Sequence[MapRow], label: str) -> str:
    params = next(row.params for row in rows if row.label == label)
    return f"{label} ({format_params(params)} parameters)"


def accuracy_vs_t(rows: Sequence[MapRow], path: Path) -> Path:
    """One panel per scale: the sweep's accuracy against t with its 95% band; each parent as a
    horizontal line in its own colour, style and hatched band, with a marker and bar at its own
    t (0 or 1); the paper's schedule and the searched recipe as reference lines. Each panel's
    legend sits under it, with every line's value."""
    plt = _pyplot()
    labels = labels_of(rows)
    figure, axes = plt.subplots(1, len(labels), figsize=(4.4 * len(labels), 4.2), sharey=True, squeeze=False)
    for axis, label in zip(axes[0], labels):
        mine = [row for row in rows if row.label == label]
        sweep = sorted((row for row in mine if row.merge == "sweep"), key=lambda row: row.t)
        ts = [row.t for row in sweep]
        axis.fill_between(ts, [row.accuracy_low for row in sweep], [row.accuracy_high for row in sweep], color="tab:blue", alpha=0.18, linewidth=0)
        axis.plot(ts, [row.accuracy for row in sweep], marker="o", markersize=4, color="tab:blue", label="merged, global t (95% band)", zorder=4)
        for row, style in zip((r for r in mine if r.merge == "parent"), PARENT_STYLES):
            axis.axhline(
                row.accuracy,
                color=style["color"],
                linestyle=style["linestyle"],
                linewidth=style["linewidth"],
                alpha=style["alpha"],
                label=f"parent {row.name} (t={row.t:g}): {row.accuracy:.3f}",
            )
            axis.axhspan(row.accuracy_low, row.accuracy_high, facecolor="none", edgecolor=style["color"], hatch=style["hatch"], linewidth=0, alpha=0.5)
            axis.errorbar(
                [row.t],
                [row.accuracy],
                yerr=_error_bars([row], "accuracy"),
                fmt=style["marker"],
                color=style["color"],
                markersize=8,
                capsize=3,
                zorder=5,
            )
        for row in mine:
            if row.merge == "paper":
                axis.axhline(row.accuracy, color="black", linestyle=":", linewidth=1.6, label=f"paper's schedule: {row.accuracy:.3f}")
            elif row.merge == "search":
                axis.axhline(row.accuracy, color="tab:purple", linestyle="-.", linewidth=1.6, label=f"searched, held-out (n={row.n}): {row.accuracy:.3f}")
        axis.set_title(scale_title(rows, label))
        axis.set_xlabel("SLERP t (0 = base parent)")
        axis.set_xlim(min(ts + [0.0]) - 0.04, max(ts + [1.0]) + 0.04)
        axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)
    axes[0][0].set_ylabel("accuracy (95% bootstrap band)")
    return _save(figure, path)


def gain_heatmap(rows: Sequence[MapRow], path: Path) -> Path:
    """Scale × t: gain over the best parent; '*' marks a gain interval above zero, '−' below."""
    plt = _pyplot()
    from matplotlib.colors import TwoSlopeNorm

    labels = labels_of(rows)
    ts = sorted({row.t for row in rows if row.merge == "sweep"})
    grid = np.full((len(labels), len(ts)), np.nan)
    marks = [["" for _ in ts] for _ in labels]
    for row in rows:
        if row.merge == "sweep":
            i, j = labels.index(row.label), ts.index(row.t)
            grid[i, j] = row.gain
            marks[i][j] = "*" if row.significant == "above" else "−" if row.significant == "below" else ""
    limit = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 0.0
    limit = max(limit, 1e-3)
    figure, axis = plt.subplots(figsize=(max(5.0, 0.62 * len(ts) + 2.5), 0.6 * len(labels) + 1.8))
    image = axis.imshow(grid, cmap="RdBu", norm=TwoSlopeNorm(0.0, -limit, limit), aspect="auto")
    for i in range(len(labels)):
        for j in range(len(ts)):
            if np.isfinite(grid[i, j]):
                axis.text(j, i, f"{grid[i, j]:+.2f}{marks[i][j]}", ha="center", va="center", fontsize=7)
    axis.set_xticks(range(len(ts)), [f"{t:g}" for t in ts])
    axis.set_yticks(range(len(labels)), [scale_title(rows, label) for label in labels])
    axis.set_xlabel("SLERP t")
    axis.set_title("gain over the best parent (* interval above 0, − below 0)", fontsize=10)
    figure.colorbar(image, ax=axis, label="merged − max(P1, P2)")
    return _save(figure, path)


def merged_vs_expected(rows: Sequence[MapRow], path: Path) -> Path:
    """Merged accuracy against the parents' mean E, with the diagonal (the paper's Fig. 7): above
    the line is synergy."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 5))
    merges = [row for row in rows if is_merge(row)]
    _merge_points(axis, rows, merges, x=lambda row: row.expected, field="accuracy")
    values = [v for row in merges for v in (row.expected, row.accuracy_low, row.accuracy_high)]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    pad = 0.03 * max(high - low, 0.1)
    axis.plot([low - pad, high + pad], [low - pad, high + pad], color="grey", linestyle="--", label="merged = E")
    axis.set_xlabel("expected E = (P1 + P2) / 2")
    axis.set_ylabel("merged accuracy")
    axis.set_title("merged against expected (above the line: synergy)", fontsize=10)
    _legend_outside(axis)
    return _save(figure, path)


def gain_vs_diversity(rows: Sequence[MapRow], path: Path) -> Path:
    """Gain over the best parent against the parents' diversity |P1 − P2| (the paper's Fig. 10)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 4.5))
    merges = [row for row in rows if is_merge(row)]
    # Every merge of a pair shares its diversity: the kinds are told apart by marker and bar style,
    # never by moving a point off its value.
    _merge_points(axis, rows, merges, x=lambda row: row.diversity, field="gain")
    axis.axhline(0, color="grey", linestyle="--", linewidth=1.0)
    axis.set_xlabel("parent diversity |P1 − P2|")
    axis.set_ylabel("gain over the best parent (95% interval)")
    axis.set_title("gain against parent diversity", fontsize=10)
    _legend_outside(axis)
    return _save(figure, path)


def _merge_points(axis, rows: Sequence[MapRow], merges: Sequence[MapRow], *, x, field: str) -> None:
    """The merges as points at exactly (x(row), row.<field>) with the field's 95% interval as
    error bars: a colour per scale, a marker and a bar style per kind (KIND_STYLES)."""
    labels = labels_of(rows)
    colors = _colors(labels)
    for label in labels:
        for kind, style in KIND_STYLES.items():
            chosen = [row for row in merges if row.label == label and row.merge == kind]
            if chosen:
                drawn = axis.errorbar(
                    [x(row) for row in chosen],
                    [getattr(row, field) for row in chosen],
                    yerr=_error_bars(chosen, field),
                    fmt=style["marker"],
                    color=colors[label],
                    markerfacecolor=colors[label] if style["fill"] else "none",
                    markersize=style["markersize"],
                    elinewidth=0.9,
                    capsize=2,
                    alpha=0.85,
                    label=f"{label}: {KIND_NAMES[kind]}",
                    zorder=3 if kind == "sweep" else 4,
                )
                for bar in drawn.lines[2]:
                    bar.set_linestyle(style["bar"])


def kinship_profile(kinships: Mapping[str, Optional[Kinship]], path: Path) -> Path:
    """Per-layer cosine of the parents' task vectors against relative depth (scales differ in
    depth), one line and marker per scale; each scale's whole-model cosine (over every weight,
    embeddings and norms included, so not the mean of its layers) as a dotted line of its colour."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    colors = _colors(list(kinships))
    markers = ("o", "s", "^", "D", "v", "P", "X")
    drawn = False
    for (label, profile), marker in zip(kinships.items(), markers * len(kinships)):
        if profile is None or not profile.per_layer:
            continue
        layers = len(profile.per_layer)
        depth = [i / (layers - 1) if layers > 1 else 0.0 for i in range(layers)]
        axis.plot(depth, profile.per_layer, marker=marker, color=colors[label], label=f"{label}: per layer")
        axis.axhline(profile.overall, color=colors[label], linestyle=":", linewidth=1.4, label=f"{label}: whole model {profile.overall:.3f}")
        drawn = True
    if not drawn:
        axis.text(0.5, 0.5, "no ancestor given: kinship not measured", ha="center", va="center", transform=axis.transAxes)
    axis.set_xlabel("relative depth (layer / (layers − 1))")
    axis.set_ylabel("cos(P1 − ancestor, P2 − ancestor)")
    axis.set_title("parents' kinship over depth", fontsize=10)
    if drawn:
        _legend_outside(axis, fontsize=8, title="whole model: every weight,\nembeddings included,\nnot the layers' mean", title_fontsize=7)
    return _save(figure, path)


def _error_bars(rows: Sequence[MapRow], field: str) -> np.ndarray:
    estimate = np.array([getattr(row, field) for row in rows])
    low = np.array([getattr(row, f"{field}_low") for row in rows])
    high = np.array([getattr(row, f"{field}_high") for row in rows])
    return np.vstack([np.clip(estimate - low, 0, None), np.clip(high - estimate, 0, None)])


# Every figure of the map: file name, caption, and how it is drawn from (rows, kinships, path).
_FIGURES = (
    ("accuracy-vs-t.png", "accuracy against t per scale", lambda rows, kinships, path: accuracy_vs_t(rows, path)),
    ("gain-heatmap.png", "gain over the best parent, scale × t", lambda rows, kinships, path: gain_heatmap(rows, path)),
    ("merged-vs-expected.png", "merged against expected", lambda rows, kinships, path: merged_vs_expected(rows, path)),
    ("gain-vs-diversity.png", "gain against diversity", lambda rows, kinships, path: gain_vs_diversity(rows, path)),
    ("kinship.png", "kinship over layers", lambda rows, kinships, path: kinship_profile(kinships, path)),
)
FIGURES = {name: caption for name, caption, _ in _FIGURES}


def draw_all(rows: Sequence[MapRow], kinships: Mapping[str, Optional[Kinship]], folder: Path) -> list[Path]:
    """Every figure of the map into `folder`, named as in FIGURES."""
    folder.mkdir(parents=True, exist_ok=True)
    return [draw(rows, kinships, folder / name) for name, _, draw in _FIGURES]


# ----- a search's figures -------------------------------------------------------------------


def optimisation_history(
    numbers: Sequence[int],
    values: Sequence[float],
    path: Path,
    *,
    title: str,
    ylabel: str,
    baseline: Optional[tuple[int, float]] = None,
    best_parent: Optional[float] = None,
    pruned: Sequence[tuple[int, float, float]] = (),
) -> Path:
    """Each complete trial's value and the best so far (of complete trials); each pruned trial
    (number, fraction, value) at the value of the last fraction it was scored on, a marker per
    fraction; the paper's recipe (trial, value) as a star and the best parent as a dashed line
    when given."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7.5, 4))
    running = [max(values[: i + 1]) for i in range(len(values))]
    for fraction, marker in zip(sorted({f for _, f, _ in pruned}), ("x", "+", "1", "2", "3")):
        chosen = [(n, v) for n, f, v in pruned if f == fraction]
        axis.scatter(
            [n for n, _ in chosen],
            [v for _, v in chosen],
            s=28,
            marker=marker,
            color="tab:grey",
            label=f"pruned at {fraction:.0%} of the items ({len(chosen)})",
        )
    axis.scatter(numbers, values, s=16, label=f"complete ({len(values)})", color="tab:blue", zorder=3)
    axis.step(numbers, running, where="post", label="best so far (complete)", color="tab:orange")
    if baseline is not None:
        axis.scatter([baseline[0]], [baseline[1]], marker="*", s=140, color="tab:red", label="paper's recipe", zorder=4)
    if best_parent is not None:
        axis.axhline(best_parent, linestyle="--", color="grey", label=f"best parent ({best_parent:.3f})")
    axis.set_xlabel("trial")
    axis.set_ylabel(ylabel)
    axis.xaxis.set_major_locator(_integer_ticks())
    _legend_outside(axis, fontsize=8)
    axis.set_title(title)
    return _save(figure, path)


def _integer_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def importances(values: Mapping[str, float], path: Path) -> Path:
    """Each searched parameter's importance (largest on top)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, max(2.5, 0.3 * len(values))))
    names = list(values)[::-1]
    axis.barh(names, [values[n] for n in names], color="tab:blue")
    axis.set_xlabel("importance (PED-ANOVA)")
    axis.set_title("Which parameters mattered")
    return _save(figure, path)


def t_over_layers(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: Path, *, title: str) -> Path:
    """SLERP t per layer, module by module: `curves` maps a module (self_attn, mlp) to (the best
    recipe's t per layer, the paper's t per layer)."""
    return _save(t_over_layers_figure(curves, title=title), path)


def t_over_layers_figure(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str):
    """The figure `t_over_layers` saves: the layer axis in whole layers, 0 … L − 1, a marker on
    every layer (a 2-layer model is two points, not a ramp)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7.5, 4))
    layers = max((len(best) for best, _ in curves.values()), default=1)
    # Each module drawn thinner and smaller than the one before: where two schedules are equal
    # (the best recipe often gives self_attn and mlp the same t) both stay visible, one inside the other.
    styles = zip(("tab:blue", "tab:green", "tab:purple", "tab:brown"), ("o", "s", "^", "D"), (12, 7, 5, 4), (5, 2, 1.5, 1))
    for (module, (best, paper)), (color, marker, size, width) in zip(curves.items(), styles):
        axis.plot(range(len(best)), best, color=color, marker=marker, markersize=size, linewidth=width, alpha=0.8, label=f"best: {module}")
        axis.plot(
            range(len(paper)),
            paper,
            color=color,
            linestyle=":",
            marker=marker,
            markersize=size,
            linewidth=min(width, 2),  # the paper's schedules cross; a thick dotted line would hide the other
            markerfacecolor="none",
            label=f"paper: {module}",
        )
    axis.set_ylim(-0.05, 1.05)
    axis.set_xlim(-0.5, layers - 0.5)
    axis.xaxis.set_major_locator(_integer_ticks())
    axis.set_xlabel(f"layer (0 … {layers - 1})")
    axis.set_ylabel("t (0 = base, 1 = other parent)")
    _legend_outside(axis, fontsize=8)
    axis.set_title(title)
    return figure

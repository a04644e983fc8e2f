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
KIND_MARKERS = {"sweep": "o", "paper": "s", "search": "*"}
KIND_NAMES = {"sweep": "global t sweep", "paper": "paper's schedule", "search": "searched (held-out)"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    plt = _pyplot()
    figure.tight_layout()
    with atomic_path(path) as partial:  # a full disk leaves no half-drawn PNG
        figure.savefig(partial, dpi=DPI)
    plt.close(figure)
    return path


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
    """One panel per scale: the sweep's accuracy against t with its 95% band, each parent as a
    line with its band, and the paper's schedule and the searched recipe as reference lines."""
    plt = _pyplot()
    labels = labels_of(rows)
    figure, axes = plt.subplots(1, len(labels), figsize=(4.2 * len(labels), 3.8), sharey=True, squeeze=False)
    for axis, label in zip(axes[0], labels):
        mine = [row for row in rows if row.label == label]
        sweep = sorted((row for row in mine if row.merge == "sweep"), key=lambda row: row.t)
        ts = [row.t for row in sweep]
        axis.plot(ts, [row.accuracy for row in sweep], marker="o", color="tab:blue", label="merged (global t)")
        axis.fill_between(ts, [row.accuracy_low for row in sweep], [row.accuracy_high for row in sweep], color="tab:blue", alpha=0.2)
        for row, color in zip((r for r in mine if r.merge == "parent"), ("tab:green", "tab:red")):
            axis.axhline(row.accuracy, color=color, linestyle="--", label=f"parent {row.name} (t={row.t:g})")
            axis.axhspan(row.accuracy_low, row.accuracy_high, color=color, alpha=0.1)
        for row in mine:
            if row.merge == "paper":
                axis.axhline(row.accuracy, color="black", linestyle=":", label="paper's schedule")
            elif row.merge == "search":
                axis.axhline(row.accuracy, color="tab:purple", linestyle="-.", label=f"searched (held-out, n={row.n})")
        axis.set_title(scale_title(rows, label))
        axis.set_xlabel("SLERP t (0 = base parent)")
        axis.set_xlim(min(ts, default=0) - 0.02, max(ts, default=1) + 0.02)
        axis.legend(fontsize=7, loc="best")
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
    axis.legend(fontsize=7)
    return _save(figure, path)


def gain_vs_diversity(rows: Sequence[MapRow], path: Path) -> Path:
    """Gain over the best parent against the parents' diversity |P1 − P2| (the paper's Fig. 10)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 4.5))
    merges = [row for row in rows if is_merge(row)]
    # Every merge of a pair shares its diversity: nudge the kinds apart so their bars do not overlap.
    spread = max((row.diversity for row in merges), default=0.0) - min((row.diversity for row in merges), default=0.0)
    _merge_points(axis, rows, merges, x=lambda row: row.diversity, field="gain", nudge=0.01 * max(spread, 0.1))
    axis.axhline(0, color="grey", linestyle="--")
    axis.set_xlabel("parent diversity |P1 − P2|")
    axis.set_ylabel("gain over the best parent (95% interval)")
    axis.set_title("gain against parent diversity", fontsize=10)
    axis.legend(fontsize=7)
    return _save(figure, path)


def _merge_points(axis, rows: Sequence[MapRow], merges: Sequence[MapRow], *, x, field: str, nudge: float = 0.0) -> None:
    """The merges as points at (x(row), row.<field>) with the field's 95% interval as error bars:
    a colour per scale, a marker per kind, the kinds `nudge` apart along x."""
    labels = labels_of(rows)
    colors = _colors(labels)
    for label in labels:
        for offset, (kind, marker) in enumerate(KIND_MARKERS.items()):
            chosen = [row for row in merges if row.label == label and row.merge == kind]
            if chosen:
                axis.errorbar(
                    [x(row) + offset * nudge for row in chosen],
                    [getattr(row, field) for row in chosen],
                    yerr=_error_bars(chosen, field),
                    fmt=marker,
                    color=colors[label],
                    alpha=0.75,
                    markersize=9 if kind == "search" else 5,
                    elinewidth=0.7,
                    label=f"{label}: {KIND_NAMES[kind]}",
                )


def kinship_profile(kinships: Mapping[str, Optional[Kinship]], path: Path) -> Path:
    """Per-layer cosine of the parents' task vectors against relative depth (scales differ in
    depth), one line per scale, the overall value in the legend."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    colors = _colors(list(kinships))
    drawn = False
    for label, profile in kinships.items():
        if profile is None or not profile.per_layer:
            continue
        layers = len(profile.per_layer)
        depth = [i / (layers - 1) if layers > 1 else 0.0 for i in range(layers)]
        axis.plot(depth, profile.per_layer, marker="o", color=colors[label], label=f"{label} (overall {profile.overall:.3f})")
        drawn = True
    if not drawn:
        axis.text(0.5, 0.5, "no ancestor given: kinship not measured", ha="center", va="center", transform=axis.transAxes)
    axis.set_xlabel("relative depth (layer / (layers − 1))")
    axis.set_ylabel("cos(P1 − ancestor, P2 − ancestor)")
    axis.set_title("parents' kinship over depth", fontsize=10)
    if drawn:
        axis.legend(fontsize=8)
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
) -> Path:
    """Each complete trial's value and the best so far; the paper's recipe (trial, value) as a star
    and the best parent as a dashed line when given."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    running = [max(values[: i + 1]) for i in range(len(values))]
    axis.scatter(numbers, values, s=14, label="trial", color="tab:blue")
    axis.step(numbers, running, where="post", label="best so far", color="tab:orange")
    if baseline is not None:
        axis.scatter([baseline[0]], [baseline[1]], marker="*", s=120, color="tab:red", label="paper's recipe")
    if best_parent is not None:
        axis.axhline(best_parent, linestyle="--", color="grey", label="best parent")
    axis.set_xlabel("trial")
    axis.set_ylabel(ylabel)
    axis.legend(fontsize=8)
    axis.set_title(title)
    return _save(figure, path)


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
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    for (module, (best, paper)), color in zip(curves.items(), ("tab:blue", "tab:green", "tab:purple", "tab:brown")):
        axis.plot(range(len(best)), best, color=color, label=f"best: {module}")
        axis.plot(range(len(paper)), paper, color=color, linestyle=":", label=f"paper: {module}")
    axis.set_ylim(-0.05, 1.05)
    axis.set_xlabel("layer")
    axis.set_ylabel("t (0 = base, 1 = other parent)")
    axis.legend(fontsize=8)
    axis.set_title(title)
    return _save(figure, path)

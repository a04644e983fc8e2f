"""The scale map's tables and its one self-contained HTML report (figures embedded as base64),
with the verdict for each scale in words: whether, and at which t, the gain's interval lies above zero.
"""

from __future__ import annotations

import base64
import csv
import html
import math
from dataclasses import astuple
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

from evomerge.analysis.metrics import Kinship, MapRow, is_inner_sweep
from evomerge.analysis.plots import FIGURES, format_params, labels_of


def _cell(value) -> object:
    """CSV cells: empty for None, full precision for floats (so a rerun compares exactly)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return value


def write_map_csv(rows: Sequence[MapRow], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(MapRow.columns())
        for row in rows:
            writer.writerow([_cell(value) for value in astuple(row)])
    return path


def write_kinship_csv(kinships: Mapping[str, Optional[Kinship]], path: Path) -> Path:
    """label, layer ("all" for the whole model), cosine; nothing for a pair without an ancestor."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "layer", "cosine"])
        for label, profile in kinships.items():
            if profile is None:
                continue
            writer.writerow([label, "all", _cell(profile.overall)])
            for layer, cosine in enumerate(profile.per_layer):
                writer.writerow([label, layer, _cell(cosine)])
    return path


def write_items_csv(records: Iterable[tuple[str, str, str, Sequence[str], Sequence[bool]]], path: Path) -> Path:
    """Per-item correctness of every scored model: (label, name, items, item ids, correct) each."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "name", "items", "item_id", "correct"])
        for label, name, items, item_ids, correct in records:
            for item_id, ok in zip(item_ids, correct):
                writer.writerow([label, name, items, item_id, int(bool(ok))])
    return path


# ----- words -------------------------------------------------------------------------------


def format_interval(estimate: float, low: float, high: float, signed: bool = True) -> str:
    spec = "+.3f" if signed else ".3f"
    return f"{estimate:{spec}} [{low:{spec}}, {high:{spec}}]"


def gain_text(row: Optional[MapRow]) -> str:
    """The gain with its interval, starred when the interval lies above zero; "–" for no row."""
    if row is None:
        return "–"
    return format_interval(row.gain, row.gain_low, row.gain_high) + (" *" if row.significant == "above" else "")


def _status(row: MapRow) -> str:
    if row.significant == "above":
        return "interval above zero"
    if row.significant == "below":
        return "interval below zero"
    return "interval contains zero"


def t_ranges(chosen: Sequence[float], grid: Sequence[float]) -> str:
    """Grid points as runs: [0.3, 0.4, 0.5, 0.8] on a 0.1 grid → '0.3–0.5, 0.8'."""
    positions = sorted(grid.index(t) for t in chosen)
    runs: list[list[int]] = []
    for position in positions:
        if runs and position == runs[-1][-1] + 1:
            runs[-1].append(position)
        else:
            runs.append([position])
    return ", ".join(f"{grid[r[0]]:g}" if len(r) == 1 else f"{grid[r[0]]:g}–{grid[r[-1]]:g}" for r in runs)


def inner_sweep(rows: Sequence[MapRow], label: str) -> list[MapRow]:
    """The sweep's merges, by t: the points strictly between the parents (t = 0 and 1 are the parents)."""
    return sorted((row for row in rows if row.label == label and is_inner_sweep(row)), key=lambda row: row.t)


def best_sweep_row(rows: Sequence[MapRow], label: str) -> Optional[MapRow]:
    """The merge of the sweep with the largest gain (the lowest t on a tie)."""
    sweep = inner_sweep(rows, label)
    return max(sweep, key=lambda row: (row.gain, -row.t)) if sweep else None


def verdict(rows: Sequence[MapRow], label: str) -> str:
    """One paragraph for one scale: the parents, where the gain's interval lies above (or below)
    zero along t, the paper's schedule, and the searched recipe on held-out items."""
    mine = [row for row in rows if row.label == label]
    parents = [row for row in mine if row.merge == "parent"]
    sweep = inner_sweep(rows, label)
    grid = [row.t for row in sweep]
    first = mine[0]
    parts = [
        f"{label} ({format_params(first.params)} parameters; "
        + "; ".join(f"parent {p.name} {format_interval(p.accuracy, p.accuracy_low, p.accuracy_high, signed=False)}" for p in parents)
        + f"; {first.n} items"
        + ("" if math.isnan(first.kinship) else f"; kinship {first.kinship:.3f}")
        + ")."
    ]
    if sweep:
        best = best_sweep_row(rows, label)
        above = [row.t for row in sweep if row.significant == "above"]
        below = [row.t for row in sweep if row.significant == "below"]
        best_text = f"the largest gain over the best parent is at t = {best.t:g}: {format_interval(best.gain, best.gain_low, best.gain_high)}"
        if above:
            parts.append(
                f"Merging beats the best parent by more than the noise at t = {t_ranges(above, grid)} ({len(above)} of {len(sweep)} sweep points); {best_text}."
            )
        else:
            parts.append(f"At no t of the sweep does the gain's interval lie above zero; {best_text}.")
        if below:
            parts.append(f"The gain's interval lies below zero at t = {t_ranges(below, grid)}.")
    else:
        parts.append("The sweep has no t strictly between 0 and 1 (those ends are the parents themselves).")
    for row in mine:
        if row.merge == "paper":
            parts.append(f"The paper's schedule: gain {format_interval(row.gain, row.gain_low, row.gain_high)} ({_status(row)}).")
        elif row.merge == "search":
            parts.append(
                f"The searched recipe ({row.name}), on {row.n} held-out items the search never saw: "
                f"accuracy {format_interval(row.accuracy, row.accuracy_low, row.accuracy_high, signed=False)}, "
                f"gain {format_interval(row.gain, row.gain_low, row.gain_high)} ({_status(row)})."
            )
    return " ".join(parts)


def summary_rows(rows: Sequence[MapRow]) -> list[dict[str, str]]:
    """Per scale: the parents, the best sweep point, the paper's schedule and the searched recipe
    (the table the CLI prints and the report shows)."""
    table = []
    for label in labels_of(rows):
        mine = [row for row in rows if row.label == label]
        parents = [row for row in mine if row.merge == "parent"]
        best = best_sweep_row(rows, label)
        paper = next((row for row in mine if row.merge == "paper"), None)
        search = next((row for row in mine if row.merge == "search"), None)
        table.append(
            {
                "scale": label,
                "parameters": format_params(mine[0].params),
                "P1": f"{parents[0].accuracy:.3f}" if parents else "–",
                "P2": f"{parents[1].accuracy:.3f}" if len(parents) > 1 else "–",
                "best t": f"{best.t:g}" if best else "–",
                "gain at best t": gain_text(best),
                "paper schedule gain": gain_text(paper),
                "searched gain (held-out)": gain_text(search),
                "kinship": "–" if math.isnan(mine[0].kinship) else f"{mine[0].kinship:.3f}",
            }
        )
    return table


def highlights(rows: Sequence[MapRow]) -> list[dict[str, str]]:
    """Per scale, one line each for the best sweep point, the paper's schedule and the searched
    recipe: narrow enough for a terminal (the report has the wide table)."""
    lines = []
    for label in labels_of(rows):
        mine = [row for row in rows if row.label == label]
        parents = [row for row in mine if row.merge == "parent"]
        best = best_sweep_row(rows, label)
        chosen = [(f"best sweep t={best.t:g}", best)] if best else []
        chosen += [("paper schedule" if row.merge == "paper" else f"searched (held-out n={row.n})", row) for row in mine if row.merge in ("paper", "search")]
        for index, (what, row) in enumerate(chosen):
            lines.append(
                {
                    "scale": f"{label} ({format_params(row.params)})" if index == 0 else "",
                    "P1 / P2": "/".join(f"{p.accuracy:.3f}" for p in parents) if index == 0 else "",
                    "merge": what,
                    "accuracy": f"{row.accuracy:.3f}",
                    "gain [95% CI]": gain_text(row),
                }
            )
    return lines


# ----- the HTML report ---------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; } figcaption { color: #555; font-size: 0.9em; }
p.scale { background: #f6f6f6; padding: 0.6em 0.8em; border-left: 4px solid #4a7; }
"""


def write_report(
    rows: Sequence[MapRow],
    figures: Sequence[Path],
    path: Path,
    *,
    title: str,
    notes: Sequence[str] = (),
) -> Path:
    """One HTML file with everything inline: verdicts, the summary table, the figures, the notes."""
    esc = html.escape
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{_STYLE}</style></head><body>"]
    out.append(f"<h1>{esc(title)}</h1>")
    out.append("<h2>Where merging beats both parents</h2>")
    for label in labels_of(rows):
        out.append(f"<p class='scale'>{esc(verdict(rows, label))}</p>")
    table = summary_rows(rows)
    if table:
        out.append("<table><tr>" + "".join(f"<th>{esc(key)}</th>" for key in table[0]) + "</tr>")
        for entry in table:
            out.append("<tr>" + "".join(f"<td>{esc(value)}</td>" for value in entry.values()) + "</tr>")
        out.append("</table><p>Gains are merged − max(P1, P2) with a paired 95% bootstrap interval; * marks an interval above zero.</p>")
    out.append("<h2>Figures</h2>")
    for figure in figures:
        data = base64.b64encode(Path(figure).read_bytes()).decode("ascii")
        caption = FIGURES.get(Path(figure).name, Path(figure).stem)
        out.append(f"<figure><img alt='{esc(caption)}' src='data:image/png;base64,{data}'><figcaption>{esc(caption)}</figcaption></figure>")
    if notes:
        out.append("<h2>How it was measured</h2><ul>" + "".join(f"<li>{esc(note)}</li>" for note in notes) + "</ul>")
    out.append("</body></html>")
    path.write_text("\n".join(out), encoding="utf-8")
    return path

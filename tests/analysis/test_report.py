"""The map's tables, figures and HTML report from hand-made rows: the words per scale say where the
gain's interval lies above zero; the report is one self-contained file."""

from __future__ import annotations

import csv
import math

import pytest

from evomerge.analysis.metrics import Bootstrap, Kinship, MapRow, merge_metrics
from evomerge.analysis.plots import FIGURES, draw_all, format_params
from evomerge.analysis.report import (
    highlights,
    summary_rows,
    t_ranges,
    verdict,
    write_kinship_csv,
    write_map_csv,
    write_report,
)

PNG = b"\x89PNG\r\n\x1a\n"
GRID = [0.0, 0.25, 0.5, 0.75, 1.0]


def vector(hits: int, n: int = 40) -> list[bool]:
    return [True] * hits + [False] * (n - hits)


def rows_for(label: str, params: float, merged_hits: dict[float, int], parents=(20, 22), kin=0.5) -> list[MapRow]:
    """A pair whose merge at t has `merged_hits[t]` of 40 right, a superset of the parents' items."""
    bootstrap = Bootstrap(40, 500, seed=0)
    p1, p2 = vector(parents[0]), vector(parents[1])

    def row(hits, merge, name, t):
        metrics = merge_metrics(vector(hits), p1, p2, bootstrap)
        return MapRow.from_metrics(metrics, label=label, params=params, merge=merge, name=name, t=t, items="all", kinship=kin)

    rows = [row(parents[0], "parent", "instruct", 0.0), row(parents[1], "parent", "child", 1.0)]
    rows += [row(merged_hits[t], "sweep", f"t={t:g}", t) for t in GRID]
    rows.append(row(23, "paper", "paper schedule", None))
    return rows


@pytest.fixture
def rows():
    # "big": far above both parents at t = 0.25–0.5; "small": never above the best parent.
    big = rows_for("big", 7e9, {0.0: 20, 0.25: 34, 0.5: 36, 0.75: 23, 1.0: 22})
    small = rows_for("small", 1.7e9, {0.0: 20, 0.25: 21, 0.5: 22, 0.75: 21, 1.0: 22}, kin=math.nan)
    return big + small


def test_t_ranges_joins_neighbouring_grid_points():
    grid = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert t_ranges([0.1, 0.2, 0.3, 0.5], grid) == "0.1–0.3, 0.5"
    assert t_ranges([0.0], grid) == "0"


def test_the_words_say_where_the_gain_is_above_zero(rows):
    big = verdict(rows, "big")
    assert "7B parameters" in big
    assert "by more than the noise at t = 0.25–0.5 (2 of 3 sweep points)" in big
    assert "t = 0.5: +0.350" in big  # 36/40 − 22/40
    assert "paper's schedule" in big
    small = verdict(rows, "small")
    assert "At no t of the sweep does the gain's interval lie above zero" in small
    assert "kinship" not in small  # no ancestor, no kinship claimed


def test_summary_and_terminal_lines(rows):
    table = summary_rows(rows)
    assert [entry["scale"] for entry in table] == ["big", "small"]
    assert table[0]["best t"] == "0.5" and table[0]["gain at best t"].endswith("*")
    assert table[1]["kinship"] == "–"
    lines = highlights(rows)
    assert [line["merge"] for line in lines] == ["best sweep t=0.5", "paper schedule", "best sweep t=0.5", "paper schedule"]


def test_csv_has_every_column_and_round_trips_the_numbers(rows, tmp_path):
    write_map_csv(rows, tmp_path / "map.csv")
    with open(tmp_path / "map.csv", newline="") as handle:
        read = list(csv.DictReader(handle))
    assert list(read[0]) == MapRow.columns()
    assert len(read) == len(rows)
    assert [float(r["gain_low"]) for r in read] == [row.gain_low for row in rows]
    assert read[-1]["t"] == ""  # the paper's schedule has no single t
    write_kinship_csv({"a": Kinship(0.5, [0.4, 0.6]), "b": None}, tmp_path / "kinship.csv")
    assert (tmp_path / "kinship.csv").read_text().splitlines() == ["label,layer,cosine", "a,all,0.5", "a,0,0.4", "a,1,0.6"]


def test_figures_and_a_self_contained_report(rows, tmp_path):
    figures = draw_all(rows, {"big": Kinship(0.5, [0.3, 0.5, 0.7]), "small": None}, tmp_path / "figures")
    assert sorted(path.name for path in figures) == sorted(FIGURES)
    for path in figures:
        assert path.read_bytes().startswith(PNG)
    report = write_report(rows, figures, tmp_path / "report.html", title="test map", notes=["a note"])
    text = report.read_text()
    assert text.count("data:image/png;base64,") == len(FIGURES)
    assert "http" not in text.replace("http-equiv", "")  # nothing fetched from anywhere
    assert "by more than the noise at t = 0.25–0.5" in text
    assert "a note" in text


def test_format_params():
    assert format_params(1.2e6) == "1.2M"
    assert format_params(8.03e9) == "8.03B"
    assert format_params(950) == "950"

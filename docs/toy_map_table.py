"""The README's toy-map table from `evomerge map` output folders, one per training seed.

    python docs/toy_map_table.py "domain, Instruct × Instruct-CPT-SFT=results/map-toy-domain,results/map-toy-domain-seed1,…" …

Each argument is `ROW LABEL=FOLDER[,FOLDER…]`: the first folder's map gives the row's figures with
their 95% intervals; every folder (one per training seed) gives the mean and range of the gains.
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path


def read_map(folder: Path) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    with open(folder / "map.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            rows.setdefault(row["label"], []).append(row)
    return rows


def best_sweep(rows: list[dict]) -> dict:
    """The sweep point strictly between the parents with the highest accuracy (lowest t on a tie)."""
    inner = [r for r in rows if r["merge"] == "sweep" and 0 < float(r["t"]) < 1]
    return max(inner, key=lambda r: (float(r["accuracy"]), -float(r["t"])))


def one(rows: list[dict], merge: str) -> dict:
    return next(r for r in rows if r["merge"] == merge)


def gain(row: dict) -> str:
    star = " *" if row["significant"] == "above" else ""
    return f"{float(row['gain']):+.3f} [{float(row['gain_low']):+.3f}, {float(row['gain_high']):+.3f}]{star}"


def spread(rows: list[dict]) -> str:
    """Mean (range) of the rows' gains, and in how many the interval lies above zero."""
    values = [float(r["gain"]) for r in rows]
    if len(values) < 2:
        return "–"
    above = sum(r["significant"] == "above" for r in rows)
    return f"{statistics.mean(values):+.3f} ({min(values):+.3f} to {max(values):+.3f}), {above} of {len(rows)} above zero"


def main(arguments: list[str]) -> None:
    print(
        "| benchmark, pair | scale | P1 [95% CI] | P2 [95% CI] | best sweep t: accuracy, gain [95% CI] | paper's schedule: accuracy, gain [95% CI] "
        "| searched recipe on held-out items: accuracy (n; parents there), gain [95% CI] | gain over the training seeds, mean (range), intervals above zero: best sweep; searched |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for argument in arguments:
        label, _, folders = argument.partition("=")
        maps = [read_map(Path(folder)) for folder in folders.split(",") if Path(folder, "map.csv").is_file()]
        for scale, rows in maps[0].items():
            parents = [r for r in rows if r["merge"] == "parent"]
            p1, p2 = parents

            def parent(row: dict) -> str:
                return f"{row['name']} {float(row['accuracy']):.3f} [{float(row['accuracy_low']):.3f}, {float(row['accuracy_high']):.3f}]"

            sweep, paper, searched = best_sweep(rows), one(rows, "paper"), one(rows, "search")
            seeds = [m[scale] for m in maps if scale in m]
            over_seeds = f"{spread([best_sweep(s) for s in seeds])}; {spread([one(s, 'search') for s in seeds])}"
            print(
                f"| {label} | {scale} | {parent(p1)} | {parent(p2)} "
                f"| t={float(sweep['t']):.1f}: {float(sweep['accuracy']):.3f}, {gain(sweep)} "
                f"| {float(paper['accuracy']):.3f}, {gain(paper)} "
                f"| {float(searched['accuracy']):.3f} (n={searched['n']}; parents {float(searched['parent_1']):.3f}, {float(searched['parent_2']):.3f}): {gain(searched)} "
                f"| {over_seeds} |"
            )


if __name__ == "__main__":
    main(sys.argv[1:])

"""Draw what merging costs or gains on general skill: domain accuracy against general accuracy of
every model of two `evomerge map --toy` runs over the same pair and scales (one with the toy's
domain benchmark, one with --benchmark <toy>/world/general_benchmark.jsonl).

    python docs/toy_domain_vs_general.py results/map-domain results/map-general docs/map-toy-domain-vs-general.png
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def read_rows(folder: Path) -> dict[tuple[str, str], dict]:
    """(scale, model name) → its map.csv row, for the models scored on every item."""
    with open(folder / "map.csv", newline="", encoding="utf-8") as handle:
        return {(row["label"], row["name"]): row for row in csv.DictReader(handle) if row["items"] == "all"}


def main(domain_dir: str, general_dir: str, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domain, general = read_rows(Path(domain_dir)), read_rows(Path(general_dir))
    figure, axis = plt.subplots(figsize=(6.5, 5))
    scales = list(dict.fromkeys(label for label, _ in domain))
    colours = plt.cm.viridis([i / max(1, len(scales) - 1) for i in range(len(scales))])
    for colour, scale, marker in zip(colours, scales, ("o", "s", "^", "D", "v")):
        keys = [key for key in domain if key[0] == scale and key in general]
        sweep = sorted((k for k in keys if domain[k]["merge"] in ("sweep", "parent") and domain[k]["t"]), key=lambda k: float(domain[k]["t"]))
        xs = [float(general[k]["accuracy"]) for k in sweep]
        ys = [float(domain[k]["accuracy"]) for k in sweep]
        axis.plot(xs, ys, marker=marker, color=colour, markersize=4, label=f"{scale}: sweep t = 0 … 1")
        if sweep:
            axis.annotate("t=0", (xs[0], ys[0]), fontsize=7)
            axis.annotate("t=1", (xs[-1], ys[-1]), fontsize=7)
        for key in keys:
            if domain[key]["merge"] == "paper":
                axis.plot(float(general[key]["accuracy"]), float(domain[key]["accuracy"]), "*", color=colour, markersize=12, label=f"{scale}: paper's schedule")
    axis.axhline(0.25, color="grey", linewidth=0.6, linestyle=":")
    axis.axvline(0.25, color="grey", linewidth=0.6, linestyle=":")
    axis.set_xlabel("general benchmark accuracy")
    axis.set_ylabel("domain benchmark accuracy")
    axis.set_title("Toy merges, instruct × instruct-CPT-SFT\n(★ paper's schedule; dotted: chance 0.25)", fontsize=10)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)  # beside the data, not over it
    figure.tight_layout()
    figure.savefig(out, dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    main(*sys.argv[1:4])

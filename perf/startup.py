"""How long `evomerge` takes to answer, per command: wall time of a fresh process (median of a few
runs), beside a bare `python -c pass` and `import torch` for scale, and what each command imports
that costs the most (`python -X importtime`, top offenders by cumulative time).

    python perf/startup.py [--runs 5] [--top 5]

The figures depend on the machine and its load (and a cold disk cache); run it twice and read the
second. Nothing here is asserted: tests/test_cli_terminal.py checks what is imported, not how long.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (
    ["--help"],
    ["spaces"],
    ["recipes"],
    ["benchmark", "list"],
    ["export", "--help"],
    ["search", "--help"],
)
REFERENCES = {"python -c pass": ["-c", "pass"], "python -c 'import torch'": ["-c", "import torch"]}
HEAVY = ("torch", "transformers", "mergekit", "ray", "optuna", "lm_eval", "trl", "peft", "datasets")


def environment() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return env


def wall(args: list[str], runs: int) -> float:
    """Median wall time of `python ARGS` in a fresh process, seconds."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], env=environment(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def import_offenders(args: list[str], top: int) -> tuple[list[tuple[str, float]], list[str]]:
    """The top-level imports with the largest cumulative time (seconds), and which heavy libraries
    the command imported at all."""
    done = subprocess.run([sys.executable, "-X", "importtime", *args], env=environment(), cwd=ROOT, capture_output=True, text=True)
    cumulative: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, total, name = (part.strip() for part in line[len("import time:") :].split("|"))
        if not total.isdigit():
            continue
        root = name.split(".")[0]
        if name == root:  # a top-level package: its cumulative time includes its submodules
            cumulative[root] = max(cumulative.get(root, 0.0), int(total) / 1e6)
    ranked = sorted(cumulative.items(), key=lambda item: -item[1])[:top]
    heavy = [name for name in HEAVY if name in cumulative]
    return ranked, heavy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--top", type=int, default=5)
    options = parser.parse_args()

    print(f"{'command':32} {'wall (median)':>14}   heavy libraries imported · top imports (cumulative)")
    for label, args in REFERENCES.items():
        print(f"{label:32} {wall(args, options.runs):>12.2f} s")
    for command in COMMANDS:
        args = ["-m", "evomerge", *command]
        seconds = wall(args, options.runs)
        offenders, heavy = import_offenders(args, options.top)
        tops = ", ".join(f"{name} {t:.2f}" for name, t in offenders)
        print(f"{'evomerge ' + ' '.join(command):32} {seconds:>12.2f} s   {', '.join(heavy) or 'none'} · {tops}")


if __name__ == "__main__":
    main()

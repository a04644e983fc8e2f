"""perf/population.py on two tiny parents: the last line is one JSON object with trials per second
for each K, and every K's per-item results equal K = 1's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PERF = Path(__file__).resolve().parents[2] / "perf" / "population.py"


def write_benchmark(path: Path, count: int = 10) -> Path:
    lines = [
        json.dumps({"id": f"q{i}", "type": "mc", "question": f"Which is {i}?", "choices": ["silk", "bone", "wood", "nacre"], "answer": "ABCD"[i % 4]})
        for i in range(count)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_population_perf_reports_trials_per_second_for_each_k(family, tmp_path):
    models = family("llama")
    benchmark = write_benchmark(tmp_path / "bench.jsonl")
    command = [sys.executable, str(PERF), "--parents", f"{models['base']},{models['c1']}", "--benchmark", str(benchmark)]
    command += ["--trials", "4", "--populations", "1,2", "--protocol", "loglik"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for k in ("1", "2"):
        entry = report["population"][k]
        assert entry["trials"] == 4 and entry["trials_per_s"] > 0
        assert entry["same_scores"] is True

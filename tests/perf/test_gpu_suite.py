"""perf/gpu_suite.py: the same code a GPU runs, on a CPU at the tiny shape, as a subprocess; and
its guard that records a failing stage (out of memory) instead of dying."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "perf" / "gpu_suite.py"


def run_suite(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


@pytest.mark.slow  # 24-82 s on the shared 2-core machine, depending on its load
def test_tiny_on_cpu_measures_every_stage():
    done = run_suite("--device", "cpu", "--shape", "tiny")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert "tiny:" in done.stdout  # progress printed as it goes
    assert result["device"] == "cpu" and result["items"] == 359
    assert result["failed_stages"] == []
    tiny = result["shapes"]["tiny"]
    for key in (
        "init_parents_s",
        "write_parent_s",
        "parent_load_s",
        "resident_model_s",
        "merge_first_s",
        "merge_s",
        "score_paper_s",
        "score_loglik_s",
        "trial_paper_s",
        "trial_loglik_s",
    ):
        assert isinstance(tiny[key], float) and tiny[key] > 0, (key, tiny[key])
    assert set(tiny["trials_per_hour"]) == {"paper", "loglik"}
    assert tiny["trials_per_hour"]["loglik"] == pytest.approx(3600 / tiny["trial_loglik_s"], rel=0.01)
    assert tiny["params"] > 0 and tiny["peak_rss_gib"] > 0
    assert "skipped" in tiny["population"]


def test_bad_shape_is_one_line_and_exit_2():
    done = run_suite("--device", "cpu", "--shape", "huge")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--shape" in done.stderr
    assert done.stdout == ""


def test_a_stage_out_of_memory_is_recorded_and_the_next_skipped(capsys):
    sys.path.insert(0, str(ROOT / "perf"))
    try:
        import gpu_suite
    finally:
        sys.path.remove(str(ROOT / "perf"))

    suite = gpu_suite.Suite(torch.device("cpu"), budget_s=1e9)
    record: dict = {}

    def runs_out() -> float:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    assert suite.stage(record, "merge_s", runs_out) is None
    assert record["merge_s"]["error"].startswith("out of memory")
    assert "merge_s: FAILED out of memory" in capsys.readouterr().out
    assert suite.stage(record, "score_s", lambda: 1.0, "merge_s") is None
    assert record["score_s"] == {"skipped": "needs merge_s"}
    assert suite.stage(record, "tokenise_s", lambda: 2.5) == 2.5 and record["tokenise_s"] == 2.5
    spent = gpu_suite.Suite(torch.device("cpu"), budget_s=-1)
    later: dict = {}
    spent.stage(later, "merge_s", lambda: 1.0)
    assert "time budget" in later["merge_s"]["skipped"]

"""What a terminal (or a pipe) gets from the command line: no hard wrap when the output is not a
terminal, and Ctrl-C or SIGTERM on a real `evomerge search` process ending in one or two lines,
no library traceback, with the reason recorded in summary.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from test_cli_search import write_items

from evomerge.toy.tiny import CHAT_TEMPLATE, make_checkpoint, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def environment() -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return env


def evomerge_process(*args, cwd: Path) -> subprocess.Popen:
    """`python -m evomerge ARGS` with stdout and stderr piped (not a terminal), and Ctrl-C's
    default action (a background shell may have started this test with SIGINT ignored)."""
    return subprocess.Popen(
        [sys.executable, "-m", "evomerge", *map(str, args)],
        cwd=cwd,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_tables_are_not_hard_wrapped_when_stdout_is_a_pipe(tmp_path):
    """Rich lays out for 80 columns when the output is not a terminal; piped, every row of
    `evomerge spaces` (a description longer than 80 columns among them) stays on one line."""
    from evomerge.api import spaces

    done = evomerge_process("spaces", cwd=tmp_path)
    out, err = done.communicate(timeout=120)
    assert done.returncode == 0, err
    lines = out.splitlines()
    longest = max(spaces(), key=lambda info: len(info.description))
    assert len(longest.description) > 80
    for info in spaces():
        assert any(info.name in line and info.description in line for line in lines), f"{info.name}'s row is wrapped:\n{out}"


@pytest.fixture(scope="module")
def parents(tmp_path_factory):
    root = tmp_path_factory.mktemp("terminal-parents")
    config = tiny_config("llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, tie_word_embeddings=False)
    state = make_checkpoint(root / "instruct", config, seed=0, chat_template=CHAT_TEMPLATE)
    make_checkpoint(root / "child", config, seed=1, from_state=state, noise=0.5)
    return root


@pytest.mark.parametrize("signum, reason, code", [(signal.SIGINT, "interrupted (Ctrl-C)", 130), (signal.SIGTERM, "terminated (SIGTERM)", 143)])
def test_a_signal_stops_a_search_in_a_few_lines_and_records_why(parents, tmp_path, signum, reason, code):
    """A real search process on fixture models, stopped once its first trial has finished: a few
    lines on stderr (the study's place, the bar, the interruption), no traceback or library
    warning, the shell's exit code, and summary.json saying why it stopped."""
    write_items(tmp_path / "bench.jsonl", 40)
    args = ["search", "--parents", f"{parents / 'instruct'},{parents / 'child'}", "--benchmark", tmp_path / "bench.jsonl"]
    process = evomerge_process(*args, "--protocol", "loglik", "--device", "cpu", "--trials", 1000, "--study", "stop", cwd=tmp_path)
    storage = f"sqlite:///{tmp_path / 'results' / 'stop' / 'study.db'}"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            time.sleep(1)
            try:
                trials = optuna.load_study(study_name="stop", storage=storage).get_trials(deepcopy=False)
            except Exception:  # not created yet
                continue
            if any(t.state.is_finished() for t in trials):
                break
        assert process.poll() is None, process.communicate()
        process.send_signal(signum)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and "Warning" not in err, err
    assert len(lines) <= 8, err
    assert lines[-1] == f"Stopped: {reason}."
    summary = json.loads((tmp_path / "results" / "stop" / "summary.json").read_text())
    assert summary["stopped_because"] == reason


HEAVY = ("torch", "transformers", "mergekit", "ray", "optuna")
PROBE = """
import runpy, sys
sys.argv = ["evomerge", *sys.argv[1:]]
try:
    runpy.run_module("evomerge", run_name="__main__")
except SystemExit as done:
    code = done.code
print("LOADED", code, ",".join(name for name in {heavy!r} if name in sys.modules))
"""


@pytest.mark.parametrize("command", [["--help"], ["spaces"], ["recipes"], ["benchmark", "list"], ["export", "--help"], ["search", "--help"]])
def test_light_commands_import_no_model_library(command, tmp_path):
    """`evomerge --help`, `spaces`, `recipes`, `benchmark list` and a command's help answer at once:
    they import none of torch, transformers, mergekit, Ray or Optuna (seconds each). How long they
    take is measured by perf/startup.py, never asserted here."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *command], cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=120
    )
    line = next(line for line in done.stdout.splitlines() if line.startswith("LOADED"))
    _, code, loaded = line.split(" ", 2)
    assert code in ("0", "None"), done.stderr
    assert loaded.strip() == "", f"evomerge {' '.join(command)} imported {loaded}"

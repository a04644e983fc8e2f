"""Faults a long search meets: SIGTERM, a full disk, two searches on one study, a trial out of
memory, a rerun right after `kill -9`, parents that change under a study. Each runs for real:
real processes, real signals, a real file-size limit (what a full disk looks like to a writer)."""

import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest
import torch
from optuna.trial import TrialState
from search_helpers import settings_for

from evomerge.errors import EvomergeError
from evomerge.merge.merger import Merger
from evomerge.recipe import paper_recipe
from evomerge.search.run import optimise, prepare
from evomerge.search.study import finished_count

EVOMERGE = [sys.executable, "-m", "evomerge.cli"]


def search_command(parents, study, trials, extra=()):
    return EVOMERGE + [
        "search", "--parents", f"{parents['instruct']},{parents['child']}", "--benchmark", str(parents["benchmark"]),
        "--trials", str(trials), "--study", study, "--protocol", "loglik", "--holdout", "0", *extra,
    ]  # fmt: skip


def counts(db) -> dict:
    with sqlite3.connect(db) as connection:
        return dict(connection.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())


def wait_for_trials(db, process, finished: int, timeout: float = 300) -> None:
    """Until `finished` trials are complete or pruned and one is running (or the process ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if db.is_file():
            try:
                now = counts(db)
            except sqlite3.OperationalError:  # the tables are being created
                now = {}
            if now.get("COMPLETE", 0) + now.get("PRUNED", 0) >= finished and now.get("RUNNING", 0):
                return
        time.sleep(0.2)


def test_sigterm_stops_a_search_as_ctrl_c_does(search_parents, tmp_path):
    """SIGTERM (a scheduler ending the job): the running trial failed with its reason, what exists
    exported, exit code 143, no traceback."""
    process = subprocess.Popen(search_command(search_parents, "term", 200), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = tmp_path / "results" / "term" / "study.db"
    try:
        wait_for_trials(db, process, finished=3)
        assert process.poll() is None, "the search ended before it could be stopped"
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, err[-3000:]
    assert "Traceback" not in err and "Interrupted" in err
    study = optuna.load_study(study_name="term", storage=f"sqlite:///{db}")
    assert not study.get_trials(states=(TrialState.RUNNING,)), "a trial was left running"
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert failed and all(t.user_attrs.get("fail_reason") == "terminated (SIGTERM)" for t in failed)
    summary = json.loads((db.parent / "summary.json").read_text())
    assert summary["stopped_because"] == "terminated (SIGTERM)"
    assert (db.parent / "best-recipe.yaml").is_file()


def test_rerun_right_after_kill_9_finishes_exactly_the_trials_asked(search_parents, tmp_path):
    """The killed process's trial is failed at once on this machine (no waiting for a stale
    heartbeat), so it does not take one of the --trials places."""
    command = search_command(search_parents, "again", 8)
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp_path / "results" / "again" / "study.db"
    wait_for_trials(db, process, finished=2)
    process.kill()
    process.wait()
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)  # at once: the heartbeat (30 s) is not stale
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="again", storage=f"sqlite:///{db}")
    assert finished_count(study) == 8
    assert not study.get_trials(states=(TrialState.RUNNING,))


def test_two_searches_started_on_one_study_cooperate(search_parents, tmp_path):
    """The same command started twice at once (SQLite): both run trials of one study, which
    ends with exactly the trials asked and no recipe evaluated twice."""
    command = search_command(search_parents, "both", 10)
    processes = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for process in processes:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="both", storage=f"sqlite:///{tmp_path}/results/both/study.db")
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 10
    evaluated = [t.user_attrs["recipe_key"] for t in finished if "duplicate_of" not in t.user_attrs]
    assert len(evaluated) == len(set(evaluated)), "an identical recipe was evaluated twice"


def test_a_trial_out_of_memory_fails_alone_and_the_next_runs(search_parents, tmp_path, monkeypatch):
    """An out-of-memory error in one trial (raised where the device would raise it: the merge)
    fails that trial with its reason; the search goes on and finishes its trials."""
    real_apply = Merger.apply
    calls = {"n": 0}

    def apply(self, recipe, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second trial's merge
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_apply(self, recipe, **kwargs)

    monkeypatch.setattr(Merger, "apply", apply)
    study, _ = optimise(prepare(settings_for(search_parents, tmp_path, trials=4)))
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 1 and failed[0].user_attrs["fail_reason"].startswith("OutOfMemoryError: CUDA out of memory")
    assert finished_count(study) == 4
    assert max(t.number for t in study.get_trials(states=(TrialState.COMPLETE,))) > failed[0].number


def test_a_resumed_study_refuses_parents_that_changed(search_parents, tmp_path):
    """The study stores its parents' fingerprints: new weights under the same path stop a resume
    with one clear line; the same weights under another path (relative or absolute) are accepted."""
    parents = {key: tmp_path / key for key in ("instruct", "child")}
    for key, folder in parents.items():
        shutil.copytree(search_parents[key], folder)
    settings = settings_for({**search_parents, **parents}, tmp_path, trials=2)
    optimise(prepare(settings))
    moved = tmp_path / "child-copy"
    shutil.copytree(parents["child"], moved)
    relative = os.path.relpath(moved)
    same = settings_for({**search_parents, **parents, "child": relative}, tmp_path, trials=3)
    study, _ = optimise(prepare(same))  # the same weights elsewhere: the study goes on
    assert finished_count(study) == 3
    shutil.rmtree(parents["child"])
    shutil.copytree(search_parents["third"], parents["child"])  # other weights, same shapes, same path
    with pytest.raises(EvomergeError, match=r"has changed since study"):
        optimise(prepare(settings_for({**search_parents, **parents}, tmp_path, trials=4)))


def limited_file_size(limit: int):
    """For a child process: files may not grow past `limit` bytes, as on a full disk (the write
    fails with EFBIG instead of the process being killed by SIGXFSZ)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_while_merging_or_exporting_leaves_nothing_half_written(search_parents, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(paper_recipe(str(search_parents["instruct"]), str(search_parents["child"])).to_yaml())
    out = tmp_path / "merged"
    merge = subprocess.run(
        EVOMERGE + ["merge", str(recipe), "--out", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        preexec_fn=limited_file_size(4096),
    )  # fmt: skip
    assert merge.returncode != 0
    assert "Traceback" not in merge.stderr and "error:" in merge.stderr, merge.stderr[-2000:]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".merged")], "a half-written merge was left"

    done = subprocess.run(search_command(search_parents, "small", 2), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    target = tmp_path / "exported.yaml"
    target.write_text("# the previous export\n")
    export = subprocess.run(
        EVOMERGE + ["export", "--study", "small", "--out", str(target)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        preexec_fn=limited_file_size(64),
    )  # fmt: skip
    assert export.returncode != 0 and "Traceback" not in export.stderr, export.stderr[-2000:]
    assert target.read_text() == "# the previous export\n", "the old file was replaced by a partial one"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".exported")] == []

"""`--backend ray` (evomerge/search/ray_tune.py): trials on a real local Ray (2 CPUs), recorded in
real SQLite Optuna studies; nothing about Ray or Optuna is mocked.

What is checked: the resource request (GPUs and CPUs per trial, concurrency) against what a
cluster has; bad Ray flags as one clean line; the searcher's bookkeeping (pruned, failed, complete,
duplicates) on a study; then real runs: a 6-trial search whose study carries the same attributes as
an Optuna-backend study of the same settings, with the parents loaded once per worker process;
ASHA stopping a hopeless recipe after the first fraction; failing trials that do not stop the run;
an Optuna-backend study continued on Ray; and the command line end to end, with `evomerge export`
after it and a Ctrl-C that leaves the study consistent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

import optuna
import pytest
from cli_checks import assert_clean_error
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule
from ray.tune.search import Searcher
from search_helpers import DELLA, write_space
from search_helpers import settings_for as objective_settings
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.errors import EvomergeError
from evomerge.recipe import Recipe
from evomerge.search.export import export_all
from evomerge.search.ray_tune import (
    ATTRS,
    LOADS,
    PID,
    RUNG,
    STATE,
    STEP,
    VALUE,
    RaySession,
    StudySearch,
    TrialResources,
    WorkerLoads,
    check_address,
    make_scheduler,
    optimise_on_ray,
    plan_resources,
)
from evomerge.search.run import join_study, optimise, prepare, score_holdout
from evomerge.search.study import (
    FINGERPRINTS_ATTR,
    SETTINGS_ATTR,
    SearchSettings,
    create_or_load_study,
    finished_count,
    set_parent_scores,
    stored_parent_scores,
    trial_attr,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
EVOMERGE = [sys.executable, "-m", "evomerge.cli"]
COMPLETE_ATTRS = {
    "recipe_key", "claimed_by", "worker", "merge_s", "score_s", "accuracy@0.25", "accuracy@0.5", "accuracy@1.0",
    "accuracy", "gain", "synergy", "items_scored",
}  # fmt: skip
TRIAL_DATA = {"recipe", "correct", "per_category"}  # system attributes (out of the dashboard's table)


def settings_for(parents, folder, **overrides) -> SearchSettings:
    """The search tests' settings (tiny parents, loglik, a SQLite file) on Ray, 1 CPU a trial."""
    return objective_settings(parents, folder, **{"executor": "ray", "pruner": "hyperband", "cpus_per_trial": 1.0, **overrides})


# ----- what a trial asks of the cluster (no Ray needed) -----------------------------------------

EIGHT_GPUS = {"CPU": 64.0, "GPU": 8.0}
CPU_ONLY = {"CPU": 2.0}


def request(**flags) -> SearchSettings:
    return SearchSettings(**{"parents": ["a", "b"], "benchmarks": ["x"], "executor": "ray", "trials": 30, **flags})


@pytest.mark.parametrize(
    "cluster, flags, expected",
    [
        (EIGHT_GPUS, {}, TrialResources(cpus=1, gpus=1, concurrent=8)),  # a GPU each, as many as there are GPUs
        (EIGHT_GPUS, {"gpus_per_trial": 1}, TrialResources(cpus=1, gpus=1, concurrent=8)),
        (EIGHT_GPUS, {"gpus_per_trial": 0.5}, TrialResources(cpus=1, gpus=0.5, concurrent=16)),
        (EIGHT_GPUS, {"cpus_per_trial": 16}, TrialResources(cpus=16, gpus=1, concurrent=4)),  # CPUs bind first
        (EIGHT_GPUS, {"concurrent": 3}, TrialResources(cpus=1, gpus=1, concurrent=3)),
        (EIGHT_GPUS, {"device": "cpu"}, TrialResources(cpus=1, gpus=0, concurrent=30)),  # 64 CPU slots, 30 trials
        (CPU_ONLY, {}, TrialResources(cpus=1, gpus=0, concurrent=2)),
        (CPU_ONLY, {"cpus_per_trial": 0.5}, TrialResources(cpus=0.5, gpus=0, concurrent=4)),
        ({"CPU": 1.0}, {"cpus_per_trial": 0.1}, TrialResources(cpus=0.1, gpus=0, concurrent=10)),  # not 9 (1 // 0.1)
        ({"CPU": 64.0, "GPU": 8.0}, {"trials": 3}, TrialResources(cpus=1, gpus=1, concurrent=3)),  # never more than the study's trials
    ],
)
def test_resource_request_per_trial_and_concurrency(cluster, flags, expected):
    planned = plan_resources(request(**flags), cluster)
    assert planned == expected
    assert planned.as_ray() == {"cpu": expected.cpus, "gpu": expected.gpus}
    assert planned.device == ("cuda" if expected.gpus else "cpu")


@pytest.mark.parametrize(
    "cluster, flags, words",
    [
        (CPU_ONLY, {"gpus_per_trial": 1}, "--gpus-per-trial 1, but the Ray cluster has 0 GPU(s)"),
        ({"CPU": 8.0, "GPU": 0.5}, {"gpus_per_trial": 1}, "has 0.5 GPU(s)"),
        (EIGHT_GPUS, {"gpus_per_trial": 2}, "a trial merges and scores on one GPU"),
        (EIGHT_GPUS, {"device": "cpu", "gpus_per_trial": 1}, "reserve GPUs it does not use"),
        (CPU_ONLY, {"device": "cuda"}, "--device cuda needs --gpus-per-trial above 0"),
        (CPU_ONLY, {"cpus_per_trial": 4}, "--cpus-per-trial 4, but the Ray cluster has 2 CPU(s)"),
    ],
)
def test_a_request_the_cluster_cannot_meet_is_refused(cluster, flags, words):
    with pytest.raises(EvomergeError) as caught:
        plan_resources(request(**flags), cluster)
    assert words in str(caught.value)


@pytest.mark.parametrize(
    "flags, words",
    [
        ({"executor": "dask"}, "unknown --backend 'dask'"),
        ({"executor": "optuna", "gpus_per_trial": 1}, "--gpus-per-trial applies to --backend ray only"),
        ({"executor": "optuna", "ray_address": "auto"}, "--ray-address applies to --backend ray only"),
        ({"gpus_per_trial": -1}, "--gpus-per-trial must be 0 or more"),
        ({"cpus_per_trial": 0}, "--cpus-per-trial must be above 0"),
        ({"concurrent": 0}, "--concurrent must be at least 1"),
    ],
)
def test_bad_ray_flags_are_refused_by_the_settings(flags, words):
    settings = SearchSettings(parents=["a", "b"], benchmarks=["x"], **{"executor": "ray", **flags})
    with pytest.raises(EvomergeError, match=words.replace("(", r"\(").replace(")", r"\)")):
        settings.check()


def test_a_malformed_unreachable_or_client_address_is_refused_without_starting_ray():
    with pytest.raises(EvomergeError, match="expects auto or HOST:PORT"):
        check_address("nowhere")
    with pytest.raises(EvomergeError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        check_address("127.0.0.1:1")
    with pytest.raises(EvomergeError, match="Ray Client runs Ray Tune on the head node"):
        check_address("ray://head:10001")
    check_address("auto")  # resolved by ray.init itself


def test_old_studies_without_executor_fields_still_load():
    stored = json.dumps({"parents": ["a", "b"], "benchmarks": ["x"], "backend": "builtin", "trials": 5})
    settings = SearchSettings.from_json(stored)
    assert settings.executor == "optuna" and settings.gpus_per_trial is None and settings.concurrent is None


def test_asha_rungs_fall_on_the_benchmark_fractions():
    asha = make_scheduler(request(pruner="halving", fidelities=[0.25, 0.5, 1.0]))
    assert isinstance(asha, ASHAScheduler)
    # The resource a trial reports at fraction i is 3**i: rungs at 1 and 3 are fractions 0.25 and 0.5.
    assert [milestone for milestone, _ in asha._brackets[0]._rungs] == [9, 3, 1]
    assert asha._max_t == 9
    four = make_scheduler(request(pruner="halving", fidelities=[0.1, 0.2, 0.5, 1.0]))
    assert [milestone for milestone, _ in four._brackets[0]._rungs] == [27, 9, 3, 1]
    assert isinstance(make_scheduler(request(pruner="median")), MedianStoppingRule)
    assert isinstance(make_scheduler(request(pruner="none")), FIFOScheduler)
    assert isinstance(make_scheduler(request(fidelities=[1.0])), FIFOScheduler)
    assert isinstance(make_scheduler(request(benchmarks=["x", "y"])), FIFOScheduler)


# ----- the searcher's bookkeeping on a real study (no Ray cluster needed) -----------------------


def result(state, attrs, iteration, **metrics):
    """What a worker's TuneReporter sends, as Tune hands it to the searcher."""
    return {STATE: state, ATTRS: json.dumps(attrs), "training_iteration": iteration, PID: 4242, LOADS: 1, **metrics}


def test_the_searcher_records_pruned_failed_complete_and_duplicate_trials_as_the_optuna_backend(search_parents, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = settings_for(search_parents, tmp_path, trials=10)
    prepared = prepare(settings)
    study = create_or_load_study(settings, prepared.storage)
    seen = []
    loads = WorkerLoads(log=seen.append)
    searcher = StudySearch(
        prepared, num_layers=2, dtype_name="float32", timeout=None, on_trial=lambda s, t: seen.append(t.number), loads=loads, error_dir="ray-errors"
    )

    # Stopped by the scheduler after the first fraction: PRUNED, its report at the Optuna backend's step 1.
    config = searcher.suggest("a")
    recipe = Recipe.from_yaml(config["recipe"])
    assert recipe.merge_method == "slerp" and list(config) == ["recipe"]
    partial = result("running", {"merge_s": 0.1, "accuracy@0.25": 0.5, "score_s": 0.2}, 1, **{VALUE: 0.5, STEP: 1, RUNG: 1})
    searcher.on_trial_result("a", partial)
    searcher.on_trial_complete("a", result=partial)
    pruned = study.trials[0]
    assert pruned.state == TrialState.PRUNED and pruned.intermediate_values == {1: 0.5} and pruned.value == 0.5
    assert pruned.user_attrs["accuracy@0.25"] == 0.5 and "accuracy" not in pruned.user_attrs
    assert trial_attr(pruned, "recipe") == config["recipe"]
    assert loads.by_pid == {4242: 1} and "pid 4242 loaded the parents" in seen[0]

    # A worker process that died: FAIL with a reason pointing at Ray's error file.
    searcher.suggest("b")
    searcher.on_trial_complete("b", error=True)
    failed = study.trials[1]
    assert failed.state == TrialState.FAIL and "the Ray trial errored" in failed.user_attrs["fail_reason"]

    # An exception in the trial (reported by the worker): FAIL with its own reason.
    searcher.suggest("c")
    searcher.on_trial_complete("c", result=result("fail", {"fail_reason": "ValueError: epsilon"}, 1, **{VALUE: float("nan")}))
    assert study.trials[2].state == TrialState.FAIL and study.trials[2].user_attrs["fail_reason"] == "ValueError: epsilon"

    # Complete: the final result's value; its attributes written once although Tune hands it twice.
    searcher.suggest("d")
    final = result("complete", {"accuracy": 0.75, "accuracy@1.0": 0.75}, 3, **{VALUE: 0.75, RUNG: 9})
    searcher.on_trial_result("d", final)
    searcher.on_trial_complete("d", result=final)
    complete = study.trials[3]
    assert complete.state == TrialState.COMPLETE and complete.value == 0.75 and complete.user_attrs["accuracy"] == 0.75

    # The same recipe again is answered in the driver, without a Ray trial, and the next is asked.
    study.enqueue_trial(complete.params)
    config = searcher.suggest("e")
    duplicate, fresh = study.trials[4], study.trials[5]
    assert duplicate.state == TrialState.COMPLETE and duplicate.user_attrs["duplicate_of"] == 3 and duplicate.value == 0.75
    assert "merge_s" not in duplicate.user_attrs
    assert fresh.state == TrialState.RUNNING and trial_attr(fresh, "recipe") == config["recipe"]
    assert seen[1:] == [0, 1, 2, 3, 4]  # the progress callback saw every finished trial

    # Ctrl-C: what is in flight is failed with the Optuna backend's reason.
    assert searcher.abandon("interrupted (Ctrl-C)") == 1
    assert study.trials[5].state == TrialState.FAIL and study.trials[5].user_attrs["fail_reason"] == "interrupted (Ctrl-C)"


def test_the_searcher_asks_no_more_than_the_study_total(search_parents, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = settings_for(search_parents, tmp_path, trials=2)
    prepared = prepare(settings)
    create_or_load_study(settings, prepared.storage)
    searcher = StudySearch(prepared, num_layers=2, dtype_name="float32", timeout=None, on_trial=None, loads=WorkerLoads(), error_dir="x")
    searcher.suggest("a")
    searcher.suggest("b")
    assert searcher.suggest("c") is None, "two running trials fill the total: wait, one may fail"
    searcher.on_trial_complete("a", error=True)
    assert searcher.suggest("c") is not None, "a failure leaves room for another trial"
    for trial_id in ("b", "c"):
        searcher.on_trial_complete(trial_id, result=result("complete", {}, 1, **{VALUE: 0.5}))
    assert searcher.suggest("d") == Searcher.FINISHED


def test_the_searcher_hands_out_each_grid_point_once_and_ends_with_the_grid(search_parents, tmp_path, monkeypatch):
    """Optuna's grid sampler gives a point that is still running to another trial once every point
    has started, and stops the study (allowed only inside study.optimize) when the grid is done:
    on Ray the searcher waits instead, and finishes cleanly."""
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, "method: slerp\nparameters:\n  t: {low: 0, high: 1, step: 0.5}\n")
    settings = settings_for(search_parents, tmp_path, space=space, sampler="grid", trials=5, fidelities=[1.0])
    prepared = prepare(settings)
    study = create_or_load_study(settings, prepared.storage, prepared.grid)
    searcher = StudySearch(prepared, num_layers=2, dtype_name="float32", timeout=None, on_trial=None, loads=WorkerLoads(), error_dir="x")
    for trial_id in "abc":
        assert searcher.suggest(trial_id) is not None
    assert searcher.suggest("d") is None, "every grid point is running: wait"
    for trial_id in "abc":
        searcher.on_trial_complete(trial_id, result=result("complete", {}, 1, **{VALUE: 0.5}))
    assert searcher.suggest("d") == Searcher.FINISHED
    assert sorted(t.params["t"] for t in study.trials) == [0.0, 0.5, 1.0]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)


# ----- bad Ray input on the command line (before any Ray starts in this module) -----------------


def cli_search(parents, *extra):
    args = ["search", "--parents", f"{parents['instruct']},{parents['child']}", "--benchmark", str(parents["benchmark"]), "--trials", "2", *extra]
    return CliRunner().invoke(app, [str(a) for a in args])


GPU_ON_A_CPU_CLUSTER = ["--backend", "ray", "--gpus-per-trial", "1"]  # bad input only where there is no GPU


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--backend", "ray", "--jobs", "2"], ["--jobs", "--concurrent"]),
        (GPU_ON_A_CPU_CLUSTER, ["--gpus-per-trial 1, but the Ray cluster has 0 GPU(s)"]),
        (["--backend", "ray", "--ray-address", "127.0.0.1:1"], ["cannot reach the Ray cluster at 127.0.0.1:1"]),
        (["--backend", "ray", "--ray-address", "somewhere"], ["--ray-address expects"]),
        (["--backend", "ray", "--ray-address", "ray://head:10001"], ["Ray Client", "--ray-address auto"]),
        (["--backend", "dask"], ["unknown --backend 'dask'"]),
        (["--gpus-per-trial", "1"], ["applies to --backend ray only"]),  # a flag check: wrong on any machine
    ],
)
def test_bad_ray_input_is_one_clean_line_exit_2_and_no_study(extra, words, search_parents, tmp_path, monkeypatch):
    import torch

    if extra == GPU_ON_A_CPU_CLUSTER and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --gpus-per-trial 1 is valid here")
    monkeypatch.chdir(tmp_path)
    result = cli_search(search_parents, *extra)
    assert_clean_error(result, *words)
    assert not (tmp_path / "results").exists(), "a study folder was created"


# ----- real searches on a local Ray with 2 CPUs -------------------------------------------------


@pytest.mark.slow
def test_command_line_search_on_ray_then_export_and_ctrl_c_keeps_the_study_consistent(search_parents, tmp_path):
    """`evomerge search --backend ray` as a user runs it (Ray started and shut down by the
    command), `evomerge export` on its study, then the same command with more trials interrupted
    by Ctrl-C (SIGINT to the process group, as a terminal sends it): exit 130, nothing left running."""
    command = EVOMERGE + [
        "search", "--parents", f"{search_parents['instruct']},{search_parents['child']}",
        "--benchmark", str(search_parents["benchmark"]), "--protocol", "loglik", "--study", "cli",
        "--backend", "ray", "--cpus-per-trial", "1", "--concurrent", "2",
    ]  # fmt: skip
    temp_before = set(os.listdir(tempfile.gettempdir()))
    done = subprocess.run(command + ["--trials", "4"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "Study cli" in done.stdout and "best found (trial" in done.stdout and "held-out (n=" in done.stdout
    assert "loaded the parents (load 1 in that process)" in done.stderr
    assert "Traceback" not in done.stderr and "Configuration for experiment" not in done.stdout + done.stderr
    assert not {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("evomerge-ray-")} - temp_before, "Ray's temp dir was left"
    folder = tmp_path / "results" / "cli"
    for name in ("best-recipe.yaml", "trials.csv", "summary.json", "history.png"):
        assert (folder / name).is_file(), name
    storage = f"sqlite:///{folder / 'study.db'}"
    study = optuna.load_study(study_name="cli", storage=storage)
    assert finished_count(study) == 4 and not study.get_trials(states=(TrialState.RUNNING,))
    assert SearchSettings.from_json(study.user_attrs[SETTINGS_ATTR]).executor == "ray"
    joined = join_study("cli", storage)  # what `evomerge worker` reads: trials in its own process
    assert joined.executor == "optuna" and joined.concurrent is None
    joined.check()

    exported = CliRunner().invoke(app, ["export", "--study", "cli", "--storage", storage, "--rank", "2", "--out", str(tmp_path / "second.yaml")])
    assert exported.exit_code == 0, exported.output
    assert Recipe.from_yaml((tmp_path / "second.yaml").read_text()).merge_method == "slerp"

    process = subprocess.Popen(command + ["--trials", "80"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            with sqlite3.connect(folder / "study.db") as db:
                # Interrupt while trials run on the workers, once some have finished (complete or pruned).
                counts = dict(db.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())
                if counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) >= 6 and counts.get("RUNNING", 0):
                    break
            time.sleep(0.5)
        assert process.poll() is None, "the run ended before it could be interrupted"
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, err[-3000:]
    assert "Interrupted" in err and "Traceback" not in err
    study = optuna.load_study(study_name="cli", storage=storage)
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING)), "a trial was left running"
    for trial in study.get_trials(states=(TrialState.FAIL,)):
        assert trial.user_attrs["fail_reason"] == "interrupted (Ctrl-C)"
    assert 6 <= finished_count(study) < 80
    counts = json.loads((folder / "summary.json").read_text())["trials"]
    assert counts.get("complete", 0) + counts.get("pruned", 0) >= 6


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray with 2 CPUs for the module's searches (a RaySession uses it and leaves it up)."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="evomerge-ray-test-")
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, _temp_dir=temp_dir, logging_level="ERROR")
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def ray_search(settings, work, log=None):
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        with RaySession(settings) as session:
            prepared = prepare(settings, preflight=session.start)
            study, runner = optimise_on_ray(prepared, session, log=log or (lambda line: None))
            holdout = score_holdout(study, runner)
    return study, runner, holdout


@pytest.fixture(scope="module")
def six(local_ray, search_parents, tmp_path_factory):
    """A 6-trial Ray search (2 at once, 1 CPU each), and the same settings on the Optuna backend."""
    folder = tmp_path_factory.mktemp("ray-six")
    settings = settings_for(search_parents, folder, trials=6, holdout=0.2, concurrent=2, study="six", storage=f"sqlite:///{folder}/six.db")
    lines: list[str] = []
    start = time.perf_counter()
    study, runner, holdout = ray_search(settings, folder, log=lines.append)
    seconds = time.perf_counter() - start
    reference_settings = SearchSettings(
        **{**settings.__dict__, "executor": "optuna", "concurrent": None, "cpus_per_trial": 1.0, "trials": 3, "device": "cpu", "study": "ref"}
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        reference, reference_runner = optimise(prepare(reference_settings))
        score_holdout(reference, reference_runner)
    print(f"\n6-trial Ray search: {seconds:.1f} s; {lines[-1]}")
    return {
        "study": study,
        "runner": runner,
        "holdout": holdout,
        "lines": lines,
        "reference": reference,
        "settings": settings,
        "folder": folder,
        "steps": [reference_runner.objectives[0].benchmark.count(f) for f in settings.fidelities[:-1]],
    }


@pytest.mark.slow
def test_a_ray_search_reaches_its_total_with_nothing_left_running(six):
    study = six["study"]
    assert finished_count(study) == 6
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert SearchSettings.from_json(study.user_attrs[SETTINGS_ATTR]).executor == "ray"


@pytest.mark.slow
def test_ray_trials_carry_the_same_attributes_as_the_optuna_backends(six):
    study, reference, steps = six["study"], six["reference"], six["steps"]
    assert set(study.user_attrs) == set(reference.user_attrs) == {SETTINGS_ATTR, FINGERPRINTS_ATTR, "holdout_scores"}
    assert stored_parent_scores(study) == stored_parent_scores(reference), "the parents scored alike on a worker"
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        if "duplicate_of" in trial.user_attrs:
            continue
        expected = COMPLETE_ATTRS | ({"baseline", "baseline_child"} if trial.number == 0 else set())
        assert set(trial.user_attrs) == expected, trial.number
        assert TRIAL_DATA <= set(trial.system_attrs), trial.number
        assert trial.value == trial.user_attrs["accuracy"] == trial.user_attrs["accuracy@1.0"]
        assert set(trial.intermediate_values) == set(steps), "reported at the Optuna backend's steps: the items scored"
        assert set(trial.params) == set(reference.trials[0].params)
    for trial in study.get_trials(states=(TrialState.PRUNED,)):
        assert "accuracy" not in trial.user_attrs and trial.user_attrs["score_s"] > 0
        assert set(trial.intermediate_values) in ({steps[0]}, set(steps))
    reference_complete = [t for t in reference.get_trials(states=(TrialState.COMPLETE,)) if "duplicate_of" not in t.user_attrs]
    assert all(set(t.user_attrs) == COMPLETE_ATTRS | ({"baseline", "baseline_child"} if t.number == 0 else set()) for t in reference_complete)


@pytest.mark.slow
def test_the_papers_recipe_is_trial_zero_and_scores_as_on_the_optuna_backend(six):
    ray_zero, optuna_zero = six["study"].trials[0], six["reference"].trials[0]
    assert ray_zero.user_attrs["baseline"] and optuna_zero.user_attrs["baseline"]
    for key in ("recipe", "recipe_key", "accuracy", "correct", "per_category", "gain", "synergy", "accuracy@0.25", "accuracy@0.5"):
        assert trial_attr(ray_zero, key) == trial_attr(optuna_zero, key) is not None, key
    assert ray_zero.params == optuna_zero.params and ray_zero.values == optuna_zero.values
    assert ray_zero.intermediate_values == optuna_zero.intermediate_values


@pytest.mark.slow
def test_parents_are_loaded_once_per_worker_process(six):
    loads = six["runner"].loads.by_pid
    assert loads and all(count == 1 for count in loads.values()), loads
    # The parents' scoring task, at most two trial actors (2 at once), the held-out task: not one per trial.
    assert len(loads) <= 1 + 2 + 1
    assert sum("loaded the parents (load 1 in that process)" in line for line in six["lines"]) == len(loads)
    assert any(line.startswith("Ray: ") and "trial(s) ran; parents loaded" in line for line in six["lines"])


@pytest.mark.slow
def test_the_held_out_score_and_export_work_unchanged(six):
    holdout = six["holdout"]
    best = six["study"].best_trial
    assert holdout["trial"] == best.number and holdout["holdout_n"] > 0
    assert six["study"].user_attrs["holdout_scores"] == holdout
    # The parents' held-out per-item results come back from the Ray task that scored them, so the
    # held-out gain gets its paired interval and verdict on this backend too.
    low, high = holdout["gain_interval"]
    assert low <= holdout["gain"] <= high and holdout["verdict"].startswith(("Gain:", "Loss:", "No gain shown:"))
    summary = export_all(six["study"], six["folder"] / "export")
    reference_summary = export_all(six["reference"], six["folder"] / "export-ref")
    assert set(summary) == set(reference_summary)
    assert summary["parents"] == reference_summary["parents"] and summary["baseline_accuracy"] == reference_summary["baseline_accuracy"]
    for name in ("best-recipe.yaml", "trials.csv", "summary.json", "history.png"):
        assert (six["folder"] / "export" / name).is_file()


@pytest.mark.slow
def test_asha_stops_a_hopeless_recipe_after_the_first_fraction(local_ray, search_parents, tmp_path):
    """As the Optuna backend's pruning test: recipes equal to the child (a filter that matches no
    tensor only changes the recipe key) score 1/4 on the first quarter of the items under the
    paper's protocol; t=0.5 scores 0 there, below ASHA's cutoff, and is stopped: PRUNED."""
    space = write_space(
        tmp_path,
        "method: slerp\nparameters:\n  t:\n    filters:\n      no_such_tensor: {low: 0, high: 1, step: 0.1}\n    default: {low: 0, high: 1, step: 0.1}\n",
    )
    settings = settings_for(search_parents, tmp_path, space=space, protocol="paper", trials=4, concurrent=2)
    seeded = create_or_load_study(settings, optuna.storages.RDBStorage(settings.storage))
    for inert, t in ((0.0, 1.0), (0.1, 1.0), (0.2, 1.0), (0.3, 0.5)):
        seeded.enqueue_trial({"t.no_such_tensor": inert, "t.default": t})
    study, _, _ = ray_search(settings, tmp_path)
    pruned = next(trial for trial in study.trials if trial.params["t.default"] == 0.5)
    assert pruned.state == TrialState.PRUNED, f"t=0.5 scores 0 < 1/4 at fraction 0.25: {pruned.state}"
    assert pruned.user_attrs["accuracy@0.25"] == 0.0 and pruned.intermediate_values == {4: 0.0}  # a quarter of the 16 items
    assert "accuracy" not in pruned.user_attrs and "accuracy@0.5" not in pruned.user_attrs
    assert pruned.user_attrs["score_s"] > 0
    assert all(trial.user_attrs["accuracy@0.25"] == 0.25 for trial in study.trials[:3])
    assert finished_count(study) == 4


@pytest.mark.slow
def test_failing_trials_fail_alone_and_the_run_goes_on(local_ray, search_parents, tmp_path):
    """mergekit's della raises on a worker when density ± epsilon leaves (0, 1) (density 0.05); a
    density of 1.5 cannot even make a recipe (refused in the driver). Both are failed trials with
    their reasons; the two good densities complete the study."""
    settings = settings_for(search_parents, tmp_path, space=write_space(tmp_path, DELLA), sampler="random", trials=2, fidelities=[1.0], concurrent=2)
    seeded = create_or_load_study(settings, optuna.storages.RDBStorage(settings.storage))
    for density in (0.05, 1.5, 0.5, 0.3):
        seeded.enqueue_trial({"density.m0": density, "density.m1": density})
    study, runner, _ = ray_search(settings, tmp_path)
    failed = {trial.params["density.m0"]: trial for trial in study.get_trials(states=(TrialState.FAIL,))}
    assert set(failed) == {0.05, 1.5}, [(t.number, t.state.name, t.params, t.user_attrs.get("fail_reason")) for t in study.trials]
    assert "epsilon" in failed[0.05].user_attrs["fail_reason"].lower(), failed[0.05].user_attrs["fail_reason"]
    assert "density" in failed[1.5].user_attrs["fail_reason"], failed[1.5].user_attrs["fail_reason"]
    assert sorted(t.params["density.m0"] for t in study.get_trials(states=(TrialState.COMPLETE,))) == [0.3, 0.5]
    assert "stopped_because" not in study.user_attrs
    assert all(count == 1 for count in runner.loads.by_pid.values()), "a failed trial does not cost its worker the parents"


@pytest.mark.slow
def test_an_optuna_backend_study_is_continued_on_ray(six, local_ray, tmp_path):
    """The reference study (3 trials, Optuna backend) continued to 5 with --backend ray: the parents
    are not scored again (a marker in their stored scores survives) and the paper's recipe is not
    queued twice."""
    shutil.copy(six["folder"] / "six.db", tmp_path / "six.db")
    storage = f"sqlite:///{tmp_path}/six.db"
    copy = optuna.load_study(study_name="ref", storage=storage)
    marked = stored_parent_scores(copy)
    for scores in marked.values():
        scores[0]["fidelity"]["1.0"] = 0.015625
    set_parent_scores(copy, marked)
    before = len(copy.trials)
    settings = SearchSettings(**{**six["settings"].__dict__, "study": "ref", "storage": storage, "trials": 5})
    study, runner, _ = ray_search(settings, six["folder"])
    assert stored_parent_scores(study) == marked, "the parents were scored again on resume"
    assert finished_count(study) == 5 and len(study.trials) > before
    assert sum(bool(t.user_attrs.get("baseline")) for t in study.trials) == 1
    for trial in study.trials[before:]:
        if trial.state == TrialState.COMPLETE and "duplicate_of" not in trial.user_attrs:
            assert trial.user_attrs["gain"] == pytest.approx(trial.user_attrs["accuracy"] - 0.015625)

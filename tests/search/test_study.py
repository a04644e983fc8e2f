"""study.py's small pieces the dashboard relies on: metric names, and where a trial's long values
are kept (system attributes) and read back from (either place: older studies have them as user
attributes). Real Optuna studies in memory."""

from __future__ import annotations

import optuna
import pytest

from evomerge.search.study import SearchSettings, is_trial_data, metric_names, set_trial_attr, trial_attr, trial_data


def settings(**values) -> SearchSettings:
    return SearchSettings(**{"parents": ["a", "b"], "benchmarks": ["domain"], **values})


@pytest.mark.parametrize(
    "values, names",
    [
        ({}, ["accuracy"]),
        ({"objective": "gain"}, ["gain"]),
        ({"benchmarks": ["d", "g"], "sampler": "nsga2"}, ["domain accuracy", "general accuracy"]),
        ({"benchmarks": ["d", "g"], "sampler": "nsga2", "objective": "gain"}, ["domain gain", "general accuracy"]),
    ],
)
def test_metric_names_say_what_the_values_are(values, names):
    assert metric_names(settings(**values)) == names


def test_long_values_are_system_attributes_of_an_optuna_trial_and_read_back_from_either_place():
    assert [key for key in ("recipe", "correct", "correct_b1", "per_category", "per_category_b2", "accuracy", "gain", "correctly") if is_trial_data(key)] == [
        "recipe",
        "correct",
        "correct_b1",
        "per_category",
        "per_category_b2",
    ]
    study = optuna.create_study()
    trial = study.ask()
    for key, value in (("recipe", "merge_method: slerp\n"), ("correct", "0110"), ("accuracy", 0.5)):
        set_trial_attr(trial, key, value)
    study.tell(trial, 0.5)
    frozen = study.trials[0]
    assert frozen.user_attrs == {"accuracy": 0.5}
    assert trial_data(frozen) == {"recipe": "merge_method: slerp\n", "correct": "0110"}
    assert trial_attr(frozen, "correct") == "0110" and trial_attr(frozen, "accuracy") == 0.5
    older = optuna.trial.create_trial(value=0.1, user_attrs={"recipe": "old", "correct": "1"})
    assert trial_attr(older, "recipe") == "old" and trial_data(older) == {"recipe": "old", "correct": "1"}


def test_anything_else_that_records_gets_every_attribute_as_given():
    class Recorder:
        def __init__(self):
            self.attrs = {}

        def set_user_attr(self, key, value):
            self.attrs[key] = value

    recorder = Recorder()
    set_trial_attr(recorder, "correct", "01")  # the Ray reporter: the driver sorts them out
    assert recorder.attrs == {"correct": "01"}


# ----- a running trial names its process from its first instant ------------------------------

KILLED_RIGHT_AFTER_ASK = """
import os, signal, sys
import optuna
from evomerge.search.study import open_storage
study = optuna.load_study(study_name="s", storage=open_storage(sys.argv[1]))
study.ask()  # the trial is running; nothing else has been written for it
os.kill(os.getpid(), signal.SIGKILL)
"""


# (a journal names a queued trial a moment after taking it, not in the same write)
@pytest.mark.parametrize("scheme, queued", [("sqlite", False), ("sqlite", True), ("journal", False)], ids=["sqlite-new", "sqlite-queued", "journal-new"])
def test_a_process_killed_right_after_ask_leaves_a_trial_a_rerun_fails_at_once(tmp_path, scheme, queued):
    """`kill -9` between `study.ask` and the objective's first write (the instant a test that
    waits for a running trial kills at): the trial already names its dead process, so a rerun
    fails it at once instead of counting it as taken for the heartbeat's grace period."""
    import subprocess
    import sys

    from optuna.trial import TrialState

    from evomerge.search.run import fail_orphaned_trials
    from evomerge.search.study import WORKER_ATTR, open_storage

    url = f"sqlite:///{tmp_path}/study.db" if scheme == "sqlite" else f"journal:{tmp_path}/journal.log"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    if queued:
        study.enqueue_trial({"x": 0.5})
    killed = subprocess.run([sys.executable, "-c", KILLED_RIGHT_AFTER_ASK, url], cwd=tmp_path)
    assert killed.returncode == -9
    study = optuna.load_study(study_name="s", storage=open_storage(url))
    (trial,) = study.get_trials(states=(TrialState.RUNNING,))
    assert WORKER_ATTR in trial.user_attrs
    assert fail_orphaned_trials(study) == 1
    assert study.get_trials(states=(TrialState.FAIL,))[0].number == trial.number

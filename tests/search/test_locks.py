"""The study lock and the recipe claim: an identical recipe is evaluated once, whatever the timing.

Processes race for real here: several Python processes, started at one instant, propose the same
recipe on one storage; exactly one may claim it and the others must copy its outcome.
"""

import socket
import subprocess
import sys
import textwrap
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from evomerge.search.locks import study_lock
from evomerge.search.objective import CLAIM_ATTR, claim_recipe, recipe_key
from evomerge.search.study import open_storage

RECIPE = "merge_method: slerp\n"

RACER = textwrap.dedent(
    """
    import os, sys, time, warnings
    import optuna
    from evomerge.search.objective import claim_recipe
    from evomerge.search.study import open_storage

    url, go, out = sys.argv[1], sys.argv[2], sys.argv[3]
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")  # heartbeats outside optimize()
    study = optuna.load_study(study_name="race", storage=open_storage(url))
    trial = study.ask()
    while not os.path.exists(go):  # every racer starts its claim at the same instant
        time.sleep(0.001)
    original = claim_recipe(trial, {recipe!r}, url)
    if original is None:
        time.sleep(1.0)  # evaluating: the others must wait for this, not evaluate too
        study.tell(trial, 0.5)
        verdict = "evaluated"
    else:
        study.tell(trial, original.value)
        verdict = f"copied {{original.number}}"
    with open(out, "w") as handle:
        handle.write(verdict)
    """
).format(recipe=RECIPE)


def race(url: str, tmp_path, racers: int = 4) -> list[str]:
    optuna.create_study(study_name="race", storage=open_storage(url), direction="maximize")
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    go = tmp_path / "go"
    outs = [tmp_path / f"out{index}" for index in range(racers)]
    processes = [subprocess.Popen([sys.executable, str(script), url, str(go), str(out)]) for out in outs]
    time.sleep(8)  # each has imported optuna and asked for its trial (the claim waits for "go" regardless)
    go.touch()
    for process in processes:
        assert process.wait(timeout=120) == 0
    return [out.read_text() for out in outs]


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_processes_proposing_one_recipe_at_once_evaluate_it_once(kind, tmp_path):
    url = f"sqlite:///{tmp_path}/study.db" if kind == "sqlite" else f"journal:{tmp_path}/journal.log"
    verdicts = race(url, tmp_path)
    assert verdicts.count("evaluated") == 1, verdicts
    study = optuna.load_study(study_name="race", storage=open_storage(url))
    evaluator = next(t for t in study.trials if CLAIM_ATTR in t.user_attrs)
    assert sorted(verdicts) == sorted(["evaluated"] + [f"copied {evaluator.number}"] * 3)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)


def test_a_waiter_claims_the_recipe_when_its_evaluator_fails(tmp_path):
    url = f"sqlite:///{tmp_path}/study.db"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    first, second = study.ask(), study.ask()
    assert claim_recipe(first, RECIPE, url) is None
    outcome = {}
    waiter = threading.Thread(target=lambda: outcome.update(result=claim_recipe(second, RECIPE, url)))
    waiter.start()
    time.sleep(1.5)
    assert waiter.is_alive(), "the second trial must wait while the first evaluates"
    study.tell(first, state=TrialState.FAIL)
    waiter.join(timeout=30)
    assert not waiter.is_alive() and outcome["result"] is None, "the waiter claims the recipe itself"


def test_a_waiter_copies_the_finished_evaluation(tmp_path):
    url = f"journal:{tmp_path}/journal.log"
    study = optuna.create_study(study_name="s", storage=open_storage(url), direction="maximize")
    first, second = study.ask(), study.ask()
    assert claim_recipe(first, RECIPE, url) is None
    threading.Timer(1.0, lambda: study.tell(first, 0.25)).start()
    original = claim_recipe(second, RECIPE, url)
    assert original is not None and original.number == first.number and original.value == 0.25


def test_a_claim_held_by_a_dead_process_is_taken_over(tmp_path):
    """Without heartbeats (a journal file), a claim whose process on this machine has gone does
    not block the recipe forever: its trial is failed and the recipe claimed again."""
    url = f"journal:{tmp_path}/journal.log"
    study = optuna.create_study(study_name="s", storage=open_storage(url), direction="maximize")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan, fresh = study.ask(), study.ask()
    orphan.set_user_attr("recipe_key", recipe_key(RECIPE))
    orphan.set_user_attr(CLAIM_ATTR, f"{socket.gethostname()}:{dead.pid}")
    assert claim_recipe(fresh, RECIPE, url) is None
    assert study.trials[orphan.number].state == TrialState.FAIL


def test_the_lock_has_one_holder_at_a_time_per_study(tmp_path):
    url = f"sqlite:///{tmp_path}/study.db"
    inside, overlaps = [], []

    def hold():
        with study_lock(url, "s"):
            inside.append(1)
            if len(inside) > 1:
                overlaps.append(1)
            time.sleep(0.05)
            inside.pop()

    threads = [threading.Thread(target=hold) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not overlaps
    with study_lock(url, "other"), study_lock(url, "s"):  # different studies do not block each other
        pass

"""Studies shared by several processes: a journal file, a real PostgreSQL server, kill -9 and resume.

The PostgreSQL server is a real one from Debian's packages (installed here when missing and
running as root, as in CI), started on loopback in a temporary folder for the session.
"""

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from evomerge.search.study import finished_count, stored_parent_scores

EVOMERGE = [sys.executable, "-m", "evomerge.cli"]


def search_command(parents, study, trials, storage=None, extra=()):
    command = EVOMERGE + [
        "search",
        "--parents",
        f"{parents['instruct']},{parents['child']}",
        "--benchmark",
        str(parents["benchmark"]),
        "--trials",
        str(trials),
        "--study",
        study,
        "--protocol",
        "loglik",
        "--holdout",
        "0",
    ]
    if storage:
        command += ["--storage", storage]
    return command + list(extra)


def run(command, cwd, env=None, timeout=600):
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def assert_exactly(study, total):
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    numbers = [t.number for t in study.trials]
    assert len(finished) == total, [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in study.trials]
    assert len(numbers) == len(set(numbers)), "a trial number appears twice"
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert not running, "no trial may be left running"
    evaluated = [t for t in finished if "duplicate_of" not in t.user_attrs]
    keys = [t.user_attrs["recipe_key"] for t in evaluated]
    assert len(keys) == len(set(keys)), "an identical recipe was evaluated twice"


def test_two_workers_on_a_journal_file_record_exactly_the_trials_asked(search_parents, tmp_path):
    run(search_command(search_parents, "journal", 10, "journal:results/journal/journal.log", ["--jobs", "2"]), tmp_path)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "results/journal/journal.log")))
    study = optuna.load_study(study_name="journal", storage=storage)
    assert_exactly(study, 10)
    assert (tmp_path / "results/journal/best-recipe.yaml").is_file()


def test_kill_9_loses_nothing_and_rerunning_continues(search_parents, tmp_path):
    env = dict(os.environ, EVOMERGE_HEARTBEAT_S="1")
    command = search_command(search_parents, "crash", 12, extra=["--protocol", "paper"])
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"sqlite:///{tmp_path}/results/crash/study.db"
    deadline = time.time() + 300
    complete = 0
    while time.time() < deadline and complete < 3:
        time.sleep(0.5)
        try:
            study = optuna.load_study(study_name="crash", storage=url)
            complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        except Exception:  # not created yet
            continue
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert complete >= 3, "the search did not get going before the deadline"
    before = {t.number: t.state for t in optuna.load_study(study_name="crash", storage=url).trials}
    time.sleep(3)  # longer than twice the heartbeat: the killed trial is stale now
    run(command, tmp_path, env=env)
    study = optuna.load_study(study_name="crash", storage=url)
    assert_exactly(study, 12)
    for number, state in before.items():
        if state == TrialState.COMPLETE:
            assert study.trials[number].state == TrialState.COMPLETE, "a finished trial was lost"
        if state == TrialState.RUNNING:
            assert study.trials[number].state == TrialState.FAIL, "the killed trial must be marked failed"


# ----- a real PostgreSQL server ---------------------------------------------------------------


def _postgres_bin() -> Path:
    """The folder of PostgreSQL's server programs. Tests do not install it: `.ci/run` does
    (`.ci/provision-postgres`, from Debian's packages); elsewhere these tests are skipped."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if os.environ.get("EVOMERGE_POSTGRES_BIN"):
        found = [os.path.join(os.environ["EVOMERGE_POSTGRES_BIN"], "initdb")]
    if not found or not os.path.isfile(found[-1]):
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL's initdb is missing: .ci/run installs it with .ci/provision-postgres")
        pytest.skip("PostgreSQL is not installed (run .ci/provision-postgres, or set EVOMERGE_POSTGRES_BIN)")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    bindir = _postgres_bin()
    data = Path(tempfile.mkdtemp(prefix="evomerge-pg-"))
    as_user = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(data, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run(as_user + [str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres"], check=True, capture_output=True)
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    subprocess.run(
        as_user + [str(bindir / "pg_ctl"), "-D", str(data / "db"), "-o", options, "-l", str(data / "log"), "-w", "start"], check=True, capture_output=True
    )
    yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "stop"], capture_output=True)
    shutil.rmtree(data, ignore_errors=True)


def test_a_worker_joins_a_postgres_study_from_its_storage_alone(search_parents, tmp_path, postgres_url):
    """Two machines' worth of processes on one PostgreSQL study: `search`, and a `worker` that
    knows only the study's name and storage. The search is paused (SIGSTOP) once the study is
    ready, until the worker has finished a trial of its own; then both run to the study's total.
    Each trial records which process ran it."""
    storage = optuna.storages.RDBStorage(postgres_url)  # the tables exist before either process starts
    # No trial goes stale while the search is paused (a stale trial would be failed under it).
    env = dict(os.environ, EVOMERGE_HEARTBEAT_S="300")
    first = subprocess.Popen(
        search_command(search_parents, "shared", 10, postgres_url), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    searched_by = f"{socket.gethostname()}:{first.pid}"

    def others(study) -> list:
        """Finished trials that a process other than the search ran."""
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        return [t for t in finished if "worker" in t.user_attrs and t.user_attrs["worker"] != searched_by]

    try:
        deadline = time.time() + 300
        ready = False
        while not ready and first.poll() is None and time.time() < deadline:  # the worker needs the study, its settings and parents' scores
            try:
                ready = stored_parent_scores(optuna.load_study(study_name="shared", storage=storage)) is not None
            except KeyError:  # not created yet
                time.sleep(0.1)
        if first.poll() is not None:
            out, err = first.communicate()
            pytest.fail(f"the search ended before the worker joined (exit {first.returncode}): {out[-2000:]}{err[-4000:]}")
        assert ready, "the search did not open its study before the deadline"
        os.kill(first.pid, signal.SIGSTOP)
        study = optuna.load_study(study_name="shared", storage=storage)
        assert finished_count(study) < 10, "the search finished every trial before it could be paused"
        other = tmp_path / "other-machine"
        other.mkdir()
        worker = subprocess.Popen(
            EVOMERGE + ["worker", "--study", "shared", "--storage", postgres_url], cwd=other, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            # Until the worker finished a trial (or ended, or waits on a lock the paused search
            # holds: then resuming the search frees it).
            deadline = time.time() + 120
            while worker.poll() is None and time.time() < deadline and not others(study):
                time.sleep(0.2)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        worker_out, worker_err = worker.communicate(timeout=600)
        assert worker.returncode == 0, worker_out[-2000:] + worker_err[-4000:]
        out, err = first.communicate(timeout=600)
        assert first.returncode == 0, out[-2000:] + err[-4000:]
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            first.kill()
            first.wait()
    study = optuna.load_study(study_name="shared", storage=storage)
    assert_exactly(study, 10)
    by_worker = others(study)
    assert by_worker, "the worker ran no trial"
    assert len({t.user_attrs["worker"] for t in by_worker}) == 1 and by_worker[0].user_attrs["worker"].startswith(f"{socket.gethostname()}:")
    evaluated = [t for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)) if "duplicate_of" not in t.user_attrs]
    assert all(t.user_attrs["worker"] in (searched_by, by_worker[0].user_attrs["worker"]) for t in evaluated)


def test_unreachable_postgres_fails_fast_with_one_line(search_parents, tmp_path):
    done = subprocess.run(
        search_command(search_parents, "nowhere", 4, "postgresql+psycopg2://nobody@127.0.0.1:1/none"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot open storage" in lines[0], done.stderr
    assert not (tmp_path / "results" / "nowhere").exists()

"""`evomerge search`, `spaces`, `export`, `worker` and `dashboard` as a user runs them: a real search
end to end, a rerun that continues the study, and one clean line (exit 2, no study) for bad input."""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from pathlib import Path

import optuna
import pytest
from cli_checks import assert_clean_error
from optuna.trial import TrialState
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.recipe import Recipe
from evomerge.search.study import finished_count, set_parent_scores, stored_parent_scores
from evomerge.toy.tiny import CHAT_TEMPLATE, make_checkpoint, tiny_config

runner = CliRunner()
SPACES = ("slerp_global", "slerp_gradient", "slerp_layerwise", "linear", "task_arithmetic", "ties", "dare_ties")
STUDY = "instruct-child-slerp_gradient"  # the default name: parents' folder names and the space
MARKER = 0.015625  # 1/64, printed as 0.016: no real score on 16 items


def write_items(path, count):
    """A small multiple-choice / true-false benchmark in two categories."""
    materials = ["silk", "nacre", "bone", "wood", "chitin", "keratin"]
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(count):
            if index % 4 == 3:
                item = {"id": f"tf{index}", "type": "tf", "question": f"{materials[index % 6]} is tough.", "answer": "True"}
            else:
                choices = [materials[(index + k) % 6] for k in range(4)]
                item = {"id": f"mc{index}", "type": "mc", "question": f"Which is {index}?", "choices": choices, "answer": "ABCD"[index % 4]}
            item["category"] = ["general", "specific"][index % 2]
            handle.write(json.dumps(item) + "\n")
    return path


@pytest.fixture(scope="module")
def search_parents(tmp_path_factory):
    """Tiny Llama parents (2 layers, char tokenizer) like tests/search's fixture, which this folder
    cannot see: an instruct model, a child perturbed from it, a third one, and two benchmarks."""
    root = tmp_path_factory.mktemp("cli-search-parents")
    config = tiny_config("llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, tie_word_embeddings=False)
    state = make_checkpoint(root / "instruct", config, seed=0, chat_template=CHAT_TEMPLATE)
    make_checkpoint(root / "child", config, seed=1, from_state=state, noise=0.5)
    make_checkpoint(root / "third", config, seed=2, from_state=state, noise=0.5)
    return {
        "instruct": root / "instruct",
        "child": root / "child",
        "third": root / "third",
        "benchmark": write_items(root / "bench.jsonl", 16),
        "general": write_items(root / "general.jsonl", 8),
    }


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def search_args(parents, *extra, trials=4):
    return [
        "search",
        "--parents",
        f"{parents['instruct']},{parents['child']}",
        "--benchmark",
        parents["benchmark"],
        "--protocol",
        "loglik",
        "--device",
        "cpu",
        "--trials",
        trials,
        *extra,
    ]


@pytest.fixture(scope="module")
def cli_study(search_parents, tmp_path_factory):
    """One search from the command line (default study name and storage), then the same command
    with a larger --trials. Between the two, the stored parent scores are replaced by a marker: a
    rerun that scored the parents again would overwrite it."""
    work = tmp_path_factory.mktemp("cli-search")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        first = invoke(*search_args(search_parents, trials=4))
        folder = work / "results" / STUDY
        storage = f"sqlite:///{folder / 'study.db'}"
        after_first = None
        if first.exit_code == 0:
            study = optuna.load_study(study_name=STUDY, storage=storage)
            after_first = {
                "finished": finished_count(study),
                "trials": len(study.trials),
                "states": [t.state for t in study.trials],
                "duplicates": sum("duplicate_of" in t.user_attrs for t in study.trials),
                "parent_scores": stored_parent_scores(study),
                "summary": json.loads((folder / "summary.json").read_text()),
            }
            marked = json.loads(json.dumps(stored_parent_scores(study)))
            for scores in marked.values():
                scores[0]["fidelity"]["1.0"] = MARKER
            set_parent_scores(study, marked)
            after_first["marked"] = marked
        second = invoke(*search_args(search_parents, trials=6))
    return {"work": work, "folder": folder, "storage": storage, "first": first, "second": second, "after_first": after_first}


def test_search_runs_end_to_end_prints_the_summary_and_writes_results(cli_study):
    first = cli_study["first"]
    assert first.exit_code == 0, (first.output, first.exception)
    out = first.stdout
    assert f"Study {STUDY}" in out
    # One row per parent, named by its path (which a narrow terminal may wrap after "parent").
    assert out.count("│ parent ") == 2, out
    assert "paper's recipe" in out and "best found (trial" in out
    assert "gain over the best parent" in out and "synergy over the parents' mean" in out
    assert "best on held-out items (n=" in out  # --holdout defaults to 0.2
    # The trial counts as the study holds them (rich may wrap the line on a narrow terminal).
    counts = re.search(r"Trials: (\d+) complete, (\d+) pruned, (\d+) failed, (\d+) duplicates not re-evaluated", " ".join(out.split()))
    assert counts, out
    states = cli_study["after_first"]["states"]
    expected = [states.count(TrialState.COMPLETE), states.count(TrialState.PRUNED), states.count(TrialState.FAIL), cli_study["after_first"]["duplicates"]]
    assert [int(n) for n in counts.groups()] == expected
    assert f"results/{STUDY}/" in out
    assert f"sqlite:///results/{STUDY}/study.db" in first.stderr  # where the study lives, and the dashboard hint
    assert cli_study["after_first"]["finished"] == 4
    summary = cli_study["after_first"]["summary"]
    assert summary["study"] == STUDY and summary["holdout"]["holdout_n"] > 0
    assert summary["trials"]["complete"] + summary["trials"]["pruned"] == 4
    assert summary["baseline_accuracy"] is not None


def test_rerunning_the_command_with_more_trials_continues_the_study(cli_study):
    second = cli_study["second"]
    assert second.exit_code == 0, (second.output, second.exception)
    study = optuna.load_study(study_name=STUDY, storage=cli_study["storage"])
    assert finished_count(study) == 6
    assert len(study.trials) > cli_study["after_first"]["trials"]
    assert stored_parent_scores(study) == cli_study["after_first"]["marked"], "the parents were scored again"
    assert sum(bool(t.user_attrs.get("baseline")) for t in study.trials) == 1
    # The rerun's summary and table are measured against the stored (marked) parent scores.
    summary = json.loads((cli_study["folder"] / "summary.json").read_text())
    assert set(summary["parents"].values()) == {MARKER}
    assert summary["trials"]["complete"] + summary["trials"]["pruned"] == 6
    assert f"{MARKER:.3f}" in second.stdout
    with open(cli_study["folder"] / "trials.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(study.trials)


def test_results_folder_holds_recipe_table_summary_and_plots(cli_study):
    folder = cli_study["folder"]
    for name in ("study.db", "best-recipe.yaml", "trials.csv", "summary.json", "history.png", "t-over-layers.png"):
        assert (folder / name).is_file(), name
    recipe = Recipe.load(folder / "best-recipe.yaml")
    recipe.to_mergekit()
    assert recipe.merge_method == "slerp" and all(Path(name).is_absolute() for name in recipe.model_names)


def test_export_command_writes_the_kth_best(cli_study, tmp_path, monkeypatch):
    """In a copy of the study's folder (other tests read the original's best recipe)."""
    folder = tmp_path / "results" / STUDY
    shutil.copytree(cli_study["folder"], folder)
    monkeypatch.chdir(tmp_path)
    best = folder / "best-recipe.yaml"
    best.unlink()
    result = invoke("export", "--study", STUDY)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name=STUDY, storage=cli_study["storage"])
    ranked = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: (-t.value, t.number))
    assert f"trial {ranked[0].number}" in result.stdout
    assert best.read_text().startswith(f"# evomerge study {STUDY}, trial {ranked[0].number}, rank 1")

    out = tmp_path / "second.yaml"
    result = invoke("export", "--study", STUDY, "--rank", 2, "--out", out, "--storage", cli_study["storage"])
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith(f"# evomerge study {STUDY}, trial {ranked[1].number}, rank 2")
    Recipe.load(out).to_mergekit()

    result = invoke("export", "--study", STUDY, "--rank", 2)
    assert result.exit_code == 0 and (folder / "rank-2.yaml").is_file()

    assert_clean_error(invoke("export", "--study", STUDY, "--rank", 99), "--rank 99 is out of range")
    assert_clean_error(invoke("export", "--study", "other", "--storage", cli_study["storage"]), "no study 'other'")


def test_export_without_a_study_database_is_a_clean_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_clean_error(invoke("export", "--study", "nothing"), "no study storage")
    assert not (tmp_path / "results").exists()


def test_worker_on_a_missing_study_is_a_clean_error(cli_study):
    assert_clean_error(invoke("worker", "--study", "nobody", "--storage", cli_study["storage"]), "no study 'nobody'")


def test_spaces_lists_all_seven_with_their_dimension():
    result = invoke("spaces")
    assert result.exit_code == 0, result.output
    rows = {}
    for line in result.stdout.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) > 4 and cells[1] in SPACES:
            rows[cells[1]] = cells
    assert set(rows) == set(SPACES), result.stdout
    assert rows["slerp_gradient"][2] == "slerp" and rows["slerp_gradient"][3] == "11"
    assert rows["slerp_global"][3] == "1"
    assert rows["slerp_layerwise"][3] == "17"
    assert rows["ties"][2] == "ties" and rows["ties"][3] == "2"


def test_dashboard_help_works_without_starting_a_server():
    result = invoke("dashboard", "--help")
    assert result.exit_code == 0
    assert "--storage" in result.output and "optuna-dashboard" in result.output


def bad_benchmark(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "q1", "type": "mc", "question": "Which?", "choices": ["a", "b"], "answer": "A"}\n{not json\n')
    return path


BAD_INPUTS = {
    "unknown space": (lambda p, t: ["--space", "slerp_gradiant"], ["unknown search space 'slerp_gradiant'"]),
    "unknown sampler": (lambda p, t: ["--sampler", "annealing"], ["unknown sampler 'annealing'"]),
    "unknown pruner": (lambda p, t: ["--pruner", "sometimes"], ["unknown pruner"]),
    "unknown objective": (lambda p, t: ["--objective", "speed"], ["unknown objective"]),
    "three parents for slerp": (lambda p, t: ["--parents", f"{p['instruct']},{p['child']},{p['third']}"], ["at most 2 parents, got 3"]),
    "base not among parents": (lambda p, t: ["--base", p["third"]], ["--base", "not one of --parents"]),
    "unsafe study name": (lambda p, t: ["--study", "../x"], ["'../x' is not a safe folder name"]),
    "zero trials": (lambda p, t: ["--trials", "0"], ["--trials must be at least 1"]),
    "decreasing fidelities": (lambda p, t: ["--fidelities", "0.5,0.25"], ["--fidelities must be increasing"]),
    "zero fidelity": (lambda p, t: ["--fidelities", "0,1"], ["(0, 1]"]),
    "fidelities not ending at 1": (lambda p, t: ["--fidelities", "0.25,0.5"], ["must end with 1"]),
    "fidelities not numbers": (lambda p, t: ["--fidelities", "a,b"], ["--fidelities expects"]),
    "holdout out of range": (lambda p, t: ["--holdout", "1.5"], ["--holdout must be in [0, 1)"]),
    "bad timeout": (lambda p, t: ["--timeout", "soon"], ["--timeout expects a duration"]),
    "missing parent folder": (lambda p, t: ["--parents", f"{p['instruct']},{t / 'no-such-model'}"], ["parent not found", "no-such-model"]),
    "same parent twice": (lambda p, t: ["--parents", f"{p['instruct']},{p['instruct']}"], ["lists a folder twice"]),
    "bad benchmark file": (lambda p, t: ["--benchmark", bad_benchmark(t)], ["bad.jsonl:2"]),
    "missing benchmark": (lambda p, t: ["--benchmark", t / "nothing.jsonl"], ["neither a shipped benchmark"]),
    "grid without steps": (lambda p, t: ["--sampler", "grid", "--space", space_without_step(t)], ["--sampler grid needs a step"]),
    "cmaes on two benchmarks": (
        lambda p, t: ["--benchmark", f"{p['benchmark']},{p['general']}", "--sampler", "cmaes"],
        ["multi-objective", "nsga2"],
    ),
    "malformed space file": (lambda p, t: ["--space", malformed_space(t)], ["space.yaml", "low (1.0) must be below high (0.0)"]),
}


def space_without_step(tmp_path):
    path = tmp_path / "nostep.yaml"
    path.write_text("method: slerp\nparameters:\n  t: {low: 0, high: 1}\n")
    return path


def malformed_space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("method: slerp\nparameters:\n  t: {low: 1, high: 0}\n")
    return path


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_clean_line_exit_2_and_no_study(case, search_parents, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_args, words = BAD_INPUTS[case]
    extra = make_args(search_parents, tmp_path)
    args = search_args(search_parents)
    # A later flag of the same name overrides the default one given above.
    result = invoke(*args, *extra)
    assert_clean_error(result, *words)
    assert not (tmp_path / "results").exists(), f"{case}: a study folder was created"
    assert not list(tmp_path.rglob("*.db")), f"{case}: a study database was created"


def test_unreachable_storage_fails_fast_with_one_line(search_parents, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    result = invoke(*search_args(search_parents, "--storage", "postgresql://nobody@127.0.0.1:1/none", "--study", "pg"))
    elapsed = time.perf_counter() - start
    assert_clean_error(result, "cannot open storage postgresql://nobody@127.0.0.1:1/none")
    assert elapsed < 30, f"took {elapsed:.1f} s to give up on an unreachable server"
    assert not (tmp_path / "results").exists()


LATE_ERRORS = {
    "no cuda": ["--device", "cuda"],
    "unknown device": ["--device", "tpu"],
    "unknown dtype": ["--dtype", "float8"],
    "holdout with an lm-eval task": ["--benchmark", "lm-eval:any_task", "--holdout", "0.2"],
}


@pytest.mark.parametrize("case", sorted(LATE_ERRORS))
def test_bad_device_dtype_or_holdout_is_refused_before_the_study_is_created(case, search_parents, tmp_path, monkeypatch):
    """Flags that cannot work are bad input like the others: one line, exit 2, nothing created."""
    import torch

    if case == "no cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --device cuda is valid here")
    monkeypatch.chdir(tmp_path)
    result = invoke(*search_args(search_parents, "--study", "late", *LATE_ERRORS[case]))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, f"SEARCH BUG: {case}: exit {result.exit_code} instead of a clean error (exit 2): {result.exception!r}"
    assert not (tmp_path / "results" / "late" / "study.db").exists() and len(lines) == 1, (
        f"SEARCH BUG: {case} is checked only after prepare() opened the storage, so results/late/study.db is "
        f"created and the progress output precedes the error:\n{result.stderr}"
    )
    assert lines[0].startswith("error:"), lines[0]

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

import evomerge
from evomerge.cli import app
from evomerge.recipe import Recipe
from evomerge.search.study import finished_count, set_parent_scores, stored_parent_scores, trial_attr
from evomerge.toy.tiny import CHAT_TEMPLATE, make_checkpoint, tiny_config

runner = CliRunner()
SPACES = tuple(space.name for space in evomerge.spaces())  # every shipped space (tests/test_space.py pins the list)
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
        third = invoke(*search_args(search_parents, trials=6))  # the study has its 6 already
    return {
        "third": third,
        "work": work,
        "folder": folder,
        "storage": storage,
        "first": first,
        "second": second,
        "after_first": after_first,
        "parents": [search_parents["instruct"], search_parents["child"]],
        "parents_bench": search_parents["benchmark"],
    }


def test_search_runs_end_to_end_prints_the_summary_and_writes_results(cli_study):
    first = cli_study["first"]
    assert first.exit_code == 0, (first.output, first.exception)
    out = first.stdout
    assert f"Study {STUDY}" in out
    # One row per parent, named by its folder (not its long path).
    assert "│ parent instruct " in out and "│ parent child " in out, out
    assert str(cli_study["work"]) not in out.split("Results:")[0], "a parent's long path in the table"
    assert "paper's recipe" in out and "best found (trial" in out
    assert "gain over the best parent" in out and "synergy over the parents' mean" in out
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


def table_row(out: str, name: str) -> list[str]:
    """The cells of the table row whose first cell starts with `name`."""
    for line in out.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) > 2 and cells[1].startswith(name):
            return cells[1:-1]
    raise AssertionError(f"no row {name!r} in:\n{out}")


def test_every_search_ends_with_the_held_out_scores_gain_interval_and_verdict(cli_study):
    """--holdout defaults to 0.2: the parents and the best recipe on the held-out items, the gain
    over the best parent with its paired 95% interval, and a verdict that never calls noise a gain,
    in the table, in summary.json and in the Python result."""
    out = cli_study["first"].stdout
    held = cli_study["after_first"]["summary"]["holdout"]
    n = held["holdout_n"]
    assert n > 0 and f"held-out (n={n})" in out
    assert "held-out items the search never saw, 95% CI" in " ".join(out.split())
    assert set(held["parents"]) == {str(p) for p in cli_study["parents"]}
    for parent, accuracy in held["parents"].items():
        assert table_row(out, f"parent {Path(parent).name}")[2] == f"{accuracy:.3f}"
    assert held["best_parent"] == max(held["parents"].values())
    assert held["gain"] == pytest.approx(held["holdout_accuracy"] - held["best_parent"])
    low, high = held["gain_interval"]
    assert low <= held["gain"] <= high
    best = table_row(out, "best found (trial")
    assert best[2] == f"{held['holdout_accuracy']:.3f} [{held['holdout_interval'][0]:.3f}, {held['holdout_interval'][1]:.3f}]"
    assert table_row(out, "gain over the best parent")[2] == f"{held['gain']:+.3f} [{low:+.3f}, {high:+.3f}]"
    verdicts = [line for line in out.splitlines() if line.startswith(("Gain:", "Loss:", "No gain shown:"))]
    assert verdicts == [held["verdict"]], out
    if low <= 0 <= high:
        assert held["verdict"].startswith("No gain shown:")  # noise is never a gain
    # The parents' held-out per-item results are kept with their scores (for the paired bootstrap).
    for scores in cli_study["after_first"]["parent_scores"].values():
        assert len(scores[0]["holdout_correct"]) == n


@pytest.mark.parametrize("split", ["holdout", "search", "all"])
def test_eval_split_scores_exactly_the_items_the_search_used(cli_study, split):
    """`eval --split` on a parent: the held-out items give the parent's held-out score the search
    stored, the search items its score on them, and all both."""
    parent = cli_study["parents"][0]
    result = invoke("eval", "--model", parent, "--benchmark", cli_study["parents_bench"], "--protocol", "loglik", "--device", "cpu", "--split", split, "--json")
    assert result.exit_code == 0, result.output
    scored = json.loads(result.stdout.strip().splitlines()[-1])
    stored = cli_study["after_first"]["parent_scores"][str(parent)][0]
    held = cli_study["after_first"]["summary"]["holdout"]
    expected = {
        "holdout": (held["holdout_n"], stored["holdout"]),
        "search": (len(stored["correct"]), stored["fidelity"]["1.0"]),
        "all": (16, None),
    }[split]
    assert scored["n"] == expected[0]
    if expected[1] is not None:
        assert scored["accuracy"] == pytest.approx(expected[1], abs=1e-12)


def test_eval_split_on_an_lm_eval_task_is_a_clean_error(search_parents):
    result = invoke("eval", "--model", search_parents["instruct"], "--benchmark", "lm-eval:any_task", "--split", "holdout", "--device", "cpu")
    assert_clean_error(result, "--split")


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


def test_rerunning_a_finished_study_says_it_is_complete(cli_study):
    third = cli_study["third"]
    assert third.exit_code == 0, third.output
    assert "study instruct-child-slerp_gradient is complete (6 trials); raise --trials to continue" in third.stderr
    assert "0/6" not in third.stderr
    study = optuna.load_study(study_name=STUDY, storage=cli_study["storage"])
    assert finished_count(study) == 6


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


def test_merging_an_exported_recipe_writes_a_card_with_the_study_and_its_scores(cli_study, tmp_path):
    """`evomerge merge` on a search's export: README.md names the study and the trial, the parents'
    and the merge's scores on the search and held-out items, the gain's interval and the verdict."""
    out = tmp_path / "merged"
    result = invoke("merge", cli_study["folder"] / "best-recipe.yaml", "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    card = (out / "README.md").read_text()
    summary = json.loads((cli_study["folder"] / "summary.json").read_text())
    held = summary["holdout"]
    assert f"evomerge study `{STUDY}`" in card and f"trial {summary['best_trial']}, rank 1" in card
    assert f"held-out items (n={held['holdout_n']})" in card
    assert f"| parent instruct | {summary['parents'][str(cli_study['parents'][0])]:.3f} | {held['parents'][str(cli_study['parents'][0])]:.3f} |" in card
    assert f"| this merge | {summary['best_accuracy']:.3f} | {held['holdout_accuracy']:.3f} [" in card
    assert held["verdict"] in card
    assert "merge_method: slerp" in card


def test_export_without_a_study_database_is_a_clean_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_clean_error(invoke("export", "--study", "nothing"), "no study storage")
    assert not (tmp_path / "results").exists()


def test_worker_on_a_missing_study_is_a_clean_error(cli_study):
    assert_clean_error(invoke("worker", "--study", "nobody", "--storage", cli_study["storage"]), "no study 'nobody'")


def test_spaces_lists_every_shipped_space_with_its_dimension():
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
    assert rows["della"][2] == "della" and rows["della"][3] == "3"


def test_spaces_for_given_parents_counts_their_layers_and_warns_of_inert_values(search_parents):
    """On the 2-layer fixture parents a gradient has 2 anchors (not 5), a group of 4 layers is one
    group, and TIES's (and DELLA's) one weighed weight is divided out by normalisation: said in a warning."""
    result = invoke("spaces", "--parents", f"{search_parents['instruct']},{search_parents['child']}")
    assert result.exit_code == 0, result.output
    rows = {cells[1]: cells for cells in ([c.strip() for c in line.split("│")] for line in result.stdout.splitlines()) if len(cells) > 4}
    assert "Dimensions for instruct, child: 2 layers, 2 parents" in result.stdout
    assert rows["slerp_gradient"][3] == "5" and rows["slerp_layerwise"][3] == "3" and rows["slerp_global"][3] == "1"
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    # The methods that normalise the weights by default (mergekit's specs): TIES and DELLA.
    assert sorted(line.split()[2].rstrip(":") for line in warnings) == ["della", "ties"]
    assert all("'weight' cannot change the merge" in line for line in warnings)
    assert_clean_error(invoke("spaces", "--parents", f"{search_parents['instruct']},{search_parents['instruct']}x"), "parent not found")


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


@pytest.mark.slow
@pytest.mark.parametrize("space", ["depthwise", "depthwise_slerp"])
def test_a_depthwise_search_runs_from_the_cli_to_a_recipe_mergekit_yaml_rebuilds(search_parents, tmp_path, monkeypatch, space):
    """`evomerge search --space depthwise`: trials restack the parents' layers in memory (the
    layout model's build time recorded per trial), and the exported best recipe, run through the
    real mergekit-yaml, gives the tensors `evomerge merge` writes for it."""
    from oracle import assert_tensors_match, load_output, run_mergekit_yaml_binary

    monkeypatch.chdir(tmp_path)
    result = invoke(*search_args(search_parents, "--space", space, "--study", space, "--seed", "3", trials=5))
    assert result.exit_code == 0, (result.output, result.exception)
    study = optuna.load_study(study_name=space, storage=f"sqlite:///{tmp_path / 'results' / space / 'study.db'}")
    evaluated = [t for t in study.trials if "merge_s" in t.user_attrs]
    assert evaluated
    for trial in evaluated:
        # Passthrough always restacks; SLERP blocks at the parents' own depth merge in place.
        restacked = space == "depthwise" or len(Recipe.from_yaml(trial_attr(trial, "recipe")).slices) != 2
        assert ("rebuild_s" in trial.user_attrs) == restacked, trial.user_attrs
        assert trial.user_attrs.get("rebuild_s", 0) <= trial.user_attrs["merge_s"]
    assert any("rebuild_s" in trial.user_attrs for trial in evaluated), "no trial restacked the layers"
    best = tmp_path / "results" / space / "best-recipe.yaml"
    recipe = Recipe.load(best)
    assert recipe.slices and recipe.merge_method == ("passthrough" if space == "depthwise" else "slerp")
    expected = run_mergekit_yaml_binary(best, tmp_path / "mergekit-out")
    merged = invoke("merge", best, "--out", tmp_path / "evomerge-out", "--device", "cpu")
    assert merged.exit_code == 0, merged.output
    assert_tensors_match(load_output(tmp_path / "evomerge-out"), expected, f"{space} best recipe")
    layers = json.loads((tmp_path / "mergekit-out" / "config.json").read_text())["num_hidden_layers"]
    assert layers == json.loads((tmp_path / "evomerge-out" / "config.json").read_text())["num_hidden_layers"]
    assert layers == sum(s.sources[0].layer_range[1] - s.sources[0].layer_range[0] for s in recipe.slices)

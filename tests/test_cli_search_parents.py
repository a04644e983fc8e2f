"""`evomerge search --parents a,b,c,d`: more than two parents, as a user runs it. A space that
chooses which child to merge with the base, and multi-model methods with a weight (and density) per
child, each from the command line to an exported recipe that `mergekit-yaml` rebuilds; the parents'
scores for all four, the paper's recipe for each (base, child) pair, the gain over the best of all
parents; bad input (a space that merges two given four, too few parents) one line, exit 2."""

from __future__ import annotations

import csv
import json

import optuna
import pytest
from cli_checks import assert_clean_error
from optuna.trial import TrialState
from oracle import MERGE_SEED, assert_tensors_match, load_output, run_mergekit_yaml_binary
from test_cli_search import invoke, write_items

from evomerge.recipe import Recipe
from evomerge.search.study import trial_attr
from evomerge.toy.tiny import CHAT_TEMPLATE, make_checkpoint, tiny_config

CHILDREN = ("cpt", "sft", "dpo")


@pytest.fixture(scope="module")
def four_parents(tmp_path_factory):
    """A tiny Llama base (2 layers, char tokenizer) and three children perturbed from it, like the
    paper's base and its CPT / SFT / DPO children, and a benchmark of 16 items."""
    root = tmp_path_factory.mktemp("four-parents")
    config = tiny_config("llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, tie_word_embeddings=False)
    state = make_checkpoint(root / "base", config, seed=0, chat_template=CHAT_TEMPLATE)
    for seed, name in enumerate(CHILDREN, start=1):
        make_checkpoint(root / name, config, seed=seed, from_state=state, noise=0.5)
    return {"base": root / "base", **{name: root / name for name in CHILDREN}, "benchmark": write_items(root / "bench.jsonl", 16)}


def search(parents, names, space, *extra, trials=5):
    return invoke(
        "search",
        "--parents",
        ",".join(str(parents[name]) for name in names),
        "--benchmark",
        parents["benchmark"],
        "--space",
        space,
        "--protocol",
        "loglik",
        "--device",
        "cpu",
        "--trials",
        trials,
        "--study",
        space,
        *extra,
    )


def rebuilt_by_mergekit_yaml(best, tmp_path):
    """`mergekit-yaml` on the exported recipe gives the tensors `evomerge merge` writes for it."""
    expected = run_mergekit_yaml_binary(best, tmp_path / "mergekit-out")
    merged = invoke("merge", best, "--out", tmp_path / "evomerge-out", "--device", "cpu", "--seed", MERGE_SEED)
    assert merged.exit_code == 0, merged.output
    assert_tensors_match(load_output(tmp_path / "evomerge-out"), expected, f"{best} rebuilt")


@pytest.mark.slow
def test_a_search_that_chooses_the_child_runs_from_the_cli_to_a_recipe_mergekit_yaml_rebuilds(four_parents, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = ("base", *CHILDREN)
    paths = [str(four_parents[name]) for name in names]
    # No pruner: the three baselines (the paper's recipe with each child) all run to the end.
    result = search(four_parents, names, "slerp_choose_child", "--pruner", "none", trials=6)
    assert result.exit_code == 0, (result.output, result.exception)
    folder = tmp_path / "results" / "slerp_choose_child"
    summary = json.loads((folder / "summary.json").read_text())

    # Every parent scored alone, the gain measured against the best of all four.
    assert list(summary["parents"]) == paths
    assert summary["best_parent"] == max(summary["parents"].values())
    assert summary["gain"] == pytest.approx(summary["best_accuracy"] - summary["best_parent"])
    # The paper's recipe with each child, queued first; the summary's baseline is the best pair.
    study = optuna.load_study(study_name="slerp_choose_child", storage=f"sqlite:///{folder / 'study.db'}")
    baselines = [t for t in study.trials if t.user_attrs.get("baseline")]
    assert [t.number for t in baselines] == [0, 1, 2]
    assert [t.user_attrs["baseline_child"] for t in baselines] == paths[1:]
    assert all(t.state == TrialState.COMPLETE for t in baselines)
    for trial in baselines:
        assert Recipe.from_yaml(trial_attr(trial, "recipe")).model_names == [paths[0], trial.user_attrs["baseline_child"]]
    assert summary["baselines"] == {t.user_attrs["baseline_child"]: t.user_attrs["accuracy"] for t in baselines}
    assert summary["baseline_accuracy"] == max(summary["baselines"].values())
    # Labels: `child` m0, m1, m2 are the children in --parents order.
    assert summary["labels"] == {"m0": paths[1], "m1": paths[2], "m2": paths[3]}
    with open(folder / "trials.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["child"] for row in rows[:3]] == ["m0", "m1", "m2"]
    # The printed table has a row for every parent and the paper's recipe with each child.
    assert result.stdout.count("│ parent ") == 4
    assert result.stdout.count("│ paper's recipe with") == 3

    # The export names the base and the chosen child only, and mergekit-yaml rebuilds it.
    best = folder / "best-recipe.yaml"
    recipe = Recipe.load(best)
    best_trial = next(t for t in study.trials if t.number == summary["best_trial"])
    chosen = summary["labels"][best_trial.params["child"]]
    assert recipe.model_names == [paths[0], chosen] == summary["best_models"]
    assert recipe.merge_method == "slerp" and recipe.base_model == paths[0]
    rebuilt_by_mergekit_yaml(best, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("space", ["task_arithmetic", "ties", "dare_ties"])
def test_a_multi_model_search_weighs_each_child_and_mergekit_yaml_rebuilds_it(four_parents, tmp_path, monkeypatch, space):
    monkeypatch.chdir(tmp_path)
    names = ("base", *CHILDREN)
    paths = [str(four_parents[name]) for name in names]
    result = search(four_parents, names, space, "--seed", MERGE_SEED, trials=3)
    assert result.exit_code == 0, (result.output, result.exception)
    folder = tmp_path / "results" / space
    summary = json.loads((folder / "summary.json").read_text())
    assert list(summary["parents"]) == paths and summary["best_parent"] == max(summary["parents"].values())
    assert summary["baselines"] == {} and summary["baseline_accuracy"] is None  # not expressible as task vectors
    assert summary["labels"] == {"m0": paths[1], "m1": paths[2], "m2": paths[3]}
    per_child = ("weight",) if space == "task_arithmetic" else ("weight", "density")
    with open(folder / "trials.csv", newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    assert {f"{p}.m{i}" for p in per_child for i in range(3)} <= set(header)

    best = folder / "best-recipe.yaml"
    recipe = Recipe.load(best)
    assert recipe.merge_method == space and recipe.base_model == paths[0]
    assert recipe.model_names == paths == summary["best_models"]
    entries = {entry.model: entry.parameters for entry in recipe.models}
    assert all(set(entries[child]) == set(per_child) for child in paths[1:])
    rebuilt_by_mergekit_yaml(best, tmp_path)


BAD_INPUTS = {
    "a two-parent space given four": ("slerp_gradient", ("base", *CHILDREN), ["space slerp_gradient: slerp merges at most 2 parents, got 4"]),
    "choosing a child among one": ("slerp_choose_child", ("base", "cpt"), ["needs a base and at least two children (three parents), got 2"]),
    "model_stock given two": ("model_stock", ("base", "cpt"), ["model_stock", "at least 3 inputs; got 2"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_a_space_that_does_not_fit_the_number_of_parents_is_one_line_exit_2(case, four_parents, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space, names, words = BAD_INPUTS[case]
    assert_clean_error(search(four_parents, names, space), *words)
    assert not (tmp_path / "results").exists(), f"{case}: a study folder was created"

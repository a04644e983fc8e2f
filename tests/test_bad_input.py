"""A corpus of bad input, one line per case, over every command.

Each case runs the command as a user types it, in an empty working folder, and asserts the
command line's contract: exit code 2, one line on stderr that names the problem, no traceback,
and nothing left behind (the working folder stays empty, the inputs unchanged).
"""

import json
import os
import shutil

import pytest
from cli_checks import assert_clean_error
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.recipe import paper_recipe
from evomerge.toy.tiny import CHAT_TEMPLATE, make_checkpoint, tiny_config

runner = CliRunner()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Every file the cases refer to, by name: good parents and broken ones, benchmarks, recipes,
    spaces, pairs files, training data and pipelines."""
    root = tmp_path_factory.mktemp("bad-input")
    config = tiny_config("llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, tie_word_embeddings=False)
    state = make_checkpoint(root / "instruct", config, seed=0, chat_template=CHAT_TEMPLATE)
    make_checkpoint(root / "child", config, seed=1, from_state=state, noise=0.5)
    wide = tiny_config("llama", vocab_size=128, hidden_size=48, intermediate_size=64, num_layers=2, tie_word_embeddings=False)
    make_checkpoint(root / "wide", wide, seed=2)
    shutil.copytree(root / "child", root / "nan")
    weights = load_file(root / "nan" / "model.safetensors")
    name = next(iter(weights))
    weights[name][0] = float("nan")
    save_file(weights, root / "nan" / "model.safetensors", metadata={"format": "pt"})
    (root / "models[0]").mkdir()  # a folder name that is also Rich markup
    for parent in ("instruct", "child"):
        shutil.copytree(root / parent, root / "models[0]" / parent)

    items = [{"id": f"q{i}", "type": "mc", "question": f"Which {i}?", "choices": ["a", "b", "c", "d"], "answer": "A"} for i in range(16)]
    files = {
        "bench.jsonl": "".join(json.dumps(item) + "\n" for item in items),
        "one.jsonl": json.dumps(items[0]) + "\n",
        "broken.jsonl": json.dumps(items[0]) + "\n{not json\n",
        "recipe.yaml": paper_recipe(str(root / "instruct"), str(root / "child")).to_yaml(),
        "unknown_method.yaml": f"merge_method: blend\nmodels:\n  - model: {root / 'instruct'}\n  - model: {root / 'child'}\n",
        "t_out_of_range.yaml": (
            f"merge_method: slerp\nbase_model: {root / 'instruct'}\nparameters:\n  t: 2.0\n"
            f"slices:\n  - sources:\n      - model: {root / 'instruct'}\n        layer_range: [0, 2]\n"
            f"      - model: {root / 'child'}\n        layer_range: [0, 2]\n"
        ),
        "ties_zero.yaml": (
            f"merge_method: ties\nbase_model: {root / 'models[0]' / 'instruct'}\n"
            f"models:\n  - model: {root / 'models[0]' / 'child'}\n    parameters: {{weight: 1.0, density: 0.0}}\n"
        ),
        "nan_recipe.yaml": paper_recipe(str(root / "instruct"), str(root / "nan")).to_yaml(),
        "wide_recipe.yaml": paper_recipe(str(root / "instruct"), str(root / "wide")).to_yaml(),
        "malformed.yaml": "merge_method: slerp\n  models: [\n",
        "space.yaml": "name: broken\nmethod: slerp\nparameters: {t: {low: 0.9, high: 0.1}}\n",
        "pairs.yaml": "pairs:\n  - label: x\n    parents: [only-one]\n",
        "pipeline.yaml": "stages:\n  - name: cpt\n    strategy: pretrain\n",
        "sft_bad.jsonl": json.dumps({"text": "no messages here"}) + "\n",
        "notes.txt": "not a model\n",
        "empty.jsonl": "",
        "empty.yaml": "",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    return root


CASES = [
    # id, command line ({name} is a file or folder of the inputs), words the one error line contains
    ("merge-no-recipe", "merge {root}/absent.yaml --out out", ["absent.yaml"]),
    ("merge-malformed-yaml", "merge {root}/malformed.yaml --out out", ["malformed.yaml"]),
    ("merge-unknown-method", "merge {root}/unknown_method.yaml --out out", ["blend"]),
    ("merge-t-out-of-range", "merge {root}/t_out_of_range.yaml --out out", ["t"]),
    ("merge-parent-typo", "merge {root}/recipe.yaml --parent ./instuct={root}/instruct --out out", ["./instuct"]),
    ("merge-parent-no-equals", "merge {root}/recipe.yaml --parent {root}/instruct --out out", ["NAME=PATH"]),
    ("merge-missing-parent", "merge {root}/recipe.yaml --parent {root}/child={root}/absent --out out", ["absent"]),
    ("merge-nan-weights", "merge {root}/nan_recipe.yaml --out out", ["NaN", "model.safetensors"]),
    ("merge-shapes-differ", "merge {root}/wide_recipe.yaml --out out", ["shape"]),
    ("merge-markup-in-path", "merge {root}/ties_zero.yaml --out out", ["density", "models[0]"]),
    ("merge-bad-device", "merge {root}/recipe.yaml --out out --device tpu", ["tpu"]),
    ("merge-no-out", "merge {root}/recipe.yaml", ["--out"]),
    ("merge-not-a-model", "merge {root}/recipe.yaml --parent {root}/child={root}/notes.txt --out out", ["notes.txt"]),
    ("eval-no-model", "eval --model {root}/absent --benchmark {root}/bench.jsonl", ["absent"]),
    ("eval-no-benchmark", "eval --model {root}/instruct --benchmark {root}/absent.jsonl", ["absent.jsonl"]),
    ("eval-broken-benchmark", "eval --model {root}/instruct --benchmark {root}/broken.jsonl", ["broken.jsonl:2"]),
    ("eval-fraction-zero", "eval --model {root}/instruct --benchmark {root}/bench.jsonl --fraction 0", ["fraction"]),
    ("eval-fraction-above-one", "eval --model {root}/instruct --benchmark {root}/bench.jsonl --fraction 1.5", ["fraction"]),
    ("eval-holdout-one", "eval --model {root}/instruct --benchmark {root}/bench.jsonl --holdout 1", ["holdout"]),
    ("eval-unknown-protocol", "eval --model {root}/instruct --benchmark {root}/bench.jsonl --protocol vibes", ["vibes"]),
    ("eval-nan-weights", "eval --model {root}/nan --benchmark {root}/bench.jsonl", ["NaN"]),
    ("eval-unknown-lm-eval-task", "eval --model {root}/instruct --benchmark lm-eval:no_such_task", ["no_such_task"]),
    ("benchmark-export-unknown", "benchmark export no_such_benchmark out", ["no_such_benchmark"]),
    ("benchmark-export-broken", "benchmark export {root}/broken.jsonl out", ["broken.jsonl:2"]),
    ("search-one-parent", "search --parents {root}/instruct --benchmark {root}/bench.jsonl", ["two"]),
    ("search-parent-twice", "search --parents {root}/instruct,{root}/instruct --benchmark {root}/bench.jsonl", ["twice"]),
    ("search-unknown-sampler", "search --parents {root}/instruct,{root}/child --benchmark {root}/bench.jsonl --sampler hill", ["hill"]),
    ("search-unknown-pruner", "search --parents {root}/instruct,{root}/child --benchmark {root}/bench.jsonl --pruner axe", ["axe"]),
    ("search-zero-trials", "search --parents {root}/instruct,{root}/child --benchmark {root}/bench.jsonl --trials 0", ["--trials"]),
    ("search-one-item-benchmark", "search --parents {root}/instruct,{root}/child --benchmark {root}/one.jsonl", ["too few", "at least"]),
    ("search-fidelities-decrease", "search --parents {root}/instruct,{root}/child --benchmark {root}/bench.jsonl --fidelities 0.5,0.25,1", ["--fidelities"]),
    ("search-fidelities-not-full", "search --parents {root}/instruct,{root}/child --benchmark {root}/bench.jsonl --fidelities 0.25,0.5", ["--fidelities"]),
    ("search-fidelities-text", "search --parents {root}/instruct,{root}/child --benchmark {root}/bench.jsonl --fidelities half", ["--fidelities"]),
    ("search-holdout-above-one", "search --parents {root}/instruct,{root}/child --benchmark {root}/bench.jsonl --holdout 1.5", ["--holdout"]),
    ("search-unknown-space", "search --parents {root}/instruct,{root}/child --benchmark {root}/bench.jsonl --space warp", ["warp"]),
    ("search-broken-space", "search --parents {root}/instruct,{root}/child --benchmark {root}/bench.jsonl --space {root}/space.yaml", ["space.yaml"]),
    ("search-grid-too-large", "search --parents {root}/instruct,{root}/child --benchmark {root}/bench.jsonl --sampler grid", ["--grid-limit"]),
    ("search-nan-weights", "search --parents {root}/instruct,{root}/nan --benchmark {root}/bench.jsonl --protocol loglik", ["NaN"]),
    ("search-shapes-differ", "search --parents {root}/instruct,{root}/wide --benchmark {root}/bench.jsonl", ["shape"]),
    ("search-unsafe-study-name", "search --parents {root}/instruct,{root}/child --benchmark {root}/bench.jsonl --study ../up", ["--study"]),
    ("search-base-not-a-parent", "search --parents {root}/instruct,{root}/child --benchmark {root}/bench.jsonl --base {root}/wide", ["--base"]),
    ("search-bad-timeout", "search --parents {root}/instruct,{root}/child --benchmark {root}/bench.jsonl --timeout soon", ["soon"]),
    ("search-warm-start-missing", "search --parents {root}/instruct,{root}/child --benchmark {root}/bench.jsonl --warm-start nowhere", ["--warm-start"]),
    ("search-bad-objective", "search --parents {root}/instruct,{root}/child --benchmark {root}/bench.jsonl --objective joy", ["joy"]),
    ("search-ray-flag-without-ray", "search --parents {root}/instruct,{root}/child --benchmark {root}/bench.jsonl --concurrent 2", ["--concurrent"]),
    ("search-jobs-with-ray", "search --parents {root}/instruct,{root}/child --benchmark {root}/bench.jsonl --backend ray --jobs 2", ["--jobs"]),
    ("search-unknown-backend", "search --parents {root}/instruct,{root}/child --benchmark {root}/bench.jsonl --backend slurm", ["slurm"]),
    (
        "search-unreachable-storage",
        "search --parents {root}/instruct,{root}/child --benchmark {root}/bench.jsonl --storage postgresql+psycopg2://x@127.0.0.1:1/none",
        ["cannot open storage"],
    ),
    (
        "search-three-benchmarks",
        "search --parents {root}/instruct,{root}/child --benchmark {root}/bench.jsonl,{root}/bench.jsonl,{root}/bench.jsonl",
        ["--benchmark"],
    ),
    ("worker-no-storage-file", "worker --study s --storage sqlite:///{root}/absent.db", ["absent.db"]),
    ("worker-no-study", "worker --study s", ["--storage"]),
    ("export-no-study", "export --study nothing_here", ["nothing_here"]),
    ("export-rank-zero", "export --study s --rank 0", ["--rank"]),
    ("dashboard-no-storage-file", "dashboard --storage sqlite:///{root}/absent.db", ["absent.db"]),
    ("dashboard-port-out-of-range", "dashboard --storage sqlite:///{root}/absent.db --port 99999", ["--port"]),
    ("eval-empty-benchmark", "eval --model {root}/instruct --benchmark {root}/empty.jsonl", ["no items"]),
    ("merge-empty-recipe", "merge {root}/empty.yaml --out out", ["empty.yaml"]),
    ("search-parent-is-a-file", "search --parents {root}/instruct,{root}/notes.txt --benchmark {root}/bench.jsonl", ["notes.txt"]),
    ("spaces-unknown-option", "spaces --colour", ["--colour"]),
    ("train-nothing-to-do", "train", ["--strategy"]),
    ("train-unknown-strategy", "train --strategy rlhf --model {root}/instruct --data {root}/sft_bad.jsonl --out out", ["rlhf"]),
    ("train-no-data", "train --strategy sft --model {root}/instruct --data {root}/absent.jsonl --out out", ["absent.jsonl"]),
    ("train-wrong-fields", "train --strategy sft --model {root}/instruct --data {root}/sft_bad.jsonl --out out", ["sft_bad.jsonl"]),
    ("train-negative-lr", "train --strategy sft --model {root}/instruct --data {root}/sft_bad.jsonl --out out --lr -1", ["--lr"]),
    ("train-broken-pipeline", "train --pipeline {root}/pipeline.yaml", ["pipeline.yaml"]),
    ("toy-unknown-scale", "toy --scale huge", ["huge"]),
    ("toy-unknown-parent", "toy --scale xs --parents instruct,mentor", ["mentor"]),
    ("map-nothing-to-map", "map", ["--pairs"]),
    ("map-broken-pairs", "map --pairs {root}/pairs.yaml", ["pairs.yaml"]),
    ("map-bad-sweep", "map --pairs {root}/pairs.yaml --sweep 1:0:0.1", ["sweep"]),
    ("map-unknown-scale", "map --toy xs,huge", ["huge"]),
    ("demo-zero-trials", "demo --trials 0", ["--trials"]),
    ("demo-bad-device", "demo --device tpu", ["tpu"]),
]


@pytest.mark.parametrize("case_id, command, words", CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_one_clean_line_and_leaves_nothing(case_id, command, words, inputs, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = sorted(os.listdir(inputs))
    args = command.format(root=inputs).split()
    result = runner.invoke(app, args)
    assert_clean_error(result, *words)
    assert not os.listdir(work), f"left behind: {os.listdir(work)}"
    assert sorted(os.listdir(inputs)) == before, "the inputs' folder changed"


def test_the_corpus_covers_every_command():
    covered = {case[1].split()[0] for case in CASES}
    commands = {"merge", "eval", "benchmark", "search", "worker", "export", "dashboard", "spaces", "train", "toy", "map", "demo"}
    assert commands <= covered, commands - covered
    assert len(CASES) >= 50

"""The command line as a user runs it: real merges, and one clean line for every bad input."""

import os
import shutil

import pytest
import torch
from cli_checks import assert_clean_error
from safetensors.torch import load_file
from typer.testing import CliRunner

import evomerge
from evomerge.cli import app
from evomerge.recipe import Recipe, paper_recipe
from evomerge.shipped import resolve_recipe, shipped_recipes
from evomerge.toy.tiny import make_checkpoint, make_family, tiny_config

SHIPPED_PAPER_RECIPE = resolve_recipe("paper_slerp")

runner = CliRunner()


@pytest.fixture(scope="module")
def parents(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-parents")
    family = make_family(root, "llama", children=("child",), noise=0.3, dtype=torch.bfloat16, tie_word_embeddings=False)
    other_arch = make_family(root / "qwen", "qwen2", children=(), dtype=torch.bfloat16)["base"]
    narrow = root / "narrow"
    make_checkpoint(narrow, tiny_config("llama", hidden_size=32, intermediate_size=64, tie_word_embeddings=False), dtype=torch.bfloat16)
    return {"instruct": family["base"], "child": family["child"], "qwen": other_arch, "narrow": narrow, "root": root}


def write_recipe(tmp_path, recipe: Recipe, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(recipe.to_yaml())
    return path


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_merge_writes_a_loadable_model_equal_to_mergekit(parents, tmp_path):
    recipe_path = tmp_path / "paper.yaml"
    shutil.copy(SHIPPED_PAPER_RECIPE, recipe_path)
    renames = ["--parent", f"./instruct={parents['instruct']}", "--parent", f"./fine-tuned={parents['child']}"]
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    assert run("merge", "paper_slerp", "--out", ours, "--device", "cpu", *renames).exit_code == 0  # by name
    assert run("merge", recipe_path, "--out", theirs, "--engine", "mergekit", "--device", "cpu", *renames).exit_code == 0

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(ours)
    tokenizer = AutoTokenizer.from_pretrained(ours)
    ids = tokenizer("Silk is tough.", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()
    assert model.dtype == torch.bfloat16
    assert (ours / "mergekit_config.yml").is_file()
    a, b = load_file(ours / "model.safetensors"), load_file(theirs / "model.safetensors")
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in b)
    # A model card beside the weights, as mergekit-yaml writes one, from either engine.
    for folder in (ours, theirs):
        card = (folder / "README.md").read_text()
        assert card.startswith("---\n") and "library_name: transformers" in card
        assert f"evomerge {evomerge.__version__}" in card and "`slerp` method" in card
        assert f"* `{parents['instruct']}`" in card and f"* `{parents['child']}`" in card
        assert Recipe.load(folder / "mergekit_config.yml").to_yaml().rstrip() in card
        assert "### Search" not in card  # a hand-written recipe came from no study


def test_a_failed_merge_writes_no_model_card(parents, tmp_path):
    """The card is written with the rest of the folder, all or nothing."""
    recipe = paper_recipe(str(parents["instruct"]), str(parents["narrow"]))
    out = tmp_path / "out"
    result = run("merge", write_recipe(tmp_path, recipe), "--out", out, "--device", "cpu")
    assert result.exit_code == 2
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_existing_output_is_refused_unless_overwrite(parents, tmp_path):
    recipe_path = write_recipe(tmp_path, paper_recipe(str(parents["instruct"]), str(parents["child"])))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_clean_error(run("merge", recipe_path, "--out", out), "exists")
    assert (out / "keep.txt").read_text() == "mine"
    assert run("merge", recipe_path, "--out", out, "--overwrite", "--device", "cpu").exit_code == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_missing_parent_folder(parents, tmp_path):
    recipe_path = write_recipe(tmp_path, paper_recipe(str(parents["instruct"]), str(tmp_path / "nowhere")))
    assert_clean_error(run("merge", recipe_path, "--out", tmp_path / "o"), "parent not found", "nowhere", out=tmp_path / "o")


def test_folder_without_weights(parents, tmp_path):
    empty = tmp_path / "no-weights"
    empty.mkdir()
    shutil.copy(parents["child"] / "config.json", empty / "config.json")
    recipe_path = write_recipe(tmp_path, paper_recipe(str(parents["instruct"]), str(empty)))
    assert_clean_error(run("merge", recipe_path, "--out", tmp_path / "o"), "no weights", out=tmp_path / "o")


def test_truncated_safetensors(parents, tmp_path):
    broken = tmp_path / "truncated"
    shutil.copytree(parents["child"], broken)
    weights = broken / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(os.path.getsize(weights) // 2)
    recipe_path = write_recipe(tmp_path, paper_recipe(str(parents["instruct"]), str(broken)))
    assert_clean_error(run("merge", recipe_path, "--out", tmp_path / "o"), "truncated", out=tmp_path / "o")


def test_different_architectures(parents, tmp_path):
    recipe_path = write_recipe(tmp_path, paper_recipe(str(parents["instruct"]), str(parents["qwen"])))
    assert_clean_error(run("merge", recipe_path, "--out", tmp_path / "o"), "different architectures", out=tmp_path / "o")


def test_different_shapes(parents, tmp_path):
    recipe_path = write_recipe(tmp_path, paper_recipe(str(parents["instruct"]), str(parents["narrow"])))
    assert_clean_error(run("merge", recipe_path, "--out", tmp_path / "o"), "shape", out=tmp_path / "o")


def test_unknown_method(parents, tmp_path):
    data = paper_recipe(str(parents["instruct"]), str(parents["child"])).to_dict()
    data["merge_method"] = "slurp"
    recipe_path = write_recipe(tmp_path, Recipe.from_dict(data))
    for engine in ("evomerge", "mergekit"):
        result = run("merge", recipe_path, "--out", tmp_path / "o", "--engine", engine)
        assert_clean_error(result, "unknown merge method", "slurp", "slerp", out=tmp_path / "o")


@pytest.mark.parametrize(
    "text, words",
    [
        ("merge_method: slerp\nbase_model: a\nmodels: [{model: a}, {model: b}]\nparameters: {t: [0, 1.5]}\n", ["t=1.5", "outside"]),
        (
            "merge_method: ties\nbase_model: a\nmodels: [{model: b, parameters: {weight: 1, density: 0}}]\n",
            ["density=0", "outside"],
        ),
        ("merge_method: slerp\nmodels: [\n  - model: a\n", ["malformed YAML", "line"]),
        ("- just\n- a list\n", ["expected a mapping"]),
        ("merge_method: slerp\n", ["exactly one of 'models' or 'slices'"]),
    ],
)
def test_bad_recipe_files(tmp_path, text, words):
    recipe_path = tmp_path / "bad.yaml"
    recipe_path.write_text(text)
    assert_clean_error(run("merge", recipe_path, "--out", tmp_path / "o"), *words, out=tmp_path / "o")


def test_recipe_that_does_not_fit_its_parents(parents, tmp_path):
    data = paper_recipe(str(parents["instruct"]), str(parents["child"])).to_dict()
    del data["base_model"]
    recipe_path = write_recipe(tmp_path, Recipe.from_dict(data))
    assert_clean_error(run("merge", recipe_path, "--out", tmp_path / "o"), "base", out=tmp_path / "o")
    data = paper_recipe(str(parents["instruct"]), str(parents["child"])).to_dict()
    data["parameters"]["lambda"] = 2
    recipe_path = write_recipe(tmp_path, Recipe.from_dict(data), "extra.yaml")
    assert_clean_error(run("merge", recipe_path, "--out", tmp_path / "o"), "no parameter 'lambda'", out=tmp_path / "o")


def test_missing_recipe_and_bad_parent_flag(tmp_path):
    assert_clean_error(run("merge", tmp_path / "none.yaml", "--out", tmp_path / "o"), "recipe file not found")
    shutil.copy(SHIPPED_PAPER_RECIPE, tmp_path / "r.yaml")
    assert_clean_error(run("merge", tmp_path / "r.yaml", "--out", tmp_path / "o", "--parent", "oops"), "NAME=PATH")


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and result.stdout.startswith("evomerge ")


def test_recipes_lists_the_shipped_recipes_and_pipelines():
    result = run("recipes")
    assert result.exit_code == 0, result.output
    names = {entry.name for entry in shipped_recipes()}
    assert {"paper_slerp", "small_cpu", "paper_8b"} <= names
    for name in names:
        assert name in result.output
    assert "evomerge merge paper_slerp" in result.output and "--pipeline small_cpu" in result.output


def test_an_unknown_recipe_name_lists_the_shipped_ones(tmp_path):
    assert_clean_error(run("merge", "paper_slurp", "--out", tmp_path / "o"), "recipe file not found: paper_slurp", "paper_slerp")

"""Parents whose vocabularies differ (a child with two added chat tokens) merged with mergekit's
tokenizer settings (`tokenizer_source`, `tokenizer: {source, tokens, pad_to_multiple_of}`):
in memory and by the real `mergekit-yaml`, compared tensor by tensor, tokenizer by tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from added_tokens import CHAT_TOKENS, add_chat_tokens
from oracle import MERGE_SEED, MergekitBatch, assert_tensors_match, load_output

from evomerge import api
from evomerge.errors import ParentError, RecipeError
from evomerge.merge.merger import Merger
from evomerge.merge.parents import check_parents, inspect_parent
from evomerge.recipe import Recipe


@pytest.fixture(scope="module")
def parents(family, tmp_path_factory) -> dict[str, str]:
    """base and c2 with the 128-token character tokenizer; chat = c1 plus the two chat tokens (130)."""
    paths = family("llama", "float32")
    root = tmp_path_factory.mktemp("added-tokens")
    add_chat_tokens(paths["c1"], root / "chat", seed=5)
    return {"base": str(paths["base"]), "chat": str(root / "chat"), "c2": str(paths["c2"])}


def recipes(p: dict[str, str]) -> dict[str, str]:
    return {
        "slerp-union": f"""
merge_method: slerp
base_model: {p["base"]}
models: [{{model: {p["base"]}}}, {{model: {p["chat"]}}}]
parameters: {{t: [0.2, 0.8]}}
tokenizer: {{source: union}}
dtype: float32
""",
        "ties-base": f"""
merge_method: ties
base_model: {p["base"]}
models:
- {{model: {p["chat"]}, parameters: {{weight: 0.7, density: 0.5}}}}
- {{model: {p["c2"]}, parameters: {{weight: [0.2, 0.9], density: 0.8}}}}
tokenizer_source: base
dtype: float32
""",
        "ties-model": f"""
merge_method: ties
base_model: {p["base"]}
models:
- {{model: {p["chat"]}, parameters: {{weight: 0.5, density: 0.6}}}}
- {{model: {p["c2"]}, parameters: {{weight: 0.5, density: 0.6}}}}
tokenizer_source: {p["chat"]}
dtype: float32
""",
        "linear-union-tokens-padded": f"""
merge_method: linear
models:
- {{model: {p["base"]}, parameters: {{weight: 0.4}}}}
- {{model: {p["chat"]}, parameters: {{weight: 0.6}}}}
tokenizer:
  source: union
  pad_to_multiple_of: 64
  tokens:
    "<|im_end|>": {{source: {{kind: zero}}, force: true}}
    "<|im_start|>": {{source: {p["chat"]}}}
dtype: float32
""",
    }


@pytest.fixture(scope="module")
def oracle(parents, tmp_path_factory):
    root = tmp_path_factory.mktemp("vocabulary-oracle")
    cases = {}
    for key, text in recipes(parents).items():
        (root / f"{key}.yaml").write_text(text)
        cases[key] = (Recipe.from_yaml(text), root / key)
    return cases, MergekitBatch([(root / f"{key}.yaml", out) for key, (_, out) in cases.items()])


@pytest.fixture(scope="module")
def merger(parents) -> Merger:
    return Merger.load([parents["base"], parents["chat"], parents["c2"]], device="cpu", dtype="float32")


def expected_vocabulary(out: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(out)).get_vocab()


@pytest.mark.slow
@pytest.mark.parametrize("key", ["slerp-union", "ties-base", "ties-model", "linear-union-tokens-padded"])
def test_engine_equals_mergekit_yaml_on_different_vocabularies(oracle, merger, key):
    cases, batch = oracle
    recipe, out = cases[key]
    merger.apply(recipe, seed=MERGE_SEED)
    expected = batch.result(out)
    assert_tensors_match(merger.merged_state_dict(), expected, f"{key}\n--- recipe ---\n{recipe.to_yaml()}")
    assert merger.tokenizer.get_vocab() == expected_vocabulary(out)
    rows = expected["model.embed_tokens.weight"].shape[0]
    assert merger.model.config.vocab_size == rows == json.loads((out / "config.json").read_text())["vocab_size"]
    assert merger.model.get_input_embeddings().weight.shape[0] == rows


def test_the_union_has_the_chat_tokens_and_the_rows_follow_mergekits_rules(oracle, merger, parents):
    """A token only one parent has takes that parent's row in the other: so both parents hold the
    chat parent's row for a chat token, and the union's SLERP (of whole tensors: its coefficients
    need not sum to 1) gives a multiple of that row."""
    cases, batch = oracle
    recipe, out = cases["slerp-union"]
    merger.apply(recipe, seed=MERGE_SEED)
    vocab = merger.tokenizer.get_vocab()
    assert all(token in vocab for token in CHAT_TOKENS) and len(vocab) == 130
    chat_rows = merger.parents[parents["chat"]].tensors["model.embed_tokens.weight"]
    base_rows = merger.parents[parents["base"]].tensors["model.embed_tokens.weight"]
    merged = merger.merged_state_dict()["model.embed_tokens.weight"]
    for token in CHAT_TOKENS:
        assert torch.equal(base_rows[vocab[token]], chat_rows[vocab[token]])
        cosine = torch.nn.functional.cosine_similarity(merged[vocab[token]], chat_rows[vocab[token]], dim=0)
        assert cosine.item() > 1 - 1e-6
    assert_tensors_match(merger.merged_state_dict(), batch.result(out), "slerp-union")


def test_switching_settings_and_back_to_none_restores_the_parents(oracle, merger, parents):
    """The rows the parents hold follow the recipe's setting: union (130), base (128), none."""
    cases, batch = oracle
    for key in ("slerp-union", "ties-base", "slerp-union"):
        recipe, out = cases[key]
        merger.apply(recipe, seed=MERGE_SEED)
        assert_tensors_match(merger.merged_state_dict(), batch.result(out), key)
    plain = Recipe.from_dict(
        {"merge_method": "slerp", "base_model": parents["base"], "models": [{"model": parents["base"]}, {"model": parents["c2"]}], "parameters": {"t": 0.5}}
    )
    merger.apply(plain)
    assert merger.tokenizer is None and merger.model.get_input_embeddings().weight.shape[0] == 128


def test_parents_with_different_vocabularies_need_a_tokenizer_setting(merger, parents):
    recipe = Recipe.from_dict(
        {"merge_method": "slerp", "base_model": parents["base"], "models": [{"model": parents["base"]}, {"model": parents["chat"]}], "parameters": {"t": 0.5}}
    )
    with pytest.raises(RecipeError) as caught:
        merger.plan(recipe)
    assert str(caught.value) == (
        "the parents' vocabularies differ (128 vs 130 tokens): add `tokenizer: {source: union}` (or base, or a parent) to the recipe, as mergekit asks"
    )
    with pytest.raises(ParentError, match="different vocabularies"):
        check_parents([inspect_parent(parents["base"]), inspect_parent(parents["chat"])])


@pytest.mark.slow
def test_evomerge_merge_writes_the_merged_tokenizer(oracle, parents, tmp_path):
    """`evomerge merge` on a union recipe: mergekit-yaml's tensors, config and tokenizer; the folder
    scores with its own (merged) tokenizer, which knows the chat tokens."""
    from transformers import AutoTokenizer

    cases, batch = oracle
    recipe, out = cases["slerp-union"]
    result = api.merge(recipe, tmp_path / "merged", device="cpu")
    assert_tensors_match(load_output(result.out), batch.result(out), "evomerge merge, union")
    written = AutoTokenizer.from_pretrained(str(result.out))
    assert written.get_vocab() == expected_vocabulary(out)
    assert written.convert_tokens_to_ids(CHAT_TOKENS) == [128, 129]
    assert json.loads((result.out / "config.json").read_text())["vocab_size"] == 130
    from evomerge.files import write_jsonl

    write_jsonl(
        tmp_path / "bench.jsonl", [{"id": f"q{i}", "question": f"<|im_start|>Pick {i}<|im_end|>", "type": "tf", "answer": bool(i % 2)} for i in range(6)]
    )
    evaluation = api.evaluate(result.out, str(tmp_path / "bench.jsonl"), protocol="loglik", device="cpu")
    assert evaluation.n == 6


def test_a_recipe_with_both_tokenizer_keys_is_refused(merger, parents):
    recipe = Recipe.from_dict(
        {
            "merge_method": "slerp",
            "base_model": parents["base"],
            "models": [{"model": parents["base"]}, {"model": parents["chat"]}],
            "parameters": {"t": 0.5},
            "tokenizer_source": "union",
            "tokenizer": {"source": "union"},
        }
    )
    with pytest.raises(RecipeError, match="tokenizer_source or tokenizer, not both"):
        merger.plan(recipe)

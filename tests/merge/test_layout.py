"""Results whose layers are not the parents' own (merge/layout.py): passthrough and layer
stacking equal what `mergekit-yaml --random-seed 7` writes (tensors, depth, the model's output), a
passthrough result holds the parents' tensors themselves (a reused layer is one tensor), and the
layout model is rebuilt only when the layout changes.
"""

from __future__ import annotations

import json

import pytest
import torch
from oracle import MERGE_SEED, MergekitBatch, assert_tensors_match, load_output

from evomerge import api
from evomerge.merge.merger import Merger
from evomerge.recipe import Recipe


def recipes(p: dict) -> dict[str, str]:
    return {
        # the example: layers 0-3 of one parent, then 1-4 of the other (here 0-2 and 1-3)
        "stack": f"""
merge_method: passthrough
slices:
- sources: [{{model: {p["base"]}, layer_range: [0, 3]}}]
- sources: [{{model: {p["c1"]}, layer_range: [1, 4]}}]
dtype: float32
""",
        "self-stack-scaled": f"""
merge_method: passthrough
slices:
- sources: [{{model: {p["c2"]}, layer_range: [0, 2], parameters: {{scale: [{{filter: o_proj, value: 0.5}}, {{value: 1.0}}]}}}}]
- sources: [{{model: {p["c2"]}, layer_range: [1, 4]}}]
dtype: float32
""",
        "shallower": f"""
merge_method: passthrough
slices:
- sources: [{{model: {p["c1"]}, layer_range: [0, 1]}}]
- sources: [{{model: {p["base"]}, layer_range: [3, 4]}}]
dtype: float32
""",
        "slerp-blocks": f"""
merge_method: slerp
base_model: {p["base"]}
slices:
- sources: [{{model: {p["base"]}, layer_range: [0, 2]}}, {{model: {p["c1"]}, layer_range: [0, 2]}}]
  parameters: {{t: [0.2, 0.7]}}
- sources: [{{model: {p["base"]}, layer_range: [1, 4]}}, {{model: {p["c1"]}, layer_range: [1, 4]}}]
  parameters: {{t: 0.4}}
dtype: float32
""",
        "slerp-blocks-other-t": f"""
merge_method: slerp
base_model: {p["base"]}
slices:
- sources: [{{model: {p["base"]}, layer_range: [0, 2]}}, {{model: {p["c1"]}, layer_range: [0, 2]}}]
  parameters: {{t: 0.9}}
- sources: [{{model: {p["base"]}, layer_range: [1, 4]}}, {{model: {p["c1"]}, layer_range: [1, 4]}}]
  parameters: {{t: [0, 1]}}
dtype: float32
""",
        "ties-shifted": f"""
merge_method: ties
base_model: {p["base"]}
slices:
- sources:
  - {{model: {p["base"]}, layer_range: [0, 3]}}
  - {{model: {p["c1"]}, layer_range: [0, 3], parameters: {{weight: 0.6, density: 0.5}}}}
  - {{model: {p["c2"]}, layer_range: [1, 4], parameters: {{weight: 0.3, density: 0.7}}}}
- sources:
  - {{model: {p["base"]}, layer_range: [2, 4]}}
  - {{model: {p["c1"]}, layer_range: [2, 4], parameters: {{weight: 0.6}}}}
  - {{model: {p["c2"]}, layer_range: [2, 4], parameters: {{weight: 0.5}}}}
dtype: float32
""",
        "dare-linear-stack": f"""
merge_method: dare_linear
base_model: {p["base"]}
slices:
- sources:
  - {{model: {p["base"]}, layer_range: [0, 4]}}
  - {{model: {p["c2"]}, layer_range: [0, 4], parameters: {{weight: 0.8, density: 0.4}}}}
- sources:
  - {{model: {p["base"]}, layer_range: [2, 4]}}
  - {{model: {p["c2"]}, layer_range: [2, 4], parameters: {{weight: 0.8, density: 0.4}}}}
dtype: float32
""",
    }


@pytest.fixture(scope="module")
def paths(family):
    return {name: str(path) for name, path in family("llama", "float32").items()}


@pytest.fixture(scope="module")
def oracle(paths, tmp_path_factory):
    root = tmp_path_factory.mktemp("layout-oracle")
    jobs = []
    for key, text in recipes(paths).items():
        (root / f"{key}.yaml").write_text(text)
        jobs.append((root / f"{key}.yaml", root / key))
    return root, MergekitBatch(jobs)


@pytest.fixture(scope="module")
def merger(paths):
    return Merger.load([paths["base"], paths["c1"], paths["c2"]], device="cpu")


LAYERS = {"stack": 6, "self-stack-scaled": 5, "shallower": 2, "slerp-blocks": 5, "slerp-blocks-other-t": 5, "ties-shifted": 5, "dare-linear-stack": 6}


@pytest.mark.slow
@pytest.mark.parametrize("key", list(LAYERS))
def test_a_layout_equals_mergekit_yaml(oracle, merger, paths, key):
    root, batch = oracle
    text = recipes(paths)[key]
    model = merger.apply(Recipe.from_yaml(text), seed=MERGE_SEED)
    assert model is merger.active_model and model is not merger.model
    assert model.config.num_hidden_layers == LAYERS[key]
    expected = batch.result(root / key)
    assert_tensors_match(merger.merged_state_dict(), expected, f"{key}\n{text}")
    assert json.loads((root / key / "config.json").read_text())["num_hidden_layers"] == LAYERS[key]
    # The restacked model runs as the model mergekit wrote does.
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(str(root / key), dtype=torch.float32).eval()
    input_ids = torch.tensor([[1, 5, 9, 17, 33, 64, 100, 127]])
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids=input_ids).logits, reference(input_ids=input_ids).logits, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_passthrough_shares_the_parents_tensors_and_leaves_them_untouched(merger, paths):
    before = {name: tensor.clone() for name, tensor in merger.parents[paths["c1"]].tensors.items()}
    merger.apply(Recipe.from_yaml(recipes(paths)["stack"]))
    merged = merger.merged_state_dict()
    c1, base = merger.parents[paths["c1"]].tensors, merger.parents[paths["base"]].tensors
    # output layer 3 is c1's layer 1; output layers 0-2 are base's 0-2; nothing is copied
    assert merged["model.layers.3.mlp.up_proj.weight"].data_ptr() == c1["model.layers.1.mlp.up_proj.weight"].data_ptr()
    assert merged["model.layers.0.self_attn.q_proj.weight"].data_ptr() == base["model.layers.0.self_attn.q_proj.weight"].data_ptr()
    assert merged["lm_head.weight"].data_ptr() == c1["lm_head.weight"].data_ptr()  # after the layers: the last slice's
    # a layer used twice (self-stack: c2's layer 1 at output layers 1 and 2) is one tensor
    merger.apply(Recipe.from_yaml(recipes(paths)["self-stack-scaled"]))
    merged = merger.merged_state_dict()
    assert merged["model.layers.1.mlp.up_proj.weight"].data_ptr() == merged["model.layers.2.mlp.up_proj.weight"].data_ptr()
    assert merged["model.layers.1.self_attn.o_proj.weight"].data_ptr() != merged["model.layers.2.self_attn.o_proj.weight"].data_ptr()  # scaled
    # Merging in place afterwards (SLERP on the parents' own layers) writes the resident model, not a parent.
    merger.apply(
        Recipe.from_dict(
            {"merge_method": "slerp", "base_model": paths["base"], "models": [{"model": paths["base"]}, {"model": paths["c1"]}], "parameters": {"t": 0.3}}
        )
    )
    assert merger.active_model is merger.model and merger.last_rebuild_s is None
    assert all(torch.equal(before[name], tensor) for name, tensor in merger.parents[paths["c1"]].tensors.items())


@pytest.mark.slow
def test_the_layout_model_is_rebuilt_only_when_the_layout_changes(merger, paths):
    texts = recipes(paths)
    merger.apply(Recipe.from_yaml(texts["slerp-blocks"]))
    first = merger.active_model
    assert merger.last_rebuild_s is not None
    merger.apply(Recipe.from_yaml(texts["slerp-blocks-other-t"]))  # same layers, other t: no rebuild
    assert merger.last_rebuild_s == 0.0 and merger.active_model is first
    merger.apply(Recipe.from_yaml(texts["ties-shifted"]))  # same depth, same layer layout: reused
    assert merger.last_rebuild_s == 0.0 and merger.active_model is first
    merger.apply(Recipe.from_yaml(texts["dare-linear-stack"]))  # six layers: rebuilt
    assert merger.last_rebuild_s > 0 and merger.active_model is not first
    assert merger.active_model.config.num_hidden_layers == 6


@pytest.mark.slow
def test_evomerge_merge_writes_a_one_parent_passthrough_like_mergekit_yaml(paths, oracle, tmp_path):
    """What the issue found refused ("a merge needs at least two parents"): one parent restacked."""
    root, batch = oracle
    result = api.merge(Recipe.from_yaml(recipes(paths)["self-stack-scaled"]), tmp_path / "out", device="cpu")
    written = load_output(result.out)
    assert_tensors_match(written, batch.result(root / "self-stack-scaled"), "evomerge merge of a passthrough recipe")
    assert json.loads((result.out / "config.json").read_text())["num_hidden_layers"] == 5

"""Architectures beyond Llama, Mistral, Qwen2 and Gemma (those are in test_merger.py): GPT-2
(`transformer.h.N`, a tied lm_head, learned positions), Mixtral (mixture of experts, stored one
expert per tensor, merged in transformers' fused layout) and Phi-3 (fused qkv_proj and
gate_up_proj). Each merged in memory and by the real `mergekit-yaml` on tiny random checkpoints,
compared tensor by tensor (bitwise, or within 1e-6 in float32).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from oracle import MERGE_SEED, MergekitBatch, assert_tensors_match, load_output

from evomerge import api
from evomerge.merge.merger import Merger
from evomerge.merge.parents import inspect_parent
from evomerge.recipe import Recipe

ARCHS = ("gpt2", "mixtral", "phi3")
# DARE's random masks are drawn in mergekit-yaml's execution order. mergekit schedules the tensors
# it converts on load (Mixtral's fused experts) before all others, in an order its task graph
# happens to give, so on Mixtral the engine's DARE masks are mergekit's in distribution only.
METHODS = {"gpt2": ("slerp", "ties", "dare_ties"), "mixtral": ("slerp", "ties", "linear"), "phi3": ("slerp", "ties", "dare_ties")}
CASES = [(arch, method) for arch in ARCHS for method in METHODS[arch]]


def recipe_text(method: str, paths: dict[str, str]) -> str:
    base, c1, c2 = paths["base"], paths["c1"], paths["c2"]
    if method == "linear":
        return f"""
merge_method: linear
models:
- {{model: {base}, parameters: {{weight: [1, 0.2]}}}}
- {{model: {c1}, parameters: {{weight: 0.7}}}}
- {{model: {c2}, parameters: {{weight: [{{filter: experts, value: 0.1}}, {{value: 0.4}}]}}}}
dtype: float32
"""
    if method == "slerp":
        return f"""
merge_method: slerp
base_model: {base}
models: [{{model: {base}}}, {{model: {c1}}}]
parameters:
  t: [{{filter: attn, value: [0, 0.5, 0.3, 0.7, 1]}}, {{filter: mlp, value: [1, 0.5, 0.7, 0.3, 0]}}, {{value: 0.4}}]
dtype: float32
"""
    return f"""
merge_method: {method}
base_model: {base}
models:
- {{model: {c1}, parameters: {{weight: [0.3, 0.9], density: 0.6}}}}
- {{model: {c2}, parameters: {{weight: 0.5, density: [{{filter: experts, value: 0.3}}, {{value: 0.8}}]}}}}
parameters: {{normalize: true}}
dtype: float32
"""


def strip_prefix(source: Path, dest: Path, prefix: str) -> None:
    """A copy of a checkpoint whose tensors are saved without the base model's prefix (as the
    original GPT-2 checkpoints are: `h.0.attn.c_attn.weight`, `wte.weight`)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, dest)
    tensors = load_file(str(source / "model.safetensors"))
    save_file({name.removeprefix(prefix): tensor for name, tensor in tensors.items()}, str(dest / "model.safetensors"), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def arch_paths(family, tmp_path_factory):
    paths = {arch: {name: str(path) for name, path in family(arch, "float32").items()} for arch in ARCHS}
    root = tmp_path_factory.mktemp("unprefixed-gpt2")
    paths["gpt2-unprefixed"] = {}
    for name, folder in paths["gpt2"].items():
        strip_prefix(Path(folder), root / name, "transformer.")
        paths["gpt2-unprefixed"][name] = str(root / name)
    return paths


@pytest.fixture(scope="module")
def oracle(arch_paths, tmp_path_factory):
    """Every recipe of this module merged by mergekit-yaml in one background batch."""
    root = tmp_path_factory.mktemp("arch-oracle")
    cases = {}
    for arch, paths in arch_paths.items():
        for method in METHODS.get(arch, ("slerp",)):
            key = f"{arch}-{method}"
            (root / f"{key}.yaml").write_text(recipe_text(method, paths))
            cases[key] = (Recipe.load(root / f"{key}.yaml"), root / key)
    batch = MergekitBatch([(root / f"{key}.yaml", out) for key, (_, out) in cases.items()])
    return cases, batch


@pytest.fixture(scope="module")
def merger_for(arch_paths):
    cache: dict[str, Merger] = {}

    def get(arch: str) -> Merger:
        if arch not in cache:
            cache[arch] = Merger.load([arch_paths[arch][n] for n in ("base", "c1", "c2")], device="cpu", dtype="float32")
        return cache[arch]

    return get


def check(oracle, merger: Merger, key: str) -> None:
    cases, batch = oracle
    recipe, out = cases[key]
    merger.apply(recipe, seed=MERGE_SEED)
    assert_tensors_match(merger.merged_state_dict(), batch.result(out), f"{key}\n--- recipe ---\n{recipe.to_yaml()}")


@pytest.mark.slow
@pytest.mark.parametrize("arch, method", CASES)
def test_engine_equals_mergekit_yaml(oracle, merger_for, arch, method):
    check(oracle, merger_for(arch), f"{arch}-{method}")


def test_mixtral_experts_are_merged_in_transformers_fused_layout(oracle, merger_for):
    """The checkpoint stores each expert apart (what transformers writes); the model, mergekit and
    the engine hold one fused tensor of all experts per layer."""
    merger = merger_for("mixtral")
    info = merger.infos[0]
    assert "model.layers.0.block_sparse_moe.experts.3.w1.weight" in info.shapes
    names = merger.tensor_names
    assert "model.layers.0.mlp.experts.gate_up_proj" in names and "model.layers.0.mlp.gate.weight" in names
    assert not any("block_sparse_moe" in name for name in names)
    fused = merger.parents[info.name].tensors["model.layers.0.mlp.experts.gate_up_proj"]
    assert fused.shape[0] == 4  # four experts
    check(oracle, merger, "mixtral-slerp")


def test_gpt2_layers_are_found_and_the_head_stays_tied(oracle, merger_for, arch_paths):
    info = inspect_parent(arch_paths["gpt2"]["base"])
    assert info.num_layers == 4 and "n_layer" in info.config and "num_hidden_layers" not in info.config
    merger = merger_for("gpt2")
    check(oracle, merger, "gpt2-ties")
    model = merger.model
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_gpt2_saved_without_its_prefix(oracle, merger_for):
    """Original GPT-2 checkpoints name `h.0.…` and `wte.weight`: mergekit reads them through its
    aliases and writes `transformer.…`; so does the engine."""
    merger = merger_for("gpt2-unprefixed")
    assert "transformer.h.0.attn.c_attn.weight" in merger.tensor_names
    check(oracle, merger, "gpt2-unprefixed-slerp")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mixtral", "gpt2"])
def test_evomerge_merge_writes_what_mergekit_yaml_writes_and_it_scores(oracle, merger_for, arch_paths, arch, tmp_path):
    """`evomerge merge` writes the tensors (under the same names) mergekit-yaml writes; the folder
    loads with AutoModelForCausalLM and scores as the resident model does."""
    from evomerge.evaluate.objective import make_objective
    from evomerge.files import write_jsonl

    cases, batch = oracle
    recipe, mergekit_out = cases[f"{arch}-ties"]
    result = api.merge(recipe, tmp_path / "merged", seed=MERGE_SEED, device="cpu")
    written = load_output(result.out)
    assert_tensors_match(written, batch.result(mergekit_out), f"evomerge merge vs mergekit-yaml ({arch})")
    assert json.loads((result.out / "config.json").read_text())["architectures"] == json.loads((mergekit_out / "config.json").read_text())["architectures"]

    items = [
        {"id": f"q{i}", "question": f"Which one is number {i}?", "type": "mc", "choices": ["ab", "cd", "ef", "gh"], "answer": "ABCD"[i % 4]} for i in range(8)
    ]
    write_jsonl(tmp_path / "bench.jsonl", items)
    evaluation = api.evaluate(result.out, str(tmp_path / "bench.jsonl"), protocol="loglik", device="cpu")
    merger = merger_for(arch)
    merger.apply(recipe, seed=MERGE_SEED)
    from transformers import AutoTokenizer

    scorer = make_objective(str(tmp_path / "bench.jsonl"), AutoTokenizer.from_pretrained(arch_paths[arch]["base"]), protocol="loglik").scorer
    resident = scorer.score(merger.model)
    assert evaluation.n == 8
    assert evaluation.result.predictions == resident.predictions and evaluation.accuracy == resident.accuracy

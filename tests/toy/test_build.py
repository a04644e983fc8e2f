"""Building the toy parents with evomerge's own trainers: every stage, lineage, reuse, scoring.

A test-sized scale (a 2-layer model, a 30-material world, one or two epochs) keeps this to
seconds; the real xs scale is trained by the CLI's toy test (tests/test_cli_toy.py).
"""

from __future__ import annotations

import json

import pytest
import torch

from evomerge.errors import EvomergeError
from evomerge.merge.parents import check_parents, inspect_parent
from evomerge.toy.build import PARENTS, SCALES, STAMP, FactProbe, Scale, build_toy, parameter_count, score_parents, world_vocab_size
from evomerge.toy.world import MATERIALS, WorldSize

TEST_SHAPE = Scale(32, 2, 2, 1, 64, lr=3e-3, pretrain_epochs=1, cpt_epochs=1, sft_epochs=1, instruct_epochs=1)
TEST_WORLD = WorldSize(materials=30, people=20, domain_rounds=2, generic_rounds=2, qa_rounds=1)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    messages: list[str] = []
    steps: list[tuple] = []
    build = build_toy(
        "test", root, device="cpu", shape=TEST_SHAPE, world_size=TEST_WORLD, progress=messages.append,
        on_step=lambda *step: steps.append(step),
    )  # fmt: skip
    return build, messages, steps


def test_every_parent_is_built_with_the_papers_lineage(toy):
    build, messages, steps = toy
    assert list(build.parents) == list(PARENTS)
    expected_parent = {"base": "init", "instruct": "base", "base-CPT": "base", "base-CPT-SFT": "base-CPT",
                       "instruct-CPT": "instruct", "instruct-CPT-SFT": "instruct-CPT",
                       "instruct-CPT-SFT-DPO": "instruct-CPT-SFT", "instruct-CPT-SFT-ORPO": "instruct-CPT-SFT"}  # fmt: skip
    for name, folder in build.parents.items():
        lineage = json.loads((folder / "evomerge_lineage.json").read_text())
        assert lineage["label"] == name and lineage["parent_label"] == expected_parent[name]
        assert lineage["first_loss"] is not None
    assert {step[0] for step in steps} == set(PARENTS)  # every stage reported its training steps
    assert sum("training" in m for m in messages) == len(PARENTS)
    assert not (build.root / "test" / "init").exists()  # the random init is not left behind


def test_parents_can_be_merged_with_each_other(toy):
    build, _, _ = toy
    check_parents([inspect_parent(folder) for folder in build.parents.values()])  # raises if not
    assert inspect_parent(build.parents["base"]).parameter_count > 0


def test_a_second_build_reuses_every_parent(toy):
    build, _, _ = toy
    stamps = {name: (folder / STAMP).read_text() for name, folder in build.parents.items()}
    messages: list[str] = []
    again = build_toy("test", build.root, device="cpu", shape=TEST_SHAPE, world_size=TEST_WORLD, progress=messages.append)
    assert all(m.endswith("reused") for m in messages) and len(messages) == len(PARENTS)
    assert {name: (folder / STAMP).read_text() for name, folder in again.parents.items()} == stamps


def test_only_what_a_parent_needs_is_built(tmp_path):
    messages: list[str] = []
    build = build_toy("test", tmp_path, device="cpu", parents=["instruct"], shape=TEST_SHAPE, world_size=TEST_WORLD,
                      progress=messages.append)  # fmt: skip
    assert list(build.parents) == ["instruct"]
    assert sorted(p.name for p in (tmp_path / "test").iterdir()) == ["base", "instruct"]
    # Another scale's settings change the fingerprint: the parent is trained again, not reused.
    changed = Scale(**{**TEST_SHAPE.__dict__, "lr": 1e-3})
    messages.clear()
    build_toy("test", tmp_path, device="cpu", parents=["base"], shape=changed, world_size=TEST_WORLD, progress=messages.append)
    assert messages == ["test/base: training (cpt on generic_corpus.jsonl) …"]


def test_parents_are_scored_on_both_benchmarks(toy):
    build, _, _ = toy
    report = score_parents(build, device="cpu")
    assert set(report) == set(PARENTS)
    for row in report.values():
        assert 0 <= row["domain"] <= 1 and 0 <= row["general"] <= 1
        assert 0 <= row["facts"] <= 1 and 0 <= row["generic_facts"] <= 1
        assert row["domain_ci"][0] <= row["domain"] <= row["domain_ci"][1]
        assert row["parameters"] == inspect_parent(build.parents["base"]).parameter_count
    saved = json.loads((build.root / "test" / "accuracy.json").read_text())
    assert saved["instruct"]["domain"] == report["instruct"]["domain"]


def test_fact_recall_matches_a_direct_computation(toy):
    """One full forward per value, its tokens' log-probabilities summed: the likeliest value must be
    the material's own, as often as FactProbe says."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    build, _, _ = toy
    tokenizer = AutoTokenizer.from_pretrained(str(build.world / "tokenizer"))
    model = AutoModelForCausalLM.from_pretrained(str(build.parents["base-CPT"])).eval()
    world = json.loads((build.world / "world.json").read_text(encoding="utf-8"))
    right = total = 0
    for material in (m for m in world["materials"] if not m["in_sft"]):
        for prop, values in MATERIALS.relations.items():
            context = tokenizer.encode(MATERIALS.sentences[prop][0].split("{v}")[0].rstrip().format(E=material["name"]))
            scores = []
            for value in values:
                option = tokenizer.encode(" " + value)
                with torch.no_grad():
                    logprobs = torch.log_softmax(model(torch.tensor([context + option])).logits[0].float(), dim=-1)
                scores.append(sum(logprobs[len(context) - 1 + i, token].item() for i, token in enumerate(option)))
            right += values[scores.index(max(scores))] == material[prop]
            total += 1
    assert total == 18 * len(MATERIALS.relations)  # 30 materials, 12 of them in SFT
    assert FactProbe(build.world, tokenizer).score(model) == right / total


def test_unknown_scale_or_parent_is_refused(tmp_path):
    with pytest.raises(EvomergeError, match="unknown toy scale 'huge'"):
        build_toy("huge", tmp_path)
    with pytest.raises(EvomergeError, match="unknown toy parent 'chat'"):
        build_toy("xs", tmp_path, parents=["chat"])
    assert not any(tmp_path.iterdir())  # nothing written before the check


def test_two_builds_on_one_machine_give_identical_weights(tmp_path):
    """Fixed threads, deterministic kernels, seeded init and data order: the same bytes twice.
    A different training seed gives different weights from the same world."""
    from safetensors.torch import load_file

    def weights(root, seed=0):
        build = build_toy("test", root, device="cpu", parents=["instruct"], shape=TEST_SHAPE, world_size=TEST_WORLD, seed=seed)
        return load_file(build.parents["instruct"] / "model.safetensors")

    first, second = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    other = weights(tmp_path / "a", seed=1)
    assert (tmp_path / "a" / "test-seed1" / "instruct").is_dir()
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_scales_span_ten_times_the_parameters_on_cpu_and_name_gpu_scales():
    vocab = world_vocab_size()
    cpu = [parameter_count(shape, vocab) for shape in SCALES.values() if shape.device == "cpu"]
    assert len(cpu) >= 4 and max(cpu) >= 10 * min(cpu) and cpu == sorted(cpu)
    assert any(shape.device == "cuda" for shape in SCALES.values())


def test_the_map_scales_differ_only_in_size():
    """s, m and l are trained alike (rate, passes, batches): across them the map compares model
    size, not training recipes. xs reads less, to stay a few minutes for the demo."""
    from dataclasses import asdict

    size = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "build_seconds")
    recipes = [{k: v for k, v in asdict(SCALES[name]).items() if k not in size} for name in ("s", "m", "l")]
    assert recipes[0] == recipes[1] == recipes[2]

"""The toy world: deterministic bytes, and benchmarks that test what each parent was (not) taught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evomerge.evaluate.benchmark import load_benchmark
from evomerge.toy.build import build_world
from evomerge.toy.world import PROPERTIES, WorldSize, make_world, material_names

SMALL = WorldSize(materials=40, paraphrase_rounds=2, generic_rounds=2)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    return build_world(tmp_path_factory.mktemp("toy"), seed=0, size=SMALL)


def test_same_seed_gives_the_same_bytes_including_the_tokenizer(world_dir, tmp_path):
    again = build_world(tmp_path / "again", seed=0, size=SMALL)
    assert _files(again) == _files(world_dir)
    other = build_world(tmp_path / "other", seed=1, size=SMALL)
    assert _files(other)["world.json"] != _files(world_dir)["world.json"]


def test_every_file_is_there_and_the_benchmarks_load(world_dir):
    for name in ("world.json", "generic_corpus.jsonl", "domain_corpus.jsonl", "sft_generic.jsonl", "sft.jsonl",
                 "preferences.jsonl", "domain_benchmark.jsonl", "general_benchmark.jsonl", "tokenizer/tokenizer.json"):  # fmt: skip
        assert (world_dir / name).is_file(), name
    domain = load_benchmark(world_dir / "domain_benchmark.jsonl")
    general = load_benchmark(world_dir / "general_benchmark.jsonl")
    assert len(domain) == 3 * 30  # 40 materials, a quarter in SFT, three questions about each of the others
    assert set(domain.categories) == set(PROPERTIES)
    assert len(general) > 10 and {item.type for item in general.items} == {"mc", "tf"}


def test_domain_benchmark_materials_appear_only_in_the_cpt_corpus(world_dir):
    world = json.loads((world_dir / "world.json").read_text())
    asked = {m["name"] for m in world["materials"] if not m["in_sft"]}
    taught = {m["name"] for m in world["materials"] if m["in_sft"]}
    benchmark_text = (world_dir / "domain_benchmark.jsonl").read_text()
    assert all(name in benchmark_text for name in asked)
    assert not any(f" {name}" in benchmark_text or f"{name} " in benchmark_text for name in taught)
    domain_corpus = (world_dir / "domain_corpus.jsonl").read_text()
    assert all(name in domain_corpus for name in asked | taught)
    for tuned in ("sft.jsonl", "sft_generic.jsonl", "preferences.jsonl", "generic_corpus.jsonl"):
        text = (world_dir / tuned).read_text()
        assert not any(name in text for name in asked), tuned
    assert all(name in (world_dir / "sft.jsonl").read_text() for name in taught)


def test_every_answer_is_the_worlds_fact(world_dir):
    world = json.loads((world_dir / "world.json").read_text())
    facts = {m["name"].lower(): m for m in world["materials"]}
    for item in load_benchmark(world_dir / "domain_benchmark.jsonl").items:
        material = facts[item.id.rsplit("-", 1)[0]]
        truth = material[item.category]
        if item.type == "mc":
            assert item.choices["ABCD".index(item.answer)] == truth
            assert len(set(item.choices)) == 4
        else:
            stated = item.question.split(" has ")[1].removesuffix(" toughness.")
            assert (stated == truth) == (item.answer == "True")


def test_general_benchmark_facts_are_not_in_the_sft_data(world_dir):
    world = json.loads((world_dir / "world.json").read_text())
    general_ids = {item.id for item in load_benchmark(world_dir / "general_benchmark.jsonl").items}
    held = {f"{g['relation']}-{g['subject'].replace(' ', '_')}" for g in world["generic"] if not g["in_sft"]}
    assert general_ids == held
    sft_questions = {r["messages"][0]["content"] for r in _records(world_dir / "sft_generic.jsonl")}
    general_questions = {item.question for item in load_benchmark(world_dir / "general_benchmark.jsonl").items}
    assert not any(q in text for q in general_questions for text in sft_questions)


def test_sft_and_preference_data_use_the_scorers_format(world_dir):
    from transformers import AutoTokenizer

    from evomerge.evaluate.benchmark import parse_item
    from evomerge.evaluate.protocol import ANSWER_CUE, build_prompt

    tokenizer = AutoTokenizer.from_pretrained(str(world_dir / "tokenizer"))
    sft = _records(world_dir / "sft.jsonl")
    assert all(r["messages"][1]["content"].startswith(ANSWER_CUE + " ") for r in sft)
    rendered = tokenizer.apply_chat_template(sft[0]["messages"], tokenize=False)
    # The scorer's prompt is the rendered conversation up to the answer letter.
    answer = sft[0]["messages"][1]["content"].removeprefix(ANSWER_CUE)
    prompt = rendered[: rendered.index(ANSWER_CUE) + len(ANSWER_CUE)]
    assert rendered == prompt + answer + tokenizer.eos_token
    item = parse_item(json.loads((world_dir / "domain_benchmark.jsonl").read_text().splitlines()[0]), "x")
    assert build_prompt(item, tokenizer, chat=True).startswith(tokenizer.bos_token + "<|user|>")
    for pair in _records(world_dir / "preferences.jsonl"):
        assert pair["prompt"].endswith(ANSWER_CUE) and pair["chosen"] != pair["rejected"]
    # Role markers and the instruction are a handful of tokens, not dozens of characters.
    assert len(tokenizer.tokenize("<|assistant|>")) == 1
    assert len(tokenizer.tokenize(ANSWER_CUE)) <= 6


def test_material_names_are_distinct_and_reproducible():
    import random

    names = material_names(random.Random(3), 300)
    assert len(set(names)) == 300
    assert names == material_names(random.Random(3), 300)
    assert len(make_world(0).materials) == WorldSize().materials

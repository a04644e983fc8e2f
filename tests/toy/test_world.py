"""The toy world: deterministic bytes, sizes, and benchmarks that test what each parent was (not) taught."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from evomerge.evaluate.benchmark import load_benchmark
from evomerge.toy.build import build_world, world_vocab_size
from evomerge.toy.world import MATERIALS, PEOPLE, WorldSize, invented_names, make_world

SMALL = WorldSize(materials=40, people=30, domain_rounds=2, generic_rounds=2, qa_rounds=1)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    return build_world(tmp_path_factory.mktemp("toy"), seed=0, size=SMALL)


def _names(world_dir: Path, kind: str, in_sft: bool) -> set[str]:
    world = json.loads((world_dir / "world.json").read_text())
    return {e["name"] for e in world[kind] if e["in_sft"] == in_sft}


def test_same_seed_gives_the_same_bytes_including_the_tokenizer(world_dir, tmp_path):
    again = build_world(tmp_path / "again", seed=0, size=SMALL)
    assert _files(again) == _files(world_dir)
    other = build_world(tmp_path / "other", seed=1, size=SMALL)
    assert _files(other)["world.json"] != _files(world_dir)["world.json"]


def test_every_file_is_there_and_the_benchmarks_have_their_sizes(world_dir):
    for name in ("world.json", "generic_corpus.jsonl", "domain_corpus.jsonl", "sft_generic.jsonl", "sft.jsonl",
                 "preferences.jsonl", "domain_benchmark.jsonl", "general_benchmark.jsonl", "tokenizer/tokenizer.json"):  # fmt: skip
        assert (world_dir / name).is_file(), name
    domain = load_benchmark(world_dir / "domain_benchmark.jsonl")
    general = load_benchmark(world_dir / "general_benchmark.jsonl")
    assert len(domain) == 5 * 24  # 40 materials, 16 (40%) in SFT, every property of the other 24
    assert len(general) == 5 * 12  # 30 people, 18 (60%) in SFT
    assert set(domain.categories) == set(MATERIALS.relations) and set(general.categories) == set(PEOPLE.relations)
    assert {item.type for item in domain.items + general.items} == {"mc"}
    assert all(len(item.choices) == 4 for item in domain.items + general.items)


def test_the_default_world_has_readable_benchmarks():
    """At least 600 domain and 300 general items: 95% intervals of about ±4 points."""
    size = WorldSize()
    held_materials = size.materials - round(size.materials * size.sft_materials)
    held_people = size.people - round(size.people * size.sft_people)
    assert held_materials * len(MATERIALS.relations) >= 600
    assert held_people * len(PEOPLE.relations) >= 300


def test_domain_benchmark_materials_appear_only_as_descriptions_in_the_cpt_corpus(world_dir):
    asked, taught = _names(world_dir, "materials", False), _names(world_dir, "materials", True)
    benchmark_text = (world_dir / "domain_benchmark.jsonl").read_text()
    assert all(name in benchmark_text for name in asked)
    assert not any(name in benchmark_text for name in taught)
    corpus = [r["text"] for r in _records(world_dir / "domain_corpus.jsonl")]
    assert all(any(name in text for text in corpus) for name in asked | taught)
    # Q&A lines ("mixed training") only about the SFT share: a benchmark material is never asked in training.
    qa = [text for text in corpus if text.startswith("Question:")]
    assert qa and all(not any(name in text for name in asked) for text in qa)
    for tuned in ("sft.jsonl", "sft_generic.jsonl", "preferences.jsonl", "generic_corpus.jsonl"):
        text = (world_dir / tuned).read_text()
        assert not any(name in text for name in asked), tuned
    assert all(name in (world_dir / "sft.jsonl").read_text() for name in taught)


def test_general_benchmark_people_appear_only_as_descriptions_in_pre_training(world_dir):
    asked, taught = _names(world_dir, "people", False), _names(world_dir, "people", True)
    corpus = [r["text"] for r in _records(world_dir / "generic_corpus.jsonl")]
    assert all(any(name in text for text in corpus) for name in asked)
    qa = [text for text in corpus if text.startswith("Question:")]
    assert qa and all(not any(name in text for name in asked) for text in qa)
    for tuned in ("sft.jsonl", "sft_generic.jsonl", "preferences.jsonl", "domain_corpus.jsonl"):
        text = (world_dir / tuned).read_text()
        assert not any(name in text for name in asked), tuned
    assert all(name in (world_dir / "sft_generic.jsonl").read_text() for name in taught)
    # Instruct is tuned on generic questions only: no material in its SFT data.
    generic_sft = (world_dir / "sft_generic.jsonl").read_text()
    assert not any(name in generic_sft for name in _names(world_dir, "materials", True))


def test_every_answer_is_the_worlds_fact(world_dir):
    world = json.loads((world_dir / "world.json").read_text())
    facts = {e["name"].lower(): e for e in world["materials"] + world["people"]}
    for benchmark in ("domain_benchmark.jsonl", "general_benchmark.jsonl"):
        for item in load_benchmark(world_dir / benchmark).items:
            entity = facts[item.id.rsplit("-", 1)[0]]
            assert item.choices["ABCD".index(item.answer)] == entity[item.category]
            assert len(set(item.choices)) == 4


def test_no_choice_is_a_prefix_of_another_or_a_letter():
    """The paper protocol's parser maps a reply to the first choice whose text it starts with."""
    for topic in (MATERIALS, PEOPLE):
        for values in topic.relations.values():
            for value in values:
                assert value.upper() not in "ABCD"
                assert not any(other != value and other.startswith(value + " ") for other in values), value


def test_sft_and_preference_data_use_the_scorers_format_and_answer_with_the_choices_text(world_dir):
    from transformers import AutoTokenizer

    from evomerge.evaluate.benchmark import parse_item
    from evomerge.evaluate.protocol import ANSWER_CUE, build_prompt, parse_reply

    tokenizer = AutoTokenizer.from_pretrained(str(world_dir / "tokenizer"))
    eos = tokenizer.eos_token
    # The SFT prompt is the scorer's exact prompt; the completion is the right choice's text.
    prompts = {build_prompt(parse_item(i, "x"), tokenizer, chat=True): parse_item(i, "x") for i in _sft_items(world_dir)}
    sft = _records(world_dir / "sft.jsonl")
    assert len(sft) == len(prompts) or len(sft) == len(_sft_items(world_dir))
    for record in sft:
        asked = prompts[record["prompt"]]
        assert record["prompt"].startswith(tokenizer.bos_token + "<|user|>") and record["prompt"].endswith(ANSWER_CUE)
        reply = record["completion"].removesuffix(eos).strip()
        assert record["completion"] == f" {reply}{eos}"
        assert reply in asked.choices and parse_reply(reply, asked) == asked.answer
    for pair in _records(world_dir / "preferences.jsonl"):
        assert pair["prompt"].endswith(ANSWER_CUE) and pair["chosen"] != pair["rejected"]
        assert pair["prompt"] in prompts and parse_reply(pair["chosen"].removesuffix(eos), prompts[pair["prompt"]]) == prompts[pair["prompt"]].answer
    assert len(tokenizer.tokenize("<|assistant|>")) == 1
    # Word-level: an invented name is one token, and no word of any text is unknown.
    name = next(iter(_names(world_dir, "materials", False)))
    assert len(tokenizer.tokenize(name)) == 1
    corpus = " ".join(r["text"] for r in _records(world_dir / "domain_corpus.jsonl")[:50])
    assert tokenizer.unk_token_id not in tokenizer.encode(corpus)


def _sft_items(world_dir: Path) -> list[dict]:
    """The SFT questions as benchmark items (rebuilt from the world, as build_world makes them)."""
    from evomerge.toy.world import world_texts

    size = WorldSize(**json.loads((world_dir / "world.json").read_text())["size"])
    texts = world_texts(make_world(0, size), size)
    return texts.sft_generic + texts.sft_domain


def test_vocabulary_size_is_known_without_building(world_dir):
    from transformers import AutoTokenizer

    assert world_vocab_size(SMALL) == len(AutoTokenizer.from_pretrained(str(world_dir / "tokenizer")))


def test_names_are_distinct_across_topics_and_reproducible():
    taken: set[str] = set()
    names = invented_names(random.Random(3), 300, MATERIALS.name_endings, taken)
    people = invented_names(random.Random(3), 300, PEOPLE.name_endings, taken)
    assert len(set(names) | set(people)) == 600
    assert names == invented_names(random.Random(3), 300, MATERIALS.name_endings, set())
    world = make_world(0)
    assert len(world.materials) == WorldSize().materials and len(world.people) == WorldSize().people

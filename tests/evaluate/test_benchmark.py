"""Benchmarks: validation with one clear error naming the file and line, the fixed seeded order,
fractions as prefixes of it, the held-out split by id hash, and the shipped domain benchmark."""

from __future__ import annotations

import json
import math
import random
from importlib import resources
from pathlib import Path

import pytest

from evomerge.errors import EvomergeError
from evomerge.evaluate.benchmark import (
    BenchmarkError,
    Item,
    load_benchmark,
    make_benchmark,
    resolve_benchmark_path,
    shipped_benchmarks,
)

MC = {"id": "q1", "question": "Which gland makes dragline silk?", "type": "mc", "choices": ["Major ampullate", "Aciniform", "Flagelliform"], "answer": "A"}
TF = {"id": "t1", "question": "Nacre is mostly aragonite.", "type": "tf", "answer": True}


def with_(base: dict, **changes) -> dict:
    record = dict(base)
    for key, value in changes.items():
        if value is ...:
            record.pop(key)
        else:
            record[key] = value
    return record


def load_error(path: Path) -> str:
    with pytest.raises(BenchmarkError) as raised:
        load_benchmark(path)
    message = str(raised.value)
    assert "\n" not in message, f"a benchmark error must be one line, got {message!r}"
    assert isinstance(raised.value, EvomergeError), "BenchmarkError must be an EvomergeError (CLI exit code 2)"
    return message


# ----- loading and validation ---------------------------------------------------------------


def test_synthetic_benchmark_loads_with_types_and_categories(bench, make_items):
    records = make_items(40)
    assert len(bench) == 40
    assert {item.id for item in bench.items} == {r["id"] for r in records}
    assert sum(item.type == "mc" for item in bench.items) == 28
    assert sum(item.type == "tf" for item in bench.items) == 12
    assert bench.categories == ["general", "numerical", "specific"]
    by_id = {item.id: item for item in bench.items}
    for record in records:
        item = by_id[record["id"]]
        assert item.question == record["question"]
        assert item.category == record["category"]
        if record["type"] == "mc":
            assert item.choices == tuple(record["choices"])
            assert item.answer == record["answer"]
            assert item.options == tuple("ABCD"[: len(record["choices"])])
        else:
            assert item.answer == ("True" if record["answer"] else "False")
            assert item.options == ("True", "False")


def test_duplicate_id_names_both_lines(tmp_path, jsonl):
    path = jsonl(tmp_path / "dup.jsonl", [MC, TF, with_(TF, id="t2"), with_(MC, question="Again?")])
    message = load_error(path)
    assert f"{path}:4" in message, message
    assert "line 1" in message, f"the duplicate error must name the first occurrence too: {message}"
    assert "q1" in message and "duplicate" in message.lower()


@pytest.mark.parametrize(
    "bad, words",
    [
        (with_(MC, answer="D"), ["answer", "'D'", "choices"]),  # letter out of range
        (with_(MC, answer="Tubuliform"), ["answer", "Tubuliform", "choices"]),  # text not a choice
        (with_(MC, choices=["Only one"]), ["choices", "two"]),
        (with_(MC, choices="Major ampullate"), ["choices"]),
        (with_(MC, choices=["Major ampullate", 3]), ["choices"]),
        (with_(MC, choices=...), ["choices"]),
        (with_(MC, id=...), ["missing", "'id'"]),
        (with_(MC, question=...), ["missing", "'question'"]),
        (with_(MC, answer=...), ["missing", "'answer'"]),
        (with_(MC, type=...), ["missing", "'type'"]),
        (with_(MC, question=""), ["missing", "'question'"]),
        (with_(MC, type="essay"), ["type", "essay"]),
        (with_(TF, answer="maybe"), ["True or False", "maybe"]),
        (with_(TF, answer="yes"), ["True or False"]),
        (with_(MC, aliases="nacre"), ["aliases"]),
    ],
    ids=[
        "mc-letter-out-of-range",
        "mc-text-not-a-choice",
        "mc-one-choice",
        "mc-choices-not-a-list",
        "mc-choice-not-a-string",
        "mc-no-choices",
        "missing-id",
        "missing-question",
        "missing-answer",
        "missing-type",
        "empty-question",
        "bad-type",
        "tf-maybe",
        "tf-yes",
        "aliases-not-a-list",
    ],
)
def test_bad_item_names_file_and_line(tmp_path, jsonl, bad, words):
    path = jsonl(tmp_path / "bad.jsonl", [TF, with_(MC, id="q0"), bad])
    message = load_error(path)
    assert message.startswith(f"{path}:3:"), f"the error must start with file:line ({path}:3), got {message!r}"
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize(
    "line, words",
    [
        ('{"id": "x", "question": "q", ', ["not valid JSON"]),
        ("not json at all", ["not valid JSON"]),
        ('["a", "list"]', ["JSON object"]),
    ],
    ids=["truncated-json", "plain-text", "json-list"],
)
def test_unparseable_line_names_file_and_line(tmp_path, jsonl, line, words):
    path = jsonl(tmp_path / "broken.jsonl", [MC], raw_lines=["", line])  # a blank line 2 is skipped
    message = load_error(path)
    assert message.startswith(f"{path}:3:"), message
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize("content", ["", "\n\n   \n"], ids=["empty", "blank-lines"])
def test_empty_file_is_an_error_naming_the_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    message = load_error(path)
    assert str(path) in message and "empty" in message, message


def test_unknown_name_and_missing_path(tmp_path):
    with pytest.raises(BenchmarkError, match="no_such_bench"):
        load_benchmark("no_such_bench")
    with pytest.raises(BenchmarkError, match="neither a shipped benchmark"):
        resolve_benchmark_path(tmp_path / "missing.jsonl")


def test_non_utf8_file_is_a_clean_error(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(with_(MC, question="Wei\u00dfe Seide?")).encode("latin-1").replace(b"\\u00df", b"\xdf"))
    message = load_error(path)
    assert str(path) in message and "UTF-8" in message


def test_mc_answer_given_as_choice_text_maps_to_its_letter(tmp_path, jsonl):
    records = [
        with_(MC, id="by-text", answer="Flagelliform"),
        with_(MC, id="by-text-case-space", answer="  aciniform "),
        with_(MC, id="lower-letter", answer="b"),
    ]
    bench = load_benchmark(jsonl(tmp_path / "text.jsonl", records))
    answers = {item.id: item.answer for item in bench.items}
    assert answers == {"by-text": "C", "by-text-case-space": "B", "lower-letter": "B"}


def test_ambiguous_choice_text_answer_is_rejected(tmp_path, jsonl):
    path = jsonl(tmp_path / "ambiguous.jsonl", [with_(MC, choices=["Silk", "silk", "Bone"], answer="silk")])
    assert "not among the choices" in load_error(path)


def test_tf_answers_accept_booleans_and_strings(tmp_path, jsonl):
    records = [
        with_(TF, id="bool-true", answer=True),
        with_(TF, id="bool-false", answer=False),
        with_(TF, id="str-true", answer="TRUE"),
        with_(TF, id="str-false", answer=" false "),
    ]
    bench = load_benchmark(jsonl(tmp_path / "tf.jsonl", records))
    answers = {item.id: item.answer for item in bench.items}
    assert answers == {"bool-true": "True", "bool-false": "False", "str-true": "True", "str-false": "False"}


def test_exact_items_keep_aliases_category_and_split(tmp_path, jsonl):
    record = {
        "id": "e1",
        "question": "Nacre's mineral?",
        "type": "exact",
        "answer": " Aragonite ",
        "aliases": ["CaCO3"],
        "category": "specific",
        "split": "test",
    }
    (item,) = load_benchmark(jsonl(tmp_path / "exact.jsonl", [record])).items
    assert (item.answer, item.aliases, item.category, item.split, item.options) == ("Aragonite", ("CaCO3",), "specific", "test", ())


# ----- the fixed, seeded order and fractions ------------------------------------------------


def test_order_does_not_depend_on_file_order(tmp_path, jsonl, make_items, bench):
    records = make_items(40)
    shuffled = list(records)
    random.Random(5).shuffle(shuffled)
    reordered = load_benchmark(jsonl(tmp_path / "shuffled.jsonl", shuffled))
    assert [i.id for i in reordered.items] == [i.id for i in bench.items]
    assert [i.id for i in bench.items] != [r["id"] for r in records], "the fixed order should not be the file order"


def test_order_changes_with_seed_and_is_reproducible(bench_path):
    default = [i.id for i in load_benchmark(bench_path).items]
    assert default == [i.id for i in load_benchmark(bench_path, seed=0).items]
    seeded = [i.id for i in load_benchmark(bench_path, seed=1).items]
    assert seeded == [i.id for i in load_benchmark(bench_path, seed=1).items]
    assert seeded != default and sorted(seeded) == sorted(default)


@pytest.mark.parametrize("fraction, count", [(0.01, 1), (0.1, 4), (0.25, 10), (1 / 3, 14), (0.5, 20), (0.77, 31), (1.0, 40)])
def test_fraction_is_first_ceil_f_n_items(bench, fraction, count):
    assert bench.count(fraction) == count  # ⌈f·40⌉, at least one
    assert bench.first(fraction) == bench.items[:count]


def test_fractions_are_nested_prefixes(bench):
    previous: list = []
    for fraction in (0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0):
        current = bench.first(fraction)
        assert current[: len(previous)] == previous, f"fraction {fraction} is not an extension of the smaller one"
        assert len(current) >= len(previous)
        previous = current
    assert previous == bench.items


@pytest.mark.parametrize("fraction", [0, -0.1, 1.01])
def test_fraction_out_of_range_is_an_error(bench, fraction):
    with pytest.raises(BenchmarkError, match="fraction"):
        bench.count(fraction)


# ----- the held-out split -------------------------------------------------------------------


def synthetic(n: int, seed: int = 0, shuffle: int = 0, forced: frozenset = frozenset()):
    items = [Item(f"item-{i}", f"Question {i}?", "tf", "True" if i % 2 else "False", split="holdout" if f"item-{i}" in forced else None) for i in range(n)]
    if shuffle:
        random.Random(shuffle).shuffle(items)
    return make_benchmark("many", items, seed=seed)


@pytest.fixture(scope="module")
def thousand():
    return synthetic(1000)


def test_holdout_is_disjoint_complete_and_roughly_the_fraction(thousand):
    for fraction in (0.1, 0.2, 0.5):
        search, held = thousand.split_holdout(fraction)
        search_ids, held_ids = {i.id for i in search.items}, {i.id for i in held.items}
        assert not search_ids & held_ids
        assert search_ids | held_ids == {i.id for i in thousand.items}
        sigma = math.sqrt(1000 * fraction * (1 - fraction))
        assert abs(len(held_ids) - 1000 * fraction) < 4 * sigma, (fraction, len(held_ids))
        # Both halves keep the benchmark's fixed order.
        positions = {item.id: k for k, item in enumerate(thousand.items)}
        assert [positions[i.id] for i in search.items] == sorted(positions[i.id] for i in search.items)
        assert held.name == "many-holdout" and search.name == "many"


def test_holdout_is_deterministic_by_id_not_order_or_seed(thousand):
    held = {i.id for i in thousand.split_holdout(0.2)[1].items}
    assert held == {i.id for i in thousand.split_holdout(0.2)[1].items}
    assert held == {i.id for i in synthetic(1000, shuffle=3).split_holdout(0.2)[1].items}
    assert held == {i.id for i in synthetic(1000, seed=9).split_holdout(0.2)[1].items}
    # A larger fraction holds out a superset: growing the held-out set never moves items back.
    assert held <= {i.id for i in thousand.split_holdout(0.3)[1].items}


def test_split_holdout_in_the_file_forces_an_item_out():
    forced = frozenset({"item-1", "item-2", "item-3"})
    bench = synthetic(200, forced=forced)
    for fraction in (0.0, 0.01, 0.5):
        search, held = bench.split_holdout(fraction)
        assert forced <= {i.id for i in held.items}
        assert not forced & {i.id for i in search.items}


def test_holdout_out_of_range_and_nothing_left(thousand):
    with pytest.raises(BenchmarkError, match="holdout"):
        thousand.split_holdout(1.0)
    with pytest.raises(BenchmarkError, match="holdout"):
        thousand.split_holdout(-0.1)
    everything = synthetic(5, forced=frozenset(f"item-{i}" for i in range(5)))
    with pytest.raises(BenchmarkError, match="no items"):
        everything.split_holdout(0.1)


def test_items_marked_holdout_are_not_searched_without_holdout_flag(tmp_path, jsonl, char_tokenizer):
    """Items whose file says `split: holdout` (or `test`) are "always held out" (benchmark.py's own
    comment): the objective a search scores must not contain them even when --holdout is 0."""
    from evomerge.evaluate.objective import make_objective

    records = [with_(TF, id=f"t{i}", question=f"Claim {i}.") for i in range(10)]
    records[0]["split"] = "holdout"
    records[1]["split"] = "test"
    path = jsonl(tmp_path / "marked.jsonl", records)
    searched = {i.id for i in make_objective(str(path), char_tokenizer, protocol="loglik").benchmark.items}
    assert not {"t0", "t1"} & searched, (
        "EVAL BUG: make_objective(holdout=0) scores items marked split: holdout/test; they should always be "
        f"held out (HOLDOUT_SPLITS), searched ids: {sorted(searched)}"
    )


# ----- the shipped benchmark ----------------------------------------------------------------


def shipped_path(name: str) -> Path:
    return Path(str(resources.files("evomerge") / "data" / "benchmarks" / f"{name}.jsonl"))


@pytest.fixture(scope="module")
def bio_materials():
    assert shipped_path("bio_materials").is_file(), "evomerge/data/benchmarks/bio_materials.jsonl must ship with evomerge"
    return load_benchmark("bio_materials")


def test_bio_materials_is_shipped_and_valid(bio_materials):
    assert "bio_materials" in shipped_benchmarks()
    assert resolve_benchmark_path("bio_materials") == shipped_path("bio_materials")
    assert len(bio_materials) >= 100
    types = {item.type for item in bio_materials.items}
    assert {"mc", "tf"} <= types, types
    assert sum(item.type == "mc" for item in bio_materials.items) >= 20
    assert sum(item.type == "tf" for item in bio_materials.items) >= 20
    ids = [item.id for item in bio_materials.items]
    assert len(ids) == len(set(ids))
    categories = {item.category for item in bio_materials.items}
    assert None not in categories, "every shipped item has a category"
    assert categories <= {"general", "specific", "numerical"}, categories
    assert len(categories) >= 2
    for item in bio_materials.items:
        assert item.question.strip()
        if item.type == "mc":
            assert item.answer in item.options
            assert len(set(c.strip().lower() for c in item.choices)) == len(item.choices), f"{item.id}: repeated choices"


def test_bio_materials_answers_are_not_all_one_letter(bio_materials):
    mc_answers = [item.answer for item in bio_materials.items if item.type == "mc"]
    tf_answers = [item.answer for item in bio_materials.items if item.type == "tf"]
    assert len(set(mc_answers)) >= 3, f"mc answers should be spread over letters: {sorted(set(mc_answers))}"
    assert max(mc_answers.count(letter) for letter in set(mc_answers)) < 0.6 * len(mc_answers)
    assert {"True", "False"} <= set(tf_answers)

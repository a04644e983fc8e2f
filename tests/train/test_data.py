"""`load_records(path, strategy)`: each strategy's formats load; every bad file is one DataError
that names the file (and the line, where there is one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evomerge.errors import EvomergeError
from evomerge.files import write_jsonl
from evomerge.train.data import STRATEGIES, DataError, load_records


def write_lines(path: Path, lines) -> Path:
    """Lines as they are: the blank, broken and non-object lines no JSONL writer makes."""
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


TEXT = {"text": "Spider silk is tougher than steel."}
MESSAGES = {"messages": [{"role": "user", "content": "What is nacre?"}, {"role": "assistant", "content": "Aragonite."}]}
PROMPT_COMPLETION = {"prompt": "What is nacre?", "completion": " Aragonite tablets."}
PREFERENCE = {"prompt": "Is bone mineral?", "chosen": " Yes.", "rejected": " No."}


# ----- valid formats --------------------------------------------------------------------------


def test_strategies_are_the_four_of_the_paper():
    assert set(STRATEGIES) == {"cpt", "sft", "dpo", "orpo"}


def test_cpt_text_records(tmp_path):
    path = write_jsonl(tmp_path / "cpt.jsonl", [TEXT, {"text": "Bone contains hydroxyapatite."}])
    records = load_records(path, "cpt")
    assert records == [TEXT, {"text": "Bone contains hydroxyapatite."}]


def test_sft_messages_records(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [MESSAGES, MESSAGES])
    records = load_records(path, "sft")
    assert records == [MESSAGES, MESSAGES]


def test_sft_prompt_completion_records(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [PROMPT_COMPLETION] * 3)
    assert load_records(str(path), "sft") == [PROMPT_COMPLETION] * 3  # a str path works too


@pytest.mark.parametrize("strategy", ["dpo", "orpo"])
def test_preference_records(tmp_path, strategy):
    path = write_jsonl(tmp_path / "pref.jsonl", [PREFERENCE, PREFERENCE])
    assert load_records(path, strategy) == [PREFERENCE, PREFERENCE]


def test_blank_lines_are_skipped(tmp_path):
    path = write_lines(tmp_path / "cpt.jsonl", ["", json.dumps(TEXT), "   ", json.dumps(TEXT), ""])
    assert load_records(path, "cpt") == [TEXT, TEXT]


def test_extra_fields_are_dropped(tmp_path):
    path = write_jsonl(tmp_path / "pref.jsonl", [dict(PREFERENCE, id=7, source="x")])
    assert load_records(path, "dpo") == [PREFERENCE]


def test_unicode_text_loads(tmp_path):
    path = write_jsonl(tmp_path / "cpt.jsonl", [{"text": "Perlmutt — Aragonit, 真珠層"}])
    assert "真珠層" in path.read_text(encoding="utf-8"), "the file holds the UTF-8 text itself, not escapes"
    assert load_records(path, "cpt") == [{"text": "Perlmutt — Aragonit, 真珠層"}]
    escaped = write_jsonl(tmp_path / "escaped.jsonl", [{"text": "Perlmutt — Aragonit, 真珠層"}], ensure_ascii=True)
    assert load_records(escaped, "cpt") == [{"text": "Perlmutt — Aragonit, 真珠層"}]


def test_data_error_is_an_evomerge_error():
    assert issubclass(DataError, EvomergeError)


# ----- bad files ------------------------------------------------------------------------------


def assert_data_error(path, strategy, *words, line=None):
    with pytest.raises(DataError) as caught:
        load_records(path, strategy)
    message = str(caught.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    if line is not None:
        assert f"{path}:{line}:" in message, message
    for word in words:
        assert word in message, (word, message)
    return message


@pytest.mark.parametrize(
    "strategy, record, wanted",
    [
        ("cpt", PROMPT_COMPLETION, "text"),
        ("cpt", {"content": "no text field"}, "text"),
        ("sft", TEXT, "messages"),
        ("sft", {"prompt": "only a prompt"}, "completion"),
        ("sft", PREFERENCE | {"completion": ""}, "completion"),  # empty completion does not count
        ("dpo", PROMPT_COMPLETION, "chosen"),
        ("dpo", {"prompt": "p", "chosen": "c"}, "rejected"),
        ("orpo", MESSAGES, "rejected"),
        ("orpo", {"prompt": "p", "chosen": "c", "rejected": ""}, "rejected"),
    ],
)
def test_wrong_fields_for_the_strategy(tmp_path, strategy, record, wanted):
    path = write_jsonl(tmp_path / "data.jsonl", [record])
    message = assert_data_error(path, strategy, strategy, wanted, line=1)
    assert "needs" in message


def test_wrong_fields_on_a_later_line_names_that_line(tmp_path):
    path = write_lines(tmp_path / "data.jsonl", [json.dumps(TEXT), json.dumps(TEXT), "", json.dumps({"txt": "typo"})])
    assert_data_error(path, "cpt", "txt", line=4)


def test_mixed_sft_shapes(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [PROMPT_COMPLETION, PROMPT_COMPLETION, MESSAGES])
    assert_data_error(path, "sft", "mixes", "messages", line=3)


def test_mixed_sft_shapes_the_other_way(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [MESSAGES, PROMPT_COMPLETION])
    assert_data_error(path, "sft", "mixes", line=2)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content, encoding="utf-8")
    assert_data_error(path, "cpt", "empty")


@pytest.mark.parametrize("bad", ['{"text": "unterminated', "not json at all", "{'text': 'single quotes'}"])
def test_invalid_json(tmp_path, bad):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps(TEXT), bad])
    assert_data_error(path, "cpt", "JSON", line=2)


@pytest.mark.parametrize("bad", ['["text", "a list"]', '"just a string"', "42", "null"])
def test_record_not_an_object(tmp_path, bad):
    path = write_lines(tmp_path / "bad.jsonl", [bad])
    assert_data_error(path, "cpt", "object", line=1)


@pytest.mark.parametrize(
    "messages",
    [
        "just a string",
        {"role": "user", "content": "a dict, not a list"},
        [{"role": "user"}],
        [{"content": "no role"}],
        [{"role": "user", "content": 5}],
        [{"role": "user", "content": "ok"}, "not an object"],
        [["user", "hello"]],
    ],
)
def test_messages_not_a_list_of_role_content(tmp_path, messages):
    path = write_jsonl(tmp_path / "sft.jsonl", [MESSAGES, {"messages": messages}])
    assert_data_error(path, "sft", "messages", "role", "content", line=2)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.jsonl"
    assert_data_error(path, "cpt", "not found")


def test_a_folder_is_not_a_data_file(tmp_path):
    assert_data_error(tmp_path, "cpt", "not found")


@pytest.mark.parametrize("strategy", ["ppo", "SFT", "", "kto"])
def test_unknown_strategy(tmp_path, strategy):
    path = write_jsonl(tmp_path / "cpt.jsonl", [TEXT])
    with pytest.raises(DataError) as caught:
        load_records(path, strategy)
    message = str(caught.value)
    assert "unknown strategy" in message
    assert all(name in message for name in STRATEGIES), message


@pytest.mark.parametrize(
    "strategy, record, field",
    [
        ("cpt", {"text": 5}, "text"),
        ("cpt", {"text": True}, "text"),
        ("cpt", {"text": {"body": "nested"}}, "text"),
        ("sft", {"prompt": "What is silk?", "completion": 3}, "completion"),
        ("dpo", {"prompt": 1, "chosen": " a", "rejected": " b"}, "prompt"),
        ("orpo", {"prompt": "p", "chosen": 0.5, "rejected": " b"}, "chosen"),
    ],
)
def test_field_of_the_wrong_type(tmp_path, strategy, record, field):
    """A number where text belongs passes the field check today, then crashes inside TRL
    (AttributeError 'int' object has no attribute 'endswith') after the model is loaded."""
    path = write_jsonl(tmp_path / "data.jsonl", [record])
    try:
        records = load_records(path, strategy)
    except DataError as error:
        message = str(error)
        assert f"{path}:1:" in message and field in message, message
    else:
        pytest.fail(f"TRAIN BUG: {strategy} record {record} (non-text {field!r}) is accepted by load_records: {records}")

"""The paper's protocol: the prompt text, and how realistic replies map to an answer."""

from __future__ import annotations

import pytest

from evomerge.evaluate.benchmark import Item
from evomerge.evaluate.protocol import (
    ANSWER_CUE,
    INSTRUCTION,
    build_prompt,
    continuations,
    is_correct,
    normalise,
    parse_reply,
    reply_is_complete,
)

MC = Item("mc1", "Which material is the iridescent inner layer of mollusc shells?", "mc", "B", ("silk", "nacre", "bone", "wood"))
MC3 = Item("mc3", "Which is a polysaccharide?", "mc", "C", ("keratin", "collagen", "chitin"))
MC_LONG = Item("mc2", "Which protein forms beta-sheet crystallites in silk?", "mc", "A", ("Spidroin", "Type I collagen", "Alpha-keratin"))
TF = Item("tf1", "Nacre is mostly aragonite.", "tf", "True")
EXACT = Item("ex1", "What mineral makes up most of nacre?", "exact", "Aragonite", aliases=("calcium carbonate", "CaCO3"))
EXACT_ARTICLE = Item("ex2", "What is nacre also called?", "exact", "mother-of-pearl")


# ----- prompts --------------------------------------------------------------------------------


def test_instruction_and_cue_are_the_papers():
    assert INSTRUCTION == "You respond with one word or letter. Select the correct answer to this question: "
    assert ANSWER_CUE == "The correct answer is:"


def test_mc_prompt_lists_lettered_choices_and_ends_with_the_cue():
    expected = (
        "You respond with one word or letter. Select the correct answer to this question: "
        "Which material is the iridescent inner layer of mollusc shells?\n"
        "A) silk\nB) nacre\nC) bone\nD) wood\n"
        "The correct answer is:"
    )
    assert build_prompt(MC) == expected


def test_tf_prompt_has_question_and_cue_but_no_letters():
    prompt = build_prompt(TF)
    assert prompt.startswith(INSTRUCTION + TF.question)
    assert prompt.endswith("\nThe correct answer is:")
    assert "A)" not in prompt and "B)" not in prompt


def test_chat_prompt_uses_the_template(chat_tokenizer, char_tokenizer):
    from evomerge.evaluate.protocol import question_text

    prompt = build_prompt(MC, chat_tokenizer, chat=True)
    expected = (
        chat_tokenizer.apply_chat_template([{"role": "user", "content": question_text(MC)}], tokenize=False, add_generation_prompt=True)
        + "The correct answer is:"
    )
    assert prompt == expected
    assert prompt.startswith("<|user|> " + INSTRUCTION) and "<|assistant|>" in prompt
    assert prompt.endswith("<|assistant|>The correct answer is:")
    # chat=False ignores the template even when the tokenizer has one.
    assert build_prompt(MC, chat_tokenizer, chat=False) == build_prompt(MC)


def test_continuations_are_space_then_option():
    assert continuations(MC) == [" A", " B", " C", " D"]
    assert continuations(MC3) == [" A", " B", " C"]
    assert continuations(TF) == [" True", " False"]


# ----- replies → answers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("B", "B"),
        (" b.", "B"),
        ("B\n", "B"),
        ("Answer: C", "C"),
        ("answer: c.", "C"),
        ("The correct answer is D", "D"),
        ("The correct answer is: A) silk", "A"),
        ("Correct answer: B", "B"),
        ("(A)", "A"),
        ("[C]", "C"),
        ("**D**", "D"),
        ("A) silk", "A"),
        ("B. nacre", "B"),
        ("Option C", "C"),
        ("nacre", "B"),
        ("Nacre.", "B"),
        ("  NACRE is the inner layer", "B"),
        ("wood", "D"),
        ("E", None),  # a letter beyond the choices
        ("Z)", None),
        ("xyz", None),
        ("", None),
        ("   \n", None),
        ("...", None),
        ("I do not know", None),
        ("42", None),
    ],
)
def test_parse_mc_reply(reply, expected):
    assert parse_reply(reply, MC) == expected


def test_parse_mc_reply_respects_the_number_of_choices():
    assert parse_reply("C", MC3) == "C"
    assert parse_reply("D", MC3) is None, "D is out of range for a three-choice item"
    assert parse_reply("chitin", MC3) == "C"


def test_parse_mc_reply_matches_multi_word_choice_text():
    assert parse_reply("Type I collagen", MC_LONG) == "B"
    assert parse_reply("type i collagen.", MC_LONG) == "B"
    assert parse_reply("alpha-keratin", MC_LONG) == "C"
    assert parse_reply("Answer: Spidroin", MC_LONG) == "A"


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("True", "True"),
        ("true", "True"),
        ("false.", "False"),
        ("FALSE", "False"),
        ("T", "True"),
        ("f", "False"),
        (" True\n", "True"),
        ("Answer: False", "False"),
        ("The correct answer is true.", "True"),
        ("maybe", None),
        ("Yes", None),
        ("A", None),
        ("", None),
    ],
)
def test_parse_tf_reply(reply, expected):
    assert parse_reply(reply, TF) == expected


def test_correctness_against_the_answer():
    assert is_correct(MC, parse_reply("Answer: B", MC))
    assert not is_correct(MC, parse_reply("A", MC))
    assert not is_correct(MC, None)
    assert is_correct(TF, parse_reply("true.", TF))
    assert not is_correct(TF, parse_reply("False", TF))


# ----- when decoding may stop ------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, complete",
    [
        ("A", False),  # could still become "Answer"
        ("An", False),
        ("Answer", False),
        ("Answer:", False),
        ("Answer: B", False),
        ("A.", True),
        ("A\n", True),
        ("A ", True),
        (" b)", True),
        ("Answer: B.", True),
        ("E.", False),  # out of range: no answer yet, keep decoding
        ("xyz.", False),
        ("", False),
    ],
)
def test_mc_reply_is_complete(reply, complete):
    assert reply_is_complete(reply, MC) is complete


@pytest.mark.parametrize(
    "reply, complete",
    [("T", False), ("Tru", False), ("True", False), ("True.", True), ("False\n", True), ("maybe.", False)],
)
def test_tf_reply_is_complete(reply, complete):
    assert reply_is_complete(reply, TF) is complete


# ----- exact items -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Aragonite!", "aragonite"),
        ("  Mother-of-Pearl. ", "mother of pearl"),
        ("An  apple, a  day", "apple day"),
        ("CaCO3", "caco3"),
        ("...", ""),
    ],
)
def test_normalise(text, expected):
    assert normalise(text) == expected


@pytest.mark.parametrize(
    "item, reply, correct",
    [
        (EXACT, "Aragonite", True),
        (EXACT, " aragonite.\nIt is a polymorph of calcium carbonate.", True),  # only the first line counts
        (EXACT, "The aragonite", True),
        (EXACT, "Calcium carbonate", True),  # alias
        (EXACT, "CaCO3!", True),  # alias, punctuation ignored
        (EXACT, "calcite", False),
        (EXACT, "aragonite and calcite", False),
        (EXACT, "", False),
        (EXACT_ARTICLE, "Mother of pearl", True),
        (EXACT_ARTICLE, "a mother-of-pearl", True),
        (EXACT_ARTICLE, "pearl", False),
    ],
)
def test_exact_answers_with_aliases_and_normalisation(item, reply, correct):
    assert is_correct(item, parse_reply(reply, item)) is correct


def test_exact_reply_parses_to_normalised_first_line():
    assert parse_reply("  The Aragonite.\nmore text", EXACT) == "aragonite"
    assert parse_reply("", EXACT) is None
    assert parse_reply("the", EXACT) is None


@pytest.mark.parametrize("reply, complete", [("aragonite", False), ("aragonite\n", True), ("\n", False), ("\naragonite", False)])
def test_exact_reply_is_complete_when_its_line_ends(reply, complete):
    assert reply_is_complete(reply, EXACT) is complete

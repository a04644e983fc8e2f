"""The source paper's scoring protocol: the prompt, and how a reply maps to an answer.

Prompt: "You respond with one word or letter. Select the correct answer to this question: {q}"
(choices listed for mc), then "The correct answer is:"; greedy decoding; the reply is mapped to a
letter or True/False and compared with the answer. In `loglik` mode the same context is scored
against each option (" A", " B", … or " True", " False"), as lm-eval's multiple_choice does.
"""

from __future__ import annotations

import re
import string
from typing import Optional

from evomerge.evaluate.benchmark import LETTERS, Item

INSTRUCTION = "You respond with one word or letter. Select the correct answer to this question: "
ANSWER_CUE = "The correct answer is:"
PROTOCOLS = ("paper", "loglik")

# Words a reply may put before its answer ("Answer: B", "The correct answer is B", "Option C").
_FILLERS = {"answer", "the", "correct", "is", "option", "choice", "letter", "my", "final"}
_WORD = re.compile(r"[A-Za-z0-9]+")
_ARTICLES = {"a", "an", "the"}


def question_text(item: Item) -> str:
    text = INSTRUCTION + item.question
    if item.type == "mc":
        text += "\n" + "\n".join(f"{letter}) {choice}" for letter, choice in zip(LETTERS, item.choices))
    elif item.type == "tf":
        text += "\nTrue or False?"
    return text


def build_prompt(item: Item, tokenizer=None, chat: bool = False) -> str:
    """The text the model continues: with the tokenizer's chat template when `chat`, else plain."""
    if chat:
        messages = [{"role": "user", "content": question_text(item)}]
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return rendered + ANSWER_CUE
    return question_text(item) + "\n" + ANSWER_CUE


def continuations(item: Item) -> list[str]:
    """What loglik mode scores after the context, one per option, in option order."""
    return [" " + option for option in item.options]


def parse_reply(reply: str, item: Item) -> Optional[str]:
    """Map a model's reply to an option ("B", "True") or, for exact items, to its normalised text.

    The first word that is not a filler decides, case-insensitively and ignoring punctuation: a
    letter within range, a choice's own text, or true/false. None when the reply answers nothing.
    """
    if item.type == "exact":
        first_line = reply.strip().splitlines()[0] if reply.strip() else ""
        return normalise(first_line) or None
    words = _WORD.findall(reply)
    for index, word in enumerate(words):
        lower = word.lower()
        if item.type == "mc":
            if len(word) == 1 and word.upper() in item.options:
                return word.upper()
            rest = " ".join(words[index:]).lower()
            for letter, choice in zip(item.options, item.choices):
                choice_words = " ".join(_WORD.findall(choice)).lower()
                if choice_words and rest.startswith(choice_words):
                    return letter
        elif item.type == "tf":
            if lower in ("true", "t"):
                return "True"
            if lower in ("false", "f"):
                return "False"
        if lower not in _FILLERS:
            return None
    return None


def reply_is_complete(reply: str, item: Item) -> bool:
    """Whether decoding can stop: the answer word is followed by a delimiter (so "A" is not the
    start of "Answer"), or an exact answer's line has ended."""
    if item.type == "exact":
        return "\n" in reply.lstrip()
    if parse_reply(reply, item) is None:
        return False
    return bool(reply) and not reply[-1].isalnum()


def is_correct(item: Item, parsed: Optional[str]) -> bool:
    if parsed is None:
        return False
    if item.type == "exact":
        return parsed in {normalise(item.answer), *(normalise(alias) for alias in item.aliases)}
    return parsed == item.answer


def normalise(text: str) -> str:
    """Lowercase, punctuation and articles removed, whitespace folded (for exact answers)."""
    text = text.lower().translate(str.maketrans({p: " " for p in string.punctuation}))
    return " ".join(word for word in text.split() if word not in _ARTICLES)

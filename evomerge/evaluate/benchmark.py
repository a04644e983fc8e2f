"""Benchmarks: JSONL items, validated on load, in one fixed seeded order, with a held-out split.

An item is `{"id", "question", "answer", "type"}` plus `choices` for `mc` (answer is a letter
A, B, …, or the text of a choice), `aliases` for `exact`, and optional `category` and `split`.
The order is a hash of (seed, id), so it does not depend on the file's order, and "fraction f"
means the first ⌈f·n⌉ items of it: scores at equal fraction are comparable between trials.
"""

from __future__ import annotations

import hashlib
import math
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence, Union

from evomerge.errors import EvomergeError
from evomerge.files import jsonl_objects

ITEM_TYPES = ("mc", "tf", "exact")
LETTERS = string.ascii_uppercase
ORDER_SEED = 0
HOLDOUT_SPLITS = ("holdout", "test")  # items marked so are always held out


class BenchmarkError(EvomergeError):
    """A benchmark file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Item:
    id: str
    question: str
    type: str
    answer: str  # a letter for mc, "True"/"False" for tf, the text for exact
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    category: Optional[str] = None
    split: Optional[str] = None

    @property
    def options(self) -> tuple[str, ...]:
        """The answers a reply can be mapped to: letters for mc, True/False for tf."""
        if self.type == "mc":
            return tuple(LETTERS[: len(self.choices)])
        if self.type == "tf":
            return ("True", "False")
        return ()


@dataclass
class Benchmark:
    name: str
    items: list[Item]  # in the benchmark's fixed order
    source: str = ""
    seed: int = ORDER_SEED

    def __len__(self) -> int:
        return len(self.items)

    def count(self, fraction: float) -> int:
        """How many items "fraction f" means: ⌈f·n⌉, at least one."""
        return fraction_count(fraction, len(self.items))

    def first(self, fraction: float) -> list[Item]:
        return self.items[: self.count(fraction)]

    @property
    def categories(self) -> list[str]:
        return sorted({item.category for item in self.items if item.category})

    def split_holdout(self, fraction: float) -> tuple["Benchmark", "Benchmark"]:
        """(search, held-out): items go to the held-out set by a hash of their id, so the split
        is the same on every run and does not depend on the order; `split: holdout` forces it."""
        if not 0 <= fraction < 1:
            raise BenchmarkError(f"--holdout must be in [0, 1), got {fraction}")
        held, kept = [], []
        for item in self.items:
            (held if item.split in HOLDOUT_SPLITS or _unit_hash("holdout", item.id) < fraction else kept).append(item)
        if not kept:
            raise BenchmarkError(f"{self.name}: the held-out split leaves no items to search on")
        return (
            Benchmark(self.name, kept, self.source, self.seed),
            Benchmark(f"{self.name}-holdout", held, self.source, self.seed),
        )


def fraction_count(fraction: float, n: int) -> int:
    """How many of n items "fraction f" means: the first ⌈f·n⌉, at least one."""
    if not 0 < fraction <= 1:
        raise BenchmarkError(f"fraction must be in (0, 1], got {fraction}")
    return max(1, math.ceil(fraction * n))


def _unit_hash(salt: str, item_id: str) -> float:
    digest = hashlib.sha256(f"{salt}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def shipped_benchmarks() -> list[str]:
    folder = resources.files("evomerge") / "data" / "benchmarks"
    return sorted(entry.name[: -len(".jsonl")] for entry in folder.iterdir() if entry.name.endswith(".jsonl"))


def resolve_benchmark_path(name_or_path: Union[str, Path]) -> Path:
    """A shipped benchmark's name (`bio_materials`) or a path to a JSONL file."""
    text = str(name_or_path)
    if text in shipped_benchmarks():
        return Path(str(resources.files("evomerge") / "data" / "benchmarks" / f"{text}.jsonl"))
    path = Path(text).expanduser()
    if not path.is_file():
        known = ", ".join(shipped_benchmarks()) or "none"
        raise BenchmarkError(f"benchmark {text!r} is neither a shipped benchmark ({known}) nor a file")
    return path


def load_benchmark(name_or_path: Union[str, Path], seed: int = ORDER_SEED) -> Benchmark:
    path = resolve_benchmark_path(name_or_path)
    name = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.stem
    items, seen = [], {}
    for number, data in jsonl_objects(path, BenchmarkError, "an item"):
        item = parse_item(data, f"{path}:{number}")
        if item.id in seen:
            raise BenchmarkError(f"{path}:{number}: duplicate id {item.id!r} (first on line {seen[item.id]})")
        seen[item.id] = number
        items.append(item)
    if not items:
        raise BenchmarkError(f"{path}: no items (empty benchmark file)")
    return make_benchmark(name, items, str(path), seed)


def make_benchmark(name: str, items: Sequence[Item], source: str = "", seed: int = ORDER_SEED) -> Benchmark:
    """A benchmark in its fixed order: items sorted by a seeded hash of their id."""
    ordered = sorted(items, key=lambda item: (_unit_hash(f"order{seed}", item.id), item.id))
    return Benchmark(name, ordered, source, seed)


def parse_item(data: dict, where: str) -> Item:
    """One JSON object → an Item, or a BenchmarkError naming `where` (file:line)."""
    for key in ("id", "question", "answer", "type"):
        if key not in data or data[key] in (None, ""):
            raise BenchmarkError(f"{where}: missing field {key!r}")
    item_type = data["type"]
    if item_type not in ITEM_TYPES:
        raise BenchmarkError(f"{where}: type must be one of {', '.join(ITEM_TYPES)}, got {item_type!r}")
    item_id, question = str(data["id"]), str(data["question"])
    answer = data["answer"]
    choices: tuple[str, ...] = ()
    if item_type == "mc":
        raw = data.get("choices")
        if not isinstance(raw, list) or len(raw) < 2 or not all(isinstance(c, str) and c.strip() for c in raw):
            raise BenchmarkError(f"{where}: an mc item needs 'choices', a list of at least two strings")
        if len(raw) > len(LETTERS):
            raise BenchmarkError(f"{where}: at most {len(LETTERS)} choices")
        choices = tuple(raw)
        answer = _mc_answer(answer, choices, where)
    elif item_type == "tf":
        answer = _tf_answer(answer, where)
    else:
        answer = str(answer).strip()
    aliases = data.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise BenchmarkError(f"{where}: 'aliases' must be a list of strings")
    category, split = data.get("category"), data.get("split")
    return Item(
        item_id,
        question,
        item_type,
        answer,
        choices,
        tuple(aliases),
        str(category) if category is not None else None,
        str(split) if split is not None else None,
    )


def _mc_answer(answer, choices: tuple[str, ...], where: str) -> str:
    letters = LETTERS[: len(choices)]
    text = str(answer).strip()
    if len(text) == 1 and text.upper() in letters:
        return text.upper()
    matches = [letters[i] for i, choice in enumerate(choices) if choice.strip().lower() == text.lower()]
    if len(matches) == 1:
        return matches[0]
    raise BenchmarkError(f"{where}: answer {answer!r} is not among the choices (a letter {letters[0]}–{letters[-1]} or a choice's text)")


def _tf_answer(answer, where: str) -> str:
    if isinstance(answer, bool):
        return "True" if answer else "False"
    text = str(answer).strip().lower()
    if text in ("true", "false"):
        return text.capitalize()
    raise BenchmarkError(f"{where}: a tf answer must be True or False, got {answer!r}")

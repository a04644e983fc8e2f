"""A generated world for the toy domain: fictional biological materials and ordinary facts.

The source paper's setting in miniature. A few hundred invented materials have properties
(producing organism, main component, structure, toughness, tensile strength); a generic world holds
ordinary facts (colours, legs, sounds, habitats, kinds). From them come the texts the parents are
trained on and the benchmarks they are scored on:

    generic corpus   raw text about the generic world            base model's pre-training
    domain corpus    raw text, many paraphrases per material      CPT
    SFT (generic)    questions in the benchmark's format          "Instruct"
    SFT              generic questions + a subset of materials    the CPT-SFT children
    preferences      the same questions, right vs. wrong answer   DPO / ORPO
    domain bench     questions on materials seen ONLY in the CPT corpus
    general bench    questions on generic facts no SFT set asks about (facts from pre-training)

Everything is drawn from one `random.Random(seed)`, so the same seed gives the same bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Iterator, Optional

# ----- the domain: fictional biological materials --------------------------------------------

ORGANISMS = (
    "orb spider", "sea snail", "silk moth", "mantis shrimp", "pearl oyster", "jewel beetle",
    "glass sponge", "reef coral", "tree fern", "giant kelp", "limpet", "termite",
)  # fmt: skip
COMPONENTS = ("protein", "chitin", "calcite", "aragonite", "cellulose", "silica", "keratin", "collagen")
STRUCTURES = ("fibrous", "lamellar", "cellular", "helicoidal", "porous", "granular", "tubular", "columnar")
TOUGHNESS = ("low", "moderate", "high", "extreme")
STRENGTHS = ("20 MPa", "80 MPa", "300 MPa", "1200 MPa")
PROPERTIES = {
    "organism": ORGANISMS,
    "component": COMPONENTS,
    "structure": STRUCTURES,
    "toughness": TOUGHNESS,
    "strength": STRENGTHS,
}

# How the domain corpus says each fact: several paraphrases, so a fact is learnt, not a sentence.
FACT_SENTENCES = {
    "organism": (
        "{M} is produced by the {v}.",
        "The {v} makes {M}.",
        "{M} comes from the {v}.",
        "Researchers collect {M} from the {v}.",
        "The material {M} is secreted by the {v}.",
    ),
    "component": (
        "{M} is made mostly of {v}.",
        "The main component of {M} is {v}.",
        "{M} consists largely of {v}.",
        "Chemically, {M} is mainly {v}.",
    ),
    "structure": (
        "{M} has a {v} structure.",
        "Under the microscope, {M} looks {v}.",
        "The structure of {M} is {v}.",
        "{M} is built in a {v} arrangement.",
    ),
    "toughness": (
        "{M} has {v} toughness.",
        "The toughness of {M} is {v}.",
        "In fracture tests, {M} shows {v} toughness.",
    ),
    "strength": (
        "The tensile strength of {M} is about {v}.",
        "{M} breaks at a stress of about {v}.",
        "{M} has a tensile strength near {v}.",
    ),
}

# What the benchmark asks about each property: multiple choice, or a true/false statement.
QUESTIONS = {
    "organism": ("mc", "Which organism produces {M}?"),
    "component": ("mc", "What is {M} mainly made of?"),
    "structure": ("mc", "What kind of structure does {M} have?"),
    "toughness": ("tf", "{M} has {v} toughness."),
    "strength": ("mc", "What is the tensile strength of {M}?"),
}

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gl", "kr", "pl", "st", "tr", "th")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "io", "ou")
_ENDINGS = ("in", "ite", "ane", "ose", "ene", "ium", "ar", "on", "ex", "yl")

# ----- the generic world: ordinary facts ------------------------------------------------------

GENERIC_FACTS = {
    "colour": {
        "banana": "yellow", "grass": "green", "snow": "white", "coal": "black", "tomato": "red",
        "lemon": "yellow", "milk": "white", "crow": "black", "cherry": "red", "carrot": "orange",
        "pumpkin": "orange", "chocolate": "brown", "soil": "brown", "strawberry": "red", "cloud": "white",
        "frog": "green", "plum": "purple", "grape": "purple", "sky": "blue", "ocean": "blue",
        "lime": "green", "salt": "white", "ink": "black", "corn": "yellow",
    },
    "legs": {
        "spider": "eight", "dog": "four", "bird": "two", "ant": "six", "cat": "four", "bee": "six",
        "horse": "four", "duck": "two", "chicken": "two", "beetle": "six", "scorpion": "eight",
        "cow": "four", "goat": "four", "fly": "six", "tick": "eight", "owl": "two",
    },
    "sound": {
        "cow": "moo", "dog": "bark", "cat": "meow", "duck": "quack", "sheep": "baa", "lion": "roar",
        "owl": "hoot", "snake": "hiss", "pig": "oink", "horse": "neigh", "bee": "buzz", "frog": "croak",
    },
    "habitat": {
        "fish": "water", "camel": "desert", "penguin": "ice", "monkey": "forest", "whale": "ocean",
        "cactus": "desert", "seal": "ocean", "polar bear": "ice", "parrot": "forest", "shark": "ocean",
        "lizard": "desert", "squirrel": "forest", "walrus": "ice", "dolphin": "ocean", "scorpion": "desert",
        "deer": "forest",
    },
    "kind": {
        "apple": "fruit", "hammer": "tool", "car": "vehicle", "chair": "furniture", "rose": "flower",
        "pear": "fruit", "saw": "tool", "bus": "vehicle", "table": "furniture", "tulip": "flower",
        "peach": "fruit", "drill": "tool", "train": "vehicle", "sofa": "furniture", "daisy": "flower",
        "mango": "fruit", "wrench": "tool", "bicycle": "vehicle", "bed": "furniture", "lily": "flower",
    },
}  # fmt: skip

GENERIC_SENTENCES = {
    "colour": ("The colour of {x} is {v}.", "{X} is {v}.", "Most {x} you see is {v}.", "A picture of {x} is mostly {v}."),
    "legs": ("A {x} has {v} legs.", "Count the legs of a {x}: there are {v}.", "Every {x} walks on {v} legs."),
    "sound": ("A {x} says {v}.", "The sound a {x} makes is {v}.", "You can hear a {x} {v}."),
    "habitat": ("A {x} lives in the {v}.", "You find a {x} in the {v}.", "The home of the {x} is the {v}."),
    "kind": ("A {x} is a kind of {v}.", "A {x} is a {v}.", "Among things, a {x} counts as a {v}."),
}
GENERIC_QUESTIONS = {
    "colour": ("mc", "What colour is {x}?"),
    "legs": ("mc", "How many legs does a {x} have?"),
    "sound": ("tf", "A {x} says {v}."),
    "habitat": ("mc", "Where does a {x} live?"),
    "kind": ("tf", "A {x} is a kind of {v}."),
}


@dataclass(frozen=True)
class Material:
    name: str
    properties: dict[str, str]
    in_sft: bool  # its questions are in the SFT data; otherwise it is asked only by the benchmark


@dataclass
class World:
    seed: int
    materials: list[Material]
    generic: list[tuple[str, str, str]]  # (relation, subject, value)
    generic_in_sft: set[tuple[str, str]] = field(default_factory=set)  # (relation, subject) asked in SFT


@dataclass(frozen=True)
class WorldSize:
    materials: int = 100
    sft_materials: float = 0.25  # the share of materials whose questions are in the SFT data
    paraphrase_rounds: int = 10  # domain documents per material, each saying every fact once
    generic_rounds: int = 8  # generic documents per fact group
    sft_generic: float = 0.6  # the share of generic facts asked in SFT; the rest make the general benchmark
    questions_per_material: int = 3  # domain benchmark items per held-back material


def material_names(rng: random.Random, count: int) -> list[str]:
    """Distinct pronounceable invented names ("Dravione", "Klouzite")."""
    names: set[str] = set()
    ordered: list[str] = []
    while len(ordered) < count:
        syllables = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.choice((1, 2))))
        name = (syllables + rng.choice(_ONSETS) + rng.choice(_ENDINGS)).capitalize()
        if name not in names and 5 <= len(name) <= 11:
            names.add(name)
            ordered.append(name)
    return ordered


def make_world(seed: int = 0, size: WorldSize = WorldSize()) -> World:
    rng = random.Random(seed)
    materials = []
    sft_count = round(size.materials * size.sft_materials)
    for index, name in enumerate(material_names(rng, size.materials)):
        properties = {prop: rng.choice(values) for prop, values in PROPERTIES.items()}
        materials.append(Material(name, properties, in_sft=index < sft_count))
    generic = [(relation, x, v) for relation, facts in GENERIC_FACTS.items() for x, v in facts.items()]
    in_sft = set()
    for relation, facts in GENERIC_FACTS.items():
        subjects = list(facts)
        rng.shuffle(subjects)
        in_sft |= {(relation, x) for x in subjects[: round(len(subjects) * size.sft_generic)]}
    return World(seed, materials, generic, in_sft)


# ----- texts ------------------------------------------------------------------------------------


def generic_corpus(world: World, rng: random.Random, rounds: int) -> list[str]:
    """Short documents, each a handful of generic facts in random paraphrases."""
    documents = []
    for _ in range(rounds):
        facts = list(world.generic)
        rng.shuffle(facts)
        for start in range(0, len(facts), 5):
            sentences = []
            for relation, x, v in facts[start : start + 5]:
                template = rng.choice(GENERIC_SENTENCES[relation])
                sentences.append(template.format(x=x, X=x.capitalize(), v=v))
            documents.append(" ".join(sentences))
    return documents


def domain_corpus(world: World, rng: random.Random, rounds: int) -> list[str]:
    """One document per material and round: every fact about it once, in random paraphrases and order."""
    documents = []
    for _ in range(rounds):
        for material in world.materials:
            facts = list(material.properties.items())
            rng.shuffle(facts)
            sentences = [rng.choice(FACT_SENTENCES[prop]).format(M=material.name, v=value) for prop, value in facts]
            documents.append(" ".join(sentences))
        # Shuffles everything written so far, once per round (not just this round's documents):
        # it looks misplaced, but the seeded bytes of every toy world depend on it. Moving it
        # changes the world, its tokenizer and every parent trained on it.
        rng.shuffle(documents)
    return documents


def _item(rng: random.Random, item_id: str, kind: str, template: str, values: tuple[str, ...], answer: str, category: str, **names) -> dict:
    """A benchmark item: mc with the answer among three plausible wrong values, or a tf statement
    that is true half of the time."""
    if kind == "mc":
        wrong = rng.sample([v for v in values if v != answer], 3)
        choices = wrong + [answer]
        rng.shuffle(choices)
        return {"id": item_id, "question": template.format(**names), "type": "mc", "choices": choices,
                "answer": "ABCD"[choices.index(answer)], "category": category}  # fmt: skip
    truth = rng.random() < 0.5
    stated = answer if truth else rng.choice([v for v in values if v != answer])
    return {"id": item_id, "question": template.format(v=stated, **names), "type": "tf",
            "answer": "True" if truth else "False", "category": category}  # fmt: skip


def domain_items(rng: random.Random, materials: list[Material], per_material: Optional[int]) -> list[dict]:
    """Questions about `materials`: every property, or `per_material` of them (rotating, so each
    property is asked about equally often)."""
    items = []
    props = list(PROPERTIES)
    for index, material in enumerate(materials):
        chosen = props if per_material is None else [props[(index + k) % len(props)] for k in range(per_material)]
        for prop in chosen:
            kind, template = QUESTIONS[prop]
            item_id = f"{material.name.lower()}-{prop}"
            items.append(_item(rng, item_id, kind, template, PROPERTIES[prop], material.properties[prop], prop, M=material.name))
    return items


def generic_items(world: World, rng: random.Random, in_sft: bool) -> list[dict]:
    items = []
    values = {relation: tuple(sorted(set(facts.values()))) for relation, facts in GENERIC_FACTS.items()}
    for relation, x, v in world.generic:
        if ((relation, x) in world.generic_in_sft) != in_sft:
            continue
        kind, template = GENERIC_QUESTIONS[relation]
        item_id = f"{relation}-{x.replace(' ', '_')}"
        items.append(_item(rng, item_id, kind, template, values[relation], v, relation, x=x, X=x.capitalize()))
    return items


@dataclass
class WorldTexts:
    """Everything generated from a world, before any tokenizer exists (questions are still items)."""

    generic_corpus: list[str]
    domain_corpus: list[str]
    sft_generic: list[dict]  # benchmark-format items the Instruct model is tuned on
    sft_domain: list[dict]  # items about the SFT subset of materials
    domain_benchmark: list[dict]
    general_benchmark: list[dict]

    def all_items(self) -> list[dict]:
        return [*self.sft_generic, *self.sft_domain, *self.domain_benchmark, *self.general_benchmark]


def world_texts(world: World, size: WorldSize = WorldSize()) -> WorldTexts:
    rng = random.Random(world.seed + 1)
    held_back = [m for m in world.materials if not m.in_sft]
    return WorldTexts(
        generic_corpus=generic_corpus(world, rng, size.generic_rounds),
        domain_corpus=domain_corpus(world, rng, size.paraphrase_rounds),
        sft_generic=generic_items(world, rng, in_sft=True),
        sft_domain=domain_items(rng, [m for m in world.materials if m.in_sft], None),
        domain_benchmark=domain_items(rng, held_back, size.questions_per_material),
        general_benchmark=generic_items(world, rng, in_sft=False),
    )


def world_record(world: World) -> dict:
    """The world as plain data (world.json): what a reader needs to check any item by hand."""
    return {
        "seed": world.seed,
        "materials": [{"name": m.name, "in_sft": m.in_sft, **m.properties} for m in world.materials],
        "generic": [
            {"relation": r, "subject": x, "value": v, "in_sft": (r, x) in world.generic_in_sft} for r, x, v in world.generic
        ],
    }


def iter_texts(texts: WorldTexts) -> Iterator[str]:
    """Every string a model will read: what the tokenizer is trained on."""
    yield from texts.generic_corpus
    yield from texts.domain_corpus
    for item in texts.all_items():
        yield item["question"]
        yield from item.get("choices", ())

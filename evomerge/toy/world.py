"""A generated world for the toy domain: fictional biological materials and fictional people.

The source paper's setting in miniature. Invented materials have properties (producing organism,
main component, structure, toughness, tensile strength); invented people have ordinary facts
(home city, job, hobby, pet, favourite colour). Both are "topics": entities, relations, paraphrase
templates and one question per relation. From them come the texts the parents are trained on and
the benchmarks they are scored on:

    generic corpus   people: descriptions of all, Q&A lines about the SFT half     base's pre-training
    domain corpus    materials: descriptions of all, Q&A lines about the SFT share  CPT
    SFT (generic)    questions in the benchmark's format about the SFT people       "Instruct"
    SFT              the same + questions about the SFT materials                    the CPT-SFT children
    preferences      the same questions, right vs. wrong answer                      DPO / ORPO
    domain bench     questions on the OTHER materials: their facts appear only as CPT descriptions
    general bench    questions on the OTHER people: their facts appear only as pre-training descriptions

Why it looks like this (measured; see the README's toy section): a fact stored in pre-training can
be extracted by later tuning only when it was read in many paraphrases and sentence orders, so each
round of a corpus redraws every description; Q&A text about some entities inside the same corpus
("mixed training", the paper's distilled Q&A) is what makes answering generalise to the others;
every benchmark item is multiple choice and a model answers with the choice's text, which the
paper protocol's parser accepts (the letter mapping does not emerge in small models).

Everything is drawn from seeded `random.Random`s, so the same seed gives the same bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator

# ----- topics -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topic:
    """Entities of one kind: what is known about them, how text says it, how a question asks it."""

    kind: str  # "material", "person"
    relations: dict[str, tuple[str, ...]]  # relation -> its possible values
    sentences: dict[str, tuple[str, ...]]  # paraphrases; {E} the entity, {v} the value (last)
    questions: dict[str, str]  # one question per relation, about {E}
    name_endings: tuple[str, ...]  # invented names of this topic end like this


MATERIALS = Topic(
    kind="material",
    relations={
        "organism": ("orb spider", "sea snail", "silk moth", "mantis shrimp", "pearl oyster", "jewel beetle",
                     "glass sponge", "reef coral", "tree fern", "giant kelp", "limpet", "termite"),
        "component": ("protein", "chitin", "calcite", "aragonite", "cellulose", "silica", "keratin", "collagen"),
        "structure": ("fibrous", "lamellar", "cellular", "helicoidal", "porous", "granular", "tubular", "columnar"),
        "toughness": ("low", "moderate", "high", "extreme"),
        "strength": ("20 MPa", "80 MPa", "300 MPa", "1200 MPa"),
    },
    sentences={
        "organism": ("{E} is produced by the {v}.", "The material {E} is secreted by the {v}.",
                     "Researchers collect {E} from the {v}.", "{E} comes from the {v}."),
        "component": ("{E} is made mostly of {v}.", "The main component of {E} is {v}.",
                      "{E} consists largely of {v}.", "Chemically, {E} is mainly {v}."),
        "structure": ("{E} has a structure that is {v}.", "Under the microscope, {E} looks {v}.",
                      "The structure of {E} is {v}.", "{E} is built in an arrangement that is {v}."),
        "toughness": ("The toughness of {E} is {v}.", "In fracture tests, {E} shows toughness that is {v}.",
                      "{E} has a toughness rated {v}."),
        "strength": ("The tensile strength of {E} is about {v}.", "{E} breaks at a stress of about {v}.",
                     "{E} has a tensile strength near {v}."),
    },
    questions={
        "organism": "Which organism produces {E}?",
        "component": "What is {E} mainly made of?",
        "structure": "What kind of structure does {E} have?",
        "toughness": "How tough is {E}?",
        "strength": "What is the tensile strength of {E}?",
    },
    name_endings=("in", "ite", "ane", "ose", "ene", "ium", "ar", "on", "ex", "yl"),
)  # fmt: skip

PEOPLE = Topic(
    kind="person",
    relations={
        "city": ("Lisbon", "Oslo", "Cairo", "Lima", "Dublin", "Quito", "Seoul", "Perth", "Tunis", "Riga"),
        "job": ("baker", "nurse", "pilot", "farmer", "teacher", "plumber", "painter", "sailor", "lawyer", "miner"),
        "hobby": ("chess", "fishing", "singing", "cycling", "knitting", "hiking", "rowing", "pottery"),
        "pet": ("dog", "cat", "parrot", "rabbit", "goldfish", "tortoise", "hamster", "ferret"),
        "colour": ("red", "green", "blue", "yellow", "purple", "orange", "white", "black"),
    },
    sentences={
        "city": ("{E} lives in {v}.", "The home of {E} is in {v}.", "{E} has an apartment in {v}.",
                 "Most days {E} walks the streets of {v}."),
        "job": ("{E} works as a {v}.", "By profession, {E} is a {v}.", "{E} earns a living as a {v}.",
                "The job of {E} is {v}."),
        "hobby": ("In free time, {E} enjoys {v}.", "The hobby of {E} is {v}.", "On weekends {E} loves {v}."),
        "pet": ("{E} keeps a {v}.", "The pet of {E} is a {v}.", "At home {E} looks after a {v}."),
        "colour": ("The favourite colour of {E} is {v}.", "{E} likes the colour {v} best.",
                   "Of all colours, {E} prefers {v}."),
    },
    questions={
        "city": "In which city does {E} live?",
        "job": "What does {E} do for a living?",
        "hobby": "What is the hobby of {E}?",
        "pet": "Which pet does {E} keep?",
        "colour": "What is the favourite colour of {E}?",
    },
    name_endings=("a", "o", "ia", "el", "us", "en", "ina", "ic"),
)  # fmt: skip

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gl", "kr", "pl", "st", "tr", "th")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "io", "ou")
QA_FORMAT = "Question: {q} Answer: {v}."  # the "distilled Q&A" lines mixed into a corpus


@dataclass(frozen=True)
class Entity:
    name: str
    facts: dict[str, str]
    in_sft: bool  # asked about in SFT (and in the corpus's Q&A lines); otherwise only by a benchmark


@dataclass
class World:
    seed: int
    materials: list[Entity]
    people: list[Entity]


@dataclass(frozen=True)
class WorldSize:
    # Many distinct entities in Q&A form (not a few repeated often): answering then has to be a
    # way of reading stored facts, not a memorised list (measured: with a quarter of 160 materials
    # in Q&A form, a 0.86M model recalled 96% of the held-out facts yet answered them at chance).
    materials: int = 200
    sft_materials: float = 0.4  # the share of materials asked about in SFT (and Q&A lines in CPT)
    people: int = 150
    sft_people: float = 0.6  # the share of people asked about in SFT (and Q&A lines in pre-training)
    # Each round redraws every description (a new paraphrase and order of each fact), so a model
    # that reads a corpus once sees every fact `rounds` times, never in the same document twice.
    domain_rounds: int = 64  # redrawn descriptions of every material in the domain corpus
    generic_rounds: int = 64  # redrawn descriptions of every person in the generic corpus
    qa_rounds: int = 16  # Q&A documents about each SFT entity in a corpus, each in a new order
    # Each SFT question several times, with other wrong choices in another order: the answer is
    # the fact, never a position or a memorised set of choices.
    sft_variants: int = 3


def invented_names(rng: random.Random, count: int, endings: tuple[str, ...], taken: set[str]) -> list[str]:
    """Distinct pronounceable invented names ("Dravione", "Klouzite") not already in `taken` (which grows)."""
    ordered: list[str] = []
    while len(ordered) < count:
        syllables = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.choice((1, 2))))
        name = (syllables + rng.choice(_ONSETS) + rng.choice(endings)).capitalize()
        if name not in taken and 5 <= len(name) <= 11:
            taken.add(name)
            ordered.append(name)
    return ordered


def _entities(rng: random.Random, topic: Topic, count: int, sft_share: float, taken: set[str]) -> list[Entity]:
    sft_count = round(count * sft_share)
    return [
        Entity(name, {relation: rng.choice(values) for relation, values in topic.relations.items()}, in_sft=index < sft_count)
        for index, name in enumerate(invented_names(rng, count, topic.name_endings, taken))
    ]


def make_world(seed: int = 0, size: WorldSize = WorldSize()) -> World:
    rng = random.Random(seed)
    taken: set[str] = set()  # a person never shares a material's name
    materials = _entities(rng, MATERIALS, size.materials, size.sft_materials, taken)
    people = _entities(rng, PEOPLE, size.people, size.sft_people, taken)
    return World(seed, materials, people)


# ----- texts ------------------------------------------------------------------------------------


def describe(entity: Entity, topic: Topic, rng: random.Random) -> str:
    """Every fact about the entity once, each in a random paraphrase, in a random order."""
    facts = list(entity.facts.items())
    rng.shuffle(facts)
    return " ".join(rng.choice(topic.sentences[relation]).format(E=entity.name, v=value) for relation, value in facts)


def qa_lines(entity: Entity, topic: Topic, rng: random.Random) -> str:
    """Every fact about the entity as a question and its answer, in a random order."""
    relations = list(entity.facts)
    rng.shuffle(relations)
    return " ".join(QA_FORMAT.format(q=topic.questions[r].format(E=entity.name), v=entity.facts[r]) for r in relations)


def corpus(entities: list[Entity], topic: Topic, rng: random.Random, rounds: int, qa_rounds: int) -> list[str]:
    """`rounds` redrawn descriptions of every entity and `qa_rounds` Q&A documents about each SFT
    entity, all shuffled together (so Q&A and descriptions are read side by side, not one after the other)."""
    documents = [describe(entity, topic, rng) for _ in range(rounds) for entity in entities]
    documents += [qa_lines(entity, topic, rng) for _ in range(qa_rounds) for entity in entities if entity.in_sft]
    rng.shuffle(documents)
    return documents


def items(entities: list[Entity], topic: Topic, rng: random.Random) -> list[dict]:
    """A multiple-choice question on every fact of every entity: the answer among three other values."""
    out = []
    for entity in entities:
        for relation, answer in entity.facts.items():
            choices = rng.sample([v for v in topic.relations[relation] if v != answer], 3) + [answer]
            rng.shuffle(choices)
            out.append({
                "id": f"{entity.name.lower()}-{relation}", "question": topic.questions[relation].format(E=entity.name),
                "type": "mc", "choices": choices, "answer": "ABCD"[choices.index(answer)], "category": relation,
            })  # fmt: skip
    return out


@dataclass
class WorldTexts:
    """Everything generated from a world, before any tokenizer exists (questions are still items)."""

    generic_corpus: list[str]
    domain_corpus: list[str]
    sft_generic: list[dict]  # benchmark-format items the Instruct model is tuned on (sft_variants of each)
    sft_domain: list[dict]  # items about the SFT share of materials (sft_variants of each)
    domain_benchmark: list[dict]
    general_benchmark: list[dict]

    def all_items(self) -> list[dict]:
        return [*self.sft_generic, *self.sft_domain, *self.domain_benchmark, *self.general_benchmark]


def world_texts(world: World, size: WorldSize = WorldSize()) -> WorldTexts:
    rng = random.Random(world.seed + 1)
    return WorldTexts(
        generic_corpus=corpus(world.people, PEOPLE, rng, size.generic_rounds, size.qa_rounds),
        domain_corpus=corpus(world.materials, MATERIALS, rng, size.domain_rounds, size.qa_rounds),
        sft_generic=[i for _ in range(size.sft_variants) for i in items([p for p in world.people if p.in_sft], PEOPLE, rng)],
        sft_domain=[i for _ in range(size.sft_variants) for i in items([m for m in world.materials if m.in_sft], MATERIALS, rng)],
        domain_benchmark=items([m for m in world.materials if not m.in_sft], MATERIALS, rng),
        general_benchmark=items([p for p in world.people if not p.in_sft], PEOPLE, rng),
    )


def world_record(world: World) -> dict:
    """The world as plain data (world.json): what a reader needs to check any item by hand."""
    return {
        "seed": world.seed,
        "materials": [{"name": m.name, "in_sft": m.in_sft, **m.facts} for m in world.materials],
        "people": [{"name": p.name, "in_sft": p.in_sft, **p.facts} for p in world.people],
    }


def iter_texts(texts: WorldTexts) -> Iterator[str]:
    """Every string a model will read: what the tokenizer's vocabulary is made from."""
    yield from texts.generic_corpus
    yield from texts.domain_corpus
    for item in texts.all_items():
        yield item["question"]
        yield from item.get("choices", ())

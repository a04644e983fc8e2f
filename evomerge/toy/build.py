"""Build the toy domain: the world's files, one tokenizer, and the paper's parents at a scale.

    root/world/        world.json, corpora, SFT and preference data, the two benchmarks, tokenizer/
    root/<scale>/      base, instruct, base-CPT, …, instruct-CPT-SFT-ORPO, accuracy.json

Every parent is made by `evomerge.train` (the code behind `evomerge train`), stage by stage, as the
paper made its parents: a base pre-trained on the generic corpus; "Instruct" = base + SFT on generic
questions; CPT on the domain corpus from Base or Instruct; then SFT, DPO, ORPO. A parent already
built from the same data and settings is reused, so `evomerge demo` and `evomerge map` build once.

A build is as deterministic as torch allows on a CPU: one fixed thread count, deterministic
algorithms, a seeded initialisation and data order, so two builds on one machine give identical
weights. Floating-point results still differ between machines, so published toy figures are
means over several training seeds (`seed`), never one run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import torch

from evomerge.analysis.metrics import Bootstrap, accuracy_interval
from evomerge.errors import EvomergeError
from evomerge.evaluate.benchmark import load_benchmark, parse_item
from evomerge.evaluate.models import load_for_eval
from evomerge.evaluate.protocol import build_prompt
from evomerge.evaluate.scorer import Scorer, first_max, lm_eval_split, option_logliks
from evomerge.files import staged_folder, write_jsonl
from evomerge.merge.parents import inspect_parent
from evomerge.toy.tiny import save_word_tokenizer, tiny_config
from evomerge.toy.world import MATERIALS, PEOPLE, Topic, WorldSize, iter_texts, make_world, world_record, world_texts
from evomerge.train.data import file_hash
from evomerge.train.trainers import TrainSettings, train

DEFAULT_ROOT = Path("results") / "toy"
WORLD_SEED = 0
# Role markers are single tokens; an assistant turn ends with EOS, so a tuned model stops after
# its answer. The generation prompt ends exactly where the scorer appends "The correct answer is:".
TOY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")


@dataclass(frozen=True)
class Scale:
    """Width and depth of a scale, and how long each stage trains. A corpus already holds many
    redrawn rounds of its text (WorldSize), so an epoch here is a pass over all of them."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    lr: float
    pretrain_epochs: float = 1.0
    cpt_epochs: float = 1.0
    instruct_epochs: float = 2.0  # SFT of the base on generic questions: teaches the format
    sft_epochs: float = 1.0  # SFT after CPT: the format again, plus the SFT materials
    # Small batches of short blocks: storing facts takes many optimiser steps more than many tokens
    # per step (measured: recall jumps after about 1,000-1,800 steps of 8 x 64 tokens).
    batch_size: int = 8
    block_length: int = 64  # CPT packs raw text into blocks of this many tokens
    device: str = "cpu"  # where the scale is meant to be built ("cuda": too slow on a CPU)
    build_seconds: Optional[float] = None  # every parent, measured on the machine named in BUILD_MACHINE


# Measured build times: every parent of a cold `evomerge toy --scale S`, on BUILD_MACHINE (None:
# not measured as one run; see the README for the parts that were).
BUILD_MACHINE = "2 CPU cores, two builds at once, one thread each"
SCALES = {
    # xs trains on half of each corpus (40 redrawn rounds), to stay a few minutes for the demo.
    "xs": Scale(56, 2, 4, 2, 224, lr=3e-3, pretrain_epochs=0.5, cpt_epochs=0.5, instruct_epochs=1.0, sft_epochs=1.0, build_seconds=222),
    # s, m and l share one recipe, chosen on the parents' own skills (README, "How the world and the
    # recipe were chosen"): at 2e-3 to 3e-3 the bases held 36-60% of the generic facts, at 1e-3 with
    # two passes 99% (s, l); three SFT epochs after CPT answered held-out materials at 0.84 (l), one at 0.42.
    # Their build_seconds: every stage's training time added up (two builds at once, one thread each).
    "s": Scale(96, 2, 4, 2, 384, lr=1e-3, pretrain_epochs=2.0, cpt_epochs=2.0, sft_epochs=3.0, build_seconds=906),
    "m": Scale(128, 3, 4, 2, 512, lr=1e-3, pretrain_epochs=2.0, cpt_epochs=2.0, sft_epochs=3.0, build_seconds=1026),
    "l": Scale(160, 4, 4, 2, 640, lr=1e-3, pretrain_epochs=2.0, cpt_epochs=2.0, sft_epochs=3.0, build_seconds=1368),
    "xl": Scale(384, 8, 8, 4, 1536, lr=8e-4, device="cuda"),
    "xxl": Scale(768, 12, 12, 4, 3072, lr=4e-4, device="cuda"),
}
# One thread per build: the same thread count on every run is part of what makes a build
# deterministic, and a tiny model gains little from more.
TRAIN_THREADS = 1


@dataclass(frozen=True)
class Stage:
    name: str
    parent: str  # "init" = a randomly initialised model
    strategy: str
    data: str  # a file in root/world/


# In training order; the parents the map and the demo merge come first.
STAGES = (
    Stage("base", "init", "cpt", "generic_corpus.jsonl"),
    Stage("instruct", "base", "sft", "sft_generic.jsonl"),
    Stage("instruct-CPT", "instruct", "cpt", "domain_corpus.jsonl"),
    Stage("instruct-CPT-SFT", "instruct-CPT", "sft", "sft.jsonl"),
    Stage("instruct-CPT-SFT-DPO", "instruct-CPT-SFT", "dpo", "preferences.jsonl"),
    Stage("instruct-CPT-SFT-ORPO", "instruct-CPT-SFT", "orpo", "preferences.jsonl"),
    Stage("base-CPT", "base", "cpt", "domain_corpus.jsonl"),
    Stage("base-CPT-SFT", "base-CPT", "sft", "sft.jsonl"),
)
PARENTS = tuple(stage.name for stage in STAGES)
_BY_NAME = {stage.name: stage for stage in STAGES}


@dataclass
class ToyBuild:
    root: Path
    scale: str
    parents: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0  # time spent building (training) in this call; 0 when everything was reused

    @property
    def world(self) -> Path:
        return self.root / "world"

    @property
    def domain_benchmark(self) -> Path:
        return self.world / "domain_benchmark.jsonl"

    @property
    def general_benchmark(self) -> Path:
        return self.world / "general_benchmark.jsonl"


Say = Callable[[str], None]


def build_world(root: Union[str, Path] = DEFAULT_ROOT, seed: int = WORLD_SEED, size: WorldSize = WorldSize()) -> Path:
    """Write root/world/ (reused when it was made with the same seed and size): same seed, same bytes."""
    folder = Path(root) / "world"
    if (folder / "world.json").is_file():
        made = json.loads((folder / "world.json").read_text(encoding="utf-8"))
        if made.get("seed") == seed and made.get("size") == asdict(size):
            return folder
    world = make_world(seed, size)
    texts = world_texts(world, size)
    record = {**world_record(world), "size": asdict(size)}
    with staged_folder(folder) as staging:
        (staging / "world.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        write_jsonl(staging / "generic_corpus.jsonl", [{"text": t} for t in texts.generic_corpus])
        write_jsonl(staging / "domain_corpus.jsonl", [{"text": t} for t in texts.domain_corpus])
        write_jsonl(staging / "domain_benchmark.jsonl", texts.domain_benchmark)
        write_jsonl(staging / "general_benchmark.jsonl", texts.general_benchmark)
        generic = [parse_item(item, "toy") for item in texts.sft_generic]
        domain = [parse_item(item, "toy") for item in texts.sft_domain]
        benchmarks = [parse_item(item, "toy") for item in texts.domain_benchmark + texts.general_benchmark]
        # The vocabulary holds every word of the scorer's prompts too (the chat markers are special tokens).
        prompts = [build_prompt(item) for item in generic + domain + benchmarks]
        tokenizer = save_word_tokenizer(staging / "tokenizer", [*iter_texts(texts), *prompts], TOY_CHAT_TEMPLATE, ROLE_TOKENS)
        write_jsonl(staging / "sft_generic.jsonl", [_sft_record(item, tokenizer) for item in generic])
        write_jsonl(staging / "sft.jsonl", [_sft_record(item, tokenizer) for item in generic + domain])
        # One preference pair per question (not per SFT variant): DPO and ORPO nudge a tuned model.
        first = _first_variants(generic) + _first_variants(domain)
        write_jsonl(staging / "preferences.jsonl", [_preference(item, tokenizer) for item in first])
    return folder


def _first_variants(items: list) -> list:
    """Each question once: the first of its SFT variants (they share an id)."""
    seen: set[str] = set()
    return [item for item in items if not (item.id in seen or seen.add(item.id))]


def _answer_text(item, letter: str) -> str:
    """What a toy model replies for an option: the choice's own text, which the paper protocol's
    parser maps back to its letter (small models did not learn to map facts to letters; see README)."""
    return item.choices[item.options.index(letter)]


def _sft_record(item, tokenizer) -> dict:
    """The scorer's exact prompt (chat template, then "The correct answer is:"), completed with the
    right choice's text. Prompt and completion apart: the loss is on the answer only, so SFT steps
    teach answering, not the instruction's boilerplate or the random wrong choices."""
    return {"prompt": build_prompt(item, tokenizer, chat=True), "completion": f" {_answer_text(item, item.answer)}{tokenizer.eos_token}"}


def _preference(item, tokenizer) -> dict:
    """The scorer's exact prompt; the right choice chosen, a plausible wrong one rejected."""
    wrong = [option for option in item.options if option != item.answer]
    rejected = wrong[sum(map(ord, item.id)) % len(wrong)]  # deterministic, spread over the options
    eos = tokenizer.eos_token
    return {
        "prompt": build_prompt(item, tokenizer, chat=True),
        "chosen": f" {_answer_text(item, item.answer)}{eos}",
        "rejected": f" {_answer_text(item, rejected)}{eos}",
    }


def build_toy(
    scale: str,
    out: Optional[Union[str, Path]] = None,
    *,
    device: str = "auto",
    parents: Optional[Sequence[str]] = None,
    progress: Optional[Say] = None,
    on_step: Optional[Callable[[str, int, int, float], None]] = None,
    shape: Optional[Scale] = None,
    world_size: WorldSize = WorldSize(),
    seed: int = 0,
) -> ToyBuild:
    """Build (or reuse) the world and the named parents at `scale` (default: every parent), with
    whatever earlier stages they need. `progress(message)` gets a line per stage; `on_step(name,
    step, total, loss)` follows training. `shape` and `world_size` make a custom (e.g. test-sized)
    scale under the name `scale`. `seed` is the training seed (initial weights, data order): the
    world stays the same; seed N > 0 builds into <scale>-seedN/."""
    if shape is None and scale not in SCALES:
        raise EvomergeError(f"unknown toy scale {scale!r}; choose from {', '.join(SCALES)}")
    shape = shape or SCALES[scale]
    wanted = list(parents) if parents else list(PARENTS)
    unknown = [name for name in wanted if name not in _BY_NAME]
    if unknown:
        raise EvomergeError(f"unknown toy parent {unknown[0]!r}; choose from {', '.join(PARENTS)}")
    from evomerge.devices import resolve_device

    resolve_device(device)  # a bad --device is refused before anything is built
    say = progress or (lambda _message: None)
    root = Path(out) if out is not None else DEFAULT_ROOT
    world = build_world(root, size=world_size)
    label = scale if seed == 0 else f"{scale}-seed{seed}"
    build = ToyBuild(root, label)
    start = time.perf_counter()
    for stage in _needed(wanted):
        folder = root / label / stage.name
        settings = _train_settings(stage, shape, world, root / label, folder, device, seed)
        fingerprint = _fingerprint(settings, shape)
        if _is_built(folder, fingerprint):
            say(f"{label}/{stage.name}: reused")
        else:
            say(f"{label}/{stage.name}: training ({stage.strategy} on {stage.data}) …")
            with deterministic(TRAIN_THREADS):
                _train_stage(stage, shape, settings, fingerprint, root / label, world, on_step)
        build.parents[stage.name] = folder
    build.seconds = time.perf_counter() - start
    build.parents = {name: build.parents[name] for name in wanted}
    return build


def _needed(wanted: Sequence[str]) -> list[Stage]:
    """The stages `wanted` depend on, in training order."""
    needed: set[str] = set()
    for name in wanted:
        while name != "init":
            needed.add(name)
            name = _BY_NAME[name].parent
    return [stage for stage in STAGES if stage.name in needed]


@contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """As deterministic as torch allows: a fixed thread count (a float sum's order depends on it)
    and deterministic kernels; the caller's settings are restored afterwards."""
    threads_before, strict_before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs on a GPU
    torch.set_num_threads(threads)
    # warn_only: an op without a deterministic kernel (some CUDA ones) warns instead of failing the build.
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(strict_before)


def _train_settings(stage: Stage, shape: Scale, world: Path, scale_dir: Path, folder: Path, device: str, seed: int = 0) -> TrainSettings:
    parent = scale_dir / stage.parent  # "init": the random init, written just before training
    common = dict(
        model=str(parent), data=str(world / stage.data), out=str(folder), device=device, seed=seed,
        batch_size=shape.batch_size, overwrite=True, warmup_ratio=0.05, gradient_checkpointing=False,
        label=stage.name,  # the paper's names for the parents ("instruct-CPT-SFT"), whatever the folders are called
    )  # fmt: skip
    if stage.strategy == "cpt":
        epochs = shape.pretrain_epochs if stage.parent == "init" else shape.cpt_epochs
        # Constant rate after warm-up, as the paper's small-model CPT: facts are still being learnt at the end.
        return TrainSettings(strategy="cpt", epochs=epochs, lr=shape.lr, lr_scheduler="constant_with_warmup", max_length=shape.block_length, **common)
    if stage.strategy == "sft":
        epochs = shape.instruct_epochs if stage.parent == "base" else shape.sft_epochs
        return TrainSettings(strategy="sft", epochs=epochs, lr=shape.lr / 2, lr_scheduler="cosine", max_length=128, **common)
    # Preference tuning nudges a tuned model: a small step, as the paper's rates are for 8B.
    lr = shape.lr / 20
    return TrainSettings(strategy=stage.strategy, epochs=1, lr=lr, lr_scheduler="constant", max_length=128, **common)


# Settings that say how or under what name a parent is built, not what it is: left out of its
# fingerprint (a parent built on a GPU is reused on a CPU). A new TrainSettings field changes every
# fingerprint, and so retrains every built parent, unless it is named here.
_NOT_FINGERPRINTED = ("overwrite", "device", "label")


def _fingerprint(settings: TrainSettings, shape: Scale) -> str:
    """What a parent depends on: the scale, its settings, the bytes of its data, its parent's stamp."""
    data = {key: value for key, value in asdict(settings).items() if key not in _NOT_FINGERPRINTED}
    data["shape"] = asdict(replace(shape, build_seconds=None))  # a measured time is not a setting
    data["data_sha256"] = file_hash(settings.data)
    parent_stamp = Path(settings.model) / STAMP
    data["parent"] = parent_stamp.read_text() if parent_stamp.is_file() else settings.model
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


STAMP = "toy_build.sha256"


def _is_built(folder: Path, fingerprint: str) -> bool:
    stamp = folder / STAMP
    return stamp.is_file() and (folder / "config.json").is_file() and stamp.read_text() == fingerprint


def _train_stage(stage: Stage, shape: Scale, settings: TrainSettings, fingerprint: str, scale_dir: Path, world: Path, on_step) -> None:
    if stage.parent == "init":
        _write_init(scale_dir / "init", shape, world / "tokenizer", settings.seed)
    train(settings, on_log=(lambda step, total, loss: on_step(stage.name, step, total, loss)) if on_step else None)
    (Path(settings.out) / STAMP).write_text(fingerprint)
    if stage.parent == "init":
        shutil.rmtree(scale_dir / "init", ignore_errors=True)


def _write_init(folder: Path, shape: Scale, tokenizer_dir: Path, seed: int) -> None:
    """A randomly initialised Llama-shaped model with the world's tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = tiny_config(
        "llama", vocab_size=len(tokenizer), hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_layers=shape.num_layers, num_heads=shape.num_heads, num_kv_heads=shape.num_kv_heads, tie_word_embeddings=False,
    )  # fmt: skip
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with staged_folder(folder) as staging:
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))


class FactProbe:
    """Whether a model holds a topic's facts about the benchmark's entities, asked as its corpus
    states them: does "Zapouvene is produced by the" continue with the right organism (the highest
    log-likelihood among the relation's values)? Chance is 1/values. The questions are tokenised
    once; `score(model)` is batched forward passes."""

    def __init__(self, world_dir: Path, tokenizer, topic: Topic = MATERIALS, batch_size: int = 32):
        world = json.loads((Path(world_dir) / "world.json").read_text(encoding="utf-8"))
        entities = world["materials" if topic is MATERIALS else "people"]
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id
        self.questions: list[tuple[list[int], list[list[int]]]] = []  # (context, options) tokens
        self.answers: list[int] = []  # the index of the right value
        for entity in (e for e in entities if not e["in_sft"]):
            for relation, values in topic.relations.items():
                context = topic.sentences[relation][0].split("{v}")[0].rstrip().format(E=entity["name"])
                self.questions.append(lm_eval_split(tokenizer, context, [" " + value for value in values]))
                self.answers.append(values.index(entity[relation]))

    @torch.inference_mode()
    def score(self, model) -> float:
        """The share of facts whose right value the model likes best."""
        device = next(model.parameters()).device
        scores = option_logliks(model, self.questions, pad_id=self.pad_id, batch_size=self.batch_size, device=device)
        return sum(first_max(option_scores) == answer for option_scores, answer in zip(scores, self.answers)) / len(self.answers)


def score_parents(build: ToyBuild, device: str = "auto", protocol: str = "paper", progress: Optional[Say] = None) -> dict[str, dict]:
    """Each parent's accuracy on the domain and the general benchmark with bootstrap 95% intervals,
    and its recall of the benchmarks' facts in the corpora's own words (written to accuracy.json)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(build.world / "tokenizer"))
    scorers = {
        "domain": Scorer.load(load_benchmark(build.domain_benchmark), tokenizer, protocol=protocol, batch_size=32),
        "general": Scorer.load(load_benchmark(build.general_benchmark), tokenizer, protocol=protocol, batch_size=32),
    }
    facts = {"facts": FactProbe(build.world, tokenizer, MATERIALS), "generic_facts": FactProbe(build.world, tokenizer, PEOPLE)}
    report = {}
    with deterministic(TRAIN_THREADS):  # tiny models: one thread (measured 28x faster than two on a busy 2-core machine)
        for name, folder in build.parents.items():
            report[name] = _score_parent(folder, scorers, facts, device)
            if progress:
                progress(
                    f"{build.scale}/{name}: domain {report[name]['domain']:.3f} · general {report[name]['general']:.3f} · facts {report[name]['facts']:.3f}"
                )
    path = build.root / build.scale / "accuracy.json"
    existing = json.loads(path.read_text()) if path.is_file() else {}
    existing.update({name: {**entry, "protocol": protocol} for name, entry in report.items()})
    path.write_text(json.dumps(existing, indent=2) + "\n")
    return report


def _score_parent(folder: Path, scorers: dict[str, Scorer], facts: dict[str, FactProbe], device: str) -> dict:
    model, _ = load_for_eval(folder, device)  # every parent has the world's tokenizer
    results = {kind: scorer.score(model) for kind, scorer in scorers.items()}
    intervals = {kind: accuracy_interval(result.correct, Bootstrap(result.n, seed=0)) for kind, result in results.items()}
    return {
        "parameters": inspect_parent(folder).parameter_count,
        **{kind: result.accuracy for kind, result in results.items()},
        **{f"{kind}_ci": [interval.low, interval.high] for kind, interval in intervals.items()},
        **{key: probe.score(model) for key, probe in facts.items()},
        "answered": {kind: sum(p is not None for p in result.predictions) / result.n for kind, result in results.items()},
        "domain_per_category": results["domain"].per_category,
    }


def parameter_count(shape: Scale, vocab_size: int) -> int:
    """Parameters of a toy model of this shape (Llama layout, untied embeddings), without building it."""
    d, head_dim = shape.hidden_size, shape.hidden_size // shape.num_heads
    attention = 2 * d * d + 2 * d * shape.num_kv_heads * head_dim  # q, o; k, v (grouped)
    layer = attention + 3 * d * shape.intermediate_size + 2 * d  # + gate/up/down, two norms
    return 2 * vocab_size * d + shape.num_layers * layer + d


def world_vocab_size(size: WorldSize = WorldSize(), seed: int = WORLD_SEED) -> int:
    """The vocabulary of the world's word-level tokenizer, from its texts (no files written)."""
    from tokenizers import pre_tokenizers

    texts = world_texts(make_world(seed, size), size)
    items = [parse_item(item, "toy") for item in texts.all_items()]
    splitter = pre_tokenizers.Whitespace()
    words = {w for text in [*iter_texts(texts), *(build_prompt(i) for i in items)] for w, _ in splitter.pre_tokenize_str(text)}
    return len(words) + 4 + len(ROLE_TOKENS)  # <pad> <s> </s> <unk> and the role markers


def scale_table() -> list[dict]:
    """Every scale as plain data: what `evomerge toy --list` prints."""
    vocab = world_vocab_size()
    return [
        {
            "scale": name, "parameters": parameter_count(shape, vocab), "layers": shape.num_layers,
            "width": shape.hidden_size, "mlp": shape.intermediate_size, "device": shape.device,
            "build_seconds": shape.build_seconds,
        }
        for name, shape in SCALES.items()
    ]  # fmt: skip

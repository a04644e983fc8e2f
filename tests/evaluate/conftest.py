"""Shared fixtures for the evaluation tests: tiny models and benchmarks, built once per session.

Nothing downloads: the models are random-init tiny llamas written by `evomerge.toy.tiny`, with a
character-level tokenizer (" A" is two tokens) or, for the single-token loglik path, a word-level
tokenizer built here with `tokenizers` (" A" is one token).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from says_a import make_it_say_a

from evomerge.files import write_jsonl
from evomerge.toy.tiny import CHAT_TEMPLATE, make_checkpoint, tiny_config


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """These models are tiny: one intra-op thread is as fast, and on a shared 2-core machine
    spinning threads make the many small decode passes several times slower. Restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


WORDS = ["silk", "nacre", "bone", "wood", "chitin", "keratin", "collagen", "enamel", "cellulose", "lignin"]
CATEGORIES = ("general", "specific", "numerical")


def synthetic_items(n: int = 40) -> list[dict]:
    """`n` varied mc (3 or 4 choices) and tf items, cycling through three categories."""
    items = []
    for i in range(n):
        category = CATEGORIES[i % 3]
        if i % 10 < 7:
            k = 3 + (i % 2)
            choices = [WORDS[(i + j * 3) % 10] for j in range(k)]
            items.append(
                {
                    "id": f"mc-{i:02d}",
                    "question": f"Which material {i * 7 % 13} has property {WORDS[i % 10]}?",
                    "type": "mc",
                    "choices": choices,
                    "answer": "ABCD"[i % k],
                    "category": category,
                }
            )
        else:
            items.append(
                {
                    "id": f"tf-{i:02d}",
                    "question": f"{WORDS[i % 10].title()} is stiffer than {WORDS[(i * 3) % 10]} by {i} percent.",
                    "type": "tf",
                    "answer": bool(i % 2),
                    "category": category,
                }
            )
    return items


def write_benchmark(path: Path, records, raw_lines=()) -> Path:
    """Records as JSON lines, then `raw_lines` as they are (broken lines for the error tests)."""
    write_jsonl(path, records)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in raw_lines))
    return path


@pytest.fixture(scope="session")
def bench_path(tmp_path_factory) -> Path:
    """A 40-item synthetic benchmark (28 mc, 12 tf; categories general/specific/numerical)."""
    return write_jsonl(tmp_path_factory.mktemp("bench") / "synthetic.jsonl", synthetic_items())


@pytest.fixture(scope="session")
def bench(bench_path):
    from evomerge.evaluate.benchmark import load_benchmark

    return load_benchmark(bench_path)


def _tiny_llama_config():
    config = tiny_config("llama", vocab_size=128, hidden_size=64, num_layers=2)
    # A wider init than the default 0.02: the random model's option preferences then vary from
    # item to item, so per-item comparisons are not trivially all the same letter.
    config.initializer_range = 0.5
    return config


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A tiny llama folder with a character tokenizer and no chat template."""
    out = tmp_path_factory.mktemp("models") / "plain"
    make_checkpoint(out, _tiny_llama_config(), seed=1)
    return out


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory) -> Path:
    """The same kind of model, with a chat template (an "Instruct" parent)."""
    out = tmp_path_factory.mktemp("models") / "chat"
    make_checkpoint(out, _tiny_llama_config(), seed=2, chat_template=CHAT_TEMPLATE)
    return out


@pytest.fixture(scope="session")
def model(model_dir):
    """The plain model, loaded once. Tests must not change its weights (use `fresh_model`)."""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    loaded.requires_grad_(False)
    return loaded


@pytest.fixture
def fresh_model(model_dir):
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    loaded.requires_grad_(False)
    return loaded


@pytest.fixture(scope="session")
def char_tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


@pytest.fixture(scope="session")
def chat_tokenizer(chat_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(chat_model_dir))


@pytest.fixture(scope="session")
def word_tokenizer():
    """A word-level tokenizer (whitespace and punctuation split) of at most 128 entries, so the
    tiny model can read it: every option (A–D, True, False) is a single token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from evomerge.evaluate.protocol import ANSWER_CUE, INSTRUCTION

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    words = ["A", "B", "C", "D", "True", "False", "or", "?", ".", ":", ")", "Which", "material", "has", "property"]
    words += WORDS + [w.title() for w in WORDS] + ["is", "stiffer", "than", "by", "percent"]
    words += (INSTRUCTION + " " + ANSWER_CUE).replace(".", " ").replace(":", " ").split()
    words += [str(i) for i in range(40)]
    vocab: dict[str, int] = {}
    for token in specials + words:
        vocab.setdefault(token, len(vocab))
    assert len(vocab) <= 128, len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture
def answer_model(model_dir, char_tokenizer):
    """A real tiny llama edited so that greedy decoding always says "A" then "." (says_a.py)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    model.requires_grad_(False)
    return make_it_say_a(model, char_tokenizer)


class ForwardCounter:
    """Wraps a real model's forward and counts the calls (the model still computes everything)."""

    def __init__(self, model):
        self.calls = 0
        original = model.forward

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        model.forward = counted


@pytest.fixture
def count_forward():
    """`count_forward(model)` → a counter whose `.calls` grows with each forward pass."""
    return ForwardCounter


@pytest.fixture(scope="session")
def make_items():
    """`make_items(n)` → the synthetic item records (dicts) that `bench_path` holds for n=40."""
    return synthetic_items


@pytest.fixture(scope="session")
def jsonl():
    """`jsonl(path, records, raw_lines=())` writes a benchmark file and returns its path."""
    return write_benchmark


@pytest.fixture(scope="session")
def bpe_model_dir(tmp_path_factory, bench):
    """A tiny llama (vocab 512) with a byte-level BPE trained on the mc prompts only, as a real
    LLM's: " A" is one token, while " True" and " False" (never seen) take several."""
    from evomerge.evaluate import protocol
    from evomerge.toy.tiny import save_bpe_tokenizer

    out = tmp_path_factory.mktemp("models") / "bpe"
    config = tiny_config("llama", vocab_size=512, hidden_size=64, num_layers=2)
    config.initializer_range = 0.5
    make_checkpoint(out, config, seed=4)
    texts = [protocol.build_prompt(item) + " " + option for item in bench.items if item.type == "mc" for option in item.options]
    save_bpe_tokenizer(out, texts * 3, 512)
    return out


@pytest.fixture(scope="session")
def bos_chat_tokenizer(model_dir):
    """Like a Llama-3-Instruct tokenizer: `encode` prepends BOS, and the chat template starts with
    the BOS text too (a context rendered by the template already carries its BOS)."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)])
    tokenizer.chat_template = "{{ bos_token }}" + CHAT_TEMPLATE
    assert tokenizer.encode("ab")[0] == tokenizer.bos_token_id
    return tokenizer

"""`evomerge eval` and `evomerge benchmark list/export` as a user runs them, on a tiny local model:
both protocols, both backends, custom lm-eval tasks, fractions, the held-out split, and one clean
error line for every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_checks import assert_clean_error
from says_a import make_it_say_a
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.files import write_jsonl
from evomerge.toy.tiny import CHAT_TEMPLATE, make_checkpoint, tiny_config

runner = CliRunner()

CATEGORIES = ("general", "specific", "numerical")
WORDS = ["silk", "nacre", "bone", "wood", "chitin", "keratin", "collagen", "enamel"]


def items(n: int = 30) -> list[dict]:
    records = []
    for i in range(n):
        if i % 3:
            choices = [WORDS[(i + j) % 8] for j in range(4)]
            records.append(
                {"id": f"m{i}", "question": f"Which material {i}?", "type": "mc", "choices": choices, "answer": "ABCD"[i % 4], "category": CATEGORIES[i % 3]}
            )
        else:
            records.append({"id": f"t{i}", "question": f"{WORDS[i % 8]} {i} is tough.", "type": "tf", "answer": bool(i % 2), "category": CATEGORIES[i % 3]})
    return records


def write(path: Path, records, raw=()) -> Path:
    """Records as JSON lines, then `raw` lines as they are."""
    write_jsonl(path, records)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in raw))
    return path


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models: one intra-op thread is as fast and far steadier on a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-eval")
    config = tiny_config("llama", vocab_size=128, hidden_size=64, num_layers=2)
    config.initializer_range = 0.5  # varied option preferences from item to item
    make_checkpoint(root / "model", config, seed=1)
    make_checkpoint(root / "chat", config, seed=2, chat_template=CHAT_TEMPLATE)
    return {"root": root, "model": root / "model", "chat": root / "chat", "bench": write(root / "bench.jsonl", items())}


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def summary(result) -> dict:
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    data = json.loads(lines[-1])
    assert {"accuracy", "n", "per_category"} <= set(data), data
    assert 0 <= data["accuracy"] <= 1
    return data


def in_process(setup, protocol: str, fraction: float = 1.0):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.evaluate.benchmark import load_benchmark
    from evomerge.evaluate.scorer import Scorer

    model = AutoModelForCausalLM.from_pretrained(str(setup["model"])).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(setup["model"]))
    return Scorer.load(load_benchmark(setup["bench"]), tokenizer, protocol, chat=False).score(model, fraction)


# ----- both protocols, both backends ------------------------------------------------------------


@pytest.fixture(scope="module")
def builtin_loglik(setup):
    return summary(run("eval", "--model", setup["model"], "--benchmark", setup["bench"], "--protocol", "loglik", "--device", "cpu", "--json"))


def test_eval_paper_protocol_json(setup):
    result = run("eval", "--model", setup["model"], "--benchmark", setup["bench"], "--device", "cpu", "--json")
    data = summary(result)
    expected = in_process(setup, "paper")
    assert data["n"] == 30 and data["protocol"] == "paper" and data["backend"] == "builtin"
    assert data["accuracy"] == pytest.approx(expected.accuracy)
    assert data["per_category"] == pytest.approx(expected.per_category)
    assert set(data["per_category"]) == set(CATEGORIES)
    # The human-readable table comes first: every category and the overall row.
    for word in (*CATEGORIES, "all", "30 items"):
        assert word in result.stdout, word


@pytest.fixture(scope="module")
def says_a_model(setup):
    """A real tiny llama folder edited to always reply "A." (attention/MLP outputs zeroed, so the
    lm_head reads the current token's embedding: every token → "A", and "A" → ".")."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(setup["model"]))
    model = make_it_say_a(AutoModelForCausalLM.from_pretrained(str(setup["model"])), tokenizer)
    out = setup["root"] / "says-a"
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def test_eval_paper_protocol_scores_replies_by_hand_count(setup, says_a_model):
    data = summary(run("eval", "--model", says_a_model, "--benchmark", setup["bench"], "--device", "cpu", "--json"))
    records = items()
    # "A." answers every mc item with A; it is no answer to a true/false item.
    hits = {c: [r["type"] == "mc" and r["answer"] == "A" for r in records if r["category"] == c] for c in CATEGORIES}
    assert data["n"] == 30
    assert data["accuracy"] == pytest.approx(sum(sum(h) for h in hits.values()) / 30)
    assert data["accuracy"] > 0
    assert data["per_category"] == pytest.approx({c: sum(h) / len(h) for c, h in hits.items()})


def test_eval_loglik_builtin_matches_in_process_scorer(setup, builtin_loglik):
    expected = in_process(setup, "loglik")
    assert builtin_loglik["n"] == 30 and builtin_loglik["protocol"] == "loglik"
    assert builtin_loglik["accuracy"] == pytest.approx(expected.accuracy)
    assert builtin_loglik["per_category"] == pytest.approx(expected.per_category)


def test_eval_lm_eval_backend_equals_builtin_loglik(setup, builtin_loglik):
    data = summary(
        run("eval", "--model", setup["model"], "--benchmark", setup["bench"], "--backend", "lm-eval", "--protocol", "loglik", "--device", "cpu", "--json")
    )
    assert data["backend"] == "lm-eval" and data["n"] == 30
    assert data["accuracy"] == pytest.approx(builtin_loglik["accuracy"], abs=1e-12)
    assert data["per_category"] == pytest.approx(builtin_loglik["per_category"])


def test_benchmark_export_then_eval_lm_eval_task(setup, builtin_loglik):
    out = setup["root"] / "exported"
    exported = run("benchmark", "export", setup["bench"], out)
    assert exported.exit_code == 0, exported.output
    assert "evomerge_bench" in exported.stdout and "--tasks-dir" in exported.stdout
    assert (out / "evomerge_bench.yaml").is_file() and (out / "evomerge_bench.jsonl").is_file()
    assert len((out / "evomerge_bench.jsonl").read_text().splitlines()) == 30
    data = summary(run("eval", "--model", setup["model"], "--benchmark", "lm-eval:evomerge_bench", "--tasks-dir", out, "--device", "cpu", "--json"))
    assert data["n"] == 30 and data["backend"] == "lm-eval"
    assert data["accuracy"] == pytest.approx(builtin_loglik["accuracy"], abs=1e-12)
    half = summary(
        run("eval", "--model", setup["model"], "--benchmark", "lm-eval:evomerge_bench", "--tasks-dir", out, "--fraction", "0.5", "--device", "cpu", "--json")
    )
    assert half["n"] == 15
    assert half["accuracy"] == pytest.approx(in_process(setup, "loglik", 0.5).accuracy, abs=1e-12)


@pytest.mark.parametrize("protocol", ["paper", "loglik"])
def test_eval_fraction_scores_the_first_items(setup, protocol):
    data = summary(
        run("eval", "--model", setup["model"], "--benchmark", setup["bench"], "--protocol", protocol, "--fraction", "0.2", "--device", "cpu", "--json")
    )
    assert data["n"] == 6 and data["fraction"] == 0.2
    assert data["accuracy"] == pytest.approx(in_process(setup, protocol, 0.2).accuracy)


def test_eval_holdout_scores_only_the_search_split(setup):
    from evomerge.evaluate.benchmark import load_benchmark

    search, held = load_benchmark(setup["bench"]).split_holdout(0.3)
    assert len(held) > 0
    args = ("eval", "--model", setup["model"], "--benchmark", setup["bench"], "--protocol", "loglik", "--holdout", "0.3", "--device", "cpu", "--json")
    builtin = summary(run(*args))
    assert builtin["n"] == len(search) < 30
    through_lm_eval = summary(run(*args, "--backend", "lm-eval"))
    assert through_lm_eval["n"] == len(search)
    assert through_lm_eval["accuracy"] == pytest.approx(builtin["accuracy"], abs=1e-12)


@pytest.fixture(scope="module")
def chat_loglik_in_process(setup):
    """Builtin loglik accuracy of the chat model with and without its template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.evaluate.benchmark import load_benchmark
    from evomerge.evaluate.scorer import Scorer

    model = AutoModelForCausalLM.from_pretrained(str(setup["chat"])).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(setup["chat"]))
    bench = load_benchmark(setup["bench"])
    with_template = Scorer.load(bench, tokenizer, "loglik", chat=True).score(model).accuracy
    plain = Scorer.load(bench, tokenizer, "loglik", chat=False).score(model).accuracy
    assert with_template != plain, "the test model should score differently with and without its template"
    return {"chat": with_template, "plain": plain}


def test_eval_chat_model_uses_its_template_and_no_chat_switches_it_off(setup, chat_loglik_in_process):
    common = ("eval", "--model", setup["chat"], "--benchmark", setup["bench"], "--protocol", "loglik", "--device", "cpu", "--json")
    default = summary(run(*common))
    forced = summary(run(*common, "--chat"))
    plain = summary(run(*common, "--no-chat"))
    assert default["accuracy"] == pytest.approx(chat_loglik_in_process["chat"]), "a model with a template uses it by default"
    assert forced["accuracy"] == pytest.approx(chat_loglik_in_process["chat"])
    assert plain["accuracy"] == pytest.approx(chat_loglik_in_process["plain"])


def test_lm_eval_backend_agrees_with_builtin_on_a_chat_model(setup, chat_loglik_in_process):
    """Same command, other backend: an Instruct parent should get the same loglik score."""
    common = ("eval", "--model", setup["chat"], "--benchmark", setup["bench"], "--protocol", "loglik", "--device", "cpu", "--json")
    builtin = summary(run(*common))
    through_lm_eval = summary(run(*common, "--backend", "lm-eval"))
    assert through_lm_eval["accuracy"] == pytest.approx(builtin["accuracy"], abs=1e-12), (
        "EVAL BUG: on a model with a chat template, builtin loglik uses the template by default but the lm-eval "
        f"backend scores the exported plain prompts (and ignores --chat): builtin {builtin['accuracy']:.4f} vs "
        f"lm-eval {through_lm_eval['accuracy']:.4f} (plain-prompt builtin: {chat_loglik_in_process['plain']:.4f})"
    )


# ----- bad input: exit code 2 and one line ------------------------------------------------------


def test_unknown_benchmark_name(setup):
    assert_clean_error(run("eval", "--model", setup["model"], "--benchmark", "no_such_benchmark", "--device", "cpu"), "no_such_benchmark")


def test_duplicate_id_in_benchmark_file(setup, tmp_path):
    records = items(5)
    records.append(dict(records[1]))
    bad = write(tmp_path / "dup.jsonl", records)
    result = run("eval", "--model", setup["model"], "--benchmark", bad, "--device", "cpu")
    assert_clean_error(result, f"{bad}:6", "duplicate", "m1")


@pytest.mark.parametrize(
    "raw, words",
    [
        ('{"id": "x", "question": "q", "type": "mc", "choices": ["a", "b"], "answer": "C"}', ["not among the choices"]),
        ('{"id": "x", "question": "q", "type": "tf"}', ["missing field", "answer"]),
        ("{broken", ["not valid JSON"]),
    ],
    ids=["answer-not-a-choice", "missing-field", "invalid-json"],
)
def test_bad_benchmark_line(setup, tmp_path, raw, words):
    bad = write(tmp_path / "bad.jsonl", items(3), raw=[raw])
    assert_clean_error(run("eval", "--model", setup["model"], "--benchmark", bad, "--device", "cpu"), f"{bad}:4", *words)


def test_empty_benchmark_file(setup, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert_clean_error(run("eval", "--model", setup["model"], "--benchmark", empty, "--device", "cpu"), str(empty), "empty")


def test_missing_model_folder(setup, tmp_path):
    missing = tmp_path / "no-model"
    assert_clean_error(run("eval", "--model", missing, "--benchmark", setup["bench"], "--device", "cpu"), str(missing))


@pytest.mark.parametrize("fraction", ["0", "1.5", "-0.2"])
def test_fraction_out_of_range(setup, fraction):
    assert_clean_error(run("eval", "--model", setup["model"], "--benchmark", setup["bench"], "--fraction", fraction), "--fraction")


@pytest.mark.parametrize("extra", [[], ["--protocol", "paper"]], ids=["default-protocol", "explicit-paper"])
def test_lm_eval_backend_needs_loglik(setup, extra):
    result = run("eval", "--model", setup["model"], "--benchmark", setup["bench"], "--backend", "lm-eval", *extra, "--device", "cpu")
    assert_clean_error(result, "--protocol loglik")


def test_chat_flag_without_template(setup):
    assert_clean_error(run("eval", "--model", setup["model"], "--benchmark", setup["bench"], "--chat", "--device", "cpu"), "chat template")


def test_holdout_with_lm_eval_task(setup):
    result = run(
        "eval", "--model", setup["model"], "--benchmark", "lm-eval:evomerge_bench", "--tasks-dir", setup["root"], "--holdout", "0.2", "--device", "cpu"
    )
    assert_clean_error(result, "--holdout")


def test_missing_tasks_dir(setup, tmp_path):
    result = run("eval", "--model", setup["model"], "--benchmark", "lm-eval:anything", "--tasks-dir", tmp_path / "nope", "--device", "cpu")
    assert_clean_error(result, "--tasks-dir")


def test_holdout_out_of_range(setup):
    assert_clean_error(run("eval", "--model", setup["model"], "--benchmark", setup["bench"], "--holdout", "1", "--device", "cpu"), "--holdout")


def test_loglik_with_exact_items(setup, tmp_path):
    bad = write(tmp_path / "exact.jsonl", [{"id": "e", "question": "Mineral of nacre?", "type": "exact", "answer": "aragonite"}])
    assert_clean_error(run("eval", "--model", setup["model"], "--benchmark", bad, "--protocol", "loglik", "--device", "cpu"), "exact")


def test_benchmark_export_onto_an_existing_file(setup, tmp_path):
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    result = run("benchmark", "export", setup["bench"], target)
    assert result.exit_code == 2 and result.stderr.startswith("error:"), (
        f"EVAL BUG: `benchmark export BENCH DIR` with DIR an existing file ends with exit code {result.exit_code} "
        f"and an uncaught {type(result.exception).__name__} instead of one 'error:' line and exit code 2"
    )


def test_benchmark_export_bad_file(setup, tmp_path):
    bad = write(tmp_path / "dup.jsonl", [items(2)[0], items(2)[0]])
    out = tmp_path / "out"
    assert_clean_error(run("benchmark", "export", bad, out), f"{bad}:2", "duplicate")
    assert not out.exists(), "a failed export must write nothing"


# ----- shipped benchmarks -------------------------------------------------------------------------


def test_benchmark_list_shows_bio_materials():
    from evomerge.evaluate.benchmark import load_benchmark

    result = run("benchmark", "list")
    assert result.exit_code == 0, result.output
    row = next((line for line in result.stdout.splitlines() if "bio_materials" in line), None)
    assert row is not None, result.stdout
    assert str(len(load_benchmark("bio_materials"))) in row
    for category in ("general", "numerical", "specific"):
        assert category in result.stdout


def test_eval_shipped_benchmark_by_name(setup):
    from evomerge.evaluate.benchmark import load_benchmark

    data = summary(
        run("eval", "--model", setup["model"], "--benchmark", "bio_materials", "--protocol", "loglik", "--fraction", "0.1", "--device", "cpu", "--json")
    )
    assert data["n"] == -(-len(load_benchmark("bio_materials")) // 10)
    assert data["benchmark"] == "bio_materials"


def test_shipped_benchmark_exported_scores_the_same_through_lm_eval(setup, tmp_path):
    exported = run("benchmark", "export", "bio_materials", tmp_path / "tasks")
    assert exported.exit_code == 0, exported.output
    common = ("--model", setup["model"], "--fraction", "0.2", "--device", "cpu", "--json")
    builtin = summary(run("eval", "--benchmark", "bio_materials", "--protocol", "loglik", *common))
    through_lm_eval = summary(run("eval", "--benchmark", "lm-eval:evomerge_bio_materials", "--tasks-dir", tmp_path / "tasks", *common))
    assert through_lm_eval["n"] == builtin["n"] > 20
    assert through_lm_eval["accuracy"] == pytest.approx(builtin["accuracy"], abs=1e-12)
    assert through_lm_eval["per_category"] == pytest.approx(builtin["per_category"])

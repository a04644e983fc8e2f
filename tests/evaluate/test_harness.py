"""The lm-eval adapter: a benchmark exported as an lm-eval task and scored through the real
`simple_evaluate` gives the same accuracy and the same per-item correctness as the builtin
`loglik` protocol; custom tasks are found without indexing lm-eval's built-in ones."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from evomerge.errors import EvomergeError
from evomerge.evaluate import protocol
from evomerge.evaluate.benchmark import Item, make_benchmark
from evomerge.evaluate.harness import HarnessScorer, export_lm_eval_task, is_lm_eval_spec, task_name_for
from evomerge.evaluate.scorer import Scorer


@pytest.fixture(scope="module")
def task_dir(bench, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm-eval-tasks")
    name = export_lm_eval_task(bench, folder)
    return folder, name


@pytest.fixture(scope="module")
def harness(task_dir, char_tokenizer):
    folder, name = task_dir
    return HarnessScorer.load(f"lm-eval:{name}", char_tokenizer, tasks_dir=folder, batch_size=8)


def assert_same_scores(harness_result, builtin_result):
    assert harness_result.n == builtin_result.n
    assert harness_result.item_ids == builtin_result.item_ids, "lm-eval must see the documents in the benchmark's order"
    differing = [i for i, (a, b) in enumerate(zip(harness_result.correct, builtin_result.correct)) if a != b]
    assert not differing, f"per-item correctness differs at {[builtin_result.item_ids[i] for i in differing]}"
    assert harness_result.accuracy == pytest.approx(builtin_result.accuracy, abs=1e-12)
    assert harness_result.per_category == pytest.approx(builtin_result.per_category)


# ----- export ---------------------------------------------------------------------------------


def test_exported_task_yaml_and_data(bench, task_dir):
    folder, name = task_dir
    assert name == "evomerge_synthetic" == task_name_for(bench)
    config = yaml.safe_load((folder / f"{name}.yaml").read_text())
    data_path = folder / f"{name}.jsonl"
    assert config["task"] == name
    assert config["output_type"] == "multiple_choice"
    assert config["dataset_path"] == "json"
    assert config["test_split"] == "test"
    assert config["dataset_kwargs"]["data_files"]["test"] == str(data_path.resolve())
    assert config["doc_to_text"] == "{{query}}" and config["doc_to_choice"] == "choices" and config["doc_to_target"] == "gold"
    assert config["target_delimiter"] == " "
    assert [m["metric"] for m in config["metric_list"]] == ["acc"]
    documents = [json.loads(line) for line in data_path.read_text().splitlines()]
    assert [d["id"] for d in documents] == [item.id for item in bench.items], "documents in the benchmark's fixed order"
    for document, item in zip(documents, bench.items):
        assert document["query"] == protocol.build_prompt(item)
        assert document["choices"] == list(item.options)
        assert document["choices"][document["gold"]] == item.answer
        assert document["category"] == item.category


def test_export_names_are_safe_and_exact_items_are_refused(tmp_path):
    items = [Item("t1", "Silk is a protein.", "tf", "True"), Item("m1", "Which?", "mc", "B", ("x", "y"))]
    assert export_lm_eval_task(make_benchmark("my-bench.v2", items), tmp_path / "a") == "evomerge_my_bench_v2"
    assert (tmp_path / "a" / "evomerge_my_bench_v2.yaml").is_file()
    with pytest.raises(EvomergeError, match="only mc and tf"):
        export_lm_eval_task(make_benchmark("ex", [Item("e", "Mineral?", "exact", "aragonite")]), tmp_path / "b")


def test_lm_eval_spec_prefix():
    assert is_lm_eval_spec("lm-eval:hellaswag")
    assert not is_lm_eval_spec("bio_materials")


# ----- THE EQUALITY TEST ----------------------------------------------------------------------


def test_lm_eval_equals_builtin_loglik_per_item(bench, model, char_tokenizer, harness):
    builtin = Scorer.load(bench, char_tokenizer, "loglik", batch_size=8, chat=False).score(model)
    through_lm_eval = harness.score(model)
    assert 0 < sum(builtin.correct) < len(bench), "a model that gets everything right or wrong proves little"
    assert through_lm_eval.n == 40
    assert_same_scores(through_lm_eval, builtin)


@pytest.mark.parametrize("fraction, n", [(0.5, 20), (0.33, 14)])  # ⌈0.33·40⌉ = 14 on both sides
def test_lm_eval_equals_builtin_loglik_at_fraction(bench, model, char_tokenizer, harness, fraction, n):
    builtin = Scorer.load(bench, char_tokenizer, "loglik", batch_size=8, chat=False).score(model, fraction)
    through_lm_eval = harness.score(model, fraction)
    assert through_lm_eval.n == builtin.n == n
    assert through_lm_eval.item_ids == [item.id for item in bench.items[:n]]
    assert_same_scores(through_lm_eval, builtin)


def test_lm_eval_continues_from_a_smaller_fraction(bench, model, char_tokenizer, harness):
    """lm-eval scores only the documents beyond `previous` (its `samples`), and the combined result
    equals the builtin scorer's on the whole benchmark, item for item."""
    half = harness.score(model, 0.5)
    whole = harness.score(model, 1.0, previous=half)
    assert whole.n == 40 and whole.item_ids == [item.id for item in bench.items]
    assert_same_scores(whole, Scorer.load(bench, char_tokenizer, "loglik", batch_size=8, chat=False).score(model))


def test_lm_eval_equals_builtin_with_single_token_options(bench, model, word_tokenizer, task_dir):
    folder, name = task_dir
    scorer = Scorer.load(bench, word_tokenizer, "loglik", batch_size=8, chat=False)
    assert all(len(option) == 1 for e in scorer._encoded for option in e.options)
    builtin = scorer.score(model)
    through_lm_eval = HarnessScorer.load(name, word_tokenizer, tasks_dir=folder, batch_size=8).score(model)
    assert_same_scores(through_lm_eval, builtin)


def test_lm_eval_sees_weights_rewritten_in_place(bench, fresh_model, chat_model_dir, char_tokenizer, harness):
    """The HFLM wrapper is made once per resident model; a trial rewrites the weights in place."""
    from transformers import AutoModelForCausalLM

    scorer = Scorer.load(bench, char_tokenizer, "loglik", batch_size=8, chat=False)
    first = harness.score(fresh_model, 0.5)
    assert_same_scores(first, scorer.score(fresh_model, 0.5))
    other = AutoModelForCausalLM.from_pretrained(str(chat_model_dir)).eval()
    with torch.no_grad():
        for tensor_name, tensor in fresh_model.state_dict().items():
            tensor.copy_(other.state_dict()[tensor_name])
    builtin = scorer.score(fresh_model, 0.5)
    assert builtin.correct != first.correct, "the new weights should answer differently"
    assert_same_scores(harness.score(fresh_model, 0.5), builtin)


# ----- task lookup ----------------------------------------------------------------------------


def test_custom_task_does_not_index_builtin_tasks(harness, task_dir):
    _, name = task_dir
    tasks = harness.task_manager.all_tasks
    assert name in tasks
    assert "hellaswag" not in tasks and "arc_easy" not in tasks, "lm-eval's built-in tasks were indexed"
    assert len(tasks) < 10
    assert harness.task == name, "the lm-eval: prefix is stripped"


def test_missing_tasks_dir_is_a_clear_error(char_tokenizer, tmp_path):
    with pytest.raises(EvomergeError, match="tasks-dir"):
        HarnessScorer.load("lm-eval:whatever", char_tokenizer, tasks_dir=tmp_path / "nope")


def test_unknown_task_is_a_clear_error(char_tokenizer, task_dir):
    folder, _ = task_dir
    with pytest.raises(EvomergeError) as raised:
        HarnessScorer.load("lm-eval:no_such_task_xyz", char_tokenizer, tasks_dir=folder)
    message = str(raised.value)
    assert "no_such_task_xyz" in message and str(folder) in message and "\n" not in message


def test_fraction_out_of_range(harness, model):
    with pytest.raises(EvomergeError, match="fraction"):
        harness.score(model, 0)
    with pytest.raises(EvomergeError, match="fraction"):
        harness.score(model, 1.5)


# ----- tokenisation exactly as lm-eval's HFLM does it -----------------------------------------


@pytest.fixture(scope="module")
def hflm_for(model):
    """`hflm_for(tokenizer)` → a real HFLM around the tiny model (only its tokenisation is used)."""
    from lm_eval.models.huggingface import HFLM

    made = {}

    def make(tokenizer):
        if id(tokenizer) not in made:
            made[id(tokenizer)] = HFLM(pretrained=model, tokenizer=tokenizer, device="cpu", batch_size=1)
        return made[id(tokenizer)]

    return make


@pytest.fixture(scope="module")
def bpe_tokenizer(bpe_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bpe_model_dir))


@pytest.mark.parametrize("tokenizer_fixture", ["char_tokenizer", "word_tokenizer", "bpe_tokenizer", "bos_chat_tokenizer"])
def test_lm_eval_split_tokenises_exactly_as_hflm(request, bench, hflm_for, tokenizer_fixture):
    from evomerge.evaluate.scorer import lm_eval_split

    tokenizer = request.getfixturevalue(tokenizer_fixture)
    lm = hflm_for(tokenizer)
    contexts = [protocol.build_prompt(bench.items[0]), protocol.build_prompt(next(i for i in bench.items if i.type == "tf"))]
    contexts += ["Question: which gland? Answer: ", "Two trailing spaces:  "]
    for context in contexts:
        options = [" A", " B", " True", " False"]
        context_tokens, option_tokens = lm_eval_split(tokenizer, context, options)
        for option, tokens in zip(options, option_tokens):
            assert (context_tokens, tokens) == tuple(lm._encode_pair(context, option)), (tokenizer_fixture, context[-30:], option)


def test_lm_eval_split_of_a_chat_context_that_starts_with_bos(bench, hflm_for, bos_chat_tokenizer):
    """A chat-rendered context already begins with BOS; lm-eval then adds no second one."""
    from evomerge.evaluate.scorer import lm_eval_split

    lm = hflm_for(bos_chat_tokenizer)
    context = protocol.build_prompt(bench.items[0], bos_chat_tokenizer, chat=True)
    assert context.startswith(bos_chat_tokenizer.bos_token)
    ours = lm_eval_split(bos_chat_tokenizer, context, [" A"])
    theirs = lm._encode_pair(context, " A")
    bos = bos_chat_tokenizer.bos_token_id
    assert theirs[0][:2] != [bos, bos]
    assert (ours[0], ours[1][0]) == tuple(theirs), (
        f"EVAL BUG: lm_eval_split encodes a chat context that already starts with BOS with a second BOS "
        f"(ours starts {ours[0][:3]}, lm-eval's {theirs[0][:3]}); lm-eval's tok_encode skips it"
    )


def test_lm_eval_equals_builtin_with_bpe_mixed_single_and_multi_token_options(bench, bpe_model_dir, bpe_tokenizer, task_dir):
    from transformers import AutoModelForCausalLM

    folder, name = task_dir
    bpe_model = AutoModelForCausalLM.from_pretrained(str(bpe_model_dir)).eval()
    scorer = Scorer.load(bench, bpe_tokenizer, "loglik", batch_size=8, chat=False)
    lengths = {tuple(len(o) for o in e.options) for e in scorer._encoded}
    assert any(all(n == 1 for n in ls) for ls in lengths), "some items should take the single-token path"
    assert any(any(n > 1 for n in ls) for ls in lengths), "some items should take the multi-token path"
    builtin = scorer.score(bpe_model)
    assert 0 < sum(builtin.correct) < len(bench)
    assert_same_scores(HarnessScorer.load(name, bpe_tokenizer, tasks_dir=folder, batch_size=8).score(bpe_model), builtin)

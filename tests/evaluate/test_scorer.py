"""The builtin scorer on real tiny models: batched greedy decoding against `generate`, loglik
against a hand computation, per-item results, fractions, early stopping and its errors."""

from __future__ import annotations

import pytest
import torch

from evomerge.errors import EvomergeError
from evomerge.evaluate import protocol
from evomerge.evaluate.benchmark import Item, make_benchmark
from evomerge.evaluate.scorer import DECODE_SLACK, Scorer

CPU = torch.device("cpu")


def replies_by_item(scorer: Scorer, model) -> list[str]:
    """The raw reply of every item, decoded in exactly the batches `score` forms."""
    indices = list(range(len(scorer.benchmark)))
    replies: dict[int, str] = {}
    for batch in scorer._batches(indices, lambda i: len(scorer._encoded[i].prompt)):
        for index, reply in zip(batch, scorer._decode_batch(model, batch, CPU)):
            replies[index] = reply
    return [replies[i] for i in indices]


def reference_generate(model, tokenizer, prompt: list[int], max_new_tokens: int) -> str:
    ids = torch.tensor([prompt])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def hand_loglik(model, tokenizer, item: Item) -> list[float]:
    """Each option's summed log-probability after the paper prompt, computed directly: encode
    context and context+option, run the full sequence, add the option tokens' log-probs."""
    context = protocol.build_prompt(item)
    context_ids = tokenizer.encode(context)
    scores = []
    for option in item.options:
        full = tokenizer.encode(context + " " + option)
        assert full[: len(context_ids)] == context_ids
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), dim=-1)
        scores.append(sum(logprobs[pos - 1, full[pos]].item() for pos in range(len(context_ids), len(full))))
    return scores


@pytest.fixture(scope="module")
def mc_bench(bench):
    return make_benchmark("mc-only", [item for item in bench.items if item.type == "mc"])


# ----- paper protocol: batched, left-padded, KV-cached greedy decoding -------------------------


@pytest.fixture(scope="module")
def paper_replies(bench, model, char_tokenizer):
    """Replies and predictions at batch sizes 1, 3 and 8."""
    out = {}
    for batch_size in (1, 3, 8):
        scorer = Scorer.load(bench, char_tokenizer, "paper", batch_size=batch_size, chat=False)
        out[batch_size] = (scorer, replies_by_item(scorer, model), scorer.score(model))
    return out


def test_paper_replies_match_unbatched_generate(paper_replies, model, char_tokenizer):
    scorer, replies, _ = paper_replies[8]
    assert any(replies), "the random model should say something"
    for index, (item, reply) in enumerate(zip(scorer.benchmark.items, replies)):
        prompt = scorer._encoded[index].prompt
        assert prompt == char_tokenizer.encode(protocol.build_prompt(item)), "paper prompts are tokenised plainly"
        reference = reference_generate(model, char_tokenizer, prompt, scorer.max_new_tokens)
        if protocol.reply_is_complete(reply, item):  # stopped early: a prefix of what generate says
            assert reference.startswith(reply), (item.id, reply, reference)
        else:
            assert reply == reference, (item.id, reply, reference)


def test_paper_results_do_not_depend_on_batch_size(paper_replies):
    _, replies1, result1 = paper_replies[1]
    for batch_size in (3, 8):
        _, replies, result = paper_replies[batch_size]
        assert replies == replies1, f"batch size {batch_size} changes the replies"
        assert result.predictions == result1.predictions
        assert result.correct == result1.correct and result.accuracy == result1.accuracy


def test_paper_predictions_are_the_parsed_replies(paper_replies):
    scorer, replies, result = paper_replies[8]
    assert result.predictions == [protocol.parse_reply(r, item) for r, item in zip(replies, scorer.benchmark.items)]
    assert result.correct == [protocol.is_correct(item, p) for item, p in zip(scorer.benchmark.items, result.predictions)]


def test_paper_chat_template_is_used_when_the_tokenizer_has_one(bench, chat_tokenizer):
    default = Scorer.load(bench, chat_tokenizer, "paper")
    assert default.chat is True
    text = chat_tokenizer.decode(default._encoded[0].prompt)
    assert text == protocol.build_prompt(bench.items[0], chat_tokenizer, chat=True)
    assert text.startswith("<|user|> ") and text.endswith("<|assistant|>The correct answer is:")
    plain = Scorer.load(bench, chat_tokenizer, "paper", chat=False)
    assert plain.chat is False
    assert chat_tokenizer.decode(plain._encoded[0].prompt) == protocol.build_prompt(bench.items[0])


def test_chat_model_scores_through_its_template(bench, chat_model_dir, chat_tokenizer):
    from transformers import AutoModelForCausalLM

    chat_model = AutoModelForCausalLM.from_pretrained(str(chat_model_dir)).eval()
    scorer = Scorer.load(bench, chat_tokenizer, "paper", batch_size=8)
    result = scorer.score(chat_model, 0.25)
    assert result.n == 10
    replies = replies_by_item(scorer, chat_model)
    assert result.predictions == [protocol.parse_reply(r, item) for r, item in zip(replies[:10], bench.items[:10])]
    for index in range(5):
        reference = reference_generate(chat_model, chat_tokenizer, scorer._encoded[index].prompt, scorer.max_new_tokens)
        assert reference.startswith(replies[index]), (replies[index], reference)


def test_scores_are_deterministic(bench, model, char_tokenizer):
    for name in ("paper", "loglik"):
        scorer = Scorer.load(bench, char_tokenizer, name, batch_size=8, chat=False)
        first, second = scorer.score(model), scorer.score(model)
        assert (first.accuracy, first.correct, first.predictions, first.item_ids) == (
            second.accuracy,
            second.correct,
            second.predictions,
            second.item_ids,
        ), name
        again = Scorer.load(bench, char_tokenizer, name, batch_size=8, chat=False).score(model)
        assert again.predictions == first.predictions, f"{name}: a new scorer gives other predictions"


# ----- per-item results ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def loglik_result(bench, model, char_tokenizer):
    scorer = Scorer.load(bench, char_tokenizer, "loglik", batch_size=8, chat=False)
    return scorer, scorer.score(model)


def test_per_item_vector_is_aligned_with_ids_in_benchmark_order(bench, loglik_result):
    _, result = loglik_result
    assert result.n == 40 == len(result.correct) == len(result.predictions)
    assert result.item_ids == [item.id for item in bench.items]
    assert result.correct == [item.answer == p for item, p in zip(bench.items, result.predictions)]
    assert result.accuracy == pytest.approx(sum(result.correct) / 40)
    assert 0 < sum(result.correct) < 40, "the test model should get some items right and some wrong"
    assert len(set(result.predictions)) >= 3, "the test model's predictions should vary between items"
    for item, prediction in zip(bench.items, result.predictions):
        assert prediction in item.options


def test_per_category_accuracy_matches_a_hand_count(bench, loglik_result):
    _, result = loglik_result
    counts = {"general": [0, 0], "specific": [0, 0], "numerical": [0, 0]}
    for item, ok in zip(bench.items, result.correct):
        counts[item.category][0] += ok
        counts[item.category][1] += 1
    expected = {category: hit / total for category, (hit, total) in counts.items()}
    assert result.per_category == pytest.approx(expected)
    assert set(result.per_category) == set(expected)
    assert result.to_dict()["per_category"] == result.per_category


def test_items_without_category_are_left_out_of_per_category(model, char_tokenizer):
    items = [Item(f"t{i}", f"Claim {i}.", "tf", "True", category="general" if i < 2 else None) for i in range(5)]
    result = Scorer.load(make_benchmark("few", items), char_tokenizer, "loglik", chat=False).score(model)
    assert set(result.per_category) == {"general"}
    general = [ok for item, ok in zip(result.item_ids, result.correct) if item in ("t0", "t1")]
    assert result.per_category["general"] == pytest.approx(sum(general) / 2)


@pytest.mark.parametrize("name", ["paper", "loglik"])
def test_fraction_scores_the_prefix_of_the_full_result(bench, model, char_tokenizer, name):
    scorer = Scorer.load(bench, char_tokenizer, name, batch_size=8, chat=False)
    full = scorer.score(model)
    for fraction, n in ((0.5, 20), (0.1, 4), (0.01, 1)):
        part = scorer.score(model, fraction)
        assert part.n == n
        assert part.item_ids == full.item_ids[:n]
        assert part.correct == full.correct[:n]
        assert part.predictions == full.predictions[:n]
        assert part.accuracy == pytest.approx(sum(full.correct[:n]) / n)
    with pytest.raises(EvomergeError):
        scorer.score(model, 0)


# ----- loglik against a direct computation ---------------------------------------------------


def assert_loglik_picks_the_best_option(scorer: Scorer, model, tokenizer):
    result = scorer.score(model)
    checked = 0
    for item, prediction in zip(scorer.benchmark.items, result.predictions):
        scores = hand_loglik(model, tokenizer, item)
        ranked = sorted(scores, reverse=True)
        if ranked[0] - ranked[1] < 1e-4:  # a near tie: float noise may pick either
            continue
        best = item.options[scores.index(ranked[0])]
        assert prediction == best, (item.id, prediction, dict(zip(item.options, scores)))
        checked += 1
    assert checked >= 0.9 * len(scorer.benchmark)
    return result


def test_loglik_multi_token_options_match_hand_computation(bench, model, char_tokenizer):
    scorer = Scorer.load(bench, char_tokenizer, "loglik", batch_size=8, chat=False)
    assert all(len(option) >= 2 for e in scorer._encoded for option in e.options), "char tokens: ' A' is two"
    for index, item in enumerate(bench.items):
        assert scorer._encoded[index].prompt == char_tokenizer.encode(protocol.build_prompt(item))
        assert [len(o) for o in scorer._encoded[index].options] == [len(c) for c in protocol.continuations(item)]
    result = assert_loglik_picks_the_best_option(scorer, model, char_tokenizer)
    assert len(set(result.predictions)) >= 3


def test_loglik_single_token_fast_path_matches_hand_computation(bench, model, word_tokenizer):
    scorer = Scorer.load(bench, word_tokenizer, "loglik", batch_size=8, chat=False)
    assert all(len(option) == 1 for e in scorer._encoded for option in e.options), "word tokens: ' A' is one"
    assert all(word_tokenizer.unk_token_id not in o for e in scorer._encoded for o in e.options)
    result = assert_loglik_picks_the_best_option(scorer, model, word_tokenizer)
    assert len(set(result.predictions)) >= 3
    # A batch of 1 and a batch of 8 agree on the fast path too.
    single = Scorer.load(bench, word_tokenizer, "loglik", batch_size=1, chat=False).score(model)
    assert single.predictions == result.predictions


def test_loglik_batch_size_does_not_change_predictions(bench, model, char_tokenizer, loglik_result):
    _, reference = loglik_result
    for batch_size in (1, 5):
        result = Scorer.load(bench, char_tokenizer, "loglik", batch_size=batch_size, chat=False).score(model)
        assert result.predictions == reference.predictions, batch_size


# ----- decode length and early stop ----------------------------------------------------------


def test_default_max_new_tokens_is_the_longest_answer_plus_slack(bench, mc_bench, char_tokenizer, word_tokenizer):
    assert Scorer.load(bench, char_tokenizer, "paper").max_new_tokens == len(" False") + DECODE_SLACK
    assert Scorer.load(mc_bench, char_tokenizer, "paper").max_new_tokens == len(" A") + DECODE_SLACK
    assert Scorer.load(bench, word_tokenizer, "paper").max_new_tokens == 1 + DECODE_SLACK
    exact = make_benchmark("exact", [Item("e", "Mineral?", "exact", "aragonite", aliases=("calcium carbonate",))])
    assert Scorer.load(exact, char_tokenizer, "paper").max_new_tokens == len(" calcium carbonate") + DECODE_SLACK
    assert Scorer.load(bench, char_tokenizer, "paper", max_new_tokens=2).max_new_tokens == 2


def test_max_new_tokens_is_honoured(bench, fresh_model, char_tokenizer, count_forward):
    scorer = Scorer.load(bench, char_tokenizer, "paper", batch_size=8, chat=False, max_new_tokens=3)
    replies = replies_by_item(scorer, fresh_model)
    for index, (item, reply) in enumerate(zip(bench.items, replies)):
        reference = reference_generate(fresh_model, char_tokenizer, scorer._encoded[index].prompt, 3)  # ≤ 3 tokens
        assert reply == reference or (protocol.reply_is_complete(reply, item) and reference.startswith(reply)), (reply, reference)
    counter = count_forward(fresh_model)
    scorer.score(fresh_model)
    batches = 5  # 40 items, 8 per batch
    assert counter.calls <= batches * (1 + 3), counter.calls


def test_decode_runs_no_forward_pass_beyond_the_last_token(bench, fresh_model, char_tokenizer, count_forward):
    """N new tokens need N forward passes (the prompt's pass gives the first token)."""
    scorer = Scorer.load(bench, char_tokenizer, "paper", batch_size=8, chat=False, max_new_tokens=4)
    counter = count_forward(fresh_model)
    result = scorer.score(fresh_model)
    assert result.predictions.count(None) >= 30, "this check needs rows that never answer"
    assert counter.calls <= 5 * 4, (
        f"EVAL BUG: paper decoding made {counter.calls} forward passes for 5 batches of at most 4 new tokens "
        f"(at most 20 needed): after the last token it runs one more pass whose logits are never read"
    )


def test_decoding_stops_early_when_every_row_has_answered(mc_bench, answer_model, char_tokenizer, count_forward):
    scorer = Scorer.load(mc_bench, char_tokenizer, "paper", batch_size=8, chat=False)
    assert scorer.max_new_tokens == 5
    assert replies_by_item(scorer, answer_model) == ["A."] * len(mc_bench), "the edited model should say 'A.'"
    counter = count_forward(answer_model)
    result = scorer.score(answer_model)
    batches = 4  # 28 items, 8 per batch
    assert counter.calls == batches * 2, f"prompt pass + one step per batch expected, got {counter.calls} passes"
    assert counter.calls < batches * scorer.max_new_tokens
    assert result.predictions == ["A"] * 28
    assert result.correct == [item.answer == "A" for item in mc_bench.items]
    assert result.accuracy == pytest.approx(sum(item.answer == "A" for item in mc_bench.items) / 28)


def test_scorer_reads_the_weights_the_model_holds_now(mc_bench, fresh_model, answer_model, char_tokenizer):
    """The merge engine rewrites the resident model in place between trials: no stale state."""
    scorer = Scorer.load(mc_bench, char_tokenizer, "paper", batch_size=8, chat=False)
    before = scorer.score(fresh_model)
    assert before.predictions != ["A"] * 28
    with torch.no_grad():
        for name, tensor in fresh_model.state_dict().items():
            tensor.copy_(answer_model.state_dict()[name])
    after = scorer.score(fresh_model)
    assert after.predictions == ["A"] * 28


def test_scoring_runs_in_inference_mode_and_reports_progress(bench, fresh_model, char_tokenizer):
    modes = []
    original = fresh_model.forward

    def watched(*args, **kwargs):
        modes.append(torch.is_inference_mode_enabled())
        return original(*args, **kwargs)

    fresh_model.forward = watched
    progress = []
    Scorer.load(bench, char_tokenizer, "paper", batch_size=8, chat=False).score(fresh_model, progress=lambda d, t: progress.append((d, t)))
    assert modes and all(modes)
    assert progress[-1] == (5, 5) and [d for d, _ in progress] == sorted(d for d, _ in progress)


def test_loglik_progress_reaches_the_total(bench, model, char_tokenizer):
    progress = []
    Scorer.load(bench, char_tokenizer, "loglik", batch_size=8, chat=False).score(model, progress=lambda d, t: progress.append((d, t)))
    total = progress[-1][1]
    assert progress[-1] == (total, total), (
        f"EVAL BUG: loglik progress is reported before each batch, so it ends at {progress[-1]} and never "
        f"reaches ({total}, {total}) (paper mode reports after each batch, as the docstring says)"
    )


# ----- exact items and errors ---------------------------------------------------------------


def test_exact_items_score_in_paper_mode(model, char_tokenizer):
    items = [
        Item("e1", "Mineral of nacre?", "exact", "aragonite", category="specific"),
        Item("e2", "Mineral of bone?", "exact", "hydroxyapatite", aliases=("calcium phosphate",), category="specific"),
        Item("e3", "Protein of silk?", "exact", "fibroin", category="general"),
        Item("t1", "Silk is a protein.", "tf", "True", category="general"),
    ]
    scorer = Scorer.load(make_benchmark("mixed", items), char_tokenizer, "paper", chat=False)
    ordered = scorer.benchmark.items
    # The real model's replies, whatever they are, are read as the protocol reads them.
    result = scorer.score(model)
    replies = replies_by_item(scorer, model)
    assert result.n == 4 and result.item_ids == [item.id for item in ordered]
    assert result.predictions == [protocol.parse_reply(reply, item) for reply, item in zip(replies, ordered)]
    assert result.correct == [protocol.is_correct(item, p) for item, p in zip(ordered, result.predictions)]
    # Scripted replies: the first line, normalised, is the answer; an alias counts; anything else is wrong.
    scripted = {"e1": " The Aragonite.\nIt forms tablets.", "e2": " Calcium-phosphate\n", "e3": " keratin\n", "t1": " False."}
    scorer._decode_batch = lambda _model, batch, _device: [scripted[ordered[i].id] for i in batch]
    result = scorer.score(model)
    by_id = dict(zip(result.item_ids, zip(result.predictions, result.correct)))
    assert by_id == {
        "e1": ("aragonite", True),
        "e2": ("calcium phosphate", True),
        "e3": ("keratin", False),
        "t1": ("False", False),
    }
    assert result.accuracy == 0.5 and result.per_category == {"general": 0.0, "specific": 1.0}


def test_scorer_rejects_exact_items_in_loglik_mode(char_tokenizer):
    items = [Item("e1", "Mineral of nacre?", "exact", "aragonite"), Item("t1", "Silk is a protein.", "tf", "True")]
    with pytest.raises(EvomergeError, match="exact"):
        Scorer.load(make_benchmark("mixed", items), char_tokenizer, "loglik")


def test_scorer_rejects_chat_without_a_template_and_unknown_protocol(bench, char_tokenizer):
    with pytest.raises(EvomergeError, match="chat template"):
        Scorer.load(bench, char_tokenizer, "paper", chat=True)
    with pytest.raises(EvomergeError, match="protocol"):
        Scorer.load(bench, char_tokenizer, "greedy")
    assert Scorer.load(bench, char_tokenizer, "paper").chat is False, "no template: plain prompts by default"


def test_loglik_matches_hand_computation_with_a_real_bpe_tokenizer(bench, bpe_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(bpe_model_dir))
    bpe_model = AutoModelForCausalLM.from_pretrained(str(bpe_model_dir)).eval()
    scorer = Scorer.load(bench, tokenizer, "loglik", batch_size=8, chat=False)
    single = [all(len(o) == 1 for o in e.options) for e in scorer._encoded]
    assert any(single) and not all(single), "a batch should mix single- and multi-token items"
    assert_loglik_picks_the_best_option(scorer, bpe_model, tokenizer)


def test_chat_context_gets_one_bos_in_both_protocols(bench, bos_chat_tokenizer):
    """A chat template that starts with BOS (Llama-3-Instruct and others) already gives the BOS."""
    bos = bos_chat_tokenizer.bos_token_id
    paper = Scorer.load(bench, bos_chat_tokenizer, "paper", chat=True)
    assert paper._encoded[0].prompt[0] == bos and paper._encoded[0].prompt[1] != bos
    loglik = Scorer.load(bench, bos_chat_tokenizer, "loglik", chat=True)
    assert loglik._encoded[0].prompt[:2] != [bos, bos], (
        "EVAL BUG: loglik mode with a chat template encodes the rendered prompt (which starts with BOS) with "
        f"add_special_tokens, giving two BOS tokens: {loglik._encoded[0].prompt[:4]}"
    )
    assert loglik._encoded[0].prompt == paper._encoded[0].prompt


@pytest.mark.parametrize("name", ["paper", "loglik"])
def test_growing_fractions_continue_instead_of_rescoring(bench, fresh_model, char_tokenizer, name):
    """Multi-fidelity scoring: 0.25 → 0.5 → 1 with `previous` equals scoring everything at once,
    and reads each item once (rows through a full-sequence pass), not 1.75 times."""
    rows = []
    original = fresh_model.forward

    def counted(*args, **kwargs):
        input_ids = kwargs["input_ids"]
        if input_ids.shape[1] > 1:  # a prompt pass, not one decoding step
            rows.append(input_ids.shape[0])
        return original(*args, **kwargs)

    fresh_model.forward = counted
    scorer = Scorer.load(bench, char_tokenizer, name, batch_size=8, chat=False)
    full = scorer.score(fresh_model)
    rows_for_full, rows[:] = sum(rows), []
    result = None
    for fraction in (0.25, 0.5, 1.0):
        result = scorer.score(fresh_model, fraction, previous=result)
        assert result.n == bench.count(fraction)
        assert result.correct == full.correct[: result.n]
    assert (result.item_ids, result.predictions, result.per_category) == (full.item_ids, full.predictions, full.per_category)
    assert result.accuracy == pytest.approx(full.accuracy)
    assert sum(rows) == rows_for_full, "continuing must not score an item twice"
    assert scorer.score(fresh_model, 0.5, previous=result) is result, "nothing left to score"

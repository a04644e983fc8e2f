"""Score a resident model on a benchmark: tokenise once, batch, decode only what an answer needs.

`Scorer.load(benchmark, tokenizer, protocol, batch_size)` tokenises every item once; `score(model,
fraction)` runs on whatever weights the model holds now (the merge engine rewrites them in place
between trials) and returns accuracy, per-category accuracy and the per-item correctness vector.

- `paper`: greedy decoding, batched and left-padded, with a KV cache; a row stops as soon as its
  reply maps to an answer, the batch when every row has, and never after the longest option needs.
- `loglik`: each option's log-likelihood after the same context, tokenised as lm-eval tokenises it.
  When the options differ only in their last token (" A", " B", …), one forward pass scores them all.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import torch

from evomerge.errors import EvomergeError, raise_if_interrupted
from evomerge.evaluate import protocol as prompts
from evomerge.evaluate.benchmark import Benchmark, Item

DECODE_SLACK = 3  # tokens beyond the longest option: a leading space, "Answer:", a delimiter


@dataclass
class ScoreResult:
    accuracy: float
    n: int
    per_category: dict[str, float]
    correct: list[bool]  # per item, in the benchmark's order (for bootstrap intervals later)
    item_ids: list[str]
    predictions: list[Optional[str]] = field(default_factory=list)
    seconds: float = 0.0
    categories: list[Optional[str]] = field(default_factory=list)  # per item, for per_category

    def to_dict(self) -> dict:
        return asdict(self)

    def extended(self, more: "ScoreResult") -> "ScoreResult":
        """This result followed by `more` (the next items of the same order)."""
        return make_result(
            self.item_ids + more.item_ids,
            self.categories + more.categories,
            self.correct + more.correct,
            self.predictions + more.predictions,
            self.seconds + more.seconds,
        )


def make_result(item_ids, categories, correct, predictions, seconds) -> ScoreResult:
    return ScoreResult(
        accuracy=sum(correct) / len(correct),
        n=len(correct),
        per_category=per_category_accuracy(categories, correct),
        correct=list(correct),
        item_ids=list(item_ids),
        predictions=list(predictions),
        seconds=seconds,
        categories=list(categories),
    )


@dataclass
class _Encoded:
    """One item tokenised for the chosen protocol."""

    prompt: list[int]  # paper: the prompt; loglik: the context
    options: list[list[int]] = field(default_factory=list)  # loglik: continuation tokens per option


class Scorer:
    """Scores whatever weights a model holds now on one benchmark, with items tokenised once.

    `Scorer.load(benchmark, tokenizer, protocol=…)` checks the options and tokenises every item;
    the constructor only stores what it is given."""

    def __init__(
        self,
        benchmark: Benchmark,
        tokenizer,
        encoded: Sequence[_Encoded],
        *,
        protocol: str,
        batch_size: int,
        chat: bool,
        max_new_tokens: int,
    ):
        self.benchmark = benchmark
        self.tokenizer = tokenizer
        self.protocol = protocol
        self.batch_size = batch_size
        self.chat = chat
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
        self.eos_ids = {tokenizer.eos_token_id} - {None}
        self._progress: Optional[Callable[[int, int], None]] = None
        self._encoded = list(encoded)
        self.max_new_tokens = max_new_tokens

    @classmethod
    def load(
        cls,
        benchmark: Benchmark,
        tokenizer,
        protocol: str = "paper",
        batch_size: int = 16,
        chat: Optional[bool] = None,
        max_new_tokens: Optional[int] = None,
    ) -> "Scorer":
        """Check the protocol against the items and the chat option against the tokenizer, then
        tokenise every item (`chat`: the tokenizer's chat template; default: when it has one)."""
        if protocol not in prompts.PROTOCOLS:
            raise EvomergeError(f"unknown protocol {protocol!r}; expected {' or '.join(prompts.PROTOCOLS)}")
        if protocol == "loglik" and any(item.type == "exact" for item in benchmark.items):
            raise EvomergeError(f"{benchmark.name}: loglik scoring needs mc/tf items; exact items need --protocol paper")
        chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
        if chat and not getattr(tokenizer, "chat_template", None):
            raise EvomergeError("--chat asked for, but the tokenizer has no chat template")
        encoded = [encode_item(item, tokenizer, protocol, chat) for item in benchmark.items]
        max_new_tokens = max_new_tokens or longest_answer_tokens(benchmark, tokenizer) + DECODE_SLACK
        return cls(benchmark, tokenizer, encoded, protocol=protocol, batch_size=batch_size, chat=chat, max_new_tokens=max_new_tokens)

    # ----- public --------------------------------------------------------------------------

    @torch.inference_mode()
    def score(
        self,
        model,
        fraction: float = 1.0,
        progress: Optional[Callable[[int, int], None]] = None,
        previous: Optional[ScoreResult] = None,
    ) -> ScoreResult:
        """Score the first ⌈fraction·n⌉ items; with `previous` (a result for a smaller fraction of
        the same model) only the items beyond it are scored, so growing fractions cost one pass.
        `progress(done, total)` is called after each batch."""
        first = previous.n if previous is not None else 0
        count = self.benchmark.count(fraction)
        if first >= count:
            return previous
        result = self.score_items(model, range(first, count), progress)
        return previous.extended(result) if previous is not None else result

    @torch.inference_mode()
    def score_items(self, model, indices: Sequence[int], progress: Optional[Callable[[int, int], None]] = None) -> ScoreResult:
        """Score the items at these positions of the benchmark (an anchor estimate's few items),
        in this order."""
        self._progress = progress
        start = time.perf_counter()
        indices = list(indices)
        items = [self.benchmark.items[i] for i in indices]
        device = next(model.parameters()).device
        if self.protocol == "paper":
            predictions = self._generate(model, indices, device)
        else:
            predictions = self._loglik(model, indices, device)
        correct = [prompts.is_correct(item, pred) for item, pred in zip(items, predictions)]
        return make_result([item.id for item in items], [item.category for item in items], correct, predictions, time.perf_counter() - start)

    # ----- paper protocol: greedy decoding ------------------------------------------------

    def _generate(self, model, indices: list[int], device) -> list[Optional[str]]:
        predictions: dict[int, Optional[str]] = {}
        batches = self._batches(indices, lambda i: len(self._encoded[i].prompt))
        for done, batch in enumerate(batches, start=1):
            replies = self._decode_batch(model, batch, device)
            self._report(done, len(batches))
            for index, reply in zip(batch, replies):
                predictions[index] = prompts.parse_reply(reply, self.benchmark.items[index])
        return [predictions[i] for i in indices]

    def _decode_batch(self, model, batch: list[int], device) -> list[str]:
        items = [self.benchmark.items[i] for i in batch]
        input_ids, attention_mask = self._left_pad([self._encoded[i].prompt for i in batch], device)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        output = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True, logits_to_keep=1)
        require_finite(output.logits)
        generated: list[list[int]] = [[] for _ in batch]
        finished = [False] * len(batch)
        for step in range(self.max_new_tokens):
            next_tokens = output.logits[:, -1, :].argmax(dim=-1)
            for row, token in enumerate(next_tokens.tolist()):
                if finished[row]:
                    continue
                if token in self.eos_ids:
                    finished[row] = True
                    continue
                generated[row].append(token)
                reply = self.tokenizer.decode(generated[row], skip_special_tokens=True)
                finished[row] = prompts.reply_is_complete(reply, items[row])
            if all(finished) or step == self.max_new_tokens - 1:
                break  # nothing will read another forward pass
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(batch), 1))], dim=1)
            position_ids = position_ids[:, -1:] + 1
            output = model(
                input_ids=next_tokens.unsqueeze(1),
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=output.cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return [self.tokenizer.decode(tokens, skip_special_tokens=True) for tokens in generated]

    # ----- loglik protocol ----------------------------------------------------------------

    def _loglik(self, model, indices: list[int], device) -> list[Optional[str]]:
        questions = [(self._encoded[i].prompt, self._encoded[i].options) for i in indices]
        scores = option_logliks(model, questions, pad_id=self.pad_id, batch_size=self.batch_size, device=device, progress=self._report)
        return [self.benchmark.items[index].options[first_max(item_scores)] for index, item_scores in zip(indices, scores)]

    # ----- batching -----------------------------------------------------------------------

    def _report(self, done: int, total: int) -> None:
        raise_if_interrupted()  # after each batch: Ctrl-C within one forward pass
        if self._progress is not None:
            self._progress(done, total)

    def _batches(self, indices: list[int], length) -> list[list[int]]:
        return batches(indices, length, self.batch_size)

    def _left_pad(self, sequences: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, tokens in enumerate(sequences):
            input_ids[row, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
            attention_mask[row, width - len(tokens) :] = 1
        return input_ids.to(device), attention_mask.to(device)


def encode_item(item: Item, tokenizer, protocol: str, chat: bool) -> _Encoded:
    """One item tokenised for `protocol`: the paper's prompt, or loglik's context and options."""
    prompt_text = prompts.build_prompt(item, tokenizer, chat)
    if protocol == "paper":
        # A chat template already starts with BOS; do not add a second one.
        return _Encoded(tokenizer.encode(prompt_text, add_special_tokens=not chat))
    context, options = lm_eval_split(tokenizer, prompt_text, prompts.continuations(item))
    return _Encoded(context, options)


def longest_answer_tokens(benchmark: Benchmark, tokenizer) -> int:
    """The most tokens any item's answer (option, or answer and aliases) takes after a space."""
    longest = 1
    for item in benchmark.items:
        answers = list(item.options) or [item.answer, *item.aliases]
        for answer in answers:
            longest = max(longest, len(tokenizer.encode(" " + answer, add_special_tokens=False)))
    return longest


def batches(indices: list[int], length: Callable[[int], int], batch_size: int) -> list[list[int]]:
    """Similar lengths together (less padding), in a deterministic order."""
    ordered = sorted(indices, key=lambda i: (length(i), i))
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def first_max(scores: Sequence[float]) -> int:
    """The index of the highest score, the first on a tie (as argmax)."""
    return max(range(len(scores)), key=lambda k: scores[k])


def require_finite(logits: torch.Tensor) -> None:
    """Refuse to read answers from NaN or infinite logits (argmax would pick an arbitrary token)."""
    if not bool(torch.isfinite(logits).all()):
        raise FloatingPointError("the model's logits are not finite (NaN or inf): its weights are broken")


def option_logliks(
    model,
    questions: Sequence[tuple[list[int], list[list[int]]]],
    *,
    pad_id: int,
    batch_size: int,
    device,
    progress: Optional[Callable[[int, int], None]] = None,
) -> list[list[float]]:
    """For each (context tokens, option tokens) question, every option's log-likelihood after the
    context (of its own tokens only), in batched forward passes; `progress(done, total)` after each.

    When a question's options differ only in their last token (" A" vs " B": a shared space, then
    the letter), one row over context + the shared prefix scores them all at its last position; the
    shared prefix adds the same log-likelihood to every option, so it is left out (which option wins
    does not change). Otherwise each option is a row of its own."""
    # Requests: (question, option index or None for "every option at the last position", tokens, targets)
    requests = []
    for question, (context, options) in enumerate(questions):
        if _differ_only_in_last_token(options):
            requests.append((question, None, context + options[0][:-1], [option[-1] for option in options]))
        else:
            for option_index, option in enumerate(options):
                requests.append((question, option_index, (context + option)[:-1], option))
    scores = [[0.0] * len(options) for _, options in questions]
    groups = batches(list(range(len(requests))), lambda r: len(requests[r][2]), batch_size)
    for done, group in enumerate(groups, start=1):
        chosen = [requests[r] for r in group]
        # Right padding and no mask: a causal model never attends to the pads after a row's
        # tokens, and attention keeps its fast causal kernel. Logits are computed only for the
        # last `keep` positions, which hold every row's scored positions (lengths are sorted).
        lengths = [len(tokens) for _, _, tokens, _ in chosen]
        spans = [len(targets) if option is not None else 1 for _, option, _, targets in chosen]
        width = max(lengths)
        keep = width - min(length - span for length, span in zip(lengths, spans))
        input_ids = torch.full((len(chosen), width), pad_id, dtype=torch.long)
        for row, (_, _, tokens, _) in enumerate(chosen):
            input_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        logits = model(input_ids=input_ids.to(device), logits_to_keep=keep).logits
        require_finite(logits)
        offset = width - keep  # logits[:, j] belongs to position offset + j
        # Every scored (row, position) and every (place, target) read there, gathered at once: one
        # device-to-host copy per batch instead of one per token.
        rows, positions, places, targets_read = [], [], [], []
        for row, (_, option, _, targets) in enumerate(chosen):
            end = lengths[row] - offset
            read_at = [end - 1] * len(targets) if option is None else range(end - len(targets), end)
            for position, target in zip(read_at, targets):
                if not rows or (rows[-1], positions[-1]) != (row, position):
                    rows.append(row)
                    positions.append(position)
                places.append(len(rows) - 1)
                targets_read.append(target)
        logprobs = torch.log_softmax(logits[rows, positions].float(), dim=-1)
        values = iter(logprobs[places, targets_read].tolist())
        for question, option, _, targets in chosen:
            read = [next(values) for _ in targets]
            if option is None:
                scores[question] = read
            else:
                scores[question][option] = sum(read)
        if progress is not None:
            progress(done, len(groups))
    return scores


def _differ_only_in_last_token(options: list[list[int]]) -> bool:
    """All options the same length and identical but for their last token (then the shared part's
    log-likelihood is the same for every option and does not change which one wins)."""
    first = options[0]
    return all(len(option) == len(first) and option[:-1] == first[:-1] for option in options)


def lm_eval_split(tokenizer, context: str, options: list[str]) -> tuple[list[int], list[list[int]]]:
    """Context and continuation tokens exactly as lm-eval's HFLM makes them: trailing spaces of the
    context move to the continuation; the whole string is encoded, then the context's tokens split off."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        options = [context[-spaces:] + option for option in options]
        context = context[:-spaces]
    # Like lm-eval: no special tokens are added to a text that already starts with BOS (a chat template).
    bos = getattr(tokenizer, "bos_token", None)
    special = {"add_special_tokens": False} if bos and context.startswith(bos) else {}
    context_tokens = tokenizer.encode(context, **special)
    option_tokens = [tokenizer.encode(context + option, **special)[len(context_tokens) :] for option in options]
    return context_tokens, option_tokens


def per_category_accuracy(categories: list[Optional[str]], correct: list[bool]) -> dict[str, float]:
    totals: dict[str, list[int]] = {}
    for category, ok in zip(categories, correct):
        if category:
            hit, count = totals.setdefault(category, [0, 0])
            totals[category] = [hit + int(ok), count + 1]
    return {category: hit / count for category, (hit, count) in sorted(totals.items())}

"""lm-eval as the objective: any lm-eval task scores the resident model, without reloading it.

`--benchmark lm-eval:TASK` (with `--tasks-dir DIR` for custom task YAMLs) wraps the in-memory model
in lm-eval's HFLM once and calls `simple_evaluate` per score; `fraction` becomes lm-eval's `limit`
(the first ⌈f·n⌉ documents). Built-in tasks are indexed only when the task is not in `tasks_dir`.
`export_lm_eval_task` writes a shipped benchmark as an lm-eval multiple_choice task whose
accuracy equals the builtin `loglik` protocol's (same prompt, same options, same order).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Optional, Union

import yaml

from evomerge.errors import EvomergeError
from evomerge.evaluate import protocol
from evomerge.evaluate.benchmark import Benchmark, Item, fraction_count
from evomerge.evaluate.scorer import ScoreResult, make_result
from evomerge.extras import require
from evomerge.files import write_jsonl

PREFIX = "lm-eval:"


def is_lm_eval_spec(benchmark: str) -> bool:
    return str(benchmark).startswith(PREFIX)


def task_name_for(benchmark: Benchmark) -> str:
    return "evomerge_" + re.sub(r"[^A-Za-z0-9_]", "_", benchmark.name)


def export_lm_eval_task(benchmark: Benchmark, out_dir: Union[str, Path], chat_tokenizer=None) -> str:
    """Write `benchmark` as an lm-eval task folder (YAML + JSONL in the benchmark's order); returns
    the task name. Prompts are the paper's, rendered with `chat_tokenizer`'s chat template when
    one is given; options are letters or True/False."""
    if any(item.type == "exact" for item in benchmark.items):
        raise EvomergeError(f"{benchmark.name}: only mc and tf items can be exported as an lm-eval multiple_choice task")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise EvomergeError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    name = task_name_for(benchmark)
    data_path = (out / f"{name}.jsonl").resolve()
    write_jsonl(data_path, [_task_document(item, chat_tokenizer) for item in benchmark.items], ensure_ascii=True)
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_path)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{query}}",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "target_delimiter": " ",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    (out / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return name


def _task_document(item: Item, chat_tokenizer=None) -> dict:
    return {
        "id": item.id,
        "query": protocol.build_prompt(item, chat_tokenizer, chat=chat_tokenizer is not None),
        "choices": list(item.options),
        "gold": item.options.index(item.answer),
        "category": item.category or "",
    }


@functools.lru_cache(maxsize=8)
def _task_manager(tasks_dir: Optional[str], include_defaults: bool):
    require("lm_eval", "an lm-eval task")
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=tasks_dir, include_defaults=include_defaults)


def find_task(task: str, tasks_dir: Optional[Union[str, Path]] = None):
    """The TaskManager that knows `task` (lm-eval's built-in index only if `tasks_dir` lacks it);
    a clear EvomergeError for an unknown task or folder. Cached: indexing takes seconds."""
    task = task.removeprefix(PREFIX)
    if tasks_dir is not None:
        if not Path(tasks_dir).is_dir():
            raise EvomergeError(f"--tasks-dir {tasks_dir} is not a folder")
        custom = _task_manager(str(tasks_dir), False)
        if task in custom.all_tasks:
            return custom
    manager = _task_manager(str(tasks_dir) if tasks_dir else None, True)
    if task not in manager.all_tasks:
        raise EvomergeError(f"lm-eval has no task {task!r}" + (f" (looked in {tasks_dir} too)" if tasks_dir else ""))
    return manager


class HarnessScorer:
    """Scores a model through lm-eval's `simple_evaluate` on one task."""

    def __init__(self, task: str, tokenizer, task_manager, batch_size: int = 16):
        """`task_manager`: lm-eval's TaskManager that knows `task` (see `load`)."""
        self.task = task.removeprefix(PREFIX)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.task_manager = task_manager
        self._wrapped: dict[int, object] = {}
        self._documents: Optional[int] = None

    @classmethod
    def load(cls, task: str, tokenizer, tasks_dir: Optional[Union[str, Path]] = None, batch_size: int = 16) -> "HarnessScorer":
        """Find the task (in `tasks_dir`, else lm-eval's own index); an EvomergeError if it is unknown."""
        task = task.removeprefix(PREFIX)
        return cls(task, tokenizer, find_task(task, tasks_dir), batch_size)

    def _lm(self, model):
        """One HFLM per resident model: the merge engine rewrites its weights in place."""
        from lm_eval.models.huggingface import HFLM

        key = id(model)
        if key not in self._wrapped:
            device = str(next(model.parameters()).device)
            self._wrapped[key] = HFLM(pretrained=model, tokenizer=self.tokenizer, device=device, batch_size=self.batch_size)
        return self._wrapped[key]

    def _document_count(self) -> int:
        """How many documents the task scores (read once: fractions are counted on it)."""
        if self._documents is None:
            from lm_eval.tasks import get_task_dict

            self._documents = len(get_task_dict([self.task], self.task_manager)[self.task].eval_docs)
        return self._documents

    def score(self, model, fraction: float = 1.0, progress=None, previous: Optional[ScoreResult] = None) -> ScoreResult:
        """The first ⌈fraction·n⌉ documents (lm-eval's `limit`); with `previous`, only the
        documents beyond it are scored (lm-eval's `samples`), as the builtin scorer does.
        `progress` is accepted for the scorers' common signature; lm-eval reports no batches."""
        import time

        from lm_eval import simple_evaluate

        first = previous.n if previous is not None else 0
        count = fraction_count(fraction, self._document_count())
        if first >= count:
            return previous
        start = time.perf_counter()
        output = simple_evaluate(
            model=self._lm(model),
            tasks=[self.task],
            samples={self.task: list(range(first, count))},
            task_manager=self.task_manager,
            log_samples=True,
            bootstrap_iters=0,
            verbosity="ERROR",
        )
        samples = sorted(output["samples"][self.task], key=lambda sample: sample["doc_id"])
        docs = [sample.get("doc") or {} for sample in samples]
        result = make_result(
            [str(doc.get("id", sample["doc_id"])) for doc, sample in zip(docs, samples)],
            [doc.get("category") or None for doc in docs],
            [bool(sample["acc"]) for sample in samples],
            [None] * len(samples),
            time.perf_counter() - start,
        )
        return previous.extended(result) if previous is not None else result

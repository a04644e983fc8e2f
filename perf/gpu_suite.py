"""What a search costs on one accelerator, at real model shapes, in one run: the figures a user with
8B parents asks for (parent load, merge, scoring, one trial, memory, trials per hour).

For each `--shape` (default: Llama 3.1 8B's and SmolLM 1.7B's on a GPU), two parents with random
weights are made on the device (no download: a transformers config, weights drawn in `--dtype`),
and the suite times, with the same code a search runs:
  - `init_parents_s`: drawing both parents' weights on the device;
  - `write_parent_s`, `parent_load_s`: one parent written as safetensors to a temporary folder, then
    read back by `load_parent` onto the device, as a search loads a parent (`--no-disk` skips it;
    it is skipped too when the disk lacks room);
  - `resident_model_s`: allocating the resident model `Merger.apply` writes into;
  - `merge_first_s` (also prepares the SLERP angles, once per study), `merge_s` (every later
    trial): the paper's SLERP recipe;
  - `score_s` per protocol (`paper`: greedy decoding; `loglik`): 359 synthetic items in two
    benchmarks of 159 and 200 items (the source paper's two benchmarks' sizes), tokenised once;
  - `trial_s` per protocol: one whole trial as a search runs it (`TrialRunner.evaluate`: merge,
    then the 359 items at fractions 0.25, 0.5, 1, nothing pruned), and `trials_per_hour` from it;
  - `peak_gpu_gib` (`torch.cuda.max_memory_allocated`), or the process's peak RSS on a CPU.
Population scoring (K recipes scored in one batched forward) does not exist yet: it is reported as
such. Every stage catches its own failure (out of memory included) and reports it in the JSON
instead of ending the run; a stage that needs a failed one is skipped, and so is everything once
`--budget-s` has passed. Progress goes to stdout as it happens; the last line is one JSON object.

    python perf/gpu_suite.py                                    # on a GPU: llama-8b and smollm-1.7b
    python perf/gpu_suite.py --device cpu --shape tiny          # the same code on a CPU, in seconds
    python perf/gpu_suite.py --shape llama-8b --batch-size 32 --repeats 3 --budget-s 420
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import resource
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from _common import median_time, synthetic_items  # first: it sets the offline environment

from evomerge.devices import resolve_device, resolve_dtype
from evomerge.evaluate.backends.base import Objective
from evomerge.evaluate.benchmark import Item, make_benchmark
from evomerge.evaluate.protocol import build_prompt
from evomerge.evaluate.scorer import Scorer
from evomerge.merge.merger import Merger, build_resident_model
from evomerge.merge.parents import Parent, ParentInfo, inspect_parent, load_parent
from evomerge.recipe import paper_recipe
from evomerge.search.objective import ParentScores, TrialRunner
from evomerge.search.study import SearchSettings
from evomerge.space import load_space
from evomerge.toy.tiny import save_bpe_tokenizer, tiny_config

# Real models' shapes (config.json of each); the weights are random.
SHAPES: dict[str, dict[str, Any]] = {
    # Llama 3.1 8B: 8.0B parameters, untied head.
    "llama-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8, tie_word_embeddings=False),
    # SmolLM 1.7B (the paper's small model): 1.7B parameters, tied embeddings.
    "smollm-1.7b": dict(vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_layers=24, num_heads=32, num_kv_heads=32, tie_word_embeddings=True),
    # For a CPU and the test suite: the same code in seconds.
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=4, num_heads=4, num_kv_heads=2, tie_word_embeddings=False),
}
BENCHMARK_SIZES = (159, 200)  # spider silk, bio-inspired materials
FIDELITIES = [0.25, 0.5, 1.0]
PROTOCOLS = ("paper", "loglik")
TOKENIZER_VOCAB = 4096  # the BPE trained on the items' text; ids stay below any shape's vocabulary
GIB = 1024**3


class Skipped(Exception):
    """A stage that did not run: a stage it needs failed, or the time budget is spent."""


class Suite:
    """Runs stages in order, each timed and guarded: a failure is recorded, never raised."""

    def __init__(self, device: torch.device, budget_s: float):
        self.device = device
        self.budget_s = budget_s
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def say(self, text: str) -> None:
        print(f"[{self.elapsed():7.1f}s] {text}", flush=True)

    def stage(self, record: dict, key: str, fn: Callable[[], Any], *needs: str) -> Any:
        """Run `fn` unless a stage in `needs` failed or the budget is spent; record its result
        (or why it did not run: {"skipped": why} or {"error": what}) under `key`, and return the
        result (None when it did not run or failed)."""
        missing = [need for need in needs if not isinstance(record.get(need), (int, float))]
        if missing:
            record[key] = {"skipped": f"needs {', '.join(missing)}"}
            return None
        if self.elapsed() > self.budget_s:
            record[key] = {"skipped": f"time budget of {self.budget_s:g} s spent"}
            self.say(f"{key}: skipped (time budget spent)")
            return None
        try:
            value = fn()
        except Exception as error:  # noqa: BLE001 (out of memory, a driver error: recorded, the suite goes on)
            record[key] = {"error": failure(error)}
            self.say(f"{key}: FAILED {failure(error)}")
            if not is_out_of_memory(error):
                traceback.print_exc(file=sys.stdout)
            value = None
        if value is None:  # outside the handler: the traceback no longer holds the failed stage's tensors
            free_memory()
            return None
        record[key] = value
        return value


def failure(error: BaseException) -> str:
    kind = "out of memory" if is_out_of_memory(error) else type(error).__name__
    return f"{kind}: {str(error).splitlines()[0][:300] if str(error) else ''}"


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    """One call's wall time, the device synchronised before and after; and its result."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def benchmarks() -> list:
    """Two synthetic benchmarks of the paper's sizes (159 and 200 multiple-choice items)."""
    made = []
    for index, size in enumerate(BENCHMARK_SIZES):
        items = [
            Item(f"b{index}-{item.id}", item.question, item.type, item.answer, item.choices, category=item.category)
            for item in synthetic_items(size, seed=index)
        ]
        made.append(make_benchmark(f"synthetic-{size}", items))
    return made


def random_state(names: dict[str, torch.Size], dtype: torch.dtype, device: torch.device, seed: int, like: Optional[dict] = None) -> dict[str, torch.Tensor]:
    """Random weights drawn on the device: norms near 1, matrices of std 0.02 (a child: `like` plus
    noise of half that size, so SLERP's angles are neither 0 nor 90 degrees)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    state = {}
    for name, shape in names.items():
        noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        if like is not None:
            state[name] = like[name] + noise.mul_(0.01)
        elif len(shape) == 1:
            state[name] = noise.mul_(0.02).add_(1.0)
        else:
            state[name] = noise.mul_(0.02)
    return state


def tensor_shapes(config) -> dict[str, torch.Size]:
    """The checkpoint's tensors (names and shapes, in the model's order), from a model on the meta
    device: nothing allocated. A tied head is not a checkpoint tensor."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    state = model.state_dict()
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return {name: tensor.shape for name, tensor in state.items() if tensor.is_floating_point()}


def parent_info(folder: Path, config, shapes: dict[str, torch.Size], dtype: torch.dtype) -> ParentInfo:
    """The header a parent on disk would have (its folder holds config.json and the tokenizer)."""
    dtype_name = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}[dtype]
    return ParentInfo(str(folder), folder, config.to_dict(), {n: tuple(s) for n, s in shapes.items()}, {n: dtype_name for n in shapes}, [])


class TrialRecordStub:
    """What `TrialRunner.evaluate` writes a trial to, kept in a dict; never prunes (a full trial)."""

    def __init__(self) -> None:
        self.user_attrs: dict = {}

    def set_user_attr(self, key: str, value) -> None:
        self.user_attrs[key] = value

    def report(self, value: float, step: int) -> None:
        pass

    def should_prune(self) -> bool:
        return False


def run_shape(suite: Suite, shape: str, *, dtype: torch.dtype, batch_size: int, repeats: int, disk: bool, root: Path) -> dict:
    """Every stage for one shape; the shape's record."""
    device = suite.device
    record: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    config = tiny_config("llama", **SHAPES[shape])
    config.max_position_embeddings = 4096
    shapes = tensor_shapes(config)
    params = sum(math.prod(s) for s in shapes.values())
    record["params"] = params
    record["parent_gib"] = round(params * torch.finfo(dtype).bits / 8 / GIB, 2)
    suite.say(f"{shape}: 2 parents of {params / 1e9:.3f}B parameters ({record['parent_gib']} GiB each in {dtype_name(dtype)}) on {device}")

    folders = [root / shape / "instruct", root / shape / "child"]
    tests = benchmarks()
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(str(folder))
    texts = [build_prompt(item) + " A B C D" for benchmark in tests for item in benchmark.items]
    tokenizer = save_bpe_tokenizer(folders[0], texts, min(TOKENIZER_VOCAB, config.vocab_size))

    state: dict[str, dict] = {}

    def init_parents() -> float:
        seconds, first = timed(device, lambda: random_state(shapes, dtype, device, seed=0))
        state["instruct"] = first
        more, second = timed(device, lambda: random_state(shapes, dtype, device, seed=1, like=first))
        state["child"] = second
        return seconds + more

    suite.stage(record, "init_parents_s", init_parents)
    say_seconds(suite, shape, record, "init_parents_s")

    child_parent: dict[str, Parent] = {}
    if disk and "child" in state:
        need = params * torch.finfo(dtype).bits / 8
        free = shutil.disk_usage(root).free
        if free < 1.2 * need:
            record["write_parent_s"] = record["parent_load_s"] = {"skipped": f"{free / GIB:.1f} GiB free on disk, {need / GIB:.1f} needed"}
        else:

            def write_parent() -> float:
                from safetensors.torch import save_file

                start = time.perf_counter()
                on_cpu = {name: tensor.to("cpu") for name, tensor in state["child"].items()}
                save_file(on_cpu, str(folders[1] / "model.safetensors"), metadata={"format": "pt"})
                del on_cpu
                return time.perf_counter() - start

            suite.stage(record, "write_parent_s", write_parent, "init_parents_s")
            say_seconds(suite, shape, record, "write_parent_s")

            def load_from_disk() -> float:
                del state["child"]  # the copy drawn on the device makes way for the loaded one
                free_memory()
                seconds, loaded = timed(device, lambda: load_parent(inspect_parent(folders[1]), dtype=dtype, device=device))
                child_parent["child"] = loaded
                return seconds

            suite.stage(record, "parent_load_s", load_from_disk, "write_parent_s")
            say_seconds(suite, shape, record, "parent_load_s")
            (folders[1] / "model.safetensors").unlink(missing_ok=True)  # the disk is not needed any more
    elif not disk:
        record["write_parent_s"] = record["parent_load_s"] = {"skipped": "--no-disk"}

    holder: dict[str, Any] = {}

    def resident_model() -> float:
        infos = [parent_info(folders[0], config, shapes, dtype), child_parent["child"].info if child_parent else parent_info(folders[1], config, shapes, dtype)]
        parents = {infos[0].name: Parent(infos[0], state["instruct"])}
        parents[infos[1].name] = child_parent["child"] if child_parent else Parent(infos[1], state["child"])
        seconds, (model, targets) = timed(device, lambda: build_resident_model(infos[0], state["instruct"], dtype, device))
        holder["merger"] = Merger(parents, model, targets, infos=infos, device=device)
        return seconds

    if "child" in state or child_parent:
        suite.stage(record, "resident_model_s", resident_model, "init_parents_s")
    else:
        record["resident_model_s"] = {"skipped": "no second parent"}
    say_seconds(suite, shape, record, "resident_model_s")
    merger: Optional[Merger] = holder.get("merger")
    recipe = paper_recipe(str(folders[0]), str(folders[1]), dtype_name(dtype))

    suite.stage(record, "merge_first_s", lambda: timed(device, lambda: merger.apply(recipe))[0], "resident_model_s")
    say_seconds(suite, shape, record, "merge_first_s")
    suite.stage(record, "merge_s", lambda: median_time(lambda: merger.apply(recipe), repeats, device)[0], "merge_first_s")
    say_seconds(suite, shape, record, "merge_s")

    for protocol in PROTOCOLS:
        measure_scoring(suite, record, shape, protocol, merger, tokenizer, tests, batch_size, repeats, holder)
    for protocol in PROTOCOLS:
        measure_trial(suite, record, shape, protocol, merger, tokenizer, tests, batch_size, repeats, recipe, folders, dtype)
    record["trials_per_hour"] = {
        protocol: round(3600 / record[f"trial_{protocol}_s"], 1) for protocol in PROTOCOLS if isinstance(record.get(f"trial_{protocol}_s"), float)
    }
    record["population"] = {"skipped": "population scoring (--population K) is not implemented yet"}
    if device.type == "cuda":
        record["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(device) / GIB, 2)
    record["peak_rss_gib"] = round(peak_rss_bytes() / GIB, 2)
    for key, value in list(record.items()):
        if isinstance(value, float):
            record[key] = round(value, 4)
    holder.clear()
    state.clear()
    child_parent.clear()
    merger = None
    free_memory()
    return record


def measure_scoring(suite: Suite, record: dict, shape: str, protocol: str, merger, tokenizer, tests: list, batch_size: int, repeats: int, holder: dict) -> None:
    """Tokenise both benchmarks once for `protocol`, then time scoring every item of both."""
    device = suite.device

    def tokenise() -> float:
        start = time.perf_counter()
        holder[protocol] = [Scorer.load(b, tokenizer, protocol=protocol, batch_size=batch_size, chat=False) for b in tests]
        return time.perf_counter() - start

    def score() -> float:
        return median_time(lambda: [scorer.score(merger.model) for scorer in holder[protocol]], repeats, device)[0]

    suite.stage(record, f"tokenise_{protocol}_s", tokenise)
    suite.stage(record, f"score_{protocol}_s", score, "merge_s", f"tokenise_{protocol}_s")
    say_seconds(suite, shape, record, f"score_{protocol}_s", f" ({sum(BENCHMARK_SIZES)} items, batch {batch_size})")


def measure_trial(
    suite: Suite, record: dict, shape: str, protocol: str, merger, tokenizer, tests: list, batch_size: int, repeats: int, recipe, folders, dtype
) -> None:
    """Time one whole trial as a search runs it (`TrialRunner.evaluate`: merge, then every item at
    growing fractions, nothing pruned) on one benchmark of all the items."""
    device = suite.device

    def trial() -> float:
        settings = SearchSettings(parents=[str(f) for f in folders], benchmarks=["synthetic"], pruner="none", fidelities=FIDELITIES, protocol=protocol)
        one = make_benchmark("synthetic-359", [item for b in tests for item in b.items])
        scorer = Scorer.load(one, tokenizer, protocol=protocol, batch_size=batch_size, chat=False)
        objectives = [Objective(scorer, one, None, "builtin", protocol)]
        runner = TrialRunner(settings, load_space(settings.space), merger, tokenizer, objectives, dtype_name(dtype))
        # The parents' own scores only feed the trial's recorded gain, which is not reported here.
        scores = ParentScores({str(f): [{"fidelity": {str(x): 0.0 for x in FIDELITIES}}] for f in folders})
        return median_time(lambda: runner.evaluate(recipe, TrialRecordStub(), scores), repeats, device)[0]

    suite.stage(record, f"trial_{protocol}_s", trial, "merge_s", f"score_{protocol}_s")
    say_seconds(suite, shape, record, f"trial_{protocol}_s")


def say_seconds(suite: Suite, shape: str, record: dict, key: str, extra: str = "") -> None:
    value = record.get(key)
    if isinstance(value, (int, float)):
        suite.say(f"{shape}: {key} = {value:.4f}{extra}")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def peak_rss_bytes() -> int:
    """This process's peak resident memory (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if platform.system() == "Darwin" else peak * 1024


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default)")
    parser.add_argument("--shape", default=None, help=f"comma-separated, from {', '.join(SHAPES)} (default: llama-8b,smollm-1.7b on a GPU, tiny on a CPU)")
    parser.add_argument("--dtype", default=None, help="bfloat16 (default on a GPU), float16 or float32 (default on a CPU)")
    parser.add_argument("--batch-size", type=int, default=16, help="items per forward pass (the search's default: 16)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per figure, the median reported (default 3 on a GPU, 1 on a CPU)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="no stage starts after this many seconds (default 420)")
    parser.add_argument("--no-disk", action="store_true", help="skip writing and reading a parent on disk")
    args = parser.parse_args(argv)

    try:
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype) or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    except Exception as error:  # an unknown device or dtype: one line, exit code 2
        print(f"error: {error}", file=sys.stderr)
        return 2
    shapes = [s.strip() for s in (args.shape or ("llama-8b,smollm-1.7b" if device.type == "cuda" else "tiny")).split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown or not shapes:
        print(f"error: --shape: choose from {', '.join(SHAPES)}, comma-separated; got {args.shape!r}", file=sys.stderr)
        return 2
    repeats = args.repeats or (3 if device.type == "cuda" else 1)
    torch.set_grad_enabled(False)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()

    suite = Suite(device, args.budget_s)
    result: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "dtype": dtype_name(dtype),
        "items": sum(BENCHMARK_SIZES),
        "batch_size": args.batch_size,
        "repeats": repeats,
        "torch": torch.__version__,
        "shapes": {},
    }
    suite.say(f"gpu suite on {result['device_name']} ({device}), {result['dtype']}, shapes {', '.join(shapes)}")
    with tempfile.TemporaryDirectory(prefix="evomerge-gpu-suite-") as tmp:
        for shape in shapes:
            try:
                result["shapes"][shape] = run_shape(
                    suite, shape, dtype=dtype, batch_size=args.batch_size, repeats=repeats, disk=not args.no_disk, root=Path(tmp)
                )
            except Exception as error:  # noqa: BLE001 (set-up of a shape failed: report it, go on to the next)
                traceback.print_exc(file=sys.stdout)
                result["shapes"][shape] = {"error": failure(error)}
                free_memory()
    result["failed_stages"] = [shape for shape, record in result["shapes"].items() if isinstance(record.get("error"), str)] + [
        f"{shape}.{key}" for shape, record in result["shapes"].items() for key, value in record.items() if isinstance(value, dict) and "error" in value
    ]
    result["wall_s"] = round(suite.elapsed(), 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `evomerge` command line: parses flags and calls one function per command.

Bad input is reported as one line on stderr with exit code 2, before any work starts.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Callable, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # evomerge never downloads weights
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import typer
from rich.console import Console
from rich.table import Table

from evomerge import __version__
from evomerge.errors import EvomergeError

app = typer.Typer(
    help="Search for the merge recipe that makes fine-tuned LLMs beat both parents on a domain benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
stdout = Console()


class Engine(str, Enum):
    evomerge = "evomerge"
    mergekit = "mergekit"


def user_errors(command: Callable) -> Callable:
    """Turn an EvomergeError into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        quiet_libraries()
        try:
            return command(*args, **kwargs)
        except EvomergeError as error:
            console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)

    return wrapper


def quiet_libraries() -> None:
    """Keep transformers' and mergekit's per-shard progress bars and notices off our output."""
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's and datasets' bars; ours are rich's
    for name in ("mergekit", "lm_eval", "lm-eval", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _version(value: bool) -> None:
    if value:
        stdout.print(f"evomerge {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """evomerge: merge recipes in mergekit's language, merged in memory, searched with Optuna."""


def parse_parent_overrides(values: list[str]) -> dict[str, str]:
    renames = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise EvomergeError(f"--parent expects NAME=PATH (the recipe's model name, then the real folder), got {value!r}")
        renames[name] = path
    return renames


@app.command()
@user_errors
def merge(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE.yaml", help="A mergekit YAML recipe."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the merged model to."),
    engine: Engine = typer.Option(Engine.evomerge, help="evomerge: in-memory engine; mergekit: mergekit's own pipeline."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    seed: Optional[int] = typer.Option(None, help="Random seed (DARE's masks), as mergekit-yaml --random-seed."),
    parent: list[str] = typer.Option([], "--parent", help="NAME=PATH: replace a model name in the recipe (repeatable)."),
    allow_pickle: bool = typer.Option(False, help="Allow pickled pytorch_model.bin weights."),
    trust_remote_code: bool = typer.Option(False, help="Allow checkpoints that need custom model code."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty output folder."),
) -> None:
    """Merge the parents a recipe names and write a loadable model folder (config, safetensors, tokenizer).

    Both engines give identical tensors; the evomerge engine is much faster. Example:

        evomerge merge recipes/paper_slerp.yaml --parent ./instruct=models/instruct --parent ./fine-tuned=models/cpt-sft --out merged/
    """
    from evomerge.merge.writer import check_output, write_merged
    from evomerge.recipe import Recipe

    recipe = Recipe.load(recipe_path)
    renames = parse_parent_overrides(parent)
    if renames:
        recipe = recipe.with_models(renames)
    check_output(out, overwrite)
    if engine == Engine.mergekit:
        recipe.to_mergekit()
    start = time.perf_counter()
    with console.status(f"Merging {len(recipe.model_names)} parents with {recipe.merge_method} ({engine.value} engine)…"):
        write_merged(
            recipe, out, engine=engine.value, device=device, seed=seed, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code
        )
    console.print(f"Wrote {out} in {time.perf_counter() - start:.1f} s ({engine.value} engine).")


@app.command()
@user_errors
def demo(
    out: Path = typer.Option(Path("results/demo"), help="Where the tiny parents and merged models go."),
) -> None:
    """Merge two tiny parents with the source paper's SLERP recipe, in memory and with mergekit,
    and show that both engines give the same tensors (the full search demo comes with `evomerge search`)."""
    from evomerge.demo import run_merge_demo

    rows = run_merge_demo(out, progress=console)
    table = Table(title="The paper's SLERP recipe on two tiny Llama-shaped parents")
    for column in ("engine", "seconds", "output"):
        table.add_column(column)
    for row in rows["engines"]:
        table.add_row(row["engine"], f"{row['seconds']:.2f}", row["output"])
    stdout.print(table)
    verdict = "identical" if rows["identical"] else f"max |difference| {rows['max_abs_diff']:.3g}"
    stdout.print(f"Tensors of the two outputs: {verdict} ({rows['tensors']} tensors compared).")
    stdout.print(f"Recipe: {rows['recipe']}")


class Protocol(str, Enum):
    paper = "paper"
    loglik = "loglik"


class Backend(str, Enum):
    builtin = "builtin"
    lm_eval = "lm-eval"


@app.command("eval")
@user_errors
def evaluate(
    model: Path = typer.Option(..., "--model", "-m", help="A model folder (or a LoRA adapter folder)."),
    benchmark: str = typer.Option(..., "--benchmark", "-b", help="A shipped benchmark's name, a JSONL path, or lm-eval:TASK."),
    protocol: Protocol = typer.Option(Protocol.paper, help="paper: greedy answer as the paper scores it; loglik: option log-likelihood."),
    fraction: float = typer.Option(1.0, help="Score the first ⌈f·n⌉ items of the benchmark's fixed order."),
    backend: Backend = typer.Option(Backend.builtin, help="builtin scorer or lm-eval's simple_evaluate (loglik)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    chat: Optional[bool] = typer.Option(None, "--chat/--no-chat", help="Use the tokenizer's chat template (default: when it has one)."),
    batch_size: int = typer.Option(16, min=1, help="Items per forward pass."),
    tasks_dir: Optional[Path] = typer.Option(None, help="Folder of custom lm-eval task YAMLs."),
    holdout: float = typer.Option(0.0, help="Hold out this fraction of items (by id hash) and score only the rest."),
    json_output: bool = typer.Option(False, "--json", help="End with one JSON line: accuracy, n, per_category, …"),
    trust_remote_code: bool = typer.Option(False, help="Allow checkpoints that need custom model code."),
) -> None:
    """Score a model on a domain benchmark with the paper's protocol, log-likelihood, or lm-eval."""
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from evomerge.evaluate.models import load_for_eval
    from evomerge.evaluate.objective import make_objective

    if not 0 < fraction <= 1:
        raise EvomergeError(f"--fraction must be in (0, 1], got {fraction}")
    with console.status(f"Loading {model} …"):
        loaded, tokenizer = load_for_eval(model, device, trust_remote_code)
    objective = make_objective(
        benchmark,
        tokenizer,
        protocol=protocol.value,
        backend=backend.value,
        batch_size=batch_size,
        chat=chat,
        tasks_dir=tasks_dir,
        holdout=holdout,
    )
    if objective.backend == "builtin":
        columns = (TextColumn("Scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("batches"), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("score", total=None)
            result = objective.scorer.score(loaded, fraction, progress=lambda done, total: bar.update(task, completed=done, total=total))
    else:
        with console.status("Scoring through lm-eval …"):
            result = objective.scorer.score(loaded, fraction)
    table = Table(title=f"{benchmark} · {objective.protocol} · {objective.backend}")
    table.add_column("category")
    table.add_column("accuracy", justify="right")
    for category, accuracy in result.per_category.items():
        table.add_row(category, f"{accuracy:.3f}")
    table.add_row("[bold]all[/]", f"[bold]{result.accuracy:.3f}[/]")
    stdout.print(table)
    stdout.print(f"{result.n} items in {result.seconds:.1f} s ({result.n / max(result.seconds, 1e-9):.1f} items/s)")
    if json_output:
        summary = {
            "accuracy": result.accuracy,
            "n": result.n,
            "per_category": result.per_category,
            "seconds": round(result.seconds, 4),
            "benchmark": benchmark,
            "protocol": objective.protocol,
            "backend": objective.backend,
            "fraction": fraction,
        }
        print(json.dumps(summary))


benchmark_app = typer.Typer(help="Shipped benchmarks: list them, export them as lm-eval tasks.", no_args_is_help=True)
app.add_typer(benchmark_app, name="benchmark")


@benchmark_app.command("list")
@user_errors
def benchmark_list() -> None:
    """The benchmarks that ship with evomerge, with their size and categories."""
    from evomerge.evaluate.benchmark import load_benchmark, shipped_benchmarks

    table = Table()
    for column in ("name", "items", "mc", "tf", "exact", "categories"):
        table.add_column(column)
    for name in shipped_benchmarks():
        bench = load_benchmark(name)
        counts = {kind: sum(item.type == kind for item in bench.items) for kind in ("mc", "tf", "exact")}
        table.add_row(name, str(len(bench)), *(str(counts[k]) for k in ("mc", "tf", "exact")), ", ".join(bench.categories))
    stdout.print(table)


@benchmark_app.command("export")
@user_errors
def benchmark_export(
    benchmark: str = typer.Argument(..., metavar="NAME|PATH", help="A shipped benchmark or a JSONL file."),
    out: Path = typer.Argument(..., metavar="DIR", help="Folder for the task YAML and its data."),
) -> None:
    """Write a benchmark as an lm-eval multiple_choice task (same accuracy as --protocol loglik)."""
    from evomerge.evaluate.benchmark import load_benchmark
    from evomerge.evaluate.harness import export_lm_eval_task

    name = export_lm_eval_task(load_benchmark(benchmark), out)
    stdout.print(f"Wrote lm-eval task {name} to {out}; use --benchmark lm-eval:{name} --tasks-dir {out}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

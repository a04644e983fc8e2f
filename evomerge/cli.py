"""The `evomerge` command line: parses flags and calls one function per command.

Bad input is reported as one line on stderr with exit code 2, before any work starts.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
import os
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Callable, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # evomerge never downloads weights
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import typer
from typer.core import TyperGroup
from rich.console import Console
from rich.table import Table
from rich.text import Text

from evomerge import __version__
from evomerge.demo import DEMO_TRIALS
from evomerge.errors import EvomergeError, interrupt_exit_code, interrupt_reason, sigterm_as_interrupt

# Click's base of every usage error (typer vendors click; reached through a public name).
ClickException = next(base for base in typer.BadParameter.__mro__ if base.__name__ == "ClickException")


class OneLineErrors(TyperGroup):
    """Click's usage errors (a missing option, a value of the wrong type) as one line on stderr
    with exit code 2, like every other bad input, instead of a usage box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as error:
            where = error.ctx.command_path if getattr(error, "ctx", None) is not None else "evomerge"
            console.print(Text.assemble(("error:", "bold red"), f" {error.format_message()} (see {where} --help)"))
            sys.exit(error.exit_code)
        except typer.Abort:
            console.print("Aborted.", style="yellow")
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    help="Search for the merge recipe that makes fine-tuned LLMs beat both parents on a domain benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Markup off: paths, recipes and error messages print as the text they are ("[0]" in a folder
# name is not a style). Styles are given explicitly. Soft wrap: a long path or command stays on
# one line, to be copied, whatever the width.
console = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)
stdout = Console(markup=False, highlight=False, soft_wrap=True)


class Engine(str, Enum):
    evomerge = "evomerge"
    mergekit = "mergekit"


def user_errors(command: Callable) -> Callable:
    """Turn an EvomergeError into one line on stderr and exit code 2; Ctrl-C and SIGTERM into one
    line and exit code 130 or 143, without a library's traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        quiet_libraries()
        try:
            with sigterm_as_interrupt():
                return command(*args, **kwargs)
        except EvomergeError as error:
            console.print(Text.assemble(("error:", "bold red"), f" {error}"))
            raise typer.Exit(2)
        except KeyboardInterrupt as interrupt:
            console.print(f"Stopped: {interrupt_reason(interrupt)}.", style="yellow")
            raise typer.Exit(interrupt_exit_code(interrupt))
        except OSError as error:  # a full disk, a folder without write permission: not a bug to trace
            console.print(Text.assemble(("error:", "bold red"), f" {error}"))
            raise typer.Exit(1)

    return wrapper


def quiet_libraries() -> None:
    """Keep transformers' and mergekit's per-shard progress bars and notices off our output."""
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's bars; ours are rich's
    # datasets' own bars (TRL's data preparation, lm-eval's task loading) ignore TQDM_DISABLE: the
    # variable covers a later import, the call an earlier one.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    for name in ("mergekit", "lm_eval", "lm-eval", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import warnings

    import optuna

    # Our progress bar reports the trials and each failed trial keeps its reason; Optuna would log
    # every failure with a traceback (and an interrupt with two).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module="optuna")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # TRL sets transformers 5's renamed training argument itself; nothing a user can act on.
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)


def _version(value: bool) -> None:
    if value:
        stdout.print(f"evomerge {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """evomerge: merge recipes in mergekit's language, merged in memory, searched with Optuna."""


def comma_list(text: str) -> list[str]:
    """A comma-separated flag's values, stripped, blanks dropped ('a, b,' → ['a', 'b'])."""
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_scales(text: str, flag: str) -> list[str]:
    """Toy scales, comma-separated, each once (which scales exist, the toy domain says)."""
    scales = comma_list(text)
    if not scales:
        raise EvomergeError(f"{flag} expects scales, comma-separated (e.g. xs,s,m), got {text!r}")
    if len(set(scales)) != len(scales):
        raise EvomergeError(f"{flag} lists a scale twice: {text}")
    return scales


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
    recipe_path: str = typer.Argument(..., metavar="NAME|RECIPE.yaml", help="A shipped recipe's name (see `evomerge recipes`) or a mergekit YAML."),
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

        evomerge merge paper_slerp --parent ./instruct=models/instruct --parent ./fine-tuned=models/cpt-sft --out merged/
    """
    from evomerge.merge.writer import check_output, write_merged
    from evomerge.recipe import Recipe

    recipe = Recipe.load(recipe_path)  # a shipped recipe's name or a file
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
    trials: int = typer.Option(DEMO_TRIALS, min=1, help="Trials of the search."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    toy_dir: Path = typer.Option(Path("results/toy"), help="Where the toy world and its parents are built (and reused)."),
) -> None:
    """The whole tool in a few minutes on a laptop CPU, on the toy domain.

    Builds (or reuses) the xs toy parents, searches merges of Instruct × Instruct-CPT-SFT on the toy
    domain benchmark (default space, pruning, held-out items), and prints the parents' scores, the
    paper's recipe, the best found, its gain over the best parent on held-out items with a 95%
    interval and a one-line verdict, and where the results went."""
    import shutil

    import torch

    from evomerge.demo import DEMO_SCALE, build_demo_parents, demo_settings, holdout_gain
    from evomerge.merge.merger import resolve_device
    from evomerge.toy.build import TRAIN_THREADS

    resolve_device(device)  # before anything is printed or built
    if device != "cuda":
        # Models this small gain nothing from more threads, and lose a lot on a busy machine.
        torch.set_num_threads(TRAIN_THREADS)
    console.print(f"Toy domain, scale {DEMO_SCALE}: building or reusing the parents under {toy_dir}/ …")
    with training_progress() as on_step:
        build = build_demo_parents(toy_dir, device, progress=console.print, on_step=on_step)
    settings = demo_settings(build, trials, device)
    shutil.rmtree(settings.results_dir, ignore_errors=True)  # a fresh search on every run; parents are reused
    console.print(f"Searching merges of {' × '.join(build.parents)} on {build.domain_benchmark.name} …")
    run_search_command(settings, timeout=None, jobs=1)
    held = holdout_gain(settings)
    if held is not None:
        m = held.metrics
        table = Table(title=f"Best recipe (trial {held.trial}) on the {m.n} held-out items the search never saw, 95% CI")
        table.add_column("")
        table.add_column("accuracy", justify="right", no_wrap=True)
        for name, interval in zip(build.parents, (m.parent_1, m.parent_2)):
            table.add_row(f"parent {name}", f"{interval.estimate:.3f} [{interval.low:.3f}, {interval.high:.3f}]")
        table.add_row("best recipe", f"{m.accuracy.estimate:.3f} [{m.accuracy.low:.3f}, {m.accuracy.high:.3f}]")
        table.add_row("gain over the best parent", f"{m.gain.estimate:+.3f} [{m.gain.low:+.3f}, {m.gain.high:+.3f}]")
        stdout.print(table)
        stdout.print(held.verdict, soft_wrap=True)  # one line, whatever the terminal's width
    stdout.print(f"Open the dashboard: evomerge dashboard --storage {settings.storage_url()}")
    stdout.print(f"Materialise the best merge: evomerge merge {settings.results_dir / 'best-recipe.yaml'} --out results/demo-merged")


@contextmanager
def training_progress():
    """A progress bar per training stage; yields the `on_step(name, step, total, loss)` callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        tasks: dict[str, int] = {}

        def on_step(name: str, step: int, total: int, loss: float) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total, loss="–")
            bar.update(tasks[name], completed=step, total=total, loss=f"{loss:.3f}")

        yield on_step


@app.command()
@user_errors
def toy(
    scale: str = typer.Option("xs", help="A toy scale (see --list); comma-separate several."),
    out: Path = typer.Option(Path("results/toy"), help="Root folder: world/ and one folder per scale; built parents are reused."),
    parents: Optional[str] = typer.Option(None, help="Only these parents (comma-separated), with the stages they need. Default: all eight."),
    device: str = typer.Option("auto", help="auto, cpu or cuda (training and scoring)."),
    score: bool = typer.Option(True, help="Score every parent on the domain and the general benchmark."),
    seed: int = typer.Option(0, help="Training seed (initial weights, data order); the world stays the same. N > 0 builds into <scale>-seedN/."),
    list_scales: bool = typer.Option(False, "--list", help="Print the scales (parameters, layers, width, device, measured build time) and exit."),
    json_output: bool = typer.Option(False, "--json", help="With --list: one JSON array instead of a table."),
) -> None:
    """Build the toy materials domain and the paper's parents at a scale, with `evomerge train`.

    The world (fictional biological materials and ordinary facts, fixed seed) gives a generic
    corpus, a domain corpus for CPT, SFT and preference data, a domain benchmark whose materials
    appear only in the CPT corpus, and a general benchmark. Parents: base, instruct, base-CPT,
    base-CPT-SFT, instruct-CPT, instruct-CPT-SFT, instruct-CPT-SFT-DPO, instruct-CPT-SFT-ORPO.
    Each is scored (domain and general benchmark with the paper's protocol; fact recall: the
    domain's facts as cloze sentences in the corpus's words) and the table written to
    <out>/<scale>/accuracy.json.
    """
    from evomerge.toy.build import SCALES, build_toy, score_parents

    if list_scales:
        print_toy_scales(json_output)
        return
    scales = parse_scales(scale, "--scale")
    unknown = [name for name in scales if name not in SCALES]
    if unknown:
        raise EvomergeError(f"unknown toy scale {unknown[0]!r}; choose from {', '.join(SCALES)}")
    names = comma_list(parents) if parents else None
    for name in scales:
        with training_progress() as on_step:
            build = build_toy(name, out, device=device, parents=names, progress=console.print, on_step=on_step, seed=seed)
        if build.seconds > 1:
            console.print(f"{build.scale}: built in {build.seconds / 60:.1f} min")
        if not score:
            continue
        report = score_parents(build, device)
        params = next(iter(report.values()))["parameters"]
        title = f"Toy parents, scale {build.scale} ({params:,} parameters): accuracy and 95% CI (paper protocol, chance 0.25), fact recall"
        table = Table(title=title)
        table.add_column("parent", no_wrap=True)  # "instruct-CPT-SFT-ORPO" whole, even on a narrow terminal
        for column in ("domain", "general", "facts", "generic facts"):
            table.add_column(column, justify="right", no_wrap=column != "generic facts")
        for parent, row in report.items():
            # The estimate above its interval: 80 columns wide, and an interval is never split.
            accuracy = {kind: f"{row[kind]:.3f}\n[{row[kind + '_ci'][0]:.3f}–{row[kind + '_ci'][1]:.3f}]" for kind in ("domain", "general")}
            table.add_row(parent, accuracy["domain"], accuracy["general"], f"{row['facts']:.3f}", f"{row['generic_facts']:.3f}")
        stdout.print(table)
    stdout.print(f"World and parents: {out}/ (benchmarks: {out}/world/domain_benchmark.jsonl, general_benchmark.jsonl)")


def print_toy_scales(as_json: bool) -> None:
    import json

    from evomerge.toy.build import BUILD_MACHINE, scale_table

    rows = scale_table()
    if as_json:
        stdout.print_json(json.dumps(rows))
        return
    table = Table(title=f"Toy scales (build time: every parent, cold, on {BUILD_MACHINE})")
    for column in ("scale", "parameters", "layers", "width", "device", "build time"):
        table.add_column(column, justify="left" if column in ("scale", "device") else "right")
    for row in rows:
        built = f"{row['build_seconds'] / 60:.1f} min" if row["build_seconds"] else "not measured"
        table.add_row(row["scale"], f"{row['parameters']:,}", str(row["layers"]), str(row["width"]), row["device"], built)
    stdout.print(table)


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
    table.add_row(Text("all", style="bold"), Text(f"{result.accuracy:.3f}", style="bold"))
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


def parse_duration(text: Optional[str]) -> Optional[float]:
    """'90s', '30m', '2h' or plain seconds → seconds."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except (ValueError, IndexError):
        raise EvomergeError(f"--timeout expects a duration like 90s, 30m or 2h, got {text!r}") from None


def parse_fractions(text: str) -> list[float]:
    try:
        return [float(part) for part in comma_list(text)]
    except ValueError:
        raise EvomergeError(f"--fidelities expects comma-separated fractions like 0.25,0.5,1, got {text!r}") from None


@app.command()
@user_errors
def search(
    parents: str = typer.Option(..., help="Parent model folders, comma-separated (e.g. ./instruct,./cpt-sft)."),
    benchmark: str = typer.Option(..., help="NAME|PATH|lm-eval:TASK; two, comma-separated (domain,general), for a multi-objective study."),
    base: Optional[str] = typer.Option(None, help="The base parent (SLERP's t=0, task vectors' origin). Default: the first parent."),
    space: str = typer.Option("slerp_gradient", help="A shipped search space (see `evomerge spaces`) or a YAML path."),
    sampler: str = typer.Option("tpe", help="tpe, cmaes, random, grid, gp or nsga2."),
    grid_limit: int = typer.Option(100_000, help="With --sampler grid: refuse a grid of more points than this (the grid is held in memory)."),
    trials: int = typer.Option(30, help="Total trials of the study: rerunning the command continues it up to this number."),
    timeout: Optional[str] = typer.Option(None, help="Stop starting trials after this long (90s, 30m, 2h)."),
    study: Optional[str] = typer.Option(None, help="Study name (a folder under results/). Default: derived from parents and space."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL (sqlite:///…, postgresql://…, journal:PATH). Default: results/<study>/study.db."),
    jobs: int = typer.Option(1, min=1, help="Worker processes on this machine, all on the same study."),
    pruner: str = typer.Option("halving", help="halving (successive halving: the best third goes on at each fraction), hyperband, median or none."),
    fidelities: str = typer.Option("0.25,0.5,1", help="Benchmark fractions a trial is scored on, reporting each to the pruner."),
    holdout: Optional[float] = typer.Option(
        None, help="Fraction of items the search never sees; the best recipe is scored on them at the end. Default 0.2 (0 for lm-eval tasks)."
    ),
    objective: str = typer.Option("accuracy", help="accuracy, or gain over the best parent."),
    seed: int = typer.Option(0, help="Seed of the sampler and of DARE's masks."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    dtype: Optional[str] = typer.Option(None, help="Merge and score in this dtype (float32, bfloat16, …). Default: the parents'."),
    protocol: Protocol = typer.Option(Protocol.paper, help="paper or loglik scoring."),
    batch_size: int = typer.Option(16, min=1, help="Items per forward pass."),
    tasks_dir: Optional[Path] = typer.Option(None, help="Folder of custom lm-eval task YAMLs."),
    backend: str = typer.Option("optuna", help="Where trials run: optuna (this machine, --jobs processes) or ray (a Ray cluster, one GPU per trial)."),
    ray_address: Optional[str] = typer.Option(
        None, help="With --backend ray: auto or HOST:PORT of a running cluster this machine is a node of. Default: a local Ray with this machine's CPUs and GPUs."
    ),
    gpus_per_trial: Optional[float] = typer.Option(None, help="With --backend ray: GPUs each trial reserves. Default: 1 where the cluster has GPUs, else 0."),
    cpus_per_trial: float = typer.Option(1.0, help="With --backend ray: CPUs each trial reserves."),
    concurrent: Optional[int] = typer.Option(None, help="With --backend ray: trials at once. Default: as many as the cluster's resources hold."),
) -> None:
    """Search merge recipes of the parents for the best score on a domain benchmark.

    Each trial merges in memory, is scored on growing fractions of the benchmark (hopeless recipes
    are pruned early), and is stored in an Optuna study the dashboard can show live. The parents'
    own scores and the paper's hand-made recipe are measured first, so the search is judged
    against both. Results go to results/<study>/: best-recipe.yaml, trials.csv, summary.json, plots.
    """
    from evomerge.evaluate.harness import is_lm_eval_spec
    from evomerge.search.study import SearchSettings

    if backend == "ray" and jobs > 1:
        raise EvomergeError("--jobs starts Optuna worker processes on this machine; with --backend ray use --concurrent")
    parent_list = comma_list(parents)
    benchmarks = comma_list(benchmark)
    if holdout is None:
        holdout = 0.0 if any(is_lm_eval_spec(b) for b in benchmarks) else 0.2
    settings = SearchSettings(
        parents=parent_list,
        benchmarks=benchmarks,
        base=base or (parent_list[0] if parent_list else None),
        space=space,
        sampler=sampler,
        grid_limit=grid_limit,
        pruner=pruner,
        fidelities=parse_fractions(fidelities),
        holdout=holdout,
        objective=objective,
        seed=seed,
        device=device,
        dtype=dtype,
        protocol=protocol.value,
        batch_size=batch_size,
        tasks_dir=str(tasks_dir) if tasks_dir else None,
        trials=trials,
        study=study or default_study_name(parent_list, space),
        storage=storage,
        executor=backend,
        ray_address=ray_address,
        gpus_per_trial=gpus_per_trial,
        cpus_per_trial=cpus_per_trial,
        concurrent=concurrent,
    )
    run_search_command(settings, timeout=parse_duration(timeout), jobs=jobs)


def default_study_name(parents: list[str], space: str) -> str:
    import re

    stems = [Path(p.rstrip("/")).name or "model" for p in parents]
    name = "-".join(stems + [Path(space).stem])
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:100]


def run_search_command(settings, timeout: Optional[float], jobs: int) -> None:
    """Shared by `search` and `worker`: run, show progress, export, print the summary."""
    from evomerge.search.run import nothing_left_on_bad_input

    with nothing_left_on_bad_input(settings):
        _run_search(settings, timeout, jobs)


def _run_search(settings, timeout: Optional[float], jobs: int) -> None:
    import time as clock

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from evomerge.search.export import export_all
    from evomerge.search.run import optimise, prepare, score_holdout
    from evomerge.search.study import FINISHED

    start = clock.perf_counter()
    ray_session = None
    if settings.executor == "ray":
        from evomerge.search.ray_tune import RaySession

        ray_session = RaySession(settings)  # started by prepare, once the inputs are known good
    # Every bad input (and, on Ray, an unreachable cluster or a GPU it lacks) is reported here,
    # before the study exists.
    try:
        prepared = prepare(settings, preflight=ray_session.start if ray_session else None)
    except BaseException:
        if ray_session is not None:
            ray_session.close()  # the preflight started Ray, then the storage could not be opened
        raise
    folder = settings.results_dir
    console.print(Text.assemble("Study ", (settings.study, "bold"), f" in {settings.storage_url()}"))
    console.print(f"Dashboard: evomerge dashboard --storage {settings.storage_url()}")
    columns = (
        TextColumn("trials", style="bold"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("best {task.fields[best]} · pruned {task.fields[pruned]} · failed {task.fields[failed]}"),
        TimeElapsedColumn(),
    )
    study = None
    try:
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("search", total=settings.trials, best="–", pruned=0, failed=0)
            bar.console.print("Loading parents and scoring each alone …")

            def on_trial(current, _trial) -> None:
                from optuna.trial import TrialState

                trials_now = current.get_trials(deepcopy=False)
                complete = [t for t in trials_now if t.state == TrialState.COMPLETE]
                best = max((t.values[0] for t in complete), default=None)
                bar.update(
                    task,
                    completed=sum(t.state in FINISHED for t in trials_now),
                    best=f"{best:.3f}" if best is not None else "–",
                    pruned=sum(t.state == TrialState.PRUNED for t in trials_now),
                    failed=sum(t.state == TrialState.FAIL for t in trials_now),
                )

            if ray_session is not None:
                from evomerge.search.ray_tune import optimise_on_ray

                study, runner = optimise_on_ray(prepared, ray_session, timeout=timeout, on_trial=on_trial, log=bar.console.print)
            else:
                # The extra worker processes start once the study is open (its parents scored).
                study, runner = optimise(prepared, timeout=timeout, on_trial=on_trial, workers=jobs - 1)
            holdout = score_holdout(study, runner)
    except KeyboardInterrupt as interrupt:
        console.print("Interrupted: the running trial is marked failed; exporting what exists.", style="yellow")
        _export_after_interrupt(settings, folder, clock.perf_counter() - start, interrupt_reason(interrupt))
        raise typer.Exit(interrupt_exit_code(interrupt))
    finally:
        if ray_session is not None:
            ray_session.close()
    summary = export_all(study, folder, clock.perf_counter() - start)
    print_summary(summary, folder, holdout)


def _export_after_interrupt(settings, folder: Path, wall_s: float, reason: str) -> None:
    from evomerge.search.export import export_all
    from evomerge.search.study import load_existing_study

    try:
        study = load_existing_study(settings.study, settings.storage_url())
        export_all(study, folder, wall_s, stopped_because=reason)
    except Exception as error:  # nothing to export yet
        console.print(f"Nothing exported: {error}")


def print_summary(summary: dict, folder: Path, holdout: Optional[dict]) -> None:
    table = Table(title=f"Study {summary['study']}")
    table.add_column("")
    table.add_column("accuracy", justify="right")
    for name, accuracy in summary["parents"].items():
        table.add_row(f"parent {name}", f"{accuracy:.3f}")
    if summary["baseline_accuracy"] is not None:
        table.add_row("paper's recipe", f"{summary['baseline_accuracy']:.3f}")
    if summary["best_accuracy"] is not None:
        table.add_row(f"best found (trial {summary['best_trial']})", Text(f"{summary['best_accuracy']:.3f}", style="bold"))
        table.add_row("gain over the best parent", f"{summary['gain']:+.3f}")
        table.add_row("synergy over the parents' mean", f"{summary['synergy']:+.3f}")
    if holdout:
        table.add_row(f"best on held-out items (n={holdout['holdout_n']})", f"{holdout['holdout_accuracy']:.3f}")
    stdout.print(table)
    counts = summary["trials"]
    stdout.print(
        f"Trials: {counts.get('complete', 0)} complete, {counts.get('pruned', 0)} pruned, {counts.get('fail', 0)} failed, "
        f"{summary['duplicates_skipped']} duplicates not re-evaluated."
    )
    stdout.print(f"Results: {folder}/ (best-recipe.yaml, trials.csv, summary.json, plots)")


@app.command()
@user_errors
def worker(
    study: str = typer.Option(..., help="Name of an existing study."),
    storage: str = typer.Option(..., help="Its Optuna storage URL (shared by every worker)."),
    device: Optional[str] = typer.Option(None, help="Override the study's device for this machine."),
    timeout: Optional[str] = typer.Option(None, help="Stop starting trials after this long."),
) -> None:
    """Join an existing study from another machine: its settings are read from the storage."""
    from evomerge.search.run import join_study

    settings = join_study(study, storage)
    if device:
        settings.device = device
    run_search_command(settings, timeout=parse_duration(timeout), jobs=1)


@app.command()
@user_errors
def spaces() -> None:
    """The shipped search spaces, with their method and dimension (for 32 layers, two parents)."""
    from evomerge.space import load_space, shipped_spaces

    table = Table()
    for column in ("space", "method", "dimension", "description"):
        table.add_column(column)
    for name in shipped_spaces():
        loaded = load_space(name)
        table.add_row(name, loaded.method, str(loaded.dimension(32, 2)), loaded.description)
    stdout.print(table)


@app.command()
@user_errors
def recipes() -> None:
    """The shipped merge recipes (`evomerge merge NAME`) and training pipelines (`evomerge train --pipeline NAME`)."""
    from evomerge.shipped import shipped_recipes

    table = Table()
    for column in ("name", "use with", "description"):
        table.add_column(column, no_wrap=column != "description")  # commands stay whole to copy
    for entry in shipped_recipes():
        use = f"evomerge merge {entry.name}" if entry.kind == "merge" else f"evomerge train --pipeline {entry.name}"
        table.add_row(entry.name, use, entry.description)
    stdout.print(table)
    stdout.print(f"Files: {shipped_recipes()[0].path.parent}/ (copy one to change it)")


@app.command()
@user_errors
def export(
    study: str = typer.Option(..., help="Study name."),
    storage: Optional[str] = typer.Option(None, help="Storage URL (default: results/<study>/study.db)."),
    rank: int = typer.Option(1, min=1, help="1 = the best recipe, 2 = the second best, …"),
    out: Optional[Path] = typer.Option(None, help="Where to write the YAML (default: results/<study>/best-recipe.yaml, or rank-K.yaml)."),
) -> None:
    """Write a study's K-th best recipe as a mergekit YAML."""
    from evomerge.search.export import export_recipe
    from evomerge.search.study import RESULTS_ROOT, default_storage_url, load_existing_study

    loaded = load_existing_study(study, storage or default_storage_url(study))
    target = out or RESULTS_ROOT / study / ("best-recipe.yaml" if rank == 1 else f"rank-{rank}.yaml")
    trial = export_recipe(loaded, target, rank)
    stdout.print(f"Wrote {target} (trial {trial.number}, value {trial.values[0]:.4f})")


@app.command()
@user_errors
def dashboard(
    storage: str = typer.Option(..., help="The study's storage URL, e.g. sqlite:///results/<study>/study.db."),
    host: str = typer.Option("127.0.0.1", help="Address to serve on (localhost by default)."),
    port: int = typer.Option(8080, min=1, max=65535, help="Port."),
) -> None:
    """Serve optuna-dashboard on a study storage (live while a search runs)."""
    from evomerge.extras import require

    require("optuna_dashboard", "evomerge dashboard")
    from optuna_dashboard import run_server

    from evomerge.search.study import open_existing_storage

    loaded = open_existing_storage(storage)
    stdout.print(f"Optuna dashboard on http://{host}:{port}/ (Ctrl-C to stop)")
    run_server(loaded, host=host, port=port)


@app.command()
@user_errors
def train(
    strategy: Optional[str] = typer.Option(None, help="cpt, sft, dpo or orpo."),
    model: Optional[Path] = typer.Option(None, help="The model folder to train from (with --pipeline: replaces its 'model')."),
    data: Optional[Path] = typer.Option(None, help="Local JSONL: cpt {text}; sft {messages} or {prompt, completion}; dpo/orpo {prompt, chosen, rejected}."),
    out: Optional[Path] = typer.Option(None, help="Folder for the trained model or adapter (with --pipeline: the root for every stage)."),
    pipeline: Optional[str] = typer.Option(None, help="A shipped pipeline's name (see `evomerge recipes`) or a YAML chain of stages; replaces the flags above."),
    lora: bool = typer.Option(False, help="Train a LoRA adapter instead of all weights."),
    lora_r: int = typer.Option(8, help="LoRA rank."),
    lora_alpha: int = typer.Option(16, help="LoRA alpha."),
    lora_targets: str = typer.Option("q_proj,k_proj,v_proj,o_proj", help="Comma-separated module names LoRA adapts."),
    merge_lora: bool = typer.Option(False, help="Write base + adapter merged (full weights) instead of the adapter."),
    epochs: float = typer.Option(1.0, help="Epochs over the data."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default: cpt 5e-5, sft 2e-5, dpo 5e-7, orpo 3e-6)."),
    batch_size: int = typer.Option(4, min=1, help="Examples per step."),
    max_length: int = typer.Option(512, min=8, help="Tokens per example (CPT packs text into blocks of this length)."),
    beta: Optional[float] = typer.Option(None, help="DPO/ORPO beta (default: dpo 0.05, orpo 0.1)."),
    lr_scheduler: str = typer.Option("linear", help="linear, cosine, constant, …"),
    warmup_ratio: float = typer.Option(0.0, help="Fraction of steps for learning-rate warmup."),
    seed: int = typer.Option(0, help="Seed (data order, initialisation of LoRA)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty output folder."),
    chat_template: Optional[str] = typer.Option(
        None, "--chat-template", help="For messages: chatml, a Jinja file, or a model folder to copy it from. Default: the model's, else ChatML."
    ),
) -> None:
    """Make parents the way the source paper did: continued pre-training, SFT, DPO or ORPO with TRL.

    Each output folder records its lineage (parent, strategy, data hash, hyperparameters) in
    evomerge_lineage.json, with a label such as "instruct-CPT-SFT" that search and map show.
    """
    from evomerge.train.pipeline import load_pipeline, run_pipeline
    from evomerge.train.trainers import TrainSettings, check
    from evomerge.train.trainers import train as train_stage

    settings = None
    if pipeline is not None:
        load_pipeline(pipeline, model, out)  # every stage and data file checked before the first trains
    else:
        missing = [name for name, value in (("--strategy", strategy), ("--model", model), ("--data", data), ("--out", out)) if value is None]
        if missing:
            raise EvomergeError(f"give {', '.join(missing)} (or --pipeline FILE.yaml)")
        settings = TrainSettings(
            strategy=strategy,
            model=str(model),
            data=str(data),
            out=str(out),
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            max_length=max_length,
            beta=beta,
            seed=seed,
            device=device,
            lr_scheduler=lr_scheduler,
            warmup_ratio=warmup_ratio,
            lora=lora,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_targets=comma_list(lora_targets),
            merge_lora=merge_lora,
            overwrite=overwrite,
            chat_template=chat_template,
        )
        check(settings)
    stage = [f"{strategy} on {model}"]  # the bar being advanced: one per stage

    def on_stage(index: int, count: int, current: dict) -> None:
        stage[0] = f"stage {index + 1}/{count}: {current['label']}"

    with training_progress() as on_step:

        def on_log(step: int, total: int, loss: float) -> None:
            on_step(stage[0], step, total, loss)

        if pipeline is not None:
            results = run_pipeline(pipeline, model=model, out=out, overwrite=overwrite, device=device, on_stage=on_stage, on_log=on_log)
        else:
            results = [train_stage(settings, on_log=on_log)]
    for result in results:
        if result.note:
            console.print(result.note, highlight=False, soft_wrap=True)
        first, last = result.lineage["first_loss"], result.lineage["last_loss"]
        losses = f"loss {first:.4f} → {last:.4f}" if first is not None else "no loss logged"
        stdout.print(f"{result.lineage['label']}: {result.out} ({losses})")


@app.command("map")
@user_errors
def map_command(
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="YAML file of parent pairs, one per scale: pairs: [{label, parents: [A, B], base: A, ancestor, params}]."),
    toy: Optional[str] = typer.Option(None, help="Toy-domain scales, comma-separated (e.g. xs,s,m): Instruct × Instruct-CPT-SFT at each, built if needed."),
    toy_dir: Path = typer.Option(Path("results/toy"), help="With --toy: where the toy world and its parents are built (and reused)."),
    toy_pair: str = typer.Option("instruct,instruct-CPT-SFT", help="With --toy: the two toy parents to merge, base first (e.g. instruct,instruct-CPT)."),
    benchmark: Optional[str] = typer.Option(None, help="A shipped benchmark's name or a JSONL path (overrides the pairs file's and the toy's)."),
    sweep: str = typer.Option("0:1:0.1", help="Global SLERP t values: start:stop:step, or a comma list."),
    search: int = typer.Option(0, "--search", help="Also search N trials per pair (its own study) and score the best recipe on held-out items."),
    space: str = typer.Option("slerp_gradient", help="Search space for --search (see `evomerge spaces`)."),
    holdout: float = typer.Option(0.2, help="With --search: the fraction of items the search never sees; its best recipe is judged on them."),
    seed: int = typer.Option(0, help="Seed of the bootstrap and the search: same seed, same numbers."),
    resamples: int = typer.Option(2000, help="Bootstrap resamples per interval."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    dtype: Optional[str] = typer.Option(None, help="Merge and score in this dtype (float32, bfloat16, …). Default: the parents'."),
    protocol: str = typer.Option("paper", help="paper or loglik scoring."),
    batch_size: int = typer.Option(16, help="Items per forward pass."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder. Default: results/map-<pairs file name or toy scales>."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty output folder."),
) -> None:
    """Where does merging beat both parents, across model scales, by more than the noise?

    For each pair of parents: score each parent, sweep a global SLERP t, score the paper's layer
    schedule and (with --search N) a searched recipe on held-out items. Every merge gets its accuracy,
    gain over the best parent and synergy over the parents' mean with paired bootstrap 95% intervals,
    and each pair its kinship (cosine of the task vectors against an ancestor). Writes map.csv,
    items.csv, kinship.csv, figures/*.png, report.html and summary.json, all or nothing. Example:

        evomerge map --pairs pairs.yaml --benchmark bio_materials --sweep 0:1:0.1 --search 30
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from evomerge.search.scale_map import MapSettings, check_options, load_pairs, parse_sweep, run_map, toy_pairs

    if (pairs is None) == (toy is None):
        raise EvomergeError("give --pairs FILE.yaml or --toy SCALES (one of them)")
    scales = parse_scales(toy, "--toy") if toy is not None else []
    toy_parents = parse_toy_pair(toy_pair)
    name = pairs.stem if pairs is not None else "toy-" + "-".join(scales)
    settings = MapSettings(
        out=out or Path("results") / f"map-{name}",
        benchmark=benchmark,
        sweep=parse_sweep(sweep),
        search_trials=search,
        space=space,
        holdout=holdout,
        seed=seed,
        device=device,
        dtype=dtype,
        protocol=protocol,
        batch_size=batch_size,
        resamples=resamples,
        overwrite=overwrite,
    )
    settings.command = map_command_line(settings, pairs, toy, toy_dir, sweep, out, toy_parents)
    if pairs is not None:
        settings.pairs = load_pairs(pairs)
    else:
        check_options(settings)  # a bad flag is reported before any toy parent is built
        settings.pairs = toy_pairs(scales, toy_dir, device=device, say=lambda message: console.print(message, highlight=False), pair=toy_parents)
    columns = (TextColumn("map", style="bold"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}", markup=False), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("checking", total=None)
        result = run_map(settings, progress=lambda done, total, what: bar.update(task, completed=done, total=total, description=what))
    table = Table(title="Gain over the best parent, merged − max(P1, P2); * interval above zero")
    rows = result.summary_table()
    for column in rows[0] if rows else ():
        # Numbers never wrap (an interval split over two lines misreads); the merge's name may.
        table.add_column(column, justify="left" if column in ("scale", "merge") else "right", no_wrap=column != "merge")
    for row in rows:
        table.add_row(*row.values())
    stdout.print(table)
    stdout.print(f"Wrote {result.out}/ in {result.seconds:.1f} s: report.html, map.csv, items.csv, kinship.csv, figures/*.png, summary.json")


def parse_toy_pair(text: str) -> tuple[str, str]:
    """--toy-pair: two distinct toy parents, base first."""
    from evomerge.toy.build import PARENTS

    names = comma_list(text)
    if len(names) != 2 or names[0] == names[1]:
        raise EvomergeError(f"--toy-pair expects two different toy parents, base first (e.g. instruct,instruct-CPT), got {text!r}")
    unknown = [name for name in names if name not in PARENTS]
    if unknown:
        raise EvomergeError(f"--toy-pair: unknown toy parent {unknown[0]!r}; choose from {', '.join(PARENTS)}")
    return names[0], names[1]


def map_command_line(
    settings, pairs: Optional[Path], toy: Optional[str], toy_dir: Path, sweep: str, out: Optional[Path], toy_pair: Optional[tuple[str, str]] = None
) -> str:
    """The command as a user would retype it (flags at their defaults left out), for the report."""
    import shlex
    from dataclasses import fields

    from evomerge.search.scale_map import DEFAULT_SWEEP, TOY_PAIR, MapSettings
    from evomerge.toy.build import DEFAULT_ROOT

    parts = ["evomerge", "map"]
    if pairs is not None:
        parts += ["--pairs", str(pairs)]
    else:
        parts += ["--toy", str(toy)] + (["--toy-dir", str(toy_dir)] if toy_dir != DEFAULT_ROOT else [])
        if toy_pair is not None and toy_pair != TOY_PAIR:
            parts += ["--toy-pair", ",".join(toy_pair)]
    if sweep != DEFAULT_SWEEP:
        parts += ["--sweep", sweep]
    flags = {  # MapSettings' fields that one flag each sets
        "benchmark": "--benchmark", "search_trials": "--search", "space": "--space", "holdout": "--holdout", "seed": "--seed",
        "resamples": "--resamples", "device": "--device", "dtype": "--dtype", "protocol": "--protocol", "batch_size": "--batch-size",
    }  # fmt: skip
    defaults = {field.name: field.default for field in fields(MapSettings)}
    for key, flag in flags.items():
        value = getattr(settings, key)
        if value != defaults[key] and not (key == "holdout" and not settings.search_trials):
            parts += [flag, str(value)]
    if out is not None:
        parts += ["--out", str(out)]
    return " ".join(shlex.quote(part) for part in parts)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

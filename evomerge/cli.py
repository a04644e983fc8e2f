"""The `evomerge` command line: parses flags and calls one function per command.

Bad input is reported as one line on stderr with exit code 2, before any work starts.
"""

from __future__ import annotations

import functools
import os
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Callable, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # evomerge never downloads weights
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import typer
from rich.console import Console, ConsoleDimensions
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from evomerge import __version__, api
from evomerge.demo import DEMO_TRIALS
from evomerge.errors import EvomergeError, interrupt_exit_code, interrupt_reason, sigterm_as_interrupt
from evomerge.search.executors import EXECUTORS
from evomerge.search.pruners import PRUNERS
from evomerge.search.samplers import SAMPLERS

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
PIPED_WIDTH = 1000  # columns a table may take when the output goes to a file or a pipe


class Unwrapped(Console):
    """Rich's console, except that output to a file or a pipe is not hard-wrapped: rich would lay
    it out for 80 columns, splitting paths, commands and table cells a user copies or greps. On a
    terminal (or with COLUMNS set) it fits the width as usual."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self._width is None and not self.is_terminal and "COLUMNS" not in os.environ:
            return ConsoleDimensions(PIPED_WIDTH, size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


# Markup off: paths, recipes and error messages print as the text they are ("[0]" in a folder
# name is not a style). Styles are given explicitly. Soft wrap: a long path or command stays on
# one line, to be copied, whatever the width.
console = Unwrapped(stderr=True, markup=False, highlight=False, soft_wrap=True)
stdout = Unwrapped(markup=False, highlight=False, soft_wrap=True)


class Engine(str, Enum):
    evomerge = "evomerge"
    mergekit = "mergekit"


def user_errors(command: Optional[Callable] = None, *, loads_models: bool = True) -> Callable:
    """Turn an EvomergeError into one line on stderr and exit code 2; Ctrl-C and SIGTERM into one
    line and exit code 130 or 143, without a library's traceback. A command that loads no model
    (`loads_models=False`: listing spaces, recipes, benchmarks) does not import the model
    libraries to quiet them, so it answers at once."""
    if command is None:
        return functools.partial(user_errors, loads_models=loads_models)

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        if loads_models:
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
    with console.status(f"Merging the parents of {Path(recipe_path).name} ({engine.value} engine)…"):
        result = api.merge(
            recipe_path,
            out,
            engine=engine.value,
            device=device,
            seed=seed,
            parent=parse_parent_overrides(parent),
            allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code,
            overwrite=overwrite,
        )
    console.print(f"Wrote {result.out} in {result.seconds:.1f} s ({result.engine} engine).")


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
    training = TrainingBar()
    found = api.demo(
        trials,
        device=device,
        toy_dir=toy_dir,
        say=lambda message: console.print(message, highlight=False),
        on_step=training.on_step,
        progress=SearchBar(before=training.stop),  # one live display at a time: training's ends first
    )
    training.stop()
    print_search(found)  # the held-out table and verdict of every search: nothing is scored twice
    stdout.print(f"Open the dashboard: evomerge dashboard --storage {found.storage}")
    stdout.print(f"Materialise the best merge: evomerge merge {found.results_dir / 'best-recipe.yaml'} --out results/demo-merged")


class TrainingBar:
    """A progress bar per training stage, shown from the first step until `stop`."""

    def __init__(self) -> None:
        self.bar = None
        self.tasks: dict[str, int] = {}

    def on_step(self, name: str, step: int, total: int, loss: float) -> None:
        """The `on_step(name, step, total, loss)` callback of training."""
        if self.bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            columns = (
                TextColumn("{task.description}", style="bold", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TimeElapsedColumn(),
            )
            self.bar = Progress(*columns, console=console, transient=False)
            self.bar.start()
        if name not in self.tasks:
            self.tasks[name] = self.bar.add_task(name, total=total, loss="–")
        self.bar.update(self.tasks[name], completed=step, total=total, loss=f"{loss:.3f}")

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


@contextmanager
def training_progress():
    """A `TrainingBar` for the block; yields its `on_step(name, step, total, loss)` callback."""
    bar = TrainingBar()
    try:
        yield bar.on_step
    finally:
        bar.stop()


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
    if list_scales:
        print_toy_scales(json_output)
        return

    def show(name: str, report: Optional[dict]) -> None:
        if report is None:
            return
        params = next(iter(report.values()))["parameters"]
        title = f"Toy parents, scale {name} ({params:,} parameters): accuracy and 95% CI (paper protocol, chance 0.25), fact recall"
        table = Table(title=title)
        table.add_column("parent", no_wrap=True)  # "instruct-CPT-SFT-ORPO" whole, even on a narrow terminal
        for column in ("domain", "general", "facts", "generic facts"):
            table.add_column(column, justify="right", no_wrap=column != "generic facts")
        for parent, row in report.items():
            # The estimate above its interval: 80 columns wide, and an interval is never split.
            accuracy = {kind: f"{row[kind]:.3f}\n[{row[kind + '_ci'][0]:.3f}–{row[kind + '_ci'][1]:.3f}]" for kind in ("domain", "general")}
            table.add_row(parent, accuracy["domain"], accuracy["general"], f"{row['facts']:.3f}", f"{row['generic_facts']:.3f}")
        stdout.print(table)

    with training_progress() as on_step:
        api.toy(scale, out, parents=parents, device=device, score=score, seed=seed, say=console.print, on_step=on_step, on_scale=show)
    stdout.print(f"World and parents: {out}/ (benchmarks: {out}/world/domain_benchmark.jsonl, general_benchmark.jsonl)")


def print_toy_scales(as_json: bool) -> None:
    import json

    from evomerge.toy.build import BUILD_MACHINE

    rows = api.toy_scales()
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


class Split(str, Enum):
    search = "search"
    holdout = "holdout"
    all = "all"


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
    holdout: Optional[float] = typer.Option(
        None, help="Hold out this fraction of items (by id hash) and score only the rest; with --split, the search's --holdout (default 0.2)."
    ),
    split: Optional[Split] = typer.Option(None, help="search, holdout or all: exactly the items a search with that --holdout searched on, held out, or both."),
    json_output: bool = typer.Option(False, "--json", help="End with one JSON line: accuracy, n, per_category, …"),
    trust_remote_code: bool = typer.Option(False, help="Allow checkpoints that need custom model code."),
) -> None:
    """Score a model on a domain benchmark with the paper's protocol, log-likelihood, or lm-eval."""
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("Scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("batches"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("score", total=None)
        result = api.evaluate(
            model,
            benchmark,
            protocol=protocol.value,
            fraction=fraction,
            backend=backend.value,
            device=device,
            chat=chat,
            batch_size=batch_size,
            tasks_dir=tasks_dir,
            holdout=holdout,
            split=split.value if split is not None else None,
            trust_remote_code=trust_remote_code,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    which = f" · {split.value} items (--holdout {api.DEFAULT_SPLIT_HOLDOUT if holdout is None else holdout:g})" if split is not None else ""
    table = Table(title=f"{benchmark} · {result.protocol} · {result.backend}{which}")
    table.add_column("category")
    table.add_column("accuracy", justify="right")
    for category, accuracy in result.per_category.items():
        table.add_row(category, f"{accuracy:.3f}")
    table.add_row(Text("all", style="bold"), Text(f"{result.accuracy:.3f}", style="bold"))
    stdout.print(table)
    stdout.print(f"{result.n} items in {result.seconds:.1f} s ({result.n / max(result.seconds, 1e-9):.1f} items/s)")
    if json_output:
        print(json.dumps(result.to_dict()))


benchmark_app = typer.Typer(help="Shipped benchmarks: list them, export them as lm-eval tasks.", no_args_is_help=True)
app.add_typer(benchmark_app, name="benchmark")


@benchmark_app.command("list")
@user_errors(loads_models=False)
def benchmark_list() -> None:
    """The benchmarks that ship with evomerge, with their size and categories."""
    table = Table()
    for column in ("name", "items", "mc", "tf", "exact", "categories"):
        table.add_column(column)
    for info in api.benchmarks():
        table.add_row(info.name, str(info.items), *(str(info.kinds[k]) for k in ("mc", "tf", "exact")), ", ".join(info.categories))
    stdout.print(table)


@benchmark_app.command("export")
@user_errors(loads_models=False)
def benchmark_export(
    benchmark: str = typer.Argument(..., metavar="NAME|PATH", help="A shipped benchmark or a JSONL file."),
    out: Path = typer.Argument(..., metavar="DIR", help="Folder for the task YAML and its data."),
) -> None:
    """Write a benchmark as an lm-eval multiple_choice task (same accuracy as --protocol loglik)."""
    name = api.export_benchmark(benchmark, out)
    stdout.print(f"Wrote lm-eval task {name} to {out}; use --benchmark lm-eval:{name} --tasks-dir {out}")


@app.command()
@user_errors
def search(
    parents: str = typer.Option(..., help="Parent model folders, comma-separated (e.g. ./instruct,./cpt-sft)."),
    benchmark: str = typer.Option(..., help="NAME|PATH|lm-eval:TASK; two, comma-separated (domain,general), for a multi-objective study."),
    base: Optional[str] = typer.Option(None, help="The base parent (SLERP's t=0, task vectors' origin). Default: the first parent."),
    space: str = typer.Option("slerp_gradient", help="A shipped search space (see `evomerge spaces`) or a YAML path."),
    sampler: str = typer.Option("tpe", help=f"{', '.join(SAMPLERS)}."),
    grid_limit: int = typer.Option(100_000, help="With --sampler grid: refuse a grid of more points than this (the grid is held in memory)."),
    trials: int = typer.Option(30, help="Total trials of the study: rerunning the command continues it up to this number."),
    timeout: Optional[str] = typer.Option(None, help="Stop starting trials after this long (90s, 30m, 2h)."),
    study: Optional[str] = typer.Option(None, help="Study name (a folder under results/). Default: derived from parents and space."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL (sqlite:///…, postgresql://…, journal:PATH). Default: results/<study>/study.db."),
    jobs: int = typer.Option(1, min=1, help="Worker processes on this machine, all on the same study."),
    population: int = typer.Option(
        1,
        help="Recipes asked at once, merged into as many resident models and scored together (same scores as one at a time; K copies of the model in memory).",
    ),
    pruner: str = typer.Option("median", help="; ".join(f"{name}: {choice.description}" for name, choice in PRUNERS.items()) + "."),
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
    tokenizer: Optional[str] = typer.Option(
        None,
        help="For parents whose vocabularies differ: the merged vocabulary every recipe asks for (mergekit's tokenizer_source: base, union or a model folder); scores read with that tokenizer.",
    ),
    backend: str = typer.Option("optuna", help="Where trials run: " + "; ".join(f"{name}: {e.description}" for name, e in EXECUTORS.items()) + "."),
    ray_address: Optional[str] = typer.Option(
        None,
        help="With --backend ray: auto or HOST:PORT of a running cluster this machine is a node of. Default: a local Ray with this machine's CPUs and GPUs.",
    ),
    gpus_per_trial: Optional[float] = typer.Option(None, help="With --backend ray: GPUs each trial reserves. Default: 1 where the cluster has GPUs, else 0."),
    cpus_per_trial: float = typer.Option(1.0, help="With --backend ray: CPUs each trial reserves."),
    concurrent: Optional[int] = typer.Option(None, help="With --backend ray: trials at once. Default: as many as the cluster's resources hold."),
    warm_start: Optional[str] = typer.Option(
        None, help="STUDY or STUDY@STORAGE: queue that finished study's best recipes first (layer groups mapped by relative depth)."
    ),
    anchors: int = typer.Option(
        0,
        help="K > 0: once the parents and 8 trials are scored on every item, score later trials on K anchor items only and estimate their accuracy (0: off).",
    ),
) -> None:
    """Search merge recipes of the parents for the best score on a domain benchmark.

    Each trial merges in memory, is scored on growing fractions of the benchmark (hopeless recipes
    are pruned early), and is stored in an Optuna study the dashboard can show live. The parents'
    own scores and the paper's hand-made recipe are measured first, so the search is judged
    against both. Results go to results/<study>/: best-recipe.yaml, trials.csv, summary.json, plots.
    """
    found = api.search(
        parents,
        benchmark,
        base=base,
        space=space,
        sampler=sampler,
        grid_limit=grid_limit,
        trials=trials,
        timeout=timeout,
        study=study,
        storage=storage,
        jobs=jobs,
        population=population,
        pruner=pruner,
        fidelities=fidelities,
        holdout=holdout,
        objective=objective,
        seed=seed,
        device=device,
        dtype=dtype,
        protocol=protocol.value,
        batch_size=batch_size,
        tasks_dir=tasks_dir,
        tokenizer=tokenizer,
        backend=backend,
        ray_address=ray_address,
        gpus_per_trial=gpus_per_trial,
        cpus_per_trial=cpus_per_trial,
        concurrent=concurrent,
        warm_start=warm_start,
        anchors=anchors,
        progress=SearchBar(),
    )
    print_search(found)


class SearchBar:
    """The search's progress on stderr: the study's place, then a bar of its trials."""

    def __init__(self, before: Optional[Callable[[], None]] = None) -> None:
        self.before = before  # called when the search starts (to end another live display)
        self.bar = None
        self.task = None

    def started(self, settings) -> None:
        if self.before is not None:
            self.before()
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console.print(Text.assemble("Study ", (settings.study, "bold"), f" in {settings.storage_url()}"))
        console.print(f"Dashboard: evomerge dashboard --storage {settings.storage_url()}")
        columns = (
            TextColumn("trials", style="bold"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("best {task.fields[best]} · pruned {task.fields[pruned]} · failed {task.fields[failed]}"),
            TimeElapsedColumn(),
        )
        self.bar = Progress(*columns, console=console)
        self.bar.start()
        self.task = self.bar.add_task("search", total=settings.trials, best="–", pruned=0, failed=0)

    def say(self, message: str) -> None:
        style = "yellow" if message.startswith("Interrupted") else None
        (self.bar.console if self.bar is not None else console).print(message, style=style)

    def trial_finished(self, study, _trial) -> None:
        from optuna.trial import TrialState

        from evomerge.search.study import FINISHED

        trials_now = study.get_trials(deepcopy=False)
        complete = [t for t in trials_now if t.state == TrialState.COMPLETE]
        best = max((t.values[0] for t in complete), default=None)
        self.bar.update(
            self.task,
            completed=sum(t.state in FINISHED for t in trials_now),
            best=f"{best:.3f}" if best is not None else "–",
            pruned=sum(t.state == TrialState.PRUNED for t in trials_now),
            failed=sum(t.state == TrialState.FAIL for t in trials_now),
        )

    def stopped(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def print_search(found: "api.SearchResult") -> None:
    """The study's table: parents, the paper's recipe, the best found and its gain, on the search
    items and on the held-out items (with 95% intervals), then the held-out verdict in one line."""
    from evomerge.files import parent_labels

    held = found.holdout_accuracy is not None
    table = Table(title=f"Study {found.study}")
    if held:
        table.caption = f"Held-out: {found.holdout_n} held-out items the search never saw, 95% CI in brackets."
    table.add_column("")
    table.add_column("search items", justify="right", no_wrap=True)
    if held:
        table.add_column(f"held-out (n={found.holdout_n})", justify="right", no_wrap=True)

    def row(name: str, search: object, holdout: str = "") -> None:
        table.add_row(name, search, *([holdout] if held else []))

    labels = parent_labels(list(found.parent_scores))
    for name, accuracy in found.parent_scores.items():
        on_held = found.holdout_parents.get(name)
        row(f"parent {labels[name]}", f"{accuracy:.3f}", f"{on_held:.3f}" if on_held is not None else "–")
    baselines = found.summary.get("baselines") or {}
    if len(baselines) > 1:  # more than two parents: the paper's recipe with each child
        child_labels = parent_labels(list(baselines))
        for child, accuracy in baselines.items():
            row(f"paper's recipe with {child_labels[child]}", f"{accuracy:.3f}", "–")
    elif found.baseline_accuracy is not None:
        row("paper's recipe", f"{found.baseline_accuracy:.3f}", "–")
    if found.best_accuracy is not None:
        best_held = f"{found.holdout_accuracy:.3f}" + (interval(found.holdout_interval, "") if found.holdout_interval else "") if held else ""
        row(f"best found (trial {found.best_trial})", Text(f"{found.best_accuracy:.3f}", style="bold"), best_held)
        held_gain = f"{found.holdout_gain:+.3f}{interval(found.holdout_gain_interval)}" if found.holdout_gain is not None else "–"
        row("gain over the best parent", f"{found.gain:+.3f}{interval(found.gain_interval)}", held_gain)
        row("synergy over the parents' mean", f"{found.synergy:+.3f}", "")
    stdout.print(table)
    if found.verdict:
        stdout.print(found.verdict)  # one line, whatever the terminal's width (soft wrap)
    counts = found.trials
    stdout.print(
        f"Trials: {counts.get('complete', 0)} complete, {counts.get('pruned', 0)} pruned, {counts.get('fail', 0)} failed, "
        f"{found.duplicates_skipped} duplicates not re-evaluated."
    )
    anchors = found.summary.get("anchors")
    if anchors:
        stdout.print(anchors_line(anchors))
    stdout.print(f"Results: {found.results_dir}/ (best-recipe.yaml, trials.csv, summary.json, plots)")


def anchors_line(anchors: dict) -> str:
    """What `--anchors` did, in one line: how many trials were estimated, from how many items, how
    far off the fit was, and the best trial's estimate against its full score."""
    line = (
        f"Anchors: {anchors['estimated_trials']} trials estimated from {anchors['anchors']} items "
        f"(fitted on {anchors['fitted_on_models']} models; leave-one-out error {anchors['fit_error_mean']:.3f} mean, {anchors['fit_error_max']:.3f} max)"
    )
    best = anchors.get("best_trial")
    if best:
        line += f"; best trial {best['trial']}: estimate {best['estimate']:.3f}, every search item {best['full']:.3f}"
    return line + "."


def interval(bounds: Optional[tuple[float, float]], sign: str = "+") -> str:
    """' [low, high]' (signed with `sign`="+"), or nothing without bounds."""
    if not bounds:
        return ""
    return f" [{bounds[0]:{sign}.3f}, {bounds[1]:{sign}.3f}]"


@app.command()
@user_errors
def worker(
    study: str = typer.Option(..., help="Name of an existing study."),
    storage: str = typer.Option(..., help="Its Optuna storage URL (shared by every worker)."),
    device: Optional[str] = typer.Option(None, help="Override the study's device for this machine."),
    timeout: Optional[str] = typer.Option(None, help="Stop starting trials after this long."),
) -> None:
    """Join an existing study from another machine: its settings are read from the storage."""
    print_search(api.worker(study, storage, device=device, timeout=timeout, progress=SearchBar()))


@app.command()
@user_errors(loads_models=False)
def spaces(
    parents: Optional[str] = typer.Option(None, help="Parent model folders, comma-separated, base first: dimensions for their layers and number."),
) -> None:
    """The shipped search spaces, with their method and dimension (for --parents, else for 32 layers and two parents)."""
    infos = api.spaces(parents)
    if parents:
        from evomerge.files import parent_labels

        labels = parent_labels(api.comma_list(parents))
        title = f"Dimensions for {', '.join(labels.values())}: {infos[0].layers if infos else '?'} layers, {len(labels)} parents"
    else:
        title = f"Dimensions for {api.DEFAULT_SPACE_LAYERS} layers and two parents (give --parents for yours)"
    table = Table(title=title)
    for column in ("space", "method", "dimension", "description"):
        table.add_column(column)
    for info in infos:
        table.add_row(info.name, info.method, str(info.dimension), info.description)
    stdout.print(table)
    for info in infos:
        for note in info.notes:
            console.print(f"warning: {note}", style="yellow")


@app.command()
@user_errors(loads_models=False)
def recipes() -> None:
    """The shipped merge recipes (`evomerge merge NAME`) and training pipelines (`evomerge train --pipeline NAME`)."""
    table = Table()
    for column in ("name", "use with", "description"):
        table.add_column(column, no_wrap=column != "description")  # commands stay whole to copy
    shipped = api.recipes()
    for entry in shipped:
        use = f"evomerge merge {entry.name}" if entry.kind == "merge" else f"evomerge train --pipeline {entry.name}"
        table.add_row(entry.name, use, entry.description)
    stdout.print(table)
    stdout.print(f"Files: {shipped[0].path.parent}/ (copy one to change it)")


@app.command()
@user_errors(loads_models=False)
def export(
    study: str = typer.Option(..., help="Study name."),
    storage: Optional[str] = typer.Option(None, help="Storage URL (default: results/<study>/study.db)."),
    rank: int = typer.Option(1, min=1, help="1 = the best recipe, 2 = the second best, …"),
    out: Optional[Path] = typer.Option(None, help="Where to write the YAML (default: results/<study>/best-recipe.yaml, or rank-K.yaml)."),
) -> None:
    """Write a study's K-th best recipe as a mergekit YAML."""
    exported = api.export(study, storage=storage, rank=rank, out=out)
    stdout.print(f"Wrote {exported.path} (trial {exported.trial}, value {exported.value:.4f})")


@app.command()
@user_errors
def dashboard(
    storage: str = typer.Option(..., help="The study's storage URL, e.g. sqlite:///results/<study>/study.db."),
    host: str = typer.Option("127.0.0.1", help="Address to serve on (localhost by default)."),
    port: int = typer.Option(8080, min=1, max=65535, help="Port."),
) -> None:
    """Serve optuna-dashboard on a study storage (live while a search runs)."""
    api.dashboard(storage, host=host, port=port, on_ready=lambda url: stdout.print(f"Optuna dashboard on {url} (Ctrl-C to stop)"))


@app.command()
@user_errors
def train(
    strategy: Optional[str] = typer.Option(None, help="cpt, sft, dpo or orpo."),
    model: Optional[Path] = typer.Option(None, help="The model folder to train from (with --pipeline: replaces its 'model')."),
    data: Optional[Path] = typer.Option(None, help="Local JSONL: cpt {text}; sft {messages} or {prompt, completion}; dpo/orpo {prompt, chosen, rejected}."),
    out: Optional[Path] = typer.Option(None, help="Folder for the trained model or adapter (with --pipeline: the root for every stage)."),
    pipeline: Optional[str] = typer.Option(
        None, help="A shipped pipeline's name (see `evomerge recipes`) or a YAML chain of stages; replaces the flags above."
    ),
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
    stage = [f"{strategy} on {model}"]  # the bar being advanced: one per stage

    def on_stage(index: int, count: int, current: dict) -> None:
        stage[0] = f"stage {index + 1}/{count}: {current['label']}" if pipeline is not None else current["label"]

    with training_progress() as on_step:

        def on_log(step: int, total: int, loss: float) -> None:
            on_step(stage[0], step, total, loss)

        results = api.train(
            strategy,
            model,
            data,
            out,
            pipeline=pipeline,
            lora=lora,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_targets=lora_targets,
            merge_lora=merge_lora,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            max_length=max_length,
            beta=beta,
            lr_scheduler=lr_scheduler,
            warmup_ratio=warmup_ratio,
            seed=seed,
            device=device,
            overwrite=overwrite,
            chat_template=chat_template,
            on_stage=on_stage,
            on_log=on_log,
        )
    for result in results:
        if result.note:
            console.print(result.note)
        first, last = result.lineage["first_loss"], result.lineage["last_loss"]
        losses = f"loss {first:.4f} → {last:.4f}" if first is not None else "no loss logged"
        stdout.print(f"{result.lineage['label']}: {result.out} ({losses})")


@app.command("map")
@user_errors
def map_command(
    pairs: Optional[Path] = typer.Option(
        None, "--pairs", help="YAML file of parent pairs, one per scale: pairs: [{label, parents: [A, B], base: A, ancestor, params}]."
    ),
    toy: Optional[str] = typer.Option(None, help="Toy-domain scales, comma-separated (e.g. xs,s,m): Instruct × Instruct-CPT-SFT at each, built if needed."),
    toy_dir: Path = typer.Option(Path("results/toy"), help="With --toy: where the toy world and its parents are built (and reused)."),
    toy_pair: str = typer.Option("instruct,instruct-CPT-SFT", help="With --toy: the two toy parents to merge, base first (e.g. instruct,instruct-CPT)."),
    toy_seed: int = typer.Option(0, help="With --toy: the parents' training seed (N > 0: the <scale>-seedN builds of `evomerge toy --seed N`)."),
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

    columns = (TextColumn("map", style="bold"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}", markup=False), TimeElapsedColumn())
    bar = Progress(*columns, console=console, transient=True)
    task = None

    def progress(done: int, total: int, what: str) -> None:
        nonlocal task
        if task is None:  # the bar starts once every input is checked (and the toy parents built)
            bar.start()
            task = bar.add_task("checking", total=None)
        bar.update(task, completed=done, total=total, description=what)

    try:
        result = api.scale_map(
            pairs=pairs,
            toy=toy,
            toy_dir=toy_dir,
            toy_pair=toy_pair,
            toy_seed=toy_seed,
            benchmark=benchmark,
            sweep=sweep,
            search=search,
            space=space,
            holdout=holdout,
            seed=seed,
            resamples=resamples,
            device=device,
            dtype=dtype,
            protocol=protocol,
            batch_size=batch_size,
            out=out,
            overwrite=overwrite,
            say=lambda message: console.print(message, highlight=False),
            progress=progress,
        )
    finally:
        bar.stop()
    table = Table(title="Gain over the best parent, merged − max(P1, P2); * interval above zero")
    rows = result.summary_table()
    for column in rows[0] if rows else ():
        # Numbers never wrap (an interval split over two lines misreads); the merge's name may.
        table.add_column(column, justify="left" if column in ("scale", "merge") else "right", no_wrap=column != "merge")
    for row in rows:
        table.add_row(*row.values())
    stdout.print(table)
    stdout.print(f"Wrote {result.out}/ in {result.seconds:.1f} s: report.html, map.csv, items.csv, kinship.csv, figures/*.png, summary.json")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

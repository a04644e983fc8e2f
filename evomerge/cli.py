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
    logging.getLogger("mergekit").setLevel(logging.ERROR)


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
    from evomerge.merge.writer import check_output, write_with_evomerge, write_with_mergekit
    from evomerge.recipe import Recipe

    recipe = Recipe.load(recipe_path)
    renames = parse_parent_overrides(parent)
    if renames:
        recipe = recipe.with_models(renames)
    check_output(out, overwrite)
    if engine == Engine.mergekit:
        recipe.to_mergekit()
    write = write_with_evomerge if engine == Engine.evomerge else write_with_mergekit
    start = time.perf_counter()
    with console.status(f"Merging {len(recipe.model_names)} parents with {recipe.merge_method} ({engine.value} engine)…"):
        write(recipe, out, device=device, seed=seed, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

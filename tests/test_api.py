"""The Python API: the README's "From Python" example run as written in a fresh interpreter, the
same keyword names and defaults as the command line, and errors as EvomergeError subclasses."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

import evomerge
from evomerge.cli import app
from evomerge.toy.tiny import CHAT_TEMPLATE, make_checkpoint, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- from-python: start -->\n```python\n(.*?)```\n<!-- from-python: end -->", text, re.S)
    assert block, "the README's From Python example is missing"
    return block.group(1)


def test_readme_example_runs_as_written_and_its_numbers_agree(tmp_path):
    """In a fresh Python session: search returns a SearchResult whose best_value is summary.json's,
    merge builds its best recipe, and evaluate scores the merged folder; on the search items the
    merged folder scores exactly what the best trial scored in memory."""
    config = tiny_config("llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, tie_word_embeddings=False)
    state = make_checkpoint(tmp_path / "models" / "instruct", config, seed=0, chat_template=CHAT_TEMPLATE)
    make_checkpoint(tmp_path / "models" / "cpt-sft", config, seed=1, from_state=state, noise=0.5)
    checks = """
import json
summary = json.loads((found.results_dir / "summary.json").read_text())
again = evomerge.evaluate(model=merged.out, benchmark="bio_materials", protocol="loglik", device="cpu", holdout=0.2)
print("CHECK " + json.dumps({
    "type": type(found).__name__, "best_value": found.best_value, "summary_best_value": summary["best_value"],
    "recipe_type": type(found.best_recipe).__name__, "gain": found.gain, "interval": found.gain_interval,
    "best_accuracy": found.best_accuracy, "on_search_items": again.accuracy, "n": score.n,
    "holdout_n": found.holdout_n, "merged": merged.out.is_dir(),
}))
"""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", readme_example() + checks], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=environment)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "best " in done.stdout and "gain over the best parent" in done.stdout
    line = next(line for line in done.stdout.splitlines() if line.startswith("CHECK "))
    check = json.loads(line[len("CHECK ") :])
    assert check["type"] == "SearchResult" and check["recipe_type"] == "Recipe"
    assert check["best_value"] == check["summary_best_value"]
    low, high = check["interval"]
    assert low <= check["gain"] <= high
    assert check["merged"] and check["n"] == 145 and check["holdout_n"] > 0
    assert check["on_search_items"] == check["best_accuracy"]


def command_defaults(name: str) -> dict:
    command = typer.main.get_command(app).commands[name]
    return {param.name: param.default for param in command.params}


@pytest.mark.parametrize(
    ("command", "function", "renamed"),
    [
        ("search", evomerge.search, {}),
        ("eval", evomerge.evaluate, {"json_output": None}),
        ("merge", evomerge.merge, {"recipe_path": "recipe"}),
        ("train", evomerge.train, {}),
        ("worker", evomerge.worker, {}),
        ("export", evomerge.export, {}),
        ("toy", evomerge.toy, {"list_scales": None, "json_output": None}),  # --list: evomerge.toy_scales()
        ("demo", evomerge.demo, {}),
        ("dashboard", evomerge.dashboard, {}),
        ("map", evomerge.scale_map, {}),
    ],
)
def test_keywords_carry_the_commands_names_and_defaults(command, function, renamed):
    """Every option of the command is a keyword of its function, with the same default."""
    parameters = inspect.signature(function).parameters
    for name, default in command_defaults(command).items():
        name = renamed.get(name, name)
        if name is None:  # a presentation flag of the command only
            continue
        assert name in parameters, f"{command}: no keyword {name}"
        expected = parameters[name].default
        if expected is inspect.Parameter.empty or default is None and expected is None:
            continue
        if name == "parent":  # repeatable NAME=PATH flags; a dict in Python
            continue
        value = default.value if hasattr(default, "value") else default
        assert value == expected or str(value) == str(expected), (command, name, default, expected)


def test_errors_are_evomerge_errors_before_any_work(tmp_path):
    with pytest.raises(evomerge.EvomergeError, match="--parents needs at least two"):
        evomerge.search(parents=["only-one"], benchmark="bio_materials")
    with pytest.raises(evomerge.RecipeError, match="recipe file not found"):
        evomerge.merge(tmp_path / "missing.yaml", out=tmp_path / "out")
    with pytest.raises(evomerge.EvomergeError, match="--fraction must be in"):
        evomerge.evaluate(model=tmp_path, benchmark="bio_materials", fraction=2)
    assert not (tmp_path / "out").exists()


def test_top_level_names_are_the_functions_and_documented():
    for name in evomerge.__all__:
        value = getattr(evomerge, name)
        assert value.__doc__ and value.__doc__.strip(), f"evomerge.{name} has no docstring"
    assert callable(evomerge.search) and callable(evomerge.merge)
    from evomerge.merge.merger import Merger  # the subpackages still import as before
    from evomerge.search.study import SearchSettings

    assert Merger and SearchSettings and callable(evomerge.search)

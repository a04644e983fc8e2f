"""`evomerge toy` and `evomerge demo` as a user runs them, on the real xs toy parents.

The xs parents the demo needs (base, instruct, instruct-CPT, instruct-CPT-SFT) are trained once
per test session by the demo itself; every later command reuses them.
"""

from __future__ import annotations

import json
import shutil

import pytest
from cli_checks import assert_clean_error
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.recipe import Recipe

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def run_in(work, *args):
    """The command run from `work` (where `results/` goes), as a user in that folder would."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        return run(*args)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo on a reduced budget (4 trials), in a fresh working folder; parents trained here."""
    work = tmp_path_factory.mktemp("demo")
    toy_dir = work / "toy"
    result = run_in(work, "demo", "--trials", "4", "--toy-dir", toy_dir, "--device", "cpu")
    return work, toy_dir, result


def test_demo_trains_the_xs_parents_searches_and_prints_the_table(demo_run):
    work, toy_dir, result = demo_run
    assert result.exit_code == 0, result.output
    for parent in ("base", "instruct", "instruct-CPT", "instruct-CPT-SFT"):
        assert (toy_dir / "xs" / parent / "model.safetensors").is_file(), parent
    assert not (toy_dir / "xs" / "base-CPT").exists()  # only what the demo merges is built
    out = result.stdout
    for row in ("paper's recipe", "best found", "gain over the best parent", "held-out"):
        assert row in out, row
    # The held-out gain with its interval, and a verdict that never calls noise a gain.
    assert "held-out items the search never saw, 95% CI" in " ".join(out.split())  # the title may wrap
    verdicts = [line for line in out.splitlines() if line.startswith(("Gain:", "Loss:", "No gain shown:"))]
    assert len(verdicts) == 1 and "95% CI" in verdicts[0] and verdicts[0].rstrip().endswith(".")  # one whole line
    assert "evomerge dashboard --storage sqlite:///results/demo/study.db" in out
    study = work / "results" / "demo"
    summary = json.loads((study / "summary.json").read_text())
    counts = summary["trials"]
    assert counts.get("complete", 0) + counts.get("pruned", 0) == 4
    assert len(summary["parents"]) == 2
    recipe = Recipe.load(study / "best-recipe.yaml")
    assert recipe.merge_method == "slerp"
    assert (study / "trials.csv").is_file() and (study / "history.png").is_file()


def test_demo_again_reuses_the_parents_and_starts_a_fresh_search(demo_run, tmp_path):
    """A second demo, in a working folder of its own (the first demo's results stay as they are),
    on the same toy parents: they are reused, and a search that existed there is replaced."""
    first_work, toy_dir, _ = demo_run
    work = tmp_path / "again"
    shutil.copytree(first_work / "results" / "demo", work / "results" / "demo")  # a previous demo's study here
    first_summary = (first_work / "results" / "demo" / "summary.json").read_text()
    stamp = (toy_dir / "xs" / "instruct-CPT-SFT" / "model.safetensors").stat().st_mtime_ns
    result = run_in(work, "demo", "--trials", "2", "--toy-dir", toy_dir, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "xs/instruct-CPT-SFT: reused" in result.output
    assert (toy_dir / "xs" / "instruct-CPT-SFT" / "model.safetensors").stat().st_mtime_ns == stamp
    summary = json.loads((work / "results" / "demo" / "summary.json").read_text())
    assert summary["trials"].get("complete", 0) + summary["trials"].get("pruned", 0) == 2  # not 4 + 2
    assert (first_work / "results" / "demo" / "summary.json").read_text() == first_summary


def test_toy_reports_each_parents_accuracy(demo_run):
    _, toy_dir, _ = demo_run
    result = run("toy", "--scale", "xs", "--out", toy_dir, "--parents", "instruct,instruct-CPT-SFT", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "reused" in result.output and "training" not in result.output
    assert "│ instruct-CPT-SFT " in result.stdout and "facts" in result.stdout
    report = json.loads((toy_dir / "xs" / "accuracy.json").read_text())
    assert set(report) >= {"instruct", "instruct-CPT-SFT"}
    assert 0 < report["instruct"]["parameters"] < 1_000_000  # xs: well under a million parameters


def test_toy_lists_its_scales_as_a_table_and_as_json():
    result = run("toy", "--list")
    assert result.exit_code == 0, result.output
    assert "parameters" in result.stdout and "xs" in result.stdout and "cuda" in result.stdout
    result = run("toy", "--list", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {"scale", "parameters", "device", "layers", "width"} <= set(rows[0])
    cpu = [row["parameters"] for row in rows if row["device"] == "cpu"]
    assert len(cpu) >= 4 and max(cpu) >= 10 * min(cpu)
    assert {row["device"] for row in rows} == {"cpu", "cuda"}


def test_toy_bad_input_is_one_line(tmp_path):
    assert_clean_error(run("toy", "--scale", "xxxl", "--out", tmp_path / "t"), "unknown toy scale 'xxxl'", out=tmp_path / "t")
    assert_clean_error(run("toy", "--parents", "chat", "--out", tmp_path / "t"), "unknown toy parent 'chat'", out=tmp_path / "t")

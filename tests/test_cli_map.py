"""`evomerge map` as a user runs it: a small map end to end with its table, and one clean line
(exit 2, nothing written) for every kind of bad input, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_checks import assert_clean_error
from map_parents import SCALES, build_map_parents, one_thread  # noqa: F401 (a fixture)
from typer.testing import CliRunner

from evomerge.cli import app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def parents(tmp_path_factory):
    return build_map_parents(tmp_path_factory.mktemp("cli-map-parents"))


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_a_small_map_runs_end_to_end_and_prints_its_table(parents, tmp_path):
    out = tmp_path / "map"
    result = invoke("map", "--pairs", parents["pairs"], "--sweep", "0,0.5,1", "--protocol", "loglik", "--device", "cpu", "--resamples", 200, "--out", out)
    assert result.exit_code == 0, (result.output, result.exception)
    for label in SCALES:
        assert f"{label} (" in result.stdout
    assert "best sweep" in result.stdout and "paper" in result.stdout  # (rich may wrap the names)
    assert f"Wrote {out}/" in result.stdout.replace("\n", "")
    for name in ("map.csv", "items.csv", "kinship.csv", "report.html", "summary.json", "figures/gain-heatmap.png"):
        assert (out / name).is_file(), name
    assert "evomerge map --pairs" in (out / "report.html").read_text()  # the command that made it


def write_pairs(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "pairs_text, extra, words",
    [
        (None, ["--sweep", "0:1"], ["--sweep", "start:stop:step"]),
        (None, ["--sweep", "1:0:0.1"], ["--sweep"]),
        (None, ["--sweep", "0:2:0.5"], ["--sweep", "[0, 1]"]),
        (None, ["--sweep", "a,b"], ["--sweep"]),
        (None, ["--search", "2", "--holdout", "0"], ["--holdout"]),
        (None, ["--search", "-1"], ["--search"]),
        (None, ["--resamples", "5"], ["--resamples"]),
        (None, ["--benchmark", "no_such_benchmark"], ["no_such_benchmark"]),
        ("pairs: [", [], ["malformed YAML", "line 1"]),
        ("- a\n- b\n", [], ["expected a mapping"]),
        ("pairs: []\n", [], ["non-empty list"]),
        ("pair: []\n", [], ["unknown key 'pair'"]),
        ("pairs:\n  - {label: xs, parents: [xs/instruct, xs/child], colour: red}\n", [], ["unknown key 'colour'"]),
        ("pairs:\n  - {label: xs, parents: [xs/instruct]}\n", [], ["exactly two"]),
        ("pairs:\n  - {label: xs, parents: [xs/instruct, xs/instruct]}\n", [], ["same folder"]),
        ("pairs:\n  - {label: 'a b', parents: [xs/instruct, xs/child]}\n", [], ["'label'"]),
        ("pairs:\n  - {label: xs, parents: [xs/instruct, xs/child], base: xs/ancestor}\n", [], ["'base' must be one of the two parents"]),
        ("pairs:\n  - {label: xs, parents: [xs/instruct, xs/child], params: big}\n", [], ["'params'"]),
        ("pairs:\n  - {label: xs, parents: [xs/instruct, xs/child]}\n  - {label: xs, parents: [s/instruct, s/child]}\n", [], ["used twice"]),
        ("benchmark: bench.jsonl\npairs:\n  - {label: xs, parents: [xs/instruct, xs/missing]}\n", [], ["parent not found", "missing"]),
        ("benchmark: bench.jsonl\npairs:\n  - {label: xs, parents: [xs/instruct, s/child]}\n", [], ["differ"]),
        ("benchmark: bench.jsonl\npairs:\n  - {label: xs, parents: [xs/instruct, xs/child], ancestor: s/ancestor}\n", [], ["ancestor"]),
        ("benchmark: nope.jsonl\npairs:\n  - {label: xs, parents: [xs/instruct, xs/child]}\n", [], ["nope.jsonl"]),
        ("pairs:\n  - {label: xs, parents: [xs/instruct, xs/child]}\n", [], ["no benchmark"]),
    ],
)
def test_bad_input_gives_one_line_and_writes_nothing(parents, tmp_path, pairs_text, extra, words):
    pairs = parents["pairs"]
    if pairs_text is not None:
        # Beside the real parents, so relative paths in the file find them.
        pairs = write_pairs(parents["root"], f"{tmp_path.name}.yaml", pairs_text)
    out = tmp_path / "out"
    result = invoke("map", "--pairs", pairs, "--protocol", "loglik", "--device", "cpu", "--out", out, *extra)
    assert_clean_error(result, *words, out=out)


@pytest.mark.parametrize(
    "args, words",
    [
        ([], ["--pairs", "--toy"]),
        (["--toy", "xs,xs"], ["twice"]),
        (["--toy", ","], ["--toy"]),
    ],
)
def test_pairs_or_toy_is_required_and_checked(tmp_path, args, words):
    out = tmp_path / "out"
    result = invoke("map", *args, "--out", out)
    assert_clean_error(result, *words, out=out)


def test_both_pairs_and_toy_are_refused(parents, tmp_path):
    out = tmp_path / "out"
    assert_clean_error(invoke("map", "--pairs", parents["pairs"], "--toy", "xs", "--out", out), "one of them", out=out)


def test_missing_pairs_file(tmp_path):
    out = tmp_path / "out"
    assert_clean_error(invoke("map", "--pairs", tmp_path / "nope.yaml", "--out", out), "pairs file not found", out=out)


def test_a_non_empty_output_folder_is_kept_without_overwrite(parents, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    result = invoke("map", "--pairs", parents["pairs"], "--out", out)
    assert_clean_error(result, "--overwrite")
    assert (out / "mine.txt").read_text() == "keep"


def test_the_commands_defaults_are_the_maps_own():
    """`evomerge map` without a flag does what MapSettings does by default, and the command line
    the report shows leaves out exactly the flags at those defaults."""
    from dataclasses import MISSING, fields

    import typer

    from evomerge.api import map_command_line, scale_map
    from evomerge.search.scale_map import DEFAULT_SWEEP, MapSettings, parse_sweep
    from evomerge.toy.build import DEFAULT_ROOT

    options = {param.name: param.default for param in typer.main.get_command(app).commands["map"].params}
    defaults = {field.name: field.default for field in fields(MapSettings) if field.default is not MISSING}
    for name in ("benchmark", "search_trials", "space", "holdout", "seed", "resamples", "device", "dtype", "protocol", "batch_size", "overwrite"):
        assert options["search" if name == "search_trials" else name] == defaults[name], name
    assert options["sweep"] == DEFAULT_SWEEP and parse_sweep(DEFAULT_SWEEP) == MapSettings(out=Path("m")).sweep
    assert Path(options["toy_dir"]) == DEFAULT_ROOT
    # evomerge.scale_map takes the same keywords with the same defaults.
    import inspect

    api_defaults = {name: param.default for name, param in inspect.signature(scale_map).parameters.items()}
    for name, default in options.items():
        assert name in api_defaults and api_defaults[name] == default, name

    plain = MapSettings(out=Path("m"))
    assert map_command_line(plain, Path("p.yaml"), None, DEFAULT_ROOT, DEFAULT_SWEEP, None) == "evomerge map --pairs p.yaml"
    changed = MapSettings(out=Path("m"), seed=3, search_trials=5, holdout=0.3, batch_size=8)
    line = map_command_line(changed, None, "xs,s", Path("toys"), "0,1", Path("m"))
    assert line == "evomerge map --toy xs,s --toy-dir toys --sweep 0,1 --search 5 --holdout 0.3 --seed 3 --batch-size 8 --out m"
    assert "--holdout" not in map_command_line(MapSettings(out=Path("m"), holdout=0.3), Path("p.yaml"), None, DEFAULT_ROOT, DEFAULT_SWEEP, None)
    pair = ("instruct", "instruct-CPT")
    assert map_command_line(plain, None, "xs", DEFAULT_ROOT, DEFAULT_SWEEP, None, pair) == "evomerge map --toy xs --toy-pair instruct,instruct-CPT"
    assert (
        map_command_line(plain, None, "l", DEFAULT_ROOT, DEFAULT_SWEEP, None, pair, 2) == "evomerge map --toy l --toy-pair instruct,instruct-CPT --toy-seed 2"
    )


def test_a_bad_toy_pair_is_one_line(tmp_path):
    for value, phrase in (("instruct", "two different toy parents"), ("instruct,chat", "unknown toy parent 'chat'")):
        assert_clean_error(invoke("map", "--toy", "xs", "--toy-pair", value, "--toy-dir", tmp_path / "toy"), phrase)
    assert not (tmp_path / "toy").exists()  # nothing built for a typo

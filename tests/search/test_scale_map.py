"""`evomerge map`'s engine end to end on tiny parents at two scales: every output, numbers that agree
with each other, the same numbers for the same seed, and bad input refused before any work."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch
from map_parents import SCALES, build_map_parents, one_thread  # noqa: F401 (a fixture)

from evomerge.analysis.metrics import MapRow
from evomerge.analysis.plots import FIGURES
from evomerge.errors import EvomergeError
from evomerge.evaluate.benchmark import load_benchmark
from evomerge.merge.merger import Merger
from evomerge.search.objective import TrialRunner
from evomerge.search.scale_map import MapSettings, PairSpec, check_map, load_pairs, parse_sweep, run_map, slerp_recipe
from evomerge.search.study import stored_parent_scores

PNG = b"\x89PNG\r\n\x1a\n"
SWEEP = "0:1:0.5"
TRIALS = 2


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def parents(tmp_path_factory):
    return build_map_parents(tmp_path_factory.mktemp("map-parents"))


def settings_for(parents, out: Path, **overrides) -> MapSettings:
    values = dict(
        out=out,
        pairs=load_pairs(parents["pairs"]),
        sweep=parse_sweep(SWEEP),
        search_trials=TRIALS,
        protocol="loglik",
        device="cpu",
        resamples=200,
        seed=3,
    )
    values.update(overrides)
    return MapSettings(**values)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def parents_scored_once():
    """A map scores each parent once, on every item: its searches take the parents' scores from
    those results, so the search's own parent scoring must not run (it would score them again)."""
    patch = pytest.MonkeyPatch()

    def refuse(self):
        raise AssertionError("the map's search scored the parents again")

    patch.setattr(TrialRunner, "compute_parent_scores", refuse)
    return patch


@pytest.fixture(scope="module")
def mapped(parents, tmp_path_factory):
    out = tmp_path_factory.mktemp("map-run") / "map"
    steps = []
    patch = parents_scored_once()
    try:
        result = run_map(settings_for(parents, out), progress=lambda done, total, what: steps.append((done, total, what)))
    finally:
        patch.undo()
    return result, out, steps


def test_every_output_is_written(mapped):
    result, out, _ = mapped
    for name in ("map.csv", "items.csv", "kinship.csv", "report.html", "summary.json", "pairs.yaml"):
        assert (out / name).is_file(), name
    for name in FIGURES:
        assert (out / "figures" / name).read_bytes().startswith(PNG), name
    for label in SCALES:
        search = out / "searches" / label
        for name in ("study.db", "best-recipe.yaml", "trials.csv", "summary.json"):
            assert (search / name).is_file(), (label, name)
    assert not any(path.name.startswith(".map.") for path in out.parent.iterdir())  # no staging left
    assert set(result.files) >= {"map.csv", "report.html", "figures/gain-heatmap.png"}


def test_the_table_has_one_row_per_scored_model(mapped):
    _, out, _ = mapped
    rows = read_csv(out / "map.csv")
    assert list(rows[0]) == MapRow.columns()
    for label in SCALES:
        mine = [row for row in rows if row["label"] == label]
        assert [row["merge"] for row in mine] == ["parent", "parent", "sweep", "sweep", "sweep", "paper", "search"]
        assert [row["t"] for row in mine if row["merge"] == "sweep"] == ["0.0", "0.5", "1.0"]


def test_the_numbers_agree_with_each_other(mapped, parents):
    _, out, _ = mapped
    rows = read_csv(out / "map.csv")
    held_out = len(load_benchmark(parents["benchmark"]).split_holdout(0.2)[1])
    for label in SCALES:
        mine = {(row["merge"], row["t"]): row for row in rows if row["label"] == label}
        instruct, child = mine[("parent", "0.0")], mine[("parent", "1.0")]
        # t = 0 is the base parent and t = 1 the other one.
        assert mine[("sweep", "0.0")]["accuracy"] == instruct["accuracy"]
        assert mine[("sweep", "1.0")]["accuracy"] == child["accuracy"]
        for row in (instruct, child):
            assert float(row["gain"]) <= 0  # a parent never beats the best parent
        best = max(float(instruct["accuracy"]), float(child["accuracy"]))
        middle = mine[("sweep", "0.5")]
        assert float(middle["gain"]) == pytest.approx(float(middle["accuracy"]) - best)
        assert float(middle["accuracy_low"]) <= float(middle["accuracy"]) <= float(middle["accuracy_high"])
        assert middle["items"] == "all" and int(middle["n"]) == 24
        search = mine[("search", "")]
        assert search["items"] == "holdout" and int(search["n"]) == held_out
        assert 0 < float(search["kinship"]) < 1
    kinship = read_csv(out / "kinship.csv")
    for label, (_, layers) in SCALES.items():
        assert [row["layer"] for row in kinship if row["label"] == label] == ["all", *map(str, range(layers))]
    items = read_csv(out / "items.csv")
    assert sum(1 for row in items if row["label"] == "xs" and row["name"] == "t=0.5") == 24
    assert sum(1 for row in items if row["label"] == "xs" and row["items"] == "holdout") == held_out


def test_the_report_summary_and_pairs_file(mapped):
    _, out, steps = mapped
    report = (out / "report.html").read_text()
    for label in SCALES:
        assert f"<p class='scale'>{label} (" in report
    assert "held-out items the search never saw" in report
    summary = json.loads((out / "summary.json").read_text())
    assert [pair["label"] for pair in summary["pairs"]] == list(SCALES)
    assert summary["pairs"][0]["search"]["holdout_items"] > 0
    rerun = load_pairs(out / "pairs.yaml")  # absolute paths: the map can be rerun from anywhere
    assert all(Path(p).is_absolute() and Path(p).is_dir() for pair in rerun for p in pair.parents)
    done, total, _ = steps[-1]
    assert done == total


def test_the_searchs_parent_scores_are_the_maps_own_on_its_items(mapped, parents):
    """The study of each pair's search stores the parents' scores as a search would compute them
    (fraction f = the first items of the search split, the held-out split apart), read off the
    parents' per-item results the map wrote."""
    _, out, _ = mapped
    search, held = load_benchmark(parents["benchmark"]).split_holdout(0.2)
    items = read_csv(out / "items.csv")
    for label in SCALES:
        study = optuna.load_study(study_name=f"map-{label}", storage=f"sqlite:///{out / 'searches' / label / 'study.db'}")
        stored = stored_parent_scores(study)
        assert list(stored) == [str(parents["root"] / label / name) for name in ("instruct", "child")]
        for parent, (entry,) in stored.items():
            name = f"parent {Path(parent).name}"
            correct = {row["item_id"]: row["correct"] == "1" for row in items if row["label"] == label and row["name"] == name}
            on_search = [correct[item.id] for item in search.items]
            assert entry["correct"] == "".join("1" if ok else "0" for ok in on_search)
            for fidelity, accuracy in entry["fidelity"].items():
                count = search.count(float(fidelity))
                assert accuracy == sum(on_search[:count]) / count, (label, parent, fidelity)
            assert entry["holdout"] == sum(correct[item.id] for item in held.items) / len(held)


def test_same_seed_same_numbers(mapped, parents, tmp_path):
    """One pair again, its search included: every number the map wrote for it is the same."""
    _, first, _ = mapped
    second = tmp_path / "again"
    settings = settings_for(parents, second)
    settings.pairs = [pair for pair in settings.pairs if pair.label == "xs"]
    run_map(settings)
    for name in ("map.csv", "items.csv", "kinship.csv"):
        before = [row for row in read_csv(first / name) if row["label"] == "xs"]
        assert before and before == read_csv(second / name), name
    summary = json.loads((first / "summary.json").read_text())["pairs"][0]
    again = json.loads((second / "summary.json").read_text())["pairs"][0]
    assert summary["label"] == again["label"] == "xs"
    assert summary["search"] == again["search"]


def test_another_seed_moves_only_the_intervals(mapped, parents, tmp_path):
    _, first, _ = mapped
    other = tmp_path / "other-seed"
    run_map(settings_for(parents, other, seed=4, search_trials=0))
    before = [row for row in read_csv(first / "map.csv") if row["merge"] != "search"]
    after = read_csv(other / "map.csv")
    assert [row["accuracy"] for row in before] == [row["accuracy"] for row in after]
    assert [row["accuracy_low"] for row in before] != [row["accuracy_low"] for row in after]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_sweep_ends_are_the_parents_exactly(parents, dtype):
    """Why t = 0 and t = 1 reuse the parents' scores instead of scoring the merge again."""
    instruct, child = (str(parents["scales"]["xs"][name]) for name in ("instruct", "child"))
    merger = Merger.load([instruct, child], device="cpu", dtype=dtype)
    for t, source in ((0.0, instruct), (1.0, child)):
        merger.apply(slerp_recipe(instruct, child, t, dtype))
        merged, expected = merger.merged_state_dict(), merger.parents[source].tensors
        assert all(torch.equal(merged[name], expected[name]) for name in expected), (dtype, t)


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(benchmark=None, pairs_name_none=True), "no benchmark"),
        (dict(search_trials=2, holdout=0.0), "--holdout"),
        (dict(resamples=10), "--resamples"),
        (dict(benchmark="lm-eval:arc_easy"), "JSONL benchmark"),
        (dict(protocol="greedy"), "unknown protocol"),
    ],
)
def test_bad_settings_are_refused_before_any_work(parents, tmp_path, change, words):
    change = dict(change)
    if change.pop("pairs_name_none", False):  # neither the map nor any pair names a benchmark
        change["pairs"] = [replace(pair, benchmark=None) for pair in load_pairs(parents["pairs"])]
    settings = settings_for(parents, tmp_path / "out", **change)
    with pytest.raises(EvomergeError, match=words.replace("-", r"\-")):
        run_map(settings)
    assert not (tmp_path / "out").exists()


def test_benchmark_given_for_the_map_wins_over_the_pairs_own(parents, tmp_path):
    """--benchmark is every pair's benchmark; without it, each pair's own (or the pairs file's)."""
    other = parents["root"] / "other-bench.jsonl"
    other.write_text((parents["benchmark"]).read_text().replace('"id": "mc', '"id": "other-mc'), encoding="utf-8")
    pairs = load_pairs(parents["pairs"])
    assert {pair.benchmark for pair in pairs} == {str(parents["benchmark"])}, "the file's benchmark, for pairs naming none"
    named = [PairSpec(pair.label, pair.parents, pair.base, pair.ancestor, benchmark=str(other)) for pair in pairs]
    own = check_map(settings_for(parents, tmp_path / "own", pairs=named, search_trials=0))
    assert [pair.benchmark for pair in own] == [str(other)] * len(SCALES)
    given = check_map(settings_for(parents, tmp_path / "given", pairs=named, search_trials=0, benchmark=str(parents["benchmark"])))
    assert [pair.benchmark for pair in given] == [str(parents["benchmark"])] * len(SCALES)
    assert [pair.items for pair in given] == [24, 24]


def test_an_ancestor_of_another_shape_is_refused(parents, tmp_path):
    settings = settings_for(parents, tmp_path / "out")
    settings.pairs[0].ancestor = str(parents["scales"]["s"]["ancestor"])
    with pytest.raises(EvomergeError, match="the ancestor does not fit the parents"):
        run_map(settings)
    assert not (tmp_path / "out").exists()


def test_a_non_empty_output_folder_needs_overwrite(parents, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(EvomergeError, match="--overwrite"):
        run_map(settings_for(parents, out, search_trials=0))
    assert (out / "keep.txt").read_text() == "mine"

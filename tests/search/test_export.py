"""What a finished study leaves in results/<study>/: a best recipe that mergekit rebuilds bit for
bit, the trials table, the summary, plots, the K-th best recipe, and a two-benchmark study's
Pareto front. One small study is searched once for the whole module.

The search runs with parent paths relative to its folder (as a user types them); the exported
YAMLs must carry absolute paths so they work from anywhere.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState
from safetensors.torch import load_file
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.errors import EvomergeError
from evomerge.recipe import Recipe, slerp_recipe
from evomerge.search.export import export_all, export_recipe, ranked_trials
from evomerge.search.run import optimise, prepare, score_holdout
from evomerge.search.study import SETTINGS_ATTR, SearchSettings, best_trial, trial_attr

optuna.logging.set_verbosity(optuna.logging.WARNING)
MERGEKIT_YAML = Path(sys.executable).parent / "mergekit-yaml"
PNG = b"\x89PNG\r\n\x1a\n"


def searched(work: Path, settings: SearchSettings):
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        start = time.perf_counter()
        study, runner = optimise(prepare(settings))
        holdout = score_holdout(study, runner)
        summary = export_all(study, settings.results_dir, time.perf_counter() - start)
    return study, summary, holdout


@pytest.fixture(scope="module")
def work(search_parents, tmp_path_factory):
    """A folder where the parents are reachable by relative names, like a user's project."""
    folder = tmp_path_factory.mktemp("export-work")
    for name in ("instruct", "child"):
        (folder / name).symlink_to(search_parents[name], target_is_directory=True)
    return folder


@pytest.fixture(scope="module")
def finished(work, search_parents):
    settings = SearchSettings(
        parents=["instruct", "child"],
        benchmarks=[str(search_parents["benchmark"])],
        base="instruct",
        space="slerp_gradient",
        protocol="loglik",
        holdout=0.2,
        trials=5,
        device="cpu",
        study="exp",
    )
    study, summary, holdout = searched(work, settings)
    return {"study": study, "summary": summary, "holdout": holdout, "folder": work / "results" / "exp", "work": work}


@pytest.fixture(scope="module")
def pareto_study(work, search_parents):
    settings = SearchSettings(
        parents=["instruct", "child"],
        benchmarks=[str(search_parents["benchmark"]), str(search_parents["general"])],
        base="instruct",
        space="slerp_global",
        sampler="random",
        protocol="loglik",
        trials=3,
        device="cpu",
        study="two",
    )
    study, summary, _ = searched(work, settings)
    return {"study": study, "summary": summary, "folder": work / "results" / "two"}


def test_the_study_lives_in_its_results_folder(finished):
    folder = finished["folder"]
    assert (folder / "study.db").is_file(), "default storage: results/<study>/study.db"
    for name in ("best-recipe.yaml", "trials.csv", "summary.json", "history.png", "t-over-layers.png"):
        assert (folder / name).is_file(), name


def test_best_recipe_has_absolute_parent_paths_and_mergekit_accepts_it(finished, search_parents):
    text = (finished["folder"] / "best-recipe.yaml").read_text()
    study = finished["study"]
    best = study.best_trial
    assert text.startswith(f"# evomerge study exp, trial {best.number}, rank 1")
    recipe = Recipe.from_yaml(text)
    real = {str(Path(search_parents[name]).resolve()) for name in ("instruct", "child")}
    assert set(recipe.model_names) == real
    assert all(Path(name).is_absolute() and (Path(name) / "config.json").is_file() for name in recipe.model_names)
    assert recipe.base_model == str(Path(search_parents["instruct"]).resolve())
    # Apart from the paths it is the best trial's recipe.
    stored = Recipe.from_yaml(trial_attr(best, "recipe")).to_dict()
    exported = recipe.to_dict()
    for data in (stored, exported):
        data.pop("base_model")
        data["models"] = [{k: v for k, v in m.items() if k != "model"} for m in data["models"]]
    assert exported == stored
    from mergekit.config import MergeConfiguration

    config = MergeConfiguration.model_validate(yaml.safe_load(text))
    assert config.merge_method == "slerp"
    assert str(config.base_model.model.path) == recipe.base_model


@pytest.mark.slow
def test_mergekit_yaml_rebuilds_the_best_recipe_bit_equal_to_evomerge_merge(finished, tmp_path):
    recipe = finished["folder"] / "best-recipe.yaml"
    theirs, ours = tmp_path / "mergekit", tmp_path / "evomerge"
    # From another folder: the absolute paths in the YAML are what makes this work.
    done = subprocess.run([str(MERGEKIT_YAML), str(recipe), str(theirs), "--quiet"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = CliRunner().invoke(app, ["merge", str(recipe), "--out", str(ours), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    a = {k: v for f in sorted(theirs.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    b = {k: v for f in sorted(ours.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    assert a and set(a) == set(b)
    different = [name for name in a if a[name].dtype != b[name].dtype or not torch.equal(a[name], b[name])]
    assert not different, f"evomerge merge differs from mergekit-yaml in {different[:5]}"


def test_trials_csv_has_one_row_per_trial_with_state_and_values(finished):
    study = finished["study"]
    with open(finished["folder"] / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(study.trials)
    assert {"number", "state", "values", "accuracy", "gain", "synergy", "baseline", "t.self_attn.0"} <= set(rows[0])
    for row, trial in zip(rows, study.trials):
        assert int(row["number"]) == trial.number
        assert row["state"] == trial.state.name
        if trial.state == TrialState.COMPLETE:
            assert float(row["values"]) == pytest.approx(trial.value, abs=1e-6)
            assert float(row["accuracy"]) == trial.user_attrs["accuracy"]
        else:
            assert row["values"] == ""
    assert rows[0]["baseline"] == "True"


def test_summary_json_reports_parents_best_gain_synergy_baseline_holdout_counts_and_time(finished):
    summary = json.loads((finished["folder"] / "summary.json").read_text())
    study = finished["study"]
    best = study.best_trial
    parents = summary["parents"]
    assert set(parents) == {"instruct", "child"}
    assert summary["best_trial"] == best.number
    assert summary["best_value"] == best.value
    assert summary["best_parent"] == max(parents.values())
    assert summary["gain"] == pytest.approx(best.value - max(parents.values()))
    assert summary["synergy"] == pytest.approx(best.value - sum(parents.values()) / 2)
    baseline = study.trials[0]
    assert baseline.user_attrs["baseline"] and summary["baseline_accuracy"] == baseline.user_attrs["accuracy"]
    assert summary["holdout"] == finished["holdout"]
    assert summary["holdout"]["holdout_n"] > 0 and 0 <= summary["holdout"]["holdout_accuracy"] <= 1
    counts = summary["trials"]
    assert counts["complete"] + counts["pruned"] == 5
    assert sum(counts.values()) == len(study.trials)
    assert summary["wall_s"] > 0
    assert summary["stopped_because"] is None


def test_plots_are_pngs(finished):
    for name in ("history.png", "t-over-layers.png"):
        data = (finished["folder"] / name).read_bytes()
        assert data.startswith(PNG), name
        assert len(data) > 5000, f"{name} is suspiciously small"
    # Parameter importances need two complete trials with different values: this study has them.
    assert len(finished["study"].get_trials(states=(TrialState.COMPLETE,))) >= 2
    assert (finished["folder"] / "importances.png").read_bytes().startswith(PNG)


def test_export_rank_two_writes_the_second_best(finished, tmp_path, monkeypatch):
    monkeypatch.chdir(finished["work"])
    study = finished["study"]
    ranked = ranked_trials(study)
    assert [t.number for t in ranked] == [t.number for t in sorted(ranked, key=lambda t: (-t.value, t.number))]
    out = tmp_path / "second.yaml"
    trial = export_recipe(study, out, rank=2)
    assert trial.number == ranked[1].number
    text = out.read_text()
    assert text.startswith(f"# evomerge study exp, trial {trial.number}, rank 2")
    recipe = Recipe.from_yaml(text)
    recipe.to_mergekit()
    assert recipe.parameters == Recipe.from_yaml(trial_attr(trial, "recipe")).parameters
    assert all(Path(name).is_absolute() for name in recipe.model_names)
    assert recipe.to_yaml() != Recipe.load(finished["folder"] / "best-recipe.yaml").to_yaml()
    with pytest.raises(EvomergeError, match="--rank 99 is out of range"):
        export_recipe(study, tmp_path / "none.yaml", rank=99)
    assert not (tmp_path / "none.yaml").exists()


def test_a_two_benchmark_study_writes_its_pareto_front(pareto_study):
    study, folder = pareto_study["study"], pareto_study["folder"]
    assert len(study.directions) == 2
    with open(folder / "pareto.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    front = {t.number: t for t in study.best_trials}
    assert rows and len(rows) == len(front)
    for row in rows:
        trial = front[int(row["number"])]
        assert float(row["domain"]) == trial.values[0]
        assert float(row["general"]) == trial.values[1]
        path = folder / "pareto" / row["recipe"]
        assert path.name == f"trial-{trial.number}.yaml"
        recipe = Recipe.load(path)
        recipe.to_mergekit()
        assert all(Path(name).is_absolute() for name in recipe.model_names)
        assert recipe.parameters == Recipe.from_yaml(trial_attr(trial, "recipe")).parameters
    assert sorted(p.name for p in (folder / "pareto").iterdir()) == sorted(row["recipe"] for row in rows)
    summary = json.loads((folder / "summary.json").read_text())
    assert len(summary["benchmarks"]) == 2
    assert summary["best_trial"] in front and summary["best_value"] == max(t.values[0] for t in front.values())
    assert (folder / "best-recipe.yaml").is_file()


def test_one_ranking_names_the_same_best_trial_in_the_summary_the_recipe_and_the_pareto_front(tmp_path):
    """Two benchmarks: (0.7, 0.2) and (0.7, 0.5) tie on the domain, but only the second is on the
    Pareto front. It is the best trial for summary.json, best-recipe.yaml and `export --rank 1`
    alike; then the rest of the front, then the dominated trials, each by domain then general."""
    storage = f"sqlite:///{tmp_path}/rank.db"
    study = optuna.create_study(study_name="rank", storage=storage, directions=["maximize", "maximize"])
    study.set_user_attr(SETTINGS_ATTR, SearchSettings(parents=["./a", "./b"], benchmarks=["x", "y"], study="rank").to_json())
    for domain, general in ((0.7, 0.2), (0.7, 0.5), (0.6, 0.9), (0.5, 0.1)):
        recipe = slerp_recipe("./a", "./b", general, "float32").to_yaml()  # one recipe per trial
        study.add_trial(optuna.trial.create_trial(values=[domain, general], user_attrs={"recipe": recipe, "accuracy": domain}))
    assert {t.number for t in study.best_trials} == {1, 2}
    assert [t.number for t in ranked_trials(study)] == [1, 2, 0, 3]
    assert best_trial(study).number == 1

    summary = export_all(study, tmp_path / "out")
    assert summary["best_trial"] == 1 and summary["best_value"] == 0.7 and summary["best_accuracy"] == 0.7
    assert (tmp_path / "out" / "best-recipe.yaml").read_text().startswith("# evomerge study rank, trial 1, rank 1")
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["best_trial"] == 1
    with open(tmp_path / "out" / "pareto.csv", newline="") as handle:
        assert [int(row["number"]) for row in csv.DictReader(handle)] == [1, 2]
    assert export_recipe(study, tmp_path / "second.yaml", rank=2).number == 2


def test_a_tie_on_one_benchmark_goes_to_the_earlier_trial(tmp_path):
    study = optuna.create_study(study_name="tie", storage=f"sqlite:///{tmp_path}/tie.db", direction="maximize")
    for value in (0.5, 0.75, 0.75, 0.25):
        study.add_trial(optuna.trial.create_trial(value=value))
    assert [t.number for t in ranked_trials(study)] == [1, 2, 0, 3]
    assert best_trial(study).number == 1


def test_history_draws_pruned_trials_at_the_last_fraction_they_reported():
    """history.png's pruned points: each pruned trial at the value of its last report, the k-th
    report being the k-th fraction; a pruned duplicate (no reports of its own) is left out."""
    from optuna.trial import create_trial

    from evomerge.search.export import pruned_points

    study = optuna.create_study(direction="maximize")
    study.set_user_attr(SETTINGS_ATTR, SearchSettings(parents=["a", "b"], benchmarks=["x"], fidelities=[0.25, 0.5, 1.0]).to_json())
    study.add_trial(create_trial(value=0.4, intermediate_values={4: 0.3, 8: 0.35}))
    study.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values={4: 0.1}))
    study.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values={4: 0.2, 8: 0.15}))
    study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={"duplicate_of": 1}))
    assert pruned_points(study) == [(1, 0.25, 0.1), (2, 0.5, 0.15)]

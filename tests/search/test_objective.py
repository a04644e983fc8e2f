"""What a study does, through the Python API: real tiny parents, real Optuna SQLite storages, real
merges and scores. Parents scored once and stored on the study; the paper's recipe as baseline
trial 0; what each trial records; duplicates not re-evaluated; pruning; failed trials; the gain
objective; two benchmarks; the held-out split.

The parents differ under the paper's protocol (instruct answers nothing right, the child 3/16), so
those studies give non-trivial gains; log-likelihood scoring is faster and used where the values do
not matter.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from dataclasses import replace

import optuna
import pytest
from optuna.trial import TrialState
from search_helpers import DELLA, settings_for, write_space

from evomerge.errors import EvomergeError
from evomerge.evaluate.scorer import Scorer
from evomerge.recipe import Recipe, paper_recipe
from evomerge.search.run import TooManyFailures, optimise, prepare, score_holdout
from evomerge.search.study import SETTINGS_ATTR, SearchSettings, finished_count, set_parent_scores, stored_parent_scores, trial_attr

optuna.logging.set_verbosity(optuna.logging.WARNING)


def run(settings):
    return optimise(prepare(settings))


def parent_accuracies(study, benchmark=0, fidelity="1.0"):
    return [scores[benchmark]["fidelity"][fidelity] for scores in stored_parent_scores(study).values()]


def evaluated(study):
    """Complete trials that were merged and scored (not copied from a duplicate)."""
    return [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if "duplicate_of" not in t.user_attrs]


@pytest.fixture(scope="module")
def main(search_parents, tmp_path_factory):
    """One slerp_gradient study with the paper's protocol, a median pruner and a 20 % holdout."""
    folder = tmp_path_factory.mktemp("objective-main")
    settings = settings_for(search_parents, folder, protocol="paper", pruner="median", holdout=0.2, trials=6)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        study, runner = run(settings)
    return {"study": study, "runner": runner, "settings": settings, "folder": folder, "parents": search_parents}


# ----- parents, baseline, what a trial records --------------------------------------------------


def test_the_study_reaches_its_total_and_stores_its_settings(main):
    study, settings = main["study"], main["settings"]
    assert finished_count(study) == settings.trials
    assert not study.get_trials(states=(TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING))
    stored = SearchSettings.from_json(study.user_attrs[SETTINGS_ATTR])
    assert stored.parents == settings.parents and stored.space == "slerp_gradient" and stored.holdout == 0.2


def test_parents_are_scored_once_and_stored_on_the_study(main):
    study, runner, settings = main["study"], main["runner"], main["settings"]
    scores = stored_parent_scores(study)
    assert list(scores) == settings.parents
    search_items = len(runner.objectives[0].benchmark)
    for parent, per_benchmark in scores.items():
        assert len(per_benchmark) == 1
        entry = per_benchmark[0]
        assert set(entry["fidelity"]) == {"0.25", "0.5", "1.0"}
        assert len(entry["correct"]) == search_items
        assert entry["fidelity"]["1.0"] == pytest.approx(entry["correct"].count("1") / search_items)
        assert set(entry["per_category"]) <= {"general", "specific"}
        assert 0.0 <= entry["holdout"] <= 1.0
    # The stored numbers are each parent's own score: re-score one parent alone to check.
    child = settings.parents[1]
    again = runner.objectives[0].scorer.score(runner.merger.show_parent(child), 1.0)
    assert scores[child][0]["fidelity"]["1.0"] == again.accuracy
    # With the paper's protocol these parents differ, so gain and synergy below are not trivially 0.
    assert len(set(parent_accuracies(study))) == 2


def test_the_papers_recipe_is_trial_zero_and_the_baseline(main):
    study, settings = main["study"], main["settings"]
    baseline = [t for t in study.trials if t.user_attrs.get("baseline")]
    assert [t.number for t in baseline] == [0], "exactly one baseline trial, the first"
    trial = baseline[0]
    assert trial.state == TrialState.COMPLETE
    recipe = Recipe.from_yaml(trial_attr(trial, "recipe"))
    expected = paper_recipe(settings.parents[0], settings.parents[1], dtype="float32")
    # On these 2-layer parents the space has one anchor per layer: the paper's gradient read at
    # each layer, so every tensor gets the paper's t.
    assert trial.params == {"t.self_attn.0": 0.0, "t.self_attn.1": 1.0, "t.mlp.0": 1.0, "t.mlp.1": 0.0, "t.default": 0.5}
    for layer, position in ((0, 0.0), (1, 1.0)):
        for module in ("self_attn.q_proj", "mlp.up_proj", "input_layernorm"):
            tensor = f"model.layers.{layer}.{module}.weight"
            assert recipe.parameter("t", tensor, position) == expected.parameter("t", tensor, position)


def test_each_complete_trial_records_recipe_fidelities_categories_gain_synergy_times_and_items(main):
    study, runner = main["study"], main["runner"]
    parents = parent_accuracies(study)
    search = runner.objectives[0].benchmark
    n_items = len(search)
    trials = evaluated(study)
    assert trials
    for trial in trials:
        attrs = trial.user_attrs
        Recipe.from_yaml(trial_attr(trial, "recipe")).to_mergekit()
        accuracy = attrs["accuracy"]
        assert trial.value == accuracy
        assert attrs["accuracy@1.0"] == accuracy
        assert 0 <= attrs["accuracy@0.25"] <= 1 and 0 <= attrs["accuracy@0.5"] <= 1
        # Each partial fidelity was reported at the number of items scored so far.
        assert trial.intermediate_values == {search.count(0.25): attrs["accuracy@0.25"], search.count(0.5): attrs["accuracy@0.5"]}
        assert set(trial_attr(trial, "per_category")) == {"general", "specific"}
        assert attrs["gain"] == pytest.approx(accuracy - max(parents))
        assert attrs["synergy"] == pytest.approx(accuracy - sum(parents) / len(parents))
        assert attrs["merge_s"] >= 0 and attrs["score_s"] > 0
        assert attrs["worker"] == f"{socket.gethostname()}:{os.getpid()}"  # which process ran it
        correct = trial_attr(trial, "correct")
        assert len(correct) == n_items and set(correct) <= {"0", "1"}
        assert correct.count("1") / n_items == pytest.approx(accuracy)
    # The recorded number is what that recipe really scores: merge it again and score it.
    best = max(trials, key=lambda t: (t.value, -t.number))
    model = runner.merger.apply(Recipe.from_yaml(trial_attr(best, "recipe")), seed=0)
    again = runner.objectives[0].scorer.score(model, 1.0)
    assert again.accuracy == best.value
    assert "".join("1" if ok else "0" for ok in again.correct) == trial_attr(best, "correct")


def test_the_dashboard_sees_named_metrics_short_attributes_and_each_recipe_as_a_note(main):
    """What optuna-dashboard shows: the value named (not "Objective 0"), attribute tables without
    the recipe YAML or the per-item strings (they are system attributes, still read by export
    and resume), and the recipe as the trial's note."""
    from optuna_dashboard import get_note

    from evomerge.search.study import PARENT_SCORES_ATTR

    study = main["study"]
    assert study.metric_names == ["accuracy"]
    assert PARENT_SCORES_ATTR not in study.user_attrs and stored_parent_scores(study)
    for trial in evaluated(study):
        assert not {"recipe", "correct", "per_category"} & set(trial.user_attrs)
        assert max(len(str(value)) for value in trial.user_attrs.values()) < 100
        recipe = trial_attr(trial, "recipe")
        note = get_note(optuna.Trial(study, trial._trial_id))
        assert f"```yaml\n{recipe.rstrip()}\n```" in note


def test_holdout_items_are_never_seen_by_the_search_and_are_scored_at_the_end(main):
    study, runner = main["study"], main["runner"]
    objective = runner.objectives[0]
    search_ids = {item.id for item in objective.benchmark.items}
    held_ids = {item.id for item in objective.holdout.items}
    assert held_ids, "a 20 % holdout of 16 items holds some out"
    assert not search_ids & held_ids
    assert len(search_ids | held_ids) == 16
    # The scorer the trials used only knows the search items.
    assert {item.id for item in objective.scorer.benchmark.items} == search_ids
    assert all(len(trial_attr(t, "correct")) == len(search_ids) for t in evaluated(study))
    scores = score_holdout(study, runner)
    assert set(scores) >= {"trial", "search_accuracy", "holdout_accuracy", "holdout_n"}
    assert scores["holdout_n"] == len(held_ids)
    best = study.best_trial
    assert scores["trial"] == best.number and scores["search_accuracy"] == best.user_attrs["accuracy"]
    # Independently: the best recipe scored by a fresh scorer on the held-out items only.
    model = runner.merger.apply(Recipe.from_yaml(trial_attr(best, "recipe")), seed=0)
    fresh = Scorer.load(objective.holdout, runner.tokenizer, protocol="paper").score(model, 1.0)
    assert scores["holdout_accuracy"] == fresh.accuracy
    assert study.user_attrs["holdout_scores"] == scores


def test_a_resumed_study_does_not_rescore_parents_or_reenqueue_the_baseline(main, tmp_path):
    """Resume a copy of the study in a fresh runner (a new process would do the same). The stored
    parent scores are replaced by marker values first: if the parents were scored again, the
    markers would be overwritten; new trials' gain must be measured against the markers."""
    shutil.copy(main["folder"] / "s.db", tmp_path / "s.db")
    storage = f"sqlite:///{tmp_path}/s.db"
    copy = optuna.load_study(study_name="s", storage=storage)
    marked = stored_parent_scores(copy)
    for scores in marked.values():
        scores[0]["fidelity"]["1.0"] = 0.015625  # 1/64: no real score on 16 items or fewer
    set_parent_scores(copy, marked)
    before = len(copy.trials)

    settings = main["settings"]
    resumed = SearchSettings(**{**settings.__dict__, "storage": storage, "trials": settings.trials + 2})
    study, runner = run(resumed)

    assert stored_parent_scores(study) == marked, "the parents were scored again on resume"
    assert finished_count(study) == settings.trials + 2
    assert len(study.trials) > before
    assert sum(bool(t.user_attrs.get("baseline")) for t in study.trials) == 1
    new = [t for t in study.trials[before:] if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]
    for trial in new:
        assert trial.user_attrs["gain"] == pytest.approx(trial.user_attrs["accuracy"] - 0.015625)


def test_processes_opening_a_new_study_at_once_all_get_it(search_parents, tmp_path):
    """Workers started together (`--jobs`, or on several machines) may open a study that does
    not exist yet at the same moment: creating or loading it is one step, so each gets the same
    study, with its settings, and none fails with "already exists"."""
    from evomerge.search.study import create_or_load_study, open_storage

    settings = settings_for(search_parents, tmp_path)
    storage = open_storage(settings.storage_url())
    together = threading.Barrier(4)
    opened, errors = [], []

    def open_it():
        together.wait()
        try:
            opened.append(create_or_load_study(settings, storage).study_name)
        except Exception as error:  # what the test is about: none may fail
            errors.append(error)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and opened == ["s"] * 4, errors
    assert optuna.get_all_study_names(storage) == ["s"]
    assert SearchSettings.from_json(optuna.load_study(study_name="s", storage=storage).user_attrs[SETTINGS_ATTR]) == settings


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # trials asked by hand, not by optimize
def test_a_new_study_samples_with_its_seed_and_a_process_opening_an_existing_one_with_its_own(search_parents, tmp_path):
    """The same --seed proposes the same in a new study (a search is reproducible). A process that
    opens an existing study (a worker, a resume) samples with a seed of its own: with --seed again
    it would propose the recipes already proposed, and spend trials on copies."""
    from evomerge.search.study import create_or_load_study, open_storage

    def first_proposal(settings):
        study = create_or_load_study(settings, open_storage(settings.storage_url()))
        trial = study.ask()
        value = trial.suggest_float("x", 0, 1)
        study.tell(trial, 0.0)
        return value

    new = settings_for(search_parents, tmp_path, sampler="random", study="a", storage=f"sqlite:///{tmp_path}/a.db")
    other_new = replace(new, study="b", storage=f"sqlite:///{tmp_path}/b.db")
    created = first_proposal(new)
    assert first_proposal(other_new) == created
    assert first_proposal(new) != created, "a process opening the existing study proposed its first recipe again"


def test_resuming_with_other_settings_is_refused(main):
    settings = main["settings"]
    other = SearchSettings(**{**settings.__dict__, "space": "slerp_global", "trials": settings.trials + 1})
    with pytest.raises(EvomergeError, match="exists with space='slerp_gradient'"):
        optimise(prepare(other), runner=main["runner"])
    assert finished_count(optuna.load_study(study_name="s", storage=settings.storage)) >= settings.trials


# ----- duplicates and pruning -------------------------------------------------------------------


def test_an_identical_recipe_is_not_evaluated_twice(search_parents, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, "method: slerp\nparameters:\n  t: {low: 0, high: 1, step: 0.5}\n")
    study, runner = run(settings_for(search_parents, tmp_path, space=space, sampler="random", trials=8, fidelities=[1.0]))
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 8
    keys = {t.user_attrs["recipe_key"] for t in trials}
    assert len(keys) <= 3, "t in {0, 0.5, 1}: at most three distinct recipes"
    duplicates = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert len(duplicates) == 8 - len(keys)
    assert runner.merger.apply_count == len(keys) < 8
    by_number = {t.number: t for t in trials}
    for trial in duplicates:
        original = by_number[trial.user_attrs["duplicate_of"]]
        assert original.number < trial.number and "duplicate_of" not in original.user_attrs
        assert trial.user_attrs["recipe_key"] == original.user_attrs["recipe_key"]
        assert trial_attr(trial, "recipe") == trial_attr(original, "recipe")
        assert trial.value == original.value
        assert trial_attr(trial, "correct") == trial_attr(original, "correct")
        assert "merge_s" not in trial.user_attrs  # a duplicate did no merge of its own


def test_median_pruner_stops_a_hopeless_recipe_after_the_first_fraction(search_parents, tmp_path, monkeypatch):
    """Three recipes that equal the child (a filter that matches no tensor only changes the recipe
    key) score 1/4 on the first quarter of the items; then t=0.5, which scores 0 there, is pruned."""
    monkeypatch.chdir(tmp_path)
    space = write_space(
        tmp_path,
        "method: slerp\nparameters:\n  t:\n    filters:\n      no_such_tensor: {low: 0, high: 1, step: 0.1}\n    default: {low: 0, high: 1, step: 0.1}\n",
    )
    settings = settings_for(search_parents, tmp_path, space=space, protocol="paper", pruner="median", trials=4)
    prepared = prepare(settings)
    from evomerge.search.study import create_or_load_study

    seeded = create_or_load_study(settings, prepared.storage)
    for inert, t in ((0.0, 1.0), (0.1, 1.0), (0.2, 1.0), (0.3, 0.5)):
        seeded.enqueue_trial({"t.no_such_tensor": inert, "t.default": t})
    study, _ = optimise(prepared)

    states = [t.state for t in study.trials]
    assert states[:3] == [TrialState.COMPLETE] * 3, states
    for trial in study.trials[:3]:
        assert trial.user_attrs["accuracy@0.25"] == 0.25
    pruned = study.trials[3]
    assert pruned.state == TrialState.PRUNED, f"t=0.5 scores 0 < median 0.25 at fraction 0.25: {pruned.state}"
    assert pruned.user_attrs["accuracy@0.25"] == 0.0
    assert pruned.intermediate_values == {4: 0.0}, "reported at the items scored: a quarter of 16"
    assert "accuracy" not in pruned.user_attrs and "accuracy@1.0" not in pruned.user_attrs
    assert "accuracy@0.5" not in pruned.user_attrs
    assert pruned.user_attrs["score_s"] > 0
    assert finished_count(study) == 4


def test_pruned_trials_record_only_partial_fidelities(search_parents, tmp_path, monkeypatch):
    """As above, with two hopeless recipes (t=0.5 and t=0.9 score 0 on the first quarter) among
    child-like ones: both are pruned, and keep only what they scored before the pruner stopped them."""
    monkeypatch.chdir(tmp_path)
    space = write_space(
        tmp_path,
        "method: slerp\nparameters:\n  t:\n    filters:\n      no_such_tensor: {low: 0, high: 1, step: 0.1}\n    default: {low: 0, high: 1, step: 0.1}\n",
    )
    settings = settings_for(search_parents, tmp_path, space=space, protocol="paper", pruner="median", trials=6)
    prepared = prepare(settings)
    from evomerge.search.study import create_or_load_study

    seeded = create_or_load_study(settings, prepared.storage)
    for inert, t in ((0.0, 1.0), (0.1, 1.0), (0.2, 1.0), (0.3, 0.5), (0.4, 0.9), (0.5, 1.0)):
        seeded.enqueue_trial({"t.no_such_tensor": inert, "t.default": t})
    study, _ = optimise(prepared)

    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert [trial.params["t.default"] for trial in pruned] == [0.5, 0.9], [(t.number, t.state.name) for t in study.trials]
    for trial in pruned:
        assert "accuracy" not in trial.user_attrs
        assert any(key.startswith("accuracy@0.") for key in trial.user_attrs)
        assert all(float(key.split("@")[1]) < 1 for key in trial.user_attrs if key.startswith("accuracy@"))
        assert not {"gain", "synergy", "correct", "per_category"} & (set(trial.user_attrs) | set(trial.system_attrs))
    assert finished_count(study) == 6


def test_grid_sampler_visits_each_point_once_and_stops_when_the_grid_is_done(search_parents, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, "method: slerp\nparameters:\n  t: {low: 0, high: 1, step: 0.5}\n")
    study, runner = run(settings_for(search_parents, tmp_path, space=space, sampler="grid", trials=5, fidelities=[1.0]))
    assert sorted(t.params["t"] for t in study.trials) == [0.0, 0.5, 1.0]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert runner.merger.apply_count == 3


# ----- failures ---------------------------------------------------------------------------------


def test_a_failing_recipe_fails_its_trial_and_the_study_goes_on(search_parents, tmp_path, monkeypatch):
    """mergekit's della raises ValueError when density ± epsilon leaves (0, 1): densities 0.05 and
    0.95 fail, 0.5, 0.3 and 0.7 merge. Failed trials do not count towards --trials."""
    monkeypatch.chdir(tmp_path)
    settings = settings_for(search_parents, tmp_path, space=write_space(tmp_path, DELLA), sampler="random", trials=3, fidelities=[1.0])
    prepared = prepare(settings)
    from evomerge.search.study import create_or_load_study

    seeded = create_or_load_study(settings, prepared.storage)
    for density in (0.5, 0.05, 0.95, 0.3, 0.1, 0.7):
        # m1 is named too in case every parent gets a density; only the searched names are used.
        seeded.enqueue_trial({"density.m0": density, "density.m1": density})
    try:
        study, _ = optimise(prepared)
    except TooManyFailures as error:
        reasons = {t.user_attrs.get("fail_reason") for t in seeded.get_trials(states=(TrialState.FAIL,))}
        pytest.fail(f"SEARCH BUG: every della trial failed, also density 0.5 ({error}); reasons: {reasons}")
    failed = study.get_trials(states=(TrialState.FAIL,))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert [t.params["density.m0"] for t in complete] == [0.5, 0.3, 0.7]
    assert sorted(t.params["density.m0"] for t in failed) == [0.05, 0.1, 0.95]
    for trial in failed:
        reason = trial.user_attrs["fail_reason"]
        assert "epsilon" in reason.lower(), f"the reason should name mergekit's della error: {reason}"
        assert "accuracy" not in trial.user_attrs
    assert finished_count(study) == 3
    assert "stopped_because" not in study.user_attrs


def test_five_failures_in_a_row_stop_the_study_with_a_reason(search_parents, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, DELLA.replace("{low: 0.05, high: 0.95, step: 0.05}", "0.05"))
    settings = settings_for(search_parents, tmp_path, space=space, sampler="random", trials=4, fidelities=[1.0])
    with pytest.raises(TooManyFailures) as caught:
        run(settings)
    message = str(caught.value)
    assert "5 trials failed in a row" in message
    study = optuna.load_study(study_name="s", storage=settings.storage)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 5 and len(study.trials) == 5, [t.state for t in study.trials]
    reason = failed[-1].user_attrs["fail_reason"]
    assert reason and reason in message
    assert study.user_attrs["stopped_because"] in message
    assert stored_parent_scores(study) is not None  # parents were scored before the failures


# ----- objectives ----------------------------------------------------------------------------


def test_gain_objective_values_are_accuracy_minus_the_best_parent(search_parents, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = settings_for(
        search_parents, tmp_path, space="slerp_global", sampler="random", objective="gain", protocol="paper", fidelities=[0.5, 1.0], trials=4
    )
    study, _ = run(settings)
    assert study.metric_names == ["gain"]
    best_parent = {f: max(parent_accuracies(study, 0, f)) for f in ("0.5", "1.0")}
    assert best_parent["1.0"] > 0, "the child scores above zero: gain differs from accuracy"
    trials = evaluated(study)
    assert trials
    for trial in trials:
        assert trial.value == pytest.approx(trial.user_attrs["accuracy"] - best_parent["1.0"])
        assert trial.value == pytest.approx(trial.user_attrs["gain"])
        # What the pruner sees at a partial fraction is a gain too, against the parents at that fraction.
        # (at step 8: half of the 16 items)
        assert trial.intermediate_values[8] == pytest.approx(trial.user_attrs["accuracy@0.5"] - best_parent["0.5"])


def test_two_benchmarks_make_a_multi_objective_study(search_parents, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    benchmarks = [str(search_parents["benchmark"]), str(search_parents["general"])]
    settings = settings_for(search_parents, tmp_path, space="slerp_global", benchmarks=benchmarks, trials=3)
    study, runner = run(settings)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE] * 2
    assert study.metric_names == ["domain accuracy", "general accuracy"]
    assert study.best_trials
    scores = stored_parent_scores(study)
    assert all(len(per_benchmark) == 2 for per_benchmark in scores.values())
    general_parents = parent_accuracies(study, benchmark=1)
    trials = evaluated(study)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    for trial in trials:
        attrs = trial.user_attrs
        assert len(trial.values) == 2
        assert trial.values[0] == attrs["accuracy"]
        assert trial.values[1] == attrs["accuracy_b1"]
        assert len(trial_attr(trial, "correct")) == 16 and len(trial_attr(trial, "correct_b1")) == 12
        assert trial_attr(trial, "correct_b1").count("1") / 12 == pytest.approx(attrs["accuracy_b1"])
        assert not {"correct", "correct_b1", "recipe", "per_category", "per_category_b1"} & set(attrs), "long values stay out of the dashboard's table"
        assert attrs["gain_b1"] == pytest.approx(attrs["accuracy_b1"] - max(general_parents))
        assert attrs["synergy_b1"] == pytest.approx(attrs["accuracy_b1"] - sum(general_parents) / 2)
        assert trial_attr(trial, "per_category_b1") is not None
        assert trial.intermediate_values == {}, "a multi-objective trial is not pruned (no reports)"
    assert score_holdout(study, runner) is None

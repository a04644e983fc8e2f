"""A search over parents whose vocabularies differ (`--tokenizer union`): every recipe asks for the
union vocabulary, the scorer reads with the merged tokenizer, the parents are scored in it, and the
exported recipe carries the setting; without it the parents are refused before a study exists."""

from __future__ import annotations

import optuna
import pytest
from added_tokens import CHAT_TOKENS, add_chat_tokens
from search_helpers import settings_for

from evomerge.errors import EvomergeError, ParentError
from evomerge.merge.merger import Merger
from evomerge.recipe import Recipe
from evomerge.search.export import export_recipe
from evomerge.search.run import optimise, prepare
from evomerge.search.study import stored_parent_scores, trial_attr

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def chat_parents(search_parents, tmp_path_factory):
    root = tmp_path_factory.mktemp("chat-child")
    add_chat_tokens(search_parents["child"], root / "chat-child", seed=3)
    return {**search_parents, "child": root / "chat-child"}


def test_a_union_search_scores_with_the_merged_tokenizer(chat_parents, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = settings_for(chat_parents, tmp_path, tokenizer="union", trials=3)
    study, runner = optimise(prepare(settings))
    tokenizer = runner.objectives[0].scorer.tokenizer
    vocab = tokenizer.get_vocab()
    assert len(vocab) == 130 and all(token in vocab for token in CHAT_TOKENS)
    assert runner.merger.model.get_input_embeddings().weight.shape[0] == 130
    assert len(stored_parent_scores(study)) == 2
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 3
    recipes = [Recipe.from_yaml(trial_attr(trial, "recipe")) for trial in complete]
    assert all(recipe.tokenizer_source == "union" for recipe in recipes)
    # The recorded recipe rebuilds the trial's model: merge it afresh and compare the scores.
    fresh = Merger.load([str(chat_parents["instruct"]), str(chat_parents["child"])], device="cpu")
    fresh.apply(recipes[-1])
    runner.merger.apply(recipes[-1])
    for name, tensor in fresh.merged_state_dict().items():
        assert tensor.equal(runner.merger.merged_state_dict()[name]), name
    export_recipe(study, tmp_path / "best.yaml")
    assert Recipe.load(tmp_path / "best.yaml").tokenizer_source == "union"


def test_parents_with_different_vocabularies_without_a_tokenizer_are_refused(chat_parents, tmp_path):
    with pytest.raises((ParentError, EvomergeError), match="different vocabularies.*--tokenizer union"):
        prepare(settings_for(chat_parents, tmp_path))
    assert not (tmp_path / "s.db").exists()

"""--warm-start: a finished study's best recipes queued first, layer groups mapped by relative depth."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState
from search_helpers import settings_for, write_space

from evomerge.errors import EvomergeError
from evomerge.search.run import check_search, run_search
from evomerge.search.warm_start import WARM_START_RECIPES
from evomerge.space import load_space
from evomerge.toy.tiny import CHAT_TEMPLATE, make_checkpoint, tiny_config

PER_LAYER = """method: slerp
parameters:
  t:
    filters:
      self_attn: {group_size: 1, low: 0, high: 1, step: 0.05}
    default: {low: 0, high: 1, step: 0.05}
"""


def test_layer_groups_are_read_at_the_same_relative_depth():
    space = load_space("slerp_layerwise")  # group_size 4
    source = {"t.self_attn.g0": 0.1, "t.self_attn.g1": 0.9, "t.mlp.g0": 0.2, "t.mlp.g1": 0.8, "t.default": 0.5}  # 8 layers: 2 groups
    mapped = space.map_params(source, num_layers=16)  # 4 groups each
    assert [mapped[f"t.self_attn.g{k}"] for k in range(4)] == [0.1, 0.1, 0.9, 0.9]
    assert [mapped[f"t.mlp.g{k}"] for k in range(4)] == [0.2, 0.2, 0.8, 0.8]
    assert mapped["t.default"] == 0.5
    shallower = space.map_params({**source, "t.self_attn.g2": 0.3, "t.self_attn.g3": 0.7}, num_layers=8)
    # Source groups 0.1, 0.9, 0.3, 0.7 (4 groups): depths ¼ and ¾ fall in groups 1 and 3.
    assert [shallower[f"t.self_attn.g{k}"] for k in range(2)] == [0.9, 0.7]


def test_gradients_are_kept_unknown_values_dropped_and_ranges_clipped():
    space = load_space("slerp_gradient")
    params = {f"t.self_attn.{i}": 0.25 for i in range(5)} | {f"t.mlp.{i}": 0.75 for i in range(5)} | {"t.default": 1.7, "weight.m0": 0.3}
    mapped = space.map_params(params, num_layers=32)
    assert {k: v for k, v in mapped.items() if k != "t.default"} == {k: v for k, v in params.items() if k.startswith(("t.self_attn", "t.mlp"))}
    assert mapped["t.default"] == 1.0 and "weight.m0" not in mapped


def deeper_parents(root, num_layers: int = 4) -> dict:
    config = tiny_config("llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=num_layers, tie_word_embeddings=False)
    state = make_checkpoint(root / "instruct", config, seed=0, chat_template=CHAT_TEMPLATE)
    make_checkpoint(root / "child", config, seed=1, from_state=state, noise=0.5)
    return {"instruct": root / "instruct", "child": root / "child"}


@pytest.mark.slow  # two searches
def test_a_deeper_search_starts_from_the_best_recipes_of_a_shallower_study(search_parents, tmp_path):
    space = write_space(tmp_path, PER_LAYER)
    source_settings = settings_for(search_parents, tmp_path, space=space, sampler="random", trials=5, study="small", storage=f"sqlite:///{tmp_path}/small.db")
    source = run_search(source_settings).study
    best = sorted(source.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: (-t.value, t.number))

    deep = deeper_parents(tmp_path / "deep")
    settings = settings_for(
        {**deep, "benchmark": search_parents["benchmark"]},
        tmp_path,
        space=space,
        trials=WARM_START_RECIPES + 1,
        study="large",
        storage=f"sqlite:///{tmp_path}/large.db",
        warm_start=f"small@sqlite:///{tmp_path}/small.db",
    )
    study = run_search(settings).study
    warm = [t for t in study.trials if "warm_start" in t.user_attrs]
    assert [t.number for t in warm] == list(range(len(warm)))  # queued first
    distinct = {tuple(sorted(t.params.items())) for t in best}
    assert len(warm) == min(WARM_START_RECIPES, len(distinct))
    for trial, origin in zip(warm, best):
        assert trial.user_attrs["warm_start"] == f"small#{origin.number}"
        # 2 source layers onto 4: layers 0, 1 read source layer 0; layers 2, 3 source layer 1.
        expected = [origin.params["t.self_attn.g0"]] * 2 + [origin.params["t.self_attn.g1"]] * 2
        assert [trial.params[f"t.self_attn.g{k}"] for k in range(4)] == pytest.approx(expected)
        assert trial.params["t.default"] == pytest.approx(origin.params["t.default"])
        assert trial.state == TrialState.COMPLETE


@pytest.mark.slow  # a search
def test_a_study_found_by_name_in_the_same_storage(search_parents, tmp_path):
    storage = f"sqlite:///{tmp_path}/shared.db"
    run_search(settings_for(search_parents, tmp_path, trials=2, study="first", storage=storage))
    prepared = check_search(settings_for(search_parents, tmp_path, study="second", storage=storage, warm_start="first"))
    assert prepared.warm_start.storage == storage and prepared.warm_start.params


@pytest.mark.parametrize(
    "reference, message",
    [("nowhere", "--warm-start: no study storage"), ("s", "names this study itself"), ("@sqlite:///x.db", "takes STUDY or STUDY@STORAGE")],
)
def test_a_bad_warm_start_is_one_clear_error_before_any_work(search_parents, tmp_path, monkeypatch, reference, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EvomergeError, match=message):
        check_search(settings_for(search_parents, tmp_path, warm_start=reference))

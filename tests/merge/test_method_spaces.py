"""Every shipped space of a further mergekit method (della, della_linear, breadcrumbs,
breadcrumbs_ties, dare_linear, model_stock, nuslerp, sce, karcher): recipes drawn from it by a real
Optuna sampler, merged in memory, equal what `mergekit-yaml --random-seed 7` writes for the same
YAML (bitwise, or within 1e-6 in float32), on tiny random Llama parents.

DELLA draws random masks: the engine hands mergekit's in-memory merge the tensors in name order,
the order mergekit-yaml executes them in, so the masks are the same.
"""

from __future__ import annotations

import optuna
import pytest
from oracle import MERGE_SEED, MergekitBatch, assert_tensors_match

from evomerge.merge.merger import Merger
from evomerge.recipe import Recipe
from evomerge.space import load_space

METHOD_SPACES = ("della", "della_linear", "breadcrumbs", "breadcrumbs_ties", "dare_linear", "model_stock", "nuslerp", "sce", "karcher")
RECIPES_PER_SPACE = 2


def parents_of(space, paths: dict) -> tuple[list[str], str]:
    """The parents a search with this space would merge, and its base (what `--base` gives)."""
    base, c1, c2 = (str(paths[name]) for name in ("base", "c1", "c2"))
    if space.method == "nuslerp":  # exactly two non-base parents
        return [c1, c2], c1
    return [base, c1, c2], base


@pytest.fixture(scope="module")
def drawn(family, tmp_path_factory):
    """{(space, index): (recipe, mergekit-yaml's output folder)} and the batch that writes them."""
    paths = family("llama", "float32")
    root = tmp_path_factory.mktemp("method-spaces")
    cases, jobs = {}, []
    for name in METHOD_SPACES:
        space = load_space(name)
        parents, base = parents_of(space, paths)
        space.check_parents(parents, base)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=len(name)))
        for index in range(RECIPES_PER_SPACE):
            trial = study.ask()
            recipe = space.suggest(trial, parents, base, num_layers=4, dtype="float32")
            study.tell(trial, 0.0)
            config = root / f"{name}-{index}.yaml"
            config.write_text(recipe.to_yaml())
            cases[(name, index)] = (recipe, root / f"{name}-{index}")
            jobs.append((config, root / f"{name}-{index}"))
    return cases, MergekitBatch(jobs)


@pytest.fixture(scope="module")
def merger(family):
    paths = family("llama", "float32")
    return Merger.load([str(paths[n]) for n in ("base", "c1", "c2")], device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("name", METHOD_SPACES)
def test_a_method_spaces_recipes_equal_mergekit_yaml(drawn, merger, name):
    cases, batch = drawn
    recipes = [cases[(name, index)][0] for index in range(RECIPES_PER_SPACE)]
    assert recipes[0].to_yaml() != recipes[1].to_yaml() or name == "model_stock", "the sampler drew one recipe twice"
    for index in range(RECIPES_PER_SPACE):
        recipe, out = cases[(name, index)]
        assert recipe.merge_method == name
        merger.apply(Recipe.from_yaml(recipe.to_yaml()), seed=MERGE_SEED)
        assert_tensors_match(merger.merged_state_dict(), batch.result(out), f"{name} #{index}\n--- recipe ---\n{recipe.to_yaml()}")


@pytest.mark.slow
def test_della_masks_follow_the_seed(drawn, merger):
    """A random method merged with another seed differs from mergekit-yaml's: the masks are drawn,
    and drawn as mergekit draws them (the test above would fail with any other order)."""
    cases, batch = drawn
    recipe, out = cases[("della", 0)]
    merger.apply(recipe, seed=MERGE_SEED + 1)
    expected = batch.result(out)
    assert any(not (tensor == expected[name]).all() for name, tensor in merger.merged_state_dict().items())

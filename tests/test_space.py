"""Search spaces: every shipped YAML parses, turns a trial into a recipe mergekit accepts, and a
malformed space is refused with a message that says what is wrong and where.

No Optuna study is needed here: a space asks for values through `suggest_float`, so a dict-backed
trial (and Optuna's own FixedTrial / ask-tell trials) drive it.
"""

from __future__ import annotations

import re

import optuna
import pytest

from evomerge.recipe import PAPER_T, Recipe, paper_recipe
from evomerge.space import SearchSpace, SpaceError, load_space, parse_space, shipped_spaces

SHIPPED = {
    "slerp_global",
    "slerp_gradient",
    "slerp_layerwise",
    "linear",
    "task_arithmetic",
    "ties",
    "dare_ties",
    # every further mergekit method that takes parameters
    "dare_linear",
    "della",
    "della_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
    "model_stock",
    "nuslerp",
    "sce",
    "karcher",
    # depth-wise: which parent supplies each block of layers, how deep the result is
    "depthwise",
    "depthwise_slerp",
    # more than two parents: which child to merge with the base
    "slerp_choose_child",
}
DEPTHWISE = {"depthwise", "depthwise_slerp"}
A, B, C, D = "./instruct", "./child", "./third", "./fourth"
# Dimension for 32 layers and two parents, as `evomerge spaces` reports it.
DIMENSIONS_32 = {
    "slerp_global": 1,
    "slerp_gradient": 11,  # 5 self_attn anchors + 5 mlp anchors + 1 default
    "slerp_layerwise": 17,  # 32/4 groups for self_attn and for mlp + 1 default
    "linear": 2,  # one weight per parent (no base)
    "task_arithmetic": 1,  # one weight for the one non-base parent
    "ties": 2,  # weight and density for the non-base parent
    "dare_ties": 2,
    "dare_linear": 2,
    "della": 3,  # weight, density, epsilon for the non-base parent
    "della_linear": 3,
    "breadcrumbs": 3,  # weight, density, gamma
    "breadcrumbs_ties": 3,
    "model_stock": 1,  # filter_wise
    "nuslerp": 4,  # a weight per parent (no base), flatten, row_wise
    "sce": 1,  # select_topk
    "karcher": 2,  # max_iter, tol
    "depthwise": 13,  # depth, and a parent for each of 12 blocks at depth 1.5
    "depthwise_slerp": 11,  # depth, and a t for each of 10 blocks at depth 1.25
    "slerp_choose_child": 12,  # slerp_gradient's 11, and which child (one to choose from, for two parents)
}


class DictTrial:
    """A trial that answers from a dict (or a function of the name) and records every request."""

    def __init__(self, values=None, default=None):
        self.values = values or {}
        self.default = default
        self.asked: dict[str, tuple] = {}

    def suggest_float(self, name, low, high, *, step=None, log=False):
        self.asked[name] = (low, high, step, log)
        if name in self.values:
            return self.values[name]
        if callable(self.default):
            return self.default(name, low, high, step)
        return low if self.default is None else self.default

    def suggest_categorical(self, name, choices):
        self.asked[name] = tuple(choices)
        return self.values.get(name, choices[0])


def parents_for(space: SearchSpace):
    """Parents and base that fit a space: two for SLERP, three for the others (more per-model values)."""
    if space.choose_child:
        return [A, B, C, D], A
    if space.method == "slerp":
        return [A, B], A
    if space.name == "depthwise":
        return [A, B, C], A
    if space.method == "nuslerp":  # exactly two non-base parents
        return [B, C], None
    if space.contract[0]:  # the methods that need a base
        return [A, B, C], A
    return [A, B, C], None


def write(tmp_path, text, name="space.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ----- shipped spaces --------------------------------------------------------------------------


def test_every_shipped_space_ships_and_parses():
    assert set(shipped_spaces()) == SHIPPED
    for name in SHIPPED:
        space = load_space(name)
        assert space.name == name
        assert space.description, f"{name} has no description for `evomerge spaces`"
        assert space.parameters or name in DEPTHWISE


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_space_suggests_recipes_mergekit_accepts(name):
    space = load_space(name)
    parents, base = parents_for(space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = set()
    for _ in range(8):  # a one-switch space (model_stock) has two recipes
        trial = study.ask()
        recipe = space.suggest(trial, parents, base, num_layers=6, dtype="float32")
        assert isinstance(recipe, Recipe)
        assert recipe.merge_method == space.method
        config = recipe.to_mergekit()  # mergekit's own parser; raises RecipeError if rejected
        assert config.merge_method == space.method
        if recipe.slices:  # a depth-wise space: slices of the parents' layers
            assert set(recipe.model_names) <= set(parents)
        elif space.choose_child:  # the base and the one child the trial chose
            assert [m.model.model.path for m in config.models] == [base, space.model_labels(parents, base)[trial.params["child"]]]
        else:
            assert [m.model.model.path for m in config.models] == parents
        # The YAML round-trips to the same recipe.
        assert Recipe.from_yaml(recipe.to_yaml()).to_dict() == recipe.to_dict()
        seen.add(recipe.to_yaml())
        study.tell(trial, 0.0)
    assert len(seen) > 1, f"{name}: eight random trials gave one recipe"


def test_dimensions_match_what_evomerge_spaces_reports():
    for name, expected in DIMENSIONS_32.items():
        assert load_space(name).dimension(32, 2) == expected, name
    assert load_space("slerp_global").dimension(32, 2) == 1
    assert load_space("slerp_gradient").dimension(32, 2) == 11
    # Per-model parameters scale with the parents a method weighs.
    assert load_space("linear").dimension(32, 3) == 3
    assert load_space("ties").dimension(32, 3) == 4
    assert load_space("slerp_layerwise").dimension(10, 2) == 3 + 3 + 1  # ceil(10/4) groups


def test_dimension_equals_number_of_values_asked_for():
    """The reported dimension is the number of suggest_float calls one recipe makes."""
    for name in SHIPPED - DEPTHWISE:
        space = load_space(name)
        for layers in (4, 9):
            trial = DictTrial(default=lambda n, low, high, step: low)
            base = None if space.method == "linear" else A
            space.suggest(trial, [A, B], base, layers)
            assert len(trial.asked) == space.dimension(layers, 2), (name, layers, sorted(trial.asked))


def test_ties_searches_weight_and_density_for_non_base_parents_only():
    space = load_space("ties")
    trial = DictTrial(default=lambda name, low, high, step: {"weight.m0": 0.5, "weight.m1": 0.7, "density.m0": 0.3, "density.m1": 0.9}[name])
    recipe = space.suggest(trial, [A, B, C], A, num_layers=4)
    assert recipe.base_model == A
    entries = {entry.model: entry.parameters for entry in recipe.models}
    assert entries[A] is None, "the base model gets no weight or density in TIES"
    assert entries[B] == {"weight": 0.5, "density": 0.3}
    assert entries[C] == {"weight": 0.7, "density": 0.9}
    assert set(trial.asked) == {"weight.m0", "weight.m1", "density.m0", "density.m1"}
    low, high, step, _ = trial.asked["density.m0"]
    assert (low, high, step) == (0.1, 1.0, 0.05)


def test_linear_searches_a_weight_for_every_parent():
    space = load_space("linear")
    trial = DictTrial(default=lambda name, low, high, step: {"weight.m0": 0.2, "weight.m1": 0.4, "weight.m2": 0.6}[name])
    recipe = space.suggest(trial, [A, B, C], None, num_layers=4)
    assert recipe.base_model is None
    assert [entry.parameters for entry in recipe.models] == [{"weight": 0.2}, {"weight": 0.4}, {"weight": 0.6}]


def test_layerwise_group_size_gives_one_anchor_per_layer_with_its_groups_value():
    space = load_space("slerp_layerwise")
    layers = 10  # groups of 4: layers 0-3, 4-7, 8-9
    values = {f"t.self_attn.g{g}": 0.1 * (g + 1) for g in range(3)}
    values |= {f"t.mlp.g{g}": 0.5 + 0.1 * g for g in range(3)}
    values["t.default"] = 0.45
    trial = DictTrial(values)
    recipe = space.suggest(trial, [A, B], A, num_layers=layers)
    t = {entry.get("filter"): entry["value"] for entry in recipe.parameters["t"]}
    assert len(t["self_attn"]) == layers and len(t["mlp"]) == layers
    for layer in range(layers):
        group = layer // 4
        assert t["self_attn"][layer] == pytest.approx(0.1 * (group + 1)), layer
        assert t["mlp"][layer] == pytest.approx(0.5 + 0.1 * group), layer
    assert t[None] == 0.45
    assert set(trial.asked) == set(values), "exactly one value per group and filter is searched"
    # mergekit reads anchor i at layer i exactly, so layer i merges with its group's t.
    for layer in range(layers):
        position = layer / (layers - 1)
        assert recipe.parameter("t", f"model.layers.{layer}.self_attn.q_proj.weight", position) == pytest.approx(0.1 * (layer // 4 + 1))


def test_slerp_gradient_baseline_reproduces_the_papers_recipe_exactly():
    space = load_space("slerp_gradient")
    params = space.baseline_params(num_layers=32)
    assert params is not None
    assert len(params) == 11
    recipe = space.suggest(optuna.trial.FixedTrial(params), [A, B], A, num_layers=32, dtype="bfloat16")
    paper = paper_recipe(A, B, dtype="bfloat16")
    assert recipe.to_dict() == paper.to_dict()
    assert recipe.parameters["t"] == PAPER_T
    # And the values of every tensor at every depth agree.
    for layer in range(32):
        position = layer / 31
        for module in ("self_attn.q_proj", "mlp.up_proj", "input_layernorm"):
            tensor = f"model.layers.{layer}.{module}.weight"
            assert recipe.parameter("t", tensor, position) == pytest.approx(paper.parameter("t", tensor, position))


def test_baseline_is_none_for_spaces_that_cannot_express_the_papers_recipe(tmp_path):
    for name in SHIPPED - {"slerp_gradient", "slerp_choose_child"}:
        assert load_space(name).baseline_params(32) is None, name
    # A gradient space whose range excludes a paper value cannot express it either.
    narrow = write(
        tmp_path,
        "method: slerp\nparameters:\n  t:\n    filters:\n"
        "      self_attn: {anchors: 5, low: 0, high: 0.9, step: 0.05}\n"
        "      mlp: {anchors: 5, low: 0, high: 1, step: 0.05}\n"
        "    default: {low: 0, high: 1, step: 0.05}\n",
    )
    assert load_space(narrow).baseline_params(32) is None


def test_grid_enumerates_every_step():
    grid = load_space("slerp_global").grid(4, [A, B], A)
    assert list(grid) == ["t"]
    assert len(grid["t"]) == 101
    assert grid["t"][0] == 0.0 and grid["t"][-1] == 1.0
    assert grid["t"][30] == 0.3  # rounded, not 0.30000000000000004
    grid = load_space("slerp_gradient").grid(4, [A, B], A)
    assert len(grid) == 9  # 4 anchors for self_attn and mlp on 4 layers (never more anchors than layers), 1 default
    assert all(len(values) == 21 for values in grid.values())
    grid = load_space("ties").grid(4, [A, B, C], A)
    assert set(grid) == {"weight.m0", "weight.m1", "density.m0", "density.m1"}
    assert grid["density.m0"][0] == 0.1 and grid["density.m0"][-1] == 1.0 and len(grid["density.m0"]) == 19


def test_choices_are_categorical_values_in_the_recipe_and_the_grid():
    space = load_space("model_stock")
    trial = DictTrial({"filter_wise": True})
    recipe = space.suggest(trial, [A, B, C], A, num_layers=4)
    assert recipe.parameters == {"filter_wise": True}
    assert trial.asked == {"filter_wise": (False, True)}
    assert space.grid(4, [A, B, C], A) == {"filter_wise": [False, True]}
    # Through a real Optuna trial too, with an int choice kept an int (karcher's max_iter).
    karcher = load_space("karcher")
    recipe = karcher.suggest(optuna.trial.FixedTrial({"max_iter": 5, "tol": 1e-5}), [A, B], None, num_layers=4)
    assert recipe.parameters == {"max_iter": 5, "tol": 1e-5} and isinstance(recipe.parameters["max_iter"], int)
    assert karcher.grid(4, [A, B], None) is None  # tol is a log range, without steps


@pytest.mark.parametrize(
    "spec, words",
    [
        ("{choices: []}", "non-empty"),
        ("{choices: [0.2, 0.2]}", "repeat"),
        ("{choices: [0.2, 0.5], low: 0}", "choices take no 'low'"),
        ("{choices: 0.5}", "non-empty list"),
    ],
)
def test_malformed_choices_are_refused(tmp_path, spec, words):
    path = write(tmp_path, f"method: ties\nparameters:\n  weight: {{per_model: true, default: 1}}\n  density: {spec}\n")
    with pytest.raises(SpaceError, match=re.escape(words)):
        load_space(path)


def test_a_choice_outside_the_parameters_range_is_refused(tmp_path):
    path = write(tmp_path, "method: ties\nparameters:\n  weight: {per_model: true, default: 1}\n  density: {choices: [0.5, 1.5]}\n")
    with pytest.raises(SpaceError, match=re.escape("density range reaches 1.5, outside (0, 1]")):
        load_space(path)


def test_grid_is_none_without_a_step(tmp_path):
    path = write(tmp_path, "method: slerp\nparameters:\n  t: {low: 0, high: 1}\n")
    assert load_space(path).grid(4, [A, B], A) is None


def test_suggested_values_are_rounded_to_the_step_in_the_recipe_yaml():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = load_space("slerp_gradient")
    long_float = re.compile(r"\d\.\d{11,}")
    raw_long = 0
    for _ in range(30):
        trial = study.ask()
        recipe = space.suggest(trial, [A, B], A, num_layers=8)
        text = recipe.to_yaml()
        assert not long_float.search(text), text
        raw_long += sum(len(repr(v)) > 6 for v in trial.params.values())
        for entry in recipe.parameters["t"]:
            values = entry["value"] if isinstance(entry["value"], list) else [entry["value"]]
            for value in values:
                assert abs(value / 0.05 - round(value / 0.05)) < 1e-9, value
                assert value == round(value, 2)
        study.tell(trial, 0.0)
    assert raw_long > 0, "Optuna's own values were never like 0.30000000000000004: the test checks nothing"


def test_a_users_own_space_file_works(tmp_path):
    path = write(
        tmp_path,
        """
name: my_ties
description: my own TIES space
method: ties
options: {normalize: true}
parameters:
  weight:
    per_model: true
    default: {value: 1.0}
  density:
    per_model: true
    filters:
      mlp: {low: 0.2, high: 0.8, step: 0.1}
    default: 0.5
""",
        name="mine.yaml",
    )
    space = load_space(str(path))
    assert space.name == "my_ties" and space.method == "ties"
    assert space.dimension(32, 3) == 2  # only the mlp density is searched, per non-base parent
    trial = DictTrial(default=lambda name, low, high, step: 0.3 if name.endswith("m0.mlp") else 0.6)
    recipe = space.suggest(trial, [A, B, C], A, num_layers=4)
    recipe.to_mergekit()
    assert recipe.parameters == {"normalize": True}
    by_model = {entry.model: entry.parameters for entry in recipe.models}
    assert by_model[B]["weight"] == 1.0
    assert by_model[B]["density"] == [{"filter": "mlp", "value": 0.3}, {"value": 0.5}]
    assert by_model[C]["density"] == [{"filter": "mlp", "value": 0.6}, {"value": 0.5}]
    # A space file without a name is named after the file.
    unnamed = write(tmp_path, "method: slerp\nparameters:\n  t: 0.5\n", name="fixed_half.yaml")
    assert load_space(unnamed).name == "fixed_half"
    assert load_space(unnamed).dimension(32, 2) == 0


def test_a_users_space_with_a_method_that_needs_a_base_keeps_the_base(tmp_path):
    """mergekit's della (like breadcrumbs, sce, della_linear) requires a base model; a user's della
    space with --base must produce a recipe that names it, or every trial fails."""
    path = write(
        tmp_path,
        "method: della\nparameters:\n"
        "  density: {per_model: true, default: {low: 0.2, high: 0.8, step: 0.05}}\n"
        "  weight: {per_model: true, default: 1}\n"
        "  epsilon: {per_model: true, default: 0.1}\n",
    )
    space = load_space(path)
    recipe = space.suggest(DictTrial(default=0.5), [A, B], A, num_layers=4)
    assert recipe.base_model == A, (
        "SEARCH BUG: SearchSpace.suggest drops --base for methods outside NEEDS_BASE (della, breadcrumbs, "
        f"sce, …), so mergekit refuses every della recipe ('requires a base input'):\n{recipe.to_yaml()}"
    )
    assert [entry.model for entry in recipe.models if entry.parameters] == [B]


# ----- malformed spaces ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, words",
    [
        ("method: slerp\nparameters:\n  t: 0.5\nsampler: tpe\n", ["unknown key", "'sampler'"]),
        ("method: slerp\nparameters:\n  t: {low: 0, high: 1, stride: 0.1}\n", ["parameters.t", "unknown key", "'stride'"]),
        ("method: slerp\nparameters:\n  t: {low: 0.6, high: 0.6}\n", ["parameters.t", "low", "below high"]),
        ("method: slerp\nparameters:\n  t: {low: 0.8, high: 0.2}\n", ["low (0.8) must be below high (0.2)"]),
        ("method: slerp\nparameters:\n  t: {low: -0.2, high: 1}\n", ["parameters.t", "t range", "-0.2", "[0, 1]"]),
        ("method: slerp\nparameters:\n  t: {low: 0, high: 1.5}\n", ["t range", "1.5", "[0, 1]"]),
        ("method: ties\nparameters:\n  density: 0\n", ["parameters.density", "density", "(0, 1]"]),
        ("method: ties\nparameters:\n  density: {per_model: true, default: {low: 0, high: 1}}\n", ["density", "(0, 1]"]),
        ("method: slerp\nparameters:\n  t:\n    filters:\n      mlp: {low: 0, high: 1}\n", ["parameters.t", "need a 'default'"]),
        ("- method: slerp\n- parameters: {}\n", ["a search space is a mapping"]),
        ("just a string\n", ["a search space is a mapping"]),
        ("parameters:\n  t: 0.5\n", ["'method'", "missing"]),
        ("method: slerp\nparameters: {}\n", ["'parameters' must map"]),
        ("method: slerp\nparameters:\n  t: {low: 0, high: 1, step: 2}\n", ["step 2.0 must be positive and at most high - low"]),
        ("method: slerp\nparameters:\n  t: {low: 0, high: 1, anchors: 3, group_size: 2}\n", ["'anchors' or 'group_size', not both"]),
        ("method: slerp\nparameters:\n  t: {low: 0, high: 1, anchors: 1}\n", ["anchors must be"]),
        ("method: slerp\nparameters:\n  t: {low: 0, high: 1, log: true}\n", ["log range needs low > 0"]),
        ("method: slerp\nparameters:\n  t: {low: zero, high: 1}\n", ["expected a number", "'zero'"]),
        ("method: slerp\nparameters:\n  t: {high: 1}\n", ["needs 'low' and 'high'"]),
        ("method: slerp\nparameters:\n  t: [0, 1]\n", ["expected a number or a mapping"]),
    ],
)
def test_malformed_space_gives_a_clear_space_error(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(SpaceError) as caught:
        load_space(path)
    message = str(caught.value)
    assert message.startswith(str(path)), f"the message should name the file: {message}"
    assert "\n" not in message, f"one line expected: {message!r}"
    for word in words:
        assert word in message, (word, message)


def test_malformed_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "method: slerp\nparameters:\n  t: {low: 0, high: 1\n  other: [\n")
    with pytest.raises(SpaceError) as caught:
        load_space(path)
    message = str(caught.value)
    assert "malformed YAML" in message
    match = re.search(r"line (\d+)", message)
    assert match, message
    assert 3 <= int(match.group(1)) <= 5, message


def test_yaml_is_read_with_a_safe_loader(tmp_path):
    path = write(tmp_path, "method: !!python/object/apply:os.system ['echo pwned']\nparameters:\n  t: 0.5\n")
    with pytest.raises(SpaceError, match="malformed YAML"):
        load_space(path)


def test_unknown_space_name_lists_the_shipped_ones():
    with pytest.raises(SpaceError) as caught:
        load_space("slerp_gradiant")
    message = str(caught.value)
    assert "unknown search space 'slerp_gradiant'" in message
    for name in SHIPPED:
        assert name in message


def test_parse_space_accepts_plain_data():
    space = parse_space({"method": "task_arithmetic", "parameters": {"weight": {"per_model": True, "default": {"low": 0, "high": 1}}}}, "inline")
    assert space.name == "space" and space.source == "inline"
    recipe = space.suggest(DictTrial(default=0.25), [A, B], A, num_layers=2)
    assert recipe.models[1].parameters == {"weight": 0.25}
    with pytest.raises(SpaceError, match="inline: a search space is a mapping"):
        parse_space(["method", "slerp"], "inline")
    with pytest.raises(SpaceError, match=r"inline: unknown key 'nmae'"):
        parse_space({"nmae": "x", "method": "slerp", "parameters": {"t": 0.5}}, "inline")


# ----- spaces against parents ------------------------------------------------------------------


def test_check_parents_refuses_what_the_method_cannot_merge():
    slerp = load_space("slerp_gradient")
    with pytest.raises(SpaceError, match="at most 2 parents, got 3"):
        slerp.check_parents([A, B, C], A)
    ties = load_space("ties")
    with pytest.raises(SpaceError, match="ties needs a base model"):
        ties.check_parents([A, B], None)
    with pytest.raises(SpaceError, match="not among the parents"):
        ties.check_parents([A, B], C)
    with pytest.raises(SpaceError, match="not among the parents"):
        load_space("linear").check_parents([A, B], C)
    with pytest.raises(SpaceError, match="at least two parents"):
        load_space("linear").check_parents([A], None)
    # What fits passes silently.
    slerp.check_parents([A, B], A)
    ties.check_parents([A, B, C], A)
    load_space("linear").check_parents([A, B, C], None)
    load_space("dare_ties").check_parents([A, B, C], B)


def test_check_parents_refuses_what_mergekits_input_contract_refuses():
    """Beyond the flags' own errors, mergekit's InputContract decides (min inputs, non-base counts)."""
    stock = parse_space({"method": "model_stock", "parameters": {"filter_wise": 0}}, "inline", "stock")
    with pytest.raises(SpaceError) as caught:
        stock.check_parents([A, B], A)
    assert str(caught.value) == "space stock: model_stock: Merge method requires at least 3 inputs; got 2"
    stock.check_parents([A, B, C], A)
    nuslerp = parse_space({"method": "nuslerp", "parameters": {"weight": {"per_model": True, "default": 1}}}, "inline", "nu")
    with pytest.raises(SpaceError) as caught:
        nuslerp.check_parents([A, B, C], None)
    assert str(caught.value) == "space nu: nuslerp: Merge method requires exactly 2 non-base inputs; got 3"
    with pytest.raises(SpaceError, match="Duplicate merge inputs"):
        load_space("linear").check_parents([A, B, A], None)


def test_unknown_method_is_a_space_error_listing_mergekits_methods():
    space = parse_space({"method": "slurp", "parameters": {"t": 0.5}}, "inline")
    with pytest.raises(SpaceError) as caught:
        space.check_parents([A, B], A)
    assert str(caught.value).startswith("unknown merge method 'slurp'; known: ")
    assert "slerp" in str(caught.value).split("known: ")[1].split(", ")


def test_mergekit_is_asked_for_the_methods_contract_once_per_space(monkeypatch):
    import evomerge.space as space_module

    calls = []
    original = space_module.method_contract
    monkeypatch.setattr(space_module, "method_contract", lambda method: calls.append(method) or original(method))
    monkeypatch.setattr(space_module, "KNOWN_CONTRACTS", {})  # as for a method the table does not list
    space = load_space("ties")
    for seed in range(3):
        space.suggest(DictTrial(default=0.5), [A, B, C], A, num_layers=4)
    space.check_parents([A, B, C], A)
    assert space.dimension(32, 3) == 4
    assert calls == ["ties"]


# ----- depth-wise spaces ---------------------------------------------------------------------------


def test_depthwise_blocks_keep_order_and_stack_or_drop_with_the_depth():
    space = load_space("depthwise")
    assert space.block_ranges(32) == [(i, i + 4) for i in range(0, 32, 4)]
    assert space.block_ranges(4) == [(0, 1), (1, 2), (2, 3), (3, 4)]  # fewer blocks than 8: one layer each
    assert space.block_ranges(10) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert space.source_blocks(8, 8) == list(range(8))
    assert space.source_blocks(8, 12) == [0, 1, 1, 2, 3, 3, 4, 4, 5, 6, 6, 7]  # repeated blocks: stacking
    assert space.source_blocks(8, 6) == [0, 1, 3, 4, 6, 7]  # dropped blocks, still in order
    trial = DictTrial({"depth": 1.5, **{f"block.{j}": j % 3 for j in range(6)}})
    recipe = space.suggest(trial, [A, B, C], A, num_layers=4, dtype="float32")
    assert recipe.merge_method == "passthrough" and recipe.base_model is None
    assert [(s.sources[0].model, tuple(s.sources[0].layer_range)) for s in recipe.slices] == [
        (A, (0, 1)),
        (B, (1, 2)),
        (C, (1, 2)),
        (A, (2, 3)),
        (B, (2, 3)),
        (C, (3, 4)),
    ]
    assert trial.asked["depth"] == (1, 0.75, 1.25, 1.5) and trial.asked["block.0"] == (0, 1, 2)
    asked = DictTrial({"depth": 1.5})
    space.suggest(asked, [A, B], A, num_layers=32)
    assert len(asked.asked) == space.dimension(32, 2) == 13


def test_depthwise_slerp_searches_a_t_per_block_between_base_and_other():
    space = load_space("depthwise_slerp")
    trial = DictTrial({"depth": 1, "t.0": 0.0, "t.1": 1.0}, default=0.5)
    recipe = space.suggest(trial, [A, B], B, num_layers=4)
    assert recipe.merge_method == "slerp" and recipe.base_model == B
    assert [[src.model for src in s.sources] for s in recipe.slices] == [[B, A]] * 4
    assert [s.parameters["t"] for s in recipe.slices] == [0.0, 1.0, 0.5, 0.5]
    recipe.to_mergekit()
    with pytest.raises(SpaceError, match="exactly two parents"):
        space.check_parents([A, B, C], A)


@pytest.mark.parametrize(
    "text, words",
    [
        ("method: ties\ndepthwise: {blocks: 4}\n", "passthrough or slerp"),
        ("method: slerp\ndepthwise: {blocks: 4}\n", "needs 't'"),
        ("method: passthrough\ndepthwise: {blocks: 4, t: 0.5}\n", "'t' is for method slerp"),
        ("method: passthrough\ndepthwise: {blocks: 0}\n", "blocks must be at least 1"),
        ("method: passthrough\ndepthwise: {depth: {low: 1, high: 2}}\n", "depth is a number or"),
        ("method: passthrough\ndepthwise: {depth: {choices: [1, -1]}}\n", "positive"),
        ("method: slerp\ndepthwise: {t: {low: 0, high: 2}}\n", "outside [0, 1]"),
    ],
)
def test_malformed_depthwise_space_is_refused(tmp_path, text, words):
    with pytest.raises(SpaceError, match=re.escape(words)):
        load_space(write(tmp_path, text))


@pytest.mark.parametrize("layers", [1, 2, 3, 4, 5, 32])
def test_gradient_anchors_never_outnumber_the_layers(layers):
    """On a 2-layer model a 5-anchor gradient would add 3 values no layer reads: the space asks
    for one anchor per layer at most (and one value for a single layer)."""
    space = load_space("slerp_gradient")
    assert space.dimension(layers, 2) == 2 * min(5, layers) + 1
    trial = optuna.trial.FixedTrial({name: 0.5 for name in space.grid(layers, [A, B], A)})
    recipe = space.suggest(trial, [A, B], A, num_layers=layers)
    for entry in recipe.parameters["t"][:2]:
        assert (len(entry["value"]) if isinstance(entry["value"], list) else 1) == min(5, layers)


@pytest.mark.parametrize("layers", [1, 2, 3, 4, 7])
def test_the_papers_recipe_on_few_layers_is_the_same_tensors_with_fewer_anchors(layers):
    """With fewer layers than anchors the baseline is the paper's gradient read at each layer."""
    space = load_space("slerp_gradient")
    params = space.baseline_params(num_layers=layers)
    assert params is not None and len(params) == 2 * min(5, layers) + 1
    recipe = space.suggest(optuna.trial.FixedTrial(params), [A, B], A, num_layers=layers, dtype="bfloat16")
    paper = paper_recipe(A, B, dtype="bfloat16")
    for layer in range(layers):
        position = layer / (layers - 1) if layers > 1 else 1.0
        for module in ("self_attn.q_proj", "mlp.up_proj", "input_layernorm"):
            tensor = f"model.layers.{layer}.{module}.weight"
            assert recipe.parameter("t", tensor, position) == pytest.approx(paper.parameter("t", tensor, position), abs=1e-9)


def test_a_weight_that_normalisation_undoes_is_warned_about():
    """TIES normalises the weights by their sum: with a base and one other parent the one weight
    divides out, so searching it cannot change the merge."""
    ties = load_space("ties")
    notes = ties.inert_parameters([A, B], A)
    assert len(notes) == 1 and "'weight' cannot change the merge" in notes[0] and "normalize: false" in notes[0]
    assert ties.inert_parameters([A, B, "./c"], A) == []  # two weighed parents: their ratio matters
    unnormalised = parse_space(
        {"method": "ties", "parameters": {"weight": {"per_model": True, "default": {"low": 0.1, "high": 1}}}, "options": {"normalize": False}}, "t"
    )
    assert unnormalised.inert_parameters([A, B], A) == []
    for name in ("slerp_gradient", "slerp_global", "task_arithmetic"):
        assert load_space(name).inert_parameters([A, B], A) == [], name


def test_the_known_method_contracts_are_mergekits():
    """`evomerge spaces` reads the shipped methods' contracts from a table (no mergekit import):
    the table must say what mergekit says."""
    from evomerge.space import KNOWN_CONTRACTS, KNOWN_NORMALIZE, method_contract, method_normalizes

    for method, (needs_base, max_inputs, non_base) in KNOWN_CONTRACTS.items():
        assert method_contract(method) == (needs_base, max_inputs, set(non_base)), method
        assert method_normalizes(method) == KNOWN_NORMALIZE[method], method
    assert {load_space(name).method for name in SHIPPED} <= set(KNOWN_CONTRACTS)


# ----- more than two parents --------------------------------------------------------------------


def test_choose_child_merges_the_base_with_the_child_a_categorical_value_chose():
    space = load_space("slerp_choose_child")
    assert space.model_labels([A, B, C, D], A) == {"m0": B, "m1": C, "m2": D}
    assert space.model_labels([B, A, C, D], A) == {"m0": B, "m1": C, "m2": D}, "labels follow --parents order, base left out"
    for label, child in (("m0", B), ("m1", C), ("m2", D)):
        trial = DictTrial({"child": label}, default=0.5)
        recipe = space.suggest(trial, [A, B, C, D], A, num_layers=4)
        assert trial.asked["child"] == ("m0", "m1", "m2")
        assert recipe.merge_method == "slerp" and recipe.base_model == A
        assert recipe.model_names == [A, child], "the recipe names the base and the chosen child only"
        recipe.to_mergekit()
    # The grid enumerates the children beside the t steps.
    assert space.grid(4, [A, B, C, D], A)["child"] == ["m0", "m1", "m2"]


def test_choose_child_needs_a_base_and_two_children():
    space = load_space("slerp_choose_child")
    for parents in ([A, B], [A]):
        with pytest.raises(SpaceError, match=r"needs a base and at least two children \(three parents\), got"):
            space.check_parents(parents, A)
    with pytest.raises(SpaceError, match="needs a base model"):
        space.check_parents([A, B, C], None)
    space.check_parents([A, B, C, D], A)  # SLERP's two inputs per recipe, however many parents
    space.check_parents([A, B, C], C)
    # A space that merges two parents refuses four; one that needs three refuses two.
    with pytest.raises(SpaceError, match="at most 2 parents, got 4"):
        load_space("slerp_gradient").check_parents([A, B, C, D], A)
    with pytest.raises(SpaceError, match="at least 3 inputs; got 2"):
        load_space("model_stock").check_parents([A, B], A)


def test_choose_child_refuses_per_model_values(tmp_path):
    path = write(tmp_path, "method: ties\nchoose_child: true\nparameters:\n  weight: {per_model: true, default: {low: 0, high: 1}}\n")
    with pytest.raises(SpaceError, match="choose_child merges the base with one child: give its values without per_model"):
        load_space(path)


def test_baseline_is_the_papers_recipe_with_each_child():
    space = load_space("slerp_choose_child")
    baselines = space.baseline_trials(32, [A, B, C, D], A)
    assert [child for _, child in baselines] == [B, C, D]
    for params, child in baselines:
        recipe = space.suggest(optuna.trial.FixedTrial(params), [A, B, C, D], A, num_layers=32, dtype="bfloat16")
        assert recipe.to_dict() == paper_recipe(A, child, dtype="bfloat16").to_dict()
    # Two parents: the one pair; a space that cannot express the recipe: none.
    assert [child for _, child in load_space("slerp_gradient").baseline_trials(32, [A, B], A)] == [B]
    assert load_space("ties").baseline_trials(32, [A, B, C, D], A) == []


def test_multi_model_spaces_search_a_weight_and_density_per_child():
    """task_arithmetic, TIES and DARE: one value per child for each per-model parameter, labelled
    like the children (weight.m2 is the third child's)."""
    for name, per_child in (("task_arithmetic", ("weight",)), ("ties", ("weight", "density")), ("dare_ties", ("weight", "density"))):
        space = load_space(name)
        assert space.model_labels([A, B, C, D], A) == {"m0": B, "m1": C, "m2": D}
        assert space.dimension(32, 4) == 3 * len(per_child)
        trial = DictTrial(default=lambda n, low, high, step: {"m0": 0.25, "m1": 0.5, "m2": 0.75}[n.split(".")[1]])
        recipe = space.suggest(trial, [A, B, C, D], A, num_layers=4)
        assert recipe.model_names == [A, B, C, D]
        entries = {entry.model: entry.parameters for entry in recipe.models}
        assert entries[A] is None
        assert entries[D] == {p: 0.75 for p in per_child}
    assert load_space("linear").model_labels([A, B, C], None) == {"m0": A, "m1": B, "m2": C}
    assert load_space("slerp_gradient").model_labels([A, B], A) == {}

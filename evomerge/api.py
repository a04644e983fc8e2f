"""evomerge's Python API: everything the command line does, one call away, with results as objects.

    import evomerge

    found = evomerge.search(parents=["./instruct", "./cpt-sft"], benchmark="bio_materials", trials=30)
    print(found.best_value, found.gain, found.gain_interval, found.holdout_accuracy)
    evomerge.merge(found.best_recipe, out="merged/")
    print(evomerge.evaluate(model="merged/", benchmark="bio_materials").accuracy)

Keyword arguments carry the command line's names and defaults (`--batch-size` is `batch_size=`,
`--backend ray` is `backend="ray"`); comma lists and durations may be given as on the command line
("a,b", "30m") or as Python values. Bad input raises an `EvomergeError` (or a subclass) with the
same one-line message the command line prints, before any work starts. Each `evomerge` command
parses its flags, calls one function here and prints what it returns.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

from evomerge.demo import DEMO_TRIALS
from evomerge.errors import EvomergeError

if TYPE_CHECKING:
    from evomerge.evaluate.scorer import ScoreResult
    from evomerge.recipe import Recipe
    from evomerge.search.run import SearchProgress
    from evomerge.search.scale_map import MapResult
    from evomerge.search.study import SearchSettings
    from evomerge.train.trainers import TrainResult

PathLike = Union[str, Path]
Names = Union[str, Sequence[PathLike]]  # "a,b" as on the command line, or a list
OnStep = Callable[[str, int, int, float], None]  # (what is training, step, total steps, loss)
Say = Callable[[str], None]

DEFAULT_TOY_DIR = Path("results/toy")


# ----- parsing the command line's forms --------------------------------------------------------


def comma_list(text: Names) -> list[str]:
    """A comma-separated value's parts, stripped, blanks dropped ('a, b,' → ['a', 'b']); a list as
    strings."""
    if isinstance(text, (str, Path)):
        return [part.strip() for part in str(text).split(",") if part.strip()]
    return [str(part) for part in text]


def parse_duration(text: Union[str, float, None]) -> Optional[float]:
    """'90s', '30m', '2h', plain seconds or a number → seconds; None stays None."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else float(text)
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except (ValueError, IndexError):
        raise EvomergeError(f"--timeout expects a duration like 90s, 30m or 2h, got {text!r}") from None


def parse_fractions(text: Union[str, Sequence[float]]) -> list[float]:
    """'0.25,0.5,1' or a list → fractions (checked by the search's settings)."""
    if not isinstance(text, str):
        return [float(value) for value in text]
    try:
        return [float(part) for part in comma_list(text)]
    except ValueError:
        raise EvomergeError(f"--fidelities expects comma-separated fractions like 0.25,0.5,1, got {text!r}") from None


def parse_scales(text: Names, flag: str) -> list[str]:
    """Toy scales, comma-separated, each once (which scales exist, the toy domain says)."""
    scales = comma_list(text)
    if not scales:
        raise EvomergeError(f"{flag} expects scales, comma-separated (e.g. xs,s,m), got {text!r}")
    if len(set(scales)) != len(scales):
        raise EvomergeError(f"{flag} lists a scale twice: {text}")
    return scales


def default_study_name(parents: Sequence[str], space: str) -> str:
    """The study a search gets without `study=`: the parents' folder names and the space."""
    stems = [Path(p.rstrip("/")).name or "model" for p in parents]
    name = "-".join(stems + [Path(space).stem])
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:100]


# ----- merge -----------------------------------------------------------------------------------


@dataclass
class MergeResult:
    """A merged model folder: where it is, what made it, how long it took."""

    out: Path
    recipe: Recipe  # with the parents' real folders
    engine: str
    seconds: float


def merge(
    recipe: Union[Recipe, PathLike],
    out: PathLike,
    *,
    engine: str = "evomerge",
    device: str = "auto",
    seed: Optional[int] = None,
    parent: Optional[dict[str, str]] = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    overwrite: bool = False,
) -> MergeResult:
    """Merge the parents a recipe names and write a loadable model folder (config, safetensors,
    the base parent's tokenizer, the recipe as mergekit_config.yml, a model card as README.md:
    the recipe, the parents, evomerge's version and, for a search's export, the study and its
    scores) to `out`.

    `recipe`: a `Recipe`, a shipped recipe's name (see `recipes()`) or a mergekit YAML's path. `engine`: "evomerge" (in memory) or "mergekit"
    (mergekit's own pipeline); both write the same tensors. `seed`: DARE's masks, as
    `mergekit-yaml --random-seed`. `parent`: {recipe's model name: real folder}, as `--parent
    NAME=PATH`. The folder appears only once the merge has finished."""
    from evomerge import __version__
    from evomerge.errors import RecipeError
    from evomerge.merge.card import model_card
    from evomerge.merge.writer import check_output, write_merged
    from evomerge.recipe import Recipe, read_export_metadata
    from evomerge.shipped import resolve_recipe

    if engine not in ("evomerge", "mergekit"):
        raise EvomergeError(f"unknown engine {engine!r}; expected evomerge or mergekit")
    search_metadata = None
    if not isinstance(recipe, Recipe):
        path = resolve_recipe(recipe, RecipeError)
        recipe = Recipe.load(path)
        search_metadata = read_export_metadata(path.read_text(encoding="utf-8"))  # a search's export says where it came from
    if parent:
        recipe = recipe.with_models(dict(parent))
    out = Path(out)
    check_output(out, overwrite)
    if engine == "mergekit":
        recipe.to_mergekit()
    start = time.perf_counter()
    card = model_card(recipe, out.resolve().name, __version__, search_metadata)
    write_merged(recipe, out, engine=engine, device=device, seed=seed, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, card=card)
    return MergeResult(out, recipe, engine, time.perf_counter() - start)


# ----- evaluate --------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """A model's score on a benchmark: accuracy over `n` items, per category, and per item (`result`)."""

    accuracy: float
    n: int
    per_category: dict[str, float]
    seconds: float
    benchmark: str
    protocol: str
    backend: str
    fraction: float
    result: ScoreResult = field(repr=False)  # per-item correctness, predictions and ids

    def to_dict(self) -> dict:
        """What `evomerge eval --json` prints."""
        return {
            "accuracy": self.accuracy,
            "n": self.n,
            "per_category": self.per_category,
            "seconds": round(self.seconds, 4),
            "benchmark": self.benchmark,
            "protocol": self.protocol,
            "backend": self.backend,
            "fraction": self.fraction,
        }


def evaluate(
    model: PathLike,
    benchmark: str,
    *,
    protocol: str = "paper",
    fraction: float = 1.0,
    backend: str = "builtin",
    device: str = "auto",
    chat: Optional[bool] = None,
    batch_size: int = 16,
    tasks_dir: Optional[PathLike] = None,
    holdout: Optional[float] = None,
    split: Optional[str] = None,
    trust_remote_code: bool = False,
    progress: Optional[Callable[[int, int], None]] = None,
) -> Evaluation:
    """Score a model folder (or a LoRA adapter folder) on a benchmark.

    `benchmark`: a shipped benchmark's name, a JSONL path, or "lm-eval:TASK" (with `tasks_dir` for
    custom task YAMLs). `protocol`: "paper" (greedy answer, as the paper scores it) or "loglik"
    (option log-likelihood). `backend`: "builtin" or "lm-eval" (lm-eval's simple_evaluate,
    loglik). `fraction`: the first ⌈f·n⌉ items of the benchmark's fixed order. `holdout`: leave
    out this fraction of items (by id hash) and score the rest. `split`: "search", "holdout" or
    "all": exactly the items a search with that `holdout` (default 0.2 with a split) searched on,
    held out, or both (the builtin backend on a benchmark file). `progress(done, total)` follows
    the builtin scorer's batches."""
    from evomerge.evaluate.models import load_for_eval
    from evomerge.evaluate.objective import make_objective

    if not 0 < fraction <= 1:
        raise EvomergeError(f"--fraction must be in (0, 1], got {fraction}")
    items = split_items(benchmark, split, holdout, backend) if split is not None else None  # bad input before the model loads
    loaded, tokenizer = load_for_eval(model, device, trust_remote_code)
    if items is not None:
        from evomerge.evaluate.scorer import Scorer

        scorer = Scorer.load(items, tokenizer, protocol=protocol, batch_size=batch_size, chat=chat)
        result = scorer.score(loaded, fraction, progress=progress)
        return Evaluation(result.accuracy, result.n, result.per_category, result.seconds, str(benchmark), protocol, backend, fraction, result)
    objective = make_objective(
        benchmark,
        tokenizer,
        protocol=protocol,
        backend=backend,
        batch_size=batch_size,
        chat=chat,
        tasks_dir=tasks_dir,
        holdout=holdout or 0.0,
    )
    result = objective.scorer.score(loaded, fraction, progress=progress)
    return Evaluation(result.accuracy, result.n, result.per_category, result.seconds, str(benchmark), objective.protocol, objective.backend, fraction, result)


SPLITS = ("search", "holdout", "all")
DEFAULT_SPLIT_HOLDOUT = 0.2  # what `search` holds out by default


def split_items(benchmark: str, split: str, holdout: Optional[float], backend: str = "builtin"):
    """The items a search with `holdout` (default 0.2) searched on ("search"), held out
    ("holdout"), or both ("all"): the same split by id hash the search makes."""
    from evomerge.evaluate.benchmark import Benchmark, load_benchmark
    from evomerge.evaluate.harness import is_lm_eval_spec

    if split not in SPLITS:
        raise EvomergeError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if is_lm_eval_spec(benchmark) or backend != "builtin":
        raise EvomergeError("--split applies to evomerge benchmarks with the builtin backend; an lm-eval task has its own splits")
    fraction = DEFAULT_SPLIT_HOLDOUT if holdout is None else holdout
    if not 0 < fraction < 1:
        raise EvomergeError(f"--split needs --holdout in (0, 1), as the search used it, got {fraction}")
    full = load_benchmark(benchmark)
    search, held = full.split_holdout(fraction)
    if split == "all":
        return full
    if split == "holdout" and not len(held):
        raise EvomergeError(f"--holdout {fraction} holds out no item of {full.name} ({len(full)} items)")
    return search if split == "search" else Benchmark(full.name, held.items, full.source, full.seed)


# ----- train -----------------------------------------------------------------------------------


def train(
    strategy: Optional[str] = None,
    model: Optional[PathLike] = None,
    data: Optional[PathLike] = None,
    out: Optional[PathLike] = None,
    *,
    pipeline: Optional[PathLike] = None,
    lora: bool = False,
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_targets: Names = "q_proj,k_proj,v_proj,o_proj",
    merge_lora: bool = False,
    epochs: float = 1.0,
    lr: Optional[float] = None,
    batch_size: int = 4,
    max_length: int = 512,
    beta: Optional[float] = None,
    lr_scheduler: str = "linear",
    warmup_ratio: float = 0.0,
    seed: int = 0,
    device: str = "auto",
    overwrite: bool = False,
    chat_template: Optional[str] = None,
    on_stage: Optional[Callable[[int, int, dict], None]] = None,
    on_log: Optional[Callable[[int, int, float], None]] = None,
) -> list[TrainResult]:
    """Make parents the way the source paper did: continued pre-training ("cpt"), "sft", "dpo" or
    "orpo" with TRL, full weights or LoRA; one stage from the arguments, or a chain of stages from a
    `pipeline` (a shipped pipeline's name or a YAML file; then `model` and `out` replace its own).
    `chat_template` (for messages): "chatml", a Jinja file, or a model folder to copy it from. Every data file and option is
    checked before the first stage trains. Each output folder records its lineage
    (evomerge_lineage.json, with a label such as "instruct-CPT-SFT"). One `TrainResult` per stage;
    `on_stage(index, count, stage)` before each stage, `on_log(step, total, loss)` as it trains;
    a result's `note` is a line worth telling the user (a chat template chosen for them)."""
    from evomerge.train.pipeline import load_pipeline, run_pipeline
    from evomerge.train.trainers import TrainSettings, check
    from evomerge.train.trainers import train as train_stage

    if pipeline is not None:
        load_pipeline(pipeline, model, out)  # every stage and data file checked before the first trains
        return run_pipeline(pipeline, model=model, out=out, overwrite=overwrite, device=device, on_stage=on_stage, on_log=on_log)
    missing = [name for name, value in (("--strategy", strategy), ("--model", model), ("--data", data), ("--out", out)) if value is None]
    if missing:
        raise EvomergeError(f"give {', '.join(missing)} (or --pipeline FILE.yaml)")
    settings = TrainSettings(
        strategy=strategy,
        model=str(model),
        data=str(data),
        out=str(out),
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        max_length=max_length,
        beta=beta,
        seed=seed,
        device=device,
        lr_scheduler=lr_scheduler,
        warmup_ratio=warmup_ratio,
        lora=lora,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        lora_targets=comma_list(lora_targets),
        merge_lora=merge_lora,
        overwrite=overwrite,
        chat_template=chat_template,
    )
    check(settings)
    if on_stage is not None:
        on_stage(0, 1, {"strategy": strategy, "label": f"{strategy} on {model}"})
    return [train_stage(settings, on_log=on_log)]


# ----- search ----------------------------------------------------------------------------------


@dataclass
class SearchResult:
    """What a search found, as its results folder's summary.json records it, with the recipe.

    `best_value` is the best trial's value (accuracy, or gain with `objective="gain"`), and for a
    two-benchmark study the first benchmark's value of the first trial on the Pareto front.
    `gain` = best accuracy − best parent's, with `gain_interval` its 95% paired bootstrap
    interval over the benchmark's items. `holdout_accuracy`: the best recipe on the items the
    search never saw (None without held-out items), with `holdout_parents` (each parent on the
    same items), `holdout_gain` over the best of them and its paired 95% interval
    `holdout_gain_interval`, and `verdict`: one line that calls the gain a gain only when the
    whole interval lies above zero."""

    study: str
    storage: str
    results_dir: Path
    best_trial: Optional[int]
    best_value: Optional[float]
    best_accuracy: Optional[float]
    best_recipe: Optional[Recipe]
    parent_scores: dict[str, float]  # each parent's accuracy on the search items
    best_parent: Optional[float]
    gain: Optional[float]
    gain_interval: Optional[tuple[float, float]]
    synergy: Optional[float]
    baseline_accuracy: Optional[float]  # the paper's recipe, where the space can express it (its best pair: summary["baselines"])
    holdout_accuracy: Optional[float]
    holdout_n: Optional[int]
    trials: dict[str, int]  # by state: complete, pruned, fail, …
    duplicates_skipped: int
    summary: dict = field(repr=False)  # summary.json as written
    holdout_interval: Optional[tuple[float, float]] = None  # the best recipe's held-out accuracy, 95% CI
    holdout_parents: dict[str, Optional[float]] = field(default_factory=dict)  # each parent on the held-out items
    holdout_gain: Optional[float] = None  # held-out accuracy − the best parent's on the same items
    holdout_gain_interval: Optional[tuple[float, float]] = None  # paired bootstrap, 95%
    verdict: Optional[str] = None  # one line on the held-out gain; never calls noise a gain
    stopped_because: Optional[str] = None  # why the search ended before its total (a run of failures)

    @classmethod
    def from_run(cls, run) -> "SearchResult":
        """From `search.run.run_search`'s `SearchRun`."""
        from evomerge.search.export import recipe_of
        from evomerge.search.study import best_trial

        summary = run.summary
        best = best_trial(run.study)
        holdout = summary.get("holdout") or {}
        interval = summary.get("gain_interval")
        return cls(
            study=summary["study"],
            storage=run.settings.storage_url(),
            results_dir=Path(run.folder),
            best_trial=summary["best_trial"],
            best_value=summary["best_value"],
            best_accuracy=summary["best_accuracy"],
            best_recipe=recipe_of(best) if best is not None else None,
            parent_scores=dict(summary["parents"]),
            best_parent=summary["best_parent"],
            gain=summary["gain"],
            gain_interval=tuple(interval) if interval else None,
            synergy=summary["synergy"],
            baseline_accuracy=summary["baseline_accuracy"],
            holdout_accuracy=holdout.get("holdout_accuracy"),
            holdout_n=holdout.get("holdout_n"),
            trials=dict(summary["trials"]),
            duplicates_skipped=summary["duplicates_skipped"],
            summary=summary,
            holdout_interval=_pair(holdout.get("holdout_interval")),
            holdout_parents=dict(holdout.get("parents") or {}),
            holdout_gain=holdout.get("gain"),
            holdout_gain_interval=_pair(holdout.get("gain_interval")),
            verdict=holdout.get("verdict"),
            stopped_because=summary.get("stopped_because"),
        )


def _pair(values: Optional[Sequence[float]]) -> Optional[tuple[float, float]]:
    return (values[0], values[1]) if values else None


def search(
    parents: Names,
    benchmark: Names,
    *,
    base: Optional[str] = None,
    space: str = "slerp_gradient",
    sampler: str = "tpe",
    grid_limit: int = 100_000,
    trials: int = 30,
    timeout: Union[str, float, None] = None,
    study: Optional[str] = None,
    storage: Optional[str] = None,
    jobs: int = 1,
    population: int = 1,
    pruner: str = "median",
    fidelities: Union[str, Sequence[float]] = "0.25,0.5,1",
    holdout: Optional[float] = None,
    objective: str = "accuracy",
    seed: int = 0,
    device: str = "auto",
    dtype: Optional[str] = None,
    protocol: str = "paper",
    batch_size: int = 16,
    tasks_dir: Optional[PathLike] = None,
    tokenizer: Optional[str] = None,
    backend: str = "optuna",
    ray_address: Optional[str] = None,
    gpus_per_trial: Optional[float] = None,
    cpus_per_trial: float = 1.0,
    concurrent: Optional[int] = None,
    warm_start: Optional[str] = None,
    anchors: int = 0,
    progress: Optional[SearchProgress] = None,
) -> SearchResult:
    """Search merge recipes of the parents for the best score on a domain benchmark.

    Each trial merges in memory and is scored on growing `fidelities` of the benchmark (a `pruner`
    stops hopeless recipes early); the study lives in `storage` (default:
    sqlite:///results/<study>/study.db), so calling again with more `trials` continues it. The
    parents' own scores and the paper's recipe are measured first; at the end the best recipe is
    scored on the `holdout` items (default 0.2; 0 for lm-eval tasks) and results/<study>/ gets
    best-recipe.yaml, trials.csv, summary.json and plots. `parents`: two or more model folders
    (the first is the `base` unless given); `benchmark`: one, or two (domain, general) for a
    multi-objective study. `tokenizer`: mergekit's `tokenizer_source` for every recipe ("base",
    "union" or a model folder), for parents whose vocabularies differ; the scores then read with
    that merged tokenizer. `space`: a shipped space (see `spaces()`) or a YAML path; `grid_limit`:
    with sampler="grid", the most points a grid may have. `backend`:
    "optuna" (this machine, `jobs` processes) or "ray" (a Ray cluster; `ray_address`,
    `gpus_per_trial`, `cpus_per_trial`, `concurrent`). `warm_start`: "STUDY" or "STUDY@STORAGE",
    a finished study whose best recipes are queued first (layer-group values mapped by relative
    depth when the parents' depths differ). `population`: recipes asked at once, merged into as
    many resident models and scored together (the same scores as one at a time). `anchors`: K > 0
    scores later trials on K anchor items only and estimates their accuracy, once the parents and
    8 completed trials were scored on every item (the fit error and the best trial's check are in
    the summary's `anchors`). `progress`: a `SearchProgress` to follow the trials.
    Ctrl-C exports what the study has and re-raises."""
    from evomerge.evaluate.harness import is_lm_eval_spec
    from evomerge.search.study import settings_from

    parent_list = comma_list(parents)
    benchmarks = comma_list(benchmark)
    if holdout is None:
        holdout = 0.0 if any(is_lm_eval_spec(b) for b in benchmarks) else 0.2
    settings = settings_from(
        parents=parent_list,
        benchmarks=benchmarks,
        base=str(base) if base else (parent_list[0] if parent_list else None),
        space=str(space),
        sampler=sampler,
        grid_limit=grid_limit,
        pruner=pruner,
        fidelities=parse_fractions(fidelities),
        holdout=holdout,
        objective=objective,
        seed=seed,
        device=device,
        dtype=dtype,
        protocol=protocol,
        batch_size=batch_size,
        tasks_dir=str(tasks_dir) if tasks_dir else None,
        tokenizer=str(tokenizer) if tokenizer else None,
        trials=trials,
        study=study or default_study_name(parent_list, str(space)),
        storage=storage,
        executor=backend,
        ray_address=ray_address,
        gpus_per_trial=gpus_per_trial,
        cpus_per_trial=cpus_per_trial,
        concurrent=concurrent,
        warm_start=warm_start,
        population=population,
        anchors=anchors,
    )
    return run_settings(settings, timeout=timeout, jobs=jobs, progress=progress)


def run_settings(
    settings: SearchSettings, *, timeout: Union[str, float, None] = None, jobs: int = 1, progress: Optional[SearchProgress] = None
) -> SearchResult:
    """Run a search from its settings object (what `search`, `worker` and `demo` share)."""
    from evomerge.search.run import run_search

    return SearchResult.from_run(run_search(settings, timeout=parse_duration(timeout), jobs=jobs, progress=progress))


def worker(
    study: str,
    storage: str,
    *,
    device: Optional[str] = None,
    timeout: Union[str, float, None] = None,
    progress: Optional[SearchProgress] = None,
) -> SearchResult:
    """Join an existing study from another process or machine and run its trials here; its
    settings are read from the storage (`device` overrides the study's for this machine)."""
    from evomerge.search.run import join_study

    settings = join_study(study, storage)
    if device:
        settings.device = device
    return run_settings(settings, timeout=timeout, jobs=1, progress=progress)


@dataclass
class Exported:
    """A study's K-th best recipe, written as a mergekit YAML."""

    path: Path
    trial: int
    value: float
    recipe: Recipe


def export(study: str, *, storage: Optional[str] = None, rank: int = 1, out: Optional[PathLike] = None) -> Exported:
    """Write a study's `rank`-th best recipe (1 = the best) as a mergekit YAML, to `out` (default:
    results/<study>/best-recipe.yaml, or rank-K.yaml)."""
    from evomerge.search.export import export_recipe, recipe_of
    from evomerge.search.study import RESULTS_ROOT, default_storage_url, load_existing_study

    if rank < 1:
        raise EvomergeError(f"--rank must be at least 1, got {rank}")
    loaded = load_existing_study(study, storage or default_storage_url(study))
    target = Path(out) if out is not None else RESULTS_ROOT / study / ("best-recipe.yaml" if rank == 1 else f"rank-{rank}.yaml")
    trial = export_recipe(loaded, target, rank)
    return Exported(target, trial.number, trial.values[0], recipe_of(trial))


def dashboard(storage: str, *, host: str = "127.0.0.1", port: int = 8080, on_ready: Optional[Callable[[str], None]] = None) -> None:
    """Serve optuna-dashboard on a study storage until interrupted (live while a search runs);
    `on_ready(url)` once the storage is open, before serving."""
    from evomerge.extras import require

    require("optuna_dashboard", "evomerge dashboard")
    from optuna_dashboard import run_server

    from evomerge.search.study import open_existing_storage

    opened = open_existing_storage(storage)  # a missing study file is an EvomergeError, before serving
    if on_ready is not None:
        on_ready(f"http://{host}:{port}/")
    run_server(opened, host=host, port=port)


@dataclass
class SpaceInfo:
    """A shipped search space: its name, merge method, size and what it searches."""

    name: str
    method: str
    dimension: int  # values one trial suggests, for `layers` layers and `parents` parents
    description: str
    layers: int = 32
    parents: int = 2
    notes: list[str] = field(default_factory=list)  # searched values that cannot change the merge of these parents


DEFAULT_SPACE_LAYERS = 32  # what `spaces()` sizes a space for without parents (an 8B Llama)


def spaces(parents: Optional[Names] = None) -> list[SpaceInfo]:
    """The shipped search spaces, with their method and dimension: for these `parents` (model
    folders, the first the base, as `search` takes them: their layer count and number), or for
    32 layers and two parents. With parents, each space also notes the searched values that
    cannot change their merge."""
    from evomerge.space import load_space, shipped_spaces

    parent_list = comma_list(parents) if parents else []
    layers = DEFAULT_SPACE_LAYERS
    if parent_list:
        from evomerge.merge.parents import check_parents, inspect_parent

        infos = [inspect_parent(parent) for parent in parent_list]
        check_parents(infos)
        layers = infos[0].num_layers
    count = len(parent_list) or 2
    infos_out = []
    for name in shipped_spaces():
        loaded = load_space(name)
        if parent_list and loaded.contract[1] is not None and count > loaded.contract[1]:
            continue  # this method cannot merge that many parents
        names = parent_list or [f"parent-{index}" for index in range(count)]
        base = names[0] if loaded.contract[0] else None
        notes = loaded.inert_parameters(names, base) if parent_list else []
        infos_out.append(SpaceInfo(name, loaded.method, loaded.dimension(layers, count), loaded.description, layers, count, notes))
    return infos_out


@dataclass
class ShippedFile:
    """A recipe or training pipeline that ships with evomerge, usable by its name."""

    name: str
    kind: str  # "merge" (`merge(NAME, …)`) or "train" (`train(pipeline=NAME, …)`)
    path: Path
    description: str


def recipes() -> list[ShippedFile]:
    """The shipped merge recipes (`merge("paper_slerp", …)`) and training pipelines
    (`train(pipeline="small_cpu", …)`), merge recipes first."""
    from evomerge.shipped import shipped_recipes

    return [ShippedFile(entry.name, entry.kind, entry.path, entry.description) for entry in shipped_recipes()]


# ----- benchmarks ------------------------------------------------------------------------------


@dataclass
class BenchmarkInfo:
    """A shipped benchmark: its name, size, items per type and categories."""

    name: str
    items: int
    kinds: dict[str, int]  # items per type: mc, tf, exact
    categories: list[str]


def benchmarks() -> list[BenchmarkInfo]:
    """The benchmarks that ship with evomerge, with their size, item types and categories."""
    from evomerge.evaluate.benchmark import load_benchmark, shipped_benchmarks

    infos = []
    for name in shipped_benchmarks():
        bench = load_benchmark(name)
        kinds = {kind: sum(item.type == kind for item in bench.items) for kind in ("mc", "tf", "exact")}
        infos.append(BenchmarkInfo(name, len(bench), kinds, list(bench.categories)))
    return infos


def export_benchmark(benchmark: str, out: PathLike) -> str:
    """Write a benchmark (shipped name or JSONL path) as an lm-eval multiple_choice task in `out`
    (same accuracy as protocol="loglik"); the task's name."""
    from evomerge.evaluate.benchmark import load_benchmark
    from evomerge.evaluate.harness import export_lm_eval_task

    return export_lm_eval_task(load_benchmark(benchmark), out)


# ----- the toy domain, the demo and the scale map ------------------------------------------


def toy(
    scale: Names = "xs",
    out: PathLike = DEFAULT_TOY_DIR,
    *,
    parents: Optional[Names] = None,
    device: str = "auto",
    score: bool = True,
    seed: int = 0,
    say: Optional[Say] = None,
    on_step: Optional[OnStep] = None,
    on_scale: Optional[Callable[[str, Optional[dict]], None]] = None,
) -> dict[str, Optional[dict]]:
    """Build (or reuse) the toy materials domain and the paper's parents at each scale under `out`
    (see `evomerge toy --list`; comma-separated or a list); with `score`, score every parent
    (domain and general benchmark, fact recall) and write <out>/<scale>/accuracy.json. `seed` > 0
    trains another draw (initial weights, data order) of the same world into <scale>-seedN/.
    {scale: the parents' table, or None without `score`}; `on_scale(scale, table)` as each scale
    is done."""
    from evomerge.toy.build import SCALES, build_toy, score_parents

    scales = parse_scales(scale, "--scale")
    unknown = [name for name in scales if name not in SCALES]
    if unknown:
        raise EvomergeError(f"unknown toy scale {unknown[0]!r}; choose from {', '.join(SCALES)}")
    names = comma_list(parents) if parents else None
    tables: dict[str, Optional[dict]] = {}
    for name in scales:
        build = build_toy(name, out, device=device, parents=names, progress=say, on_step=on_step, seed=seed)
        if build.seconds > 1 and say is not None:
            say(f"{build.scale}: built in {build.seconds / 60:.1f} min")
        tables[name] = score_parents(build, device) if score else None
        if on_scale is not None:
            on_scale(name, tables[name])
    return tables


def toy_scales() -> list[dict]:
    """The toy's scales, smallest first: name, parameters, layers, width, device and the measured
    cold build time of every parent (`build_seconds`, None where not measured)."""
    from evomerge.toy.build import scale_table

    return scale_table()


def demo(
    trials: int = DEMO_TRIALS,
    *,
    device: str = "auto",
    toy_dir: PathLike = DEFAULT_TOY_DIR,
    say: Optional[Say] = None,
    on_step: Optional[OnStep] = None,
    progress: Optional[SearchProgress] = None,
) -> SearchResult:
    """The whole tool on the toy domain: build (or reuse) the xs parents Instruct and
    Instruct-CPT-SFT under `toy_dir`, then a fresh search of their merges (default space, pruning,
    held-out items) in results/demo."""
    import shutil

    from evomerge.demo import DEMO_SCALE, build_demo_parents, demo_settings
    from evomerge.devices import resolve_device

    resolve_device(device)  # before anything is said or built
    if device != "cuda":
        import torch

        from evomerge.toy.build import TRAIN_THREADS

        # Models this small gain nothing from more threads, and lose a lot on a busy machine.
        torch.set_num_threads(TRAIN_THREADS)
    say = say or (lambda _message: None)
    say(f"Toy domain, scale {DEMO_SCALE}: building or reusing the parents under {toy_dir}/ …")
    build = build_demo_parents(Path(toy_dir), device, progress=say, on_step=on_step)
    settings = demo_settings(build, trials, device)
    shutil.rmtree(settings.results_dir, ignore_errors=True)  # a fresh search on every run; parents are reused
    say(f"Searching merges of {' × '.join(build.parents)} on {build.domain_benchmark.name} …")
    return run_settings(settings, progress=progress)


def scale_map(
    *,
    pairs: Optional[PathLike] = None,
    toy: Optional[Names] = None,
    toy_dir: PathLike = DEFAULT_TOY_DIR,
    toy_pair: Names = "instruct,instruct-CPT-SFT",
    toy_seed: int = 0,
    benchmark: Optional[str] = None,
    sweep: str = "0:1:0.1",
    search: int = 0,
    space: str = "slerp_gradient",
    holdout: float = 0.2,
    seed: int = 0,
    resamples: int = 2000,
    device: str = "auto",
    dtype: Optional[str] = None,
    protocol: str = "paper",
    batch_size: int = 16,
    out: Optional[PathLike] = None,
    overwrite: bool = False,
    say: Optional[Say] = None,
    progress: Optional[Callable[[int, int, str], None]] = None,
) -> MapResult:
    """Where does merging beat both parents, across model scales, by more than the noise?

    For each pair of parents (a `pairs` YAML, or the toy domain's `toy_pair` at each `toy` scale,
    base first, built under `toy_dir` if needed, trained with `toy_seed`): score each parent, sweep a global SLERP t (`sweep`: start:stop:step
    or a comma list), score the paper's schedule and, with `search` = N, a recipe searched in N
    trials and judged on the `holdout` items. Every merge gets its gain over the best parent and
    synergy with paired bootstrap intervals (`resamples`, `seed`); each pair its kinship. Writes
    map.csv, items.csv, kinship.csv, figures/, report.html and summary.json to `out` (default:
    results/map-<pairs file name or toy scales>), all or nothing. `progress(done, total, what)`."""
    from evomerge.search.scale_map import MapSettings, check_options, load_pairs, parse_sweep, run_map, toy_pairs

    if (pairs is None) == (toy is None):
        raise EvomergeError("give --pairs FILE.yaml or --toy SCALES (one of them)")
    scales = parse_scales(toy, "--toy") if toy is not None else []
    toy_parents = parse_toy_pair(toy_pair)
    name = Path(pairs).stem if pairs is not None else "toy-" + "-".join(scales)
    settings = MapSettings(
        out=Path(out) if out is not None else Path("results") / f"map-{name}",
        benchmark=benchmark,
        sweep=parse_sweep(sweep),
        search_trials=search,
        space=space,
        holdout=holdout,
        seed=seed,
        device=device,
        dtype=dtype,
        protocol=protocol,
        batch_size=batch_size,
        resamples=resamples,
        overwrite=overwrite,
    )
    toy_text = (toy if isinstance(toy, str) else ",".join(scales)) if toy is not None else None
    settings.command = map_command_line(settings, pairs, toy_text, Path(toy_dir), sweep, out, toy_parents, toy_seed)
    if pairs is not None:
        settings.pairs = load_pairs(Path(pairs))
    else:
        check_options(settings)  # a bad flag is reported before any toy parent is built
        settings.pairs = toy_pairs(scales, Path(toy_dir), device=device, say=say, pair=toy_parents, seed=toy_seed)
    return run_map(settings, progress=progress)


def parse_toy_pair(names: Names) -> tuple[str, str]:
    """--toy-pair: two distinct toy parents, base first."""
    from evomerge.toy.build import PARENTS

    pair = comma_list(names)
    if len(pair) != 2 or pair[0] == pair[1]:
        raise EvomergeError(f"--toy-pair expects two different toy parents, base first (e.g. instruct,instruct-CPT), got {names!r}")
    unknown = [name for name in pair if name not in PARENTS]
    if unknown:
        raise EvomergeError(f"--toy-pair: unknown toy parent {unknown[0]!r}; choose from {', '.join(PARENTS)}")
    return pair[0], pair[1]


def map_command_line(
    settings,
    pairs: Optional[PathLike],
    toy: Optional[str],
    toy_dir: Path,
    sweep: str,
    out: Optional[PathLike],
    toy_pair: Optional[tuple[str, str]] = None,
    toy_seed: int = 0,
) -> str:
    """The `evomerge map` command that makes this map (options at their defaults left out), for the report."""
    import shlex

    from evomerge.search.scale_map import DEFAULT_SWEEP, MapSettings
    from evomerge.toy.build import DEFAULT_ROOT
    from evomerge.toy.pair import TOY_PAIR

    parts = ["evomerge", "map"]
    if pairs is not None:
        parts += ["--pairs", str(pairs)]
    else:
        parts += ["--toy", str(toy)] + (["--toy-dir", str(toy_dir)] if Path(toy_dir) != DEFAULT_ROOT else [])
        if toy_pair is not None and tuple(toy_pair) != TOY_PAIR:
            parts += ["--toy-pair", ",".join(toy_pair)]
        if toy_seed:
            parts += ["--toy-seed", str(toy_seed)]
    if sweep != DEFAULT_SWEEP:
        parts += ["--sweep", sweep]
    flags = {  # MapSettings' fields that one flag each sets
        "benchmark": "--benchmark", "search_trials": "--search", "space": "--space", "holdout": "--holdout", "seed": "--seed",
        "resamples": "--resamples", "device": "--device", "dtype": "--dtype", "protocol": "--protocol", "batch_size": "--batch-size",
    }  # fmt: skip
    defaults = {f.name: f.default for f in fields(MapSettings)}
    for key, flag in flags.items():
        value = getattr(settings, key)
        if value != defaults[key] and not (key == "holdout" and not settings.search_trials):
            parts += [flag, str(value)]
    if out is not None:
        parts += ["--out", str(out)]
    return " ".join(shlex.quote(part) for part in parts)


__all__ = [
    "BenchmarkInfo",
    "Evaluation",
    "Exported",
    "MergeResult",
    "SearchResult",
    "ShippedFile",
    "SpaceInfo",
    "benchmarks",
    "dashboard",
    "demo",
    "evaluate",
    "export",
    "export_benchmark",
    "merge",
    "recipes",
    "scale_map",
    "search",
    "spaces",
    "toy",
    "toy_scales",
    "train",
    "worker",
]

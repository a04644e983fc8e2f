"""`evomerge map`: for parent pairs at several scales, where does SLERP merging beat the best parent
by more than the noise?

Per pair, one `Merger` holds both parents and one `Scorer` holds the tokenised benchmark. Each parent
is scored alone; a global SLERP t is swept over a grid (base_model = the pair's base, as the paper);
the paper's layer schedule is scored; with `search_trials`, a search of that many trials (the
search's own machinery on the same Merger and tokenizer, its own study under the map's folder) runs
and its best recipe is scored on the held-out items. The parents are scored once: the search's
study takes their scores on its items from the map's per-item results. Every score keeps its
per-item correctness, and `evomerge.analysis` turns them into accuracies, gains and synergies with
paired bootstrap intervals, figures and a report.

Which items: parents, sweep points and the paper's schedule are scored on the whole benchmark: none
of them is chosen by looking at the benchmark, and more items mean narrower intervals. The searched
recipe was chosen on the search items, so it is judged only on the held-out ones (`holdout`, 20% by
default, by a hash of item ids, as in `evomerge search`), against both parents on those same items.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, field_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from evomerge.analysis.metrics import DEFAULT_RESAMPLES, Bootstrap, Kinship, MapRow, kinship, merge_metrics
from evomerge.analysis.plots import draw_all
from evomerge.analysis.report import highlights, summary_rows, write_items_csv, write_kinship_csv, write_map_csv, write_report
from evomerge.config import load_yaml_file, validate
from evomerge.devices import resolve_device, resolve_dtype
from evomerge.errors import EvomergeError
from evomerge.evaluate.benchmark import Benchmark, load_benchmark, shipped_benchmarks
from evomerge.evaluate.harness import is_lm_eval_spec
from evomerge.evaluate.scorer import Scorer, ScoreResult
from evomerge.files import parent_labels, staged_folder
from evomerge.merge.parents import ParentInfo, check_parents, inspect_parent, layer_index, load_parent
from evomerge.recipe import paper_recipe, slerp_recipe
from evomerge.search.objective import free_accelerator_memory, load_pair, recipe_dtype_name, subset_result

if TYPE_CHECKING:
    import torch

    from evomerge.search.run import Prepared

DEFAULT_SWEEP = "0:1:0.1"
MAX_SWEEP_POINTS = 201
MIN_RESAMPLES = 100
_SAFE_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,59}$")

Progress = Callable[[int, int, str], None]  # (done, total, what is running now)


@dataclass
class PairSpec:
    """One scale: two parents, SLERP's base (one of them, t = 0), and optionally the common
    ancestor their task vectors are measured from (for kinship), the parameter count and a benchmark."""

    label: str
    parents: tuple[str, str]
    base: str
    ancestor: Optional[str] = None
    params: Optional[float] = None
    benchmark: Optional[str] = None

    @property
    def other(self) -> str:
        return self.parents[1] if self.base == self.parents[0] else self.parents[0]


@pydantic_dataclass
class MapSettings:
    """Everything a map needs, as plain data (written to the output's summary.json); a pydantic
    dataclass, so its values have these types from the start."""

    out: Path
    pairs: list[PairSpec] = field(default_factory=list)
    benchmark: Optional[str] = None  # --benchmark: every pair's, over the one the pair names
    sweep: list[float] = field(default_factory=lambda: parse_sweep(DEFAULT_SWEEP))
    search_trials: int = 0
    space: str = "slerp_gradient"
    holdout: float = 0.2
    seed: int = 0
    device: str = "auto"
    dtype: Optional[str] = None
    protocol: str = "paper"
    batch_size: int = 16
    resamples: int = DEFAULT_RESAMPLES
    overwrite: bool = False
    command: Optional[str] = None  # the command line that made the map, for the report


# ----- input: the sweep, the pairs file, the toy domain --------------------------------------


def parse_sweep(text: str) -> list[float]:
    """'start:stop:step' (both ends included when the step lands on them) or a comma list of t."""
    problem = f"--sweep expects start:stop:step (e.g. 0:1:0.1) or t values in [0, 1] (e.g. 0,0.5,1), got {text!r}"
    try:
        if ":" in text:
            start, stop, step = (float(part) for part in text.split(":"))
            if step <= 0 or stop < start:
                raise EvomergeError(f"{problem}: the step must be positive and start ≤ stop")
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            if count > MAX_SWEEP_POINTS:
                raise EvomergeError(f"{problem}: {count} points; at most {MAX_SWEEP_POINTS}")
            values = [round(start + i * step, 10) for i in range(count)]
        else:
            values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise EvomergeError(problem) from None
    if not values or any(not 0 <= t <= 1 for t in values) or any(math.isnan(t) for t in values):
        raise EvomergeError(f"{problem}: every t must lie in [0, 1]")
    return sorted(set(values))


class PairEntry(BaseModel):
    """One entry of a pairs file, as written (paths not yet resolved)."""

    model_config = ConfigDict(extra="forbid")
    label: str
    parents: list[str]
    base: Optional[str] = None
    ancestor: Optional[str] = None
    params: Optional[float] = None
    benchmark: Optional[str] = None

    @field_validator("label", mode="before")
    @classmethod
    def _label(cls, value):
        if value is None or not _SAFE_LABEL.match(str(value)):
            raise ValueError(f"'label' must be a short name of letters, digits, _ . - (got {value!r})")
        return str(value)

    @field_validator("parents", mode="before")
    @classmethod
    def _parents(cls, value):
        if not isinstance(value, list) or len(value) != 2 or not all(isinstance(p, str) and p.strip() for p in value):
            raise ValueError("'parents' must list exactly two model folders")
        return value

    @field_validator("base", "ancestor", "benchmark", mode="before")
    @classmethod
    def _reference(cls, value, info):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(
                f"'{info.field_name}' must be a model folder" if info.field_name != "benchmark" else "'benchmark' must be a benchmark name or a JSONL path"
            )
        return value

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, value):
        if value is None:
            return None
        try:
            number = float(value)  # PyYAML reads 1.2e6 (no dot before e) as a string
        except (TypeError, ValueError):
            number = None
        if number is None or not number > 0 or math.isinf(number) or isinstance(value, bool):
            raise ValueError(f"'params' must be a positive number, got {value!r}")
        return number


class PairsFile(BaseModel):
    """A pairs file: `pairs: [{label, parents: [A, B], base, ancestor, params, benchmark}]` and an
    optional `benchmark` for the pairs that name none."""

    model_config = ConfigDict(extra="forbid")
    pairs: list[PairEntry]
    benchmark: Optional[str] = None

    @field_validator("pairs", mode="before")
    @classmethod
    def _non_empty(cls, value):
        if not isinstance(value, list) or not value:
            raise ValueError("'pairs' must be a non-empty list of {label, parents, base}")
        return value


def load_pairs(path: Path) -> list[PairSpec]:
    """The pairs file (`PairsFile`), its paths read from the file's folder; every problem raises
    an EvomergeError naming the file and line."""
    path = Path(path)
    document = load_yaml_file(path, EvomergeError, what="pairs file")
    if not isinstance(document.data, dict):
        raise EvomergeError(f"{path}: expected a mapping with 'pairs:' (a list of {{label, parents, base}})")
    parsed = validate(PairsFile, document)
    folder = path.parent
    benchmark = _benchmark_reference(parsed.benchmark, folder)
    pairs: list[PairSpec] = []
    for index, entry in enumerate(parsed.pairs):

        def where(key: str, index: int = index, label: str = entry.label) -> str:
            return f"{document.where(('pairs', index, key))} ({label})"

        resolved = tuple(_path(p, folder) for p in entry.parents)
        if resolved[0] == resolved[1]:
            raise EvomergeError(f"{where('parents')}: the two parents are the same folder")
        base = entry.base if entry.base is not None else entry.parents[0]
        if _path(base, folder) not in resolved:
            raise EvomergeError(f"{where('base')}: 'base' must be one of the two parents (SLERP's t = 0 end); put a common pre-trained model under 'ancestor'")
        pairs.append(
            PairSpec(
                label=entry.label,
                parents=resolved,
                base=_path(base, folder),
                ancestor=_path(entry.ancestor, folder) if entry.ancestor else None,
                params=entry.params,
                benchmark=_benchmark_reference(entry.benchmark, folder) or benchmark,
            )
        )
    labels = [pair.label for pair in pairs]
    duplicate = next((index for index, label in enumerate(labels) if labels.index(label) != index), None)
    if duplicate is not None:
        raise EvomergeError(f"{document.where(('pairs', duplicate, 'label'))}: label {labels[duplicate]!r} is used twice")
    return pairs


def _path(reference: str, folder: Path) -> str:
    path = Path(reference).expanduser()
    return str(path if path.is_absolute() else folder / path)


def _benchmark_reference(value: Optional[str], folder: Path) -> Optional[str]:
    """A shipped benchmark's name stays a name; anything else is a path next to the pairs file."""
    if value is None:
        return None
    if value in shipped_benchmarks() or is_lm_eval_spec(value):
        return value
    return _path(value, folder)


def toy_pairs(
    scales: Sequence[str],
    root: Optional[Path] = None,
    *,
    device: str = "auto",
    say: Optional[Callable[[str], None]] = None,
    pair: Optional[Sequence[str]] = None,
    seed: int = 0,
) -> list[PairSpec]:
    """The toy domain's pair at each scale (default Instruct × Instruct-CPT-SFT; base = the first,
    kinship against the toy's Base, the toy's domain benchmark), trained with `seed`, built if needed."""
    from evomerge.devices import resolve_device
    from evomerge.toy.build import SCALES
    from evomerge.toy.pair import TOY_PAIR, toy_pair

    unknown = [scale for scale in scales if scale not in SCALES]
    if unknown:  # before the first scale is built
        raise EvomergeError(f"unknown toy scale {unknown[0]!r}; choose from {', '.join(SCALES)}")
    resolve_device(device)
    pairs = []
    for scale in scales:
        built = toy_pair(scale, root, device=device, say=say, names=pair or TOY_PAIR, seed=seed)
        base, other = str(built.base), str(built.other)
        pairs.append(PairSpec(scale, (base, other), base, ancestor=str(built.ancestor), benchmark=str(built.benchmark)))
    return pairs


# ----- checks: everything before the first weight is read ------------------------------------


@dataclass
class CheckedPair:
    spec: PairSpec
    infos: dict[str, ParentInfo]  # parent reference → headers
    ancestor: Optional[ParentInfo]
    benchmark: str  # the reference: a shipped benchmark's name or a path
    loaded: Benchmark
    holdout_items: int
    params: float
    search: Optional[Prepared] = None  # the pair's search, checked (its storage is opened in the output folder)

    @property
    def items(self) -> int:
        return len(self.loaded)


def check_options(settings: MapSettings) -> None:
    """Flag-level checks that need no pair (so --toy does not build anything for a typo)."""
    from evomerge.merge.writer import check_output

    if not settings.sweep:
        raise EvomergeError("--sweep gives no t values")
    if settings.search_trials < 0:
        raise EvomergeError(f"--search must be 0 (no search) or a number of trials, got {settings.search_trials}")
    if settings.search_trials and not 0 < settings.holdout < 1:
        raise EvomergeError(f"--search needs --holdout in (0, 1), got {settings.holdout}: the searched recipe is judged on items the search never saw")
    if settings.resamples < MIN_RESAMPLES:
        raise EvomergeError(f"--resamples must be at least {MIN_RESAMPLES}, got {settings.resamples}")
    if settings.protocol not in ("paper", "loglik"):
        raise EvomergeError(f"unknown protocol {settings.protocol!r}; expected paper or loglik")
    if settings.batch_size < 1:
        raise EvomergeError(f"--batch-size must be at least 1, got {settings.batch_size}")
    resolve_device(settings.device)
    resolve_dtype(settings.dtype)
    check_output(settings.out, settings.overwrite)
    if settings.search_trials:
        from evomerge.space import load_space

        load_space(settings.space)


def check_map(settings: MapSettings) -> list[CheckedPair]:
    """Every check that needs no weights: flags, parents' and ancestors' headers, benchmarks, the
    search space against each pair. Raises EvomergeError with one line."""
    check_options(settings)
    if not settings.pairs:
        raise EvomergeError("no pairs to map: give --pairs FILE.yaml or --toy SCALES")
    from evomerge.search.run import check_search

    benchmarks: dict[str, Benchmark] = {}
    checked = []
    for pair in settings.pairs:
        reference = settings.benchmark or pair.benchmark
        if reference is None:
            raise EvomergeError(f"pair {pair.label}: no benchmark (give --benchmark, or benchmark: in the pairs file)")
        if is_lm_eval_spec(reference):
            raise EvomergeError(f"pair {pair.label}: map needs per-item results from evomerge's scorer; use a JSONL benchmark, not {reference}")
        if reference not in benchmarks:
            benchmarks[reference] = load_benchmark(reference)
        benchmark = benchmarks[reference]
        if settings.protocol == "loglik" and any(item.type == "exact" for item in benchmark.items):
            raise EvomergeError(f"{benchmark.name}: loglik scoring needs mc/tf items; exact items need --protocol paper")
        held = 0
        if settings.search_trials:
            _, held_out = benchmark.split_holdout(settings.holdout)
            held = len(held_out)
            if not held:
                raise EvomergeError(f"pair {pair.label}: --holdout {settings.holdout} leaves no held-out item in {benchmark.name}")
        infos = {parent: inspect_parent(parent) for parent in pair.parents}
        check_parents(list(infos.values()))
        ancestor = None
        if pair.ancestor is not None:
            ancestor = inspect_parent(pair.ancestor)
            try:
                check_parents([infos[pair.parents[0]], ancestor])
            except EvomergeError as error:
                raise EvomergeError(f"pair {pair.label}: the ancestor does not fit the parents ({error})") from None
        search = None
        if settings.search_trials:
            search = check_search(_search_settings(settings, pair, reference), infos=list(infos.values()))
        params = pair.params or float(infos[pair.parents[0]].parameter_count)
        checked.append(CheckedPair(pair, infos, ancestor, reference, benchmark, held, params, search))
    return checked


def _search_settings(settings: MapSettings, pair: PairSpec, benchmark: str):
    """The pair's search as `evomerge search` settings (its storage is set once the output folder exists)."""
    from evomerge.search.study import SearchSettings

    return SearchSettings(
        parents=list(pair.parents),
        benchmarks=[benchmark],
        base=pair.base,
        space=settings.space,
        holdout=settings.holdout,
        seed=settings.seed,
        device=settings.device,
        dtype=settings.dtype,
        protocol=settings.protocol,
        batch_size=settings.batch_size,
        trials=settings.search_trials,
        study=f"map-{pair.label}",
    )


def steps_of(pair: CheckedPair, settings: MapSettings) -> int:
    """Scorings of one pair, for the progress bar: parents, inner sweep points, paper, search."""
    inner = sum(1 for t in settings.sweep if t not in (0.0, 1.0))
    search = settings.search_trials + 1 if settings.search_trials else 0
    return 2 + inner + 1 + search


# ----- the run -------------------------------------------------------------------------------


@dataclass
class MapResult:
    """A finished map: one `MapRow` per parent, sweep point, paper schedule and searched recipe
    (accuracy, gain and synergy with their intervals), the output folder and the files in it."""

    rows: list[MapRow]
    out: Path
    files: list[str]
    seconds: float

    def summary_table(self) -> list[dict[str, str]]:
        """Per scale: the best sweep point, the paper's schedule, the searched recipe (for a terminal)."""
        return highlights(self.rows)


class _Counter:
    def __init__(self, total: int, progress: Optional[Progress]):
        self.done, self.total, self.progress = 0, total, progress

    def say(self, description: str, advance: int = 0) -> None:
        self.done += advance
        if self.progress is not None:
            self.progress(self.done, self.total, description)


def run_map(settings: MapSettings, progress: Optional[Progress] = None) -> MapResult:
    """Check everything, map every pair, then write the CSVs, figures, report and summary into
    `settings.out`, all or nothing (a failure or Ctrl-C leaves no half-written folder)."""
    start = time.perf_counter()
    checked = check_map(settings)
    counter = _Counter(sum(steps_of(pair, settings) for pair in checked), progress)
    rows: list[MapRow] = []
    kinships: dict[str, Optional[Kinship]] = {}
    items: list[tuple] = []
    pair_summaries = []
    with staged_folder(Path(settings.out)) as folder:
        for pair in checked:
            pair_start = time.perf_counter()
            mapped = _map_pair(pair, settings, folder, counter)
            free_accelerator_memory()  # the pair's parents and model are gone with _map_pair's frame
            rows += mapped["rows"]
            kinships[pair.spec.label] = mapped["kinship"]
            items += mapped["items"]
            pair_summaries.append({**mapped["summary"], "seconds": round(time.perf_counter() - pair_start, 2)})
        counter.say("writing tables, figures and the report")
        files = _write_outputs(folder, settings, checked, rows, kinships, items, pair_summaries, time.perf_counter() - start)
    return MapResult(rows, Path(settings.out), files, time.perf_counter() - start)


def _map_pair(pair: CheckedPair, settings: MapSettings, folder: Path, counter: _Counter) -> dict:
    spec, label = pair.spec, pair.spec.label
    first, second = spec.parents
    names = _display_names(pair)
    counter.say(f"{label}: loading parents")
    infos = [pair.infos[first], pair.infos[second]]
    # One Merger and one tokenizer for the pair: the sweep, the paper's schedule and the search.
    merger, tokenizer = load_pair(infos, spec.base, device=settings.device, dtype=settings.dtype)
    dtype_name = recipe_dtype_name(settings.dtype, infos)
    scorer = Scorer.load(pair.loaded, tokenizer, protocol=settings.protocol, batch_size=settings.batch_size)

    profile = None
    if pair.ancestor is not None:
        counter.say(f"{label}: kinship against the ancestor")
        tensors_1 = merger.parents[merger.parent_name(first)].tensors
        tensors_2 = merger.parents[merger.parent_name(second)].tensors
        profile = kinship(tensors_1, tensors_2, stream_tensors(pair.ancestor), layer_index)
    kin = profile.overall if profile is not None else math.nan

    results: dict[str, ScoreResult] = {}
    for parent in spec.parents:
        counter.say(f"{label}: scoring parent {names[parent]}")
        results[parent] = scorer.score(merger.show_parent(parent), 1.0)
        counter.say(f"{label}: scored parent {names[parent]}", advance=1)
    # All items share one set of resamples per pair: every interval of the pair is paired.
    bootstrap = Bootstrap(pair.items, settings.resamples, seed=settings.seed)
    vector_1, vector_2 = results[first].correct, results[second].correct

    def row(result: ScoreResult, merge: str, name: str, t: Optional[float]) -> MapRow:
        metrics = merge_metrics(result.correct, vector_1, vector_2, bootstrap)
        return MapRow.from_metrics(metrics, label=label, params=pair.params, merge=merge, name=name, t=t, items="all", kinship=kin)

    rows = [row(results[p], "parent", names[p], 0.0 if p == spec.base else 1.0) for p in spec.parents]
    items = [(label, f"parent {names[p]}", "all", results[p].item_ids, results[p].correct) for p in spec.parents]
    for t in settings.sweep:
        name = f"t={t:g}"
        if t in (0.0, 1.0):
            # SLERP's coefficients at t = 0 and 1 are exactly (1, 0) and (0, 1): the merge is the
            # base or the other parent bit for bit, already scored.
            result = results[spec.base if t == 0.0 else spec.other]
        else:
            counter.say(f"{label}: SLERP {name}")
            model = merger.apply(slerp_recipe(spec.base, spec.other, t, dtype_name))
            result = scorer.score(model, 1.0)
            counter.say(f"{label}: SLERP {name}", advance=1)
        rows.append(row(result, "sweep", name, t))
        items.append((label, name, "all", result.item_ids, result.correct))

    counter.say(f"{label}: the paper's schedule")
    paper = scorer.score(merger.apply(paper_recipe(spec.base, spec.other, dtype_name)), 1.0)
    counter.say(f"{label}: the paper's schedule", advance=1)
    rows.append(row(paper, "paper", "paper schedule", None))
    items.append((label, "paper schedule", "all", paper.item_ids, paper.correct))

    summary = {
        "label": label,
        "parents": list(spec.parents),
        "names": [names[p] for p in spec.parents],
        "base": spec.base,
        "ancestor": spec.ancestor,
        "params": pair.params,
        "benchmark": pair.benchmark,
        "items": pair.items,
        "kinship": None if math.isnan(kin) else kin,
    }
    if pair.search is not None:
        searched = _search_pair(pair, settings, folder, merger, tokenizer, results, kin, counter)
        if searched is not None:
            search_row, held, summary["search"] = searched
            rows.append(search_row)
            items.append((label, search_row.name, "holdout", held.item_ids, held.correct))
    return {"rows": rows, "kinship": profile, "items": items, "summary": summary}


def _search_pair(pair, settings, folder, merger, tokenizer, parent_results, kin, counter):
    """Run the pair's search on the map's Merger and tokenizer, its parents' scores taken from
    the map's own; score its best recipe on the held-out items; export the study."""
    from evomerge.search.export import export_all
    from evomerge.search.objective import TrialRunner, parent_scores_from_results
    from evomerge.search.run import holdout_result, optimise
    from evomerge.search.study import close_storage, finished_count, open_storage

    label = pair.spec.label
    study_folder = folder / "searches" / label
    search_settings = replace(pair.search.settings, storage=f"sqlite:///{study_folder.resolve() / 'study.db'}")
    prepared = replace(pair.search, settings=search_settings, storage=open_storage(search_settings.storage_url()))
    try:
        runner = TrialRunner.load(search_settings, prepared.infos, prepared.space, merger=merger, tokenizer=tokenizer)
        objective = runner.objectives[0]
        parent_scores = parent_scores_from_results(parent_results, objective.benchmark, objective.holdout, search_settings.fidelities)
        before = counter.done
        counter.say(f"{label}: search")

        def on_trial(study, _trial) -> None:
            counter.done = before + min(finished_count(study), settings.search_trials)
            counter.say(f"{label}: search trial {counter.done - before}/{settings.search_trials}")

        search_start = time.perf_counter()
        study, _ = optimise(prepared, on_trial=on_trial, runner=runner, parent_scores=lambda: parent_scores)
        counter.done = before + settings.search_trials
        counter.say(f"{label}: searched recipe on held-out items")
        held = holdout_result(study, runner)
        result = None
        if held is not None:
            # The parents on the same held-out items, taken from their results on every item.
            vector_1, vector_2 = (subset_result(parent_results[p], held.result.item_ids).correct for p in pair.spec.parents)
            bootstrap = Bootstrap(held.result.n, settings.resamples, seed=[settings.seed, 1])
            metrics = merge_metrics(held.result.correct, vector_1, vector_2, bootstrap)
            name = f"search trial {held.trial.number}"
            row = MapRow.from_metrics(metrics, label=label, params=pair.params, merge="search", name=name, t=None, items="holdout", kinship=kin)
            info = {
                "study": study.study_name,
                "folder": f"searches/{label}",
                "trials": settings.search_trials,
                "best_trial": held.trial.number,
                "search_accuracy": held.scores["search_accuracy"],
                "holdout_accuracy": held.scores["holdout_accuracy"],
                "holdout_items": held.scores["holdout_n"],
            }
            result = (row, held.result, info)
        counter.say(f"{label}: search done", advance=1)
        export_all(study, study_folder, time.perf_counter() - search_start)
    finally:
        close_storage(prepared.storage)  # its SQLite file is renamed with the output folder
    return result


def stream_tensors(info: ParentInfo) -> Iterator[tuple[str, torch.Tensor]]:
    """A checkpoint's tensors one at a time (safetensors), so kinship never holds a third model."""
    if info.adapter_base is not None or any(path.suffix == ".bin" for path in info.weight_files):
        yield from load_parent(info).tensors.items()
        return
    from safetensors import safe_open

    for weight_file in info.weight_files:
        with safe_open(str(weight_file), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)


def _display_names(pair: CheckedPair) -> dict[str, str]:
    """A short name per parent (`files.parent_labels`: its folder's name, else its lineage's label)."""
    return parent_labels(list(pair.infos))


# ----- outputs -------------------------------------------------------------------------------


def _notes(settings: MapSettings, checked: Sequence[CheckedPair]) -> list[str]:
    sizes = sorted({pair.items for pair in checked})
    notes = [
        f"Benchmark{'s' if len({p.benchmark for p in checked}) > 1 else ''}: "
        + ", ".join(sorted({Path(p.benchmark).name for p in checked}))
        + f" ({'/'.join(str(s) for s in sizes)} items), protocol {settings.protocol}. Parents, sweep points and the "
        "paper's schedule are scored on every item: none of them is chosen by looking at the benchmark.",
        f"SLERP with one global t over {len(settings.sweep)} points ({', '.join(f'{t:g}' for t in settings.sweep)}); base_model is "
        "the pair's base parent, so t = 0 is that parent and t = 1 the other one, exactly: those points reuse the parents' scores.",
        "The paper's schedule: t for self_attn [0, 0.5, 0.3, 0.7, 1], for mlp [1, 0.5, 0.7, 0.3, 0], 0.5 elsewhere.",
        f"Intervals: 95% percentile bootstrap over items, {settings.resamples} resamples, seed {settings.seed}. The gain "
        "(merged − max(P1, P2)) and synergy (merged − (P1 + P2)/2) intervals are paired: the merge and both parents are "
        "read on the same resampled items, and the best parent is taken in each resample, which makes the gain's "
        "interval conservative when the parents are close.",
        f"Each interval holds for one point: across {sum(0 < t < 1 for t in settings.sweep)} merges of the sweep, an isolated point above zero can "
        "happen by chance (about one in forty per point where the true gain is zero), and the best t is chosen on the "
        "same items, so its gain is optimistic.",
        "Kinship: cosine similarity of the parents' task vectors (parent − ancestor), over all weights and per layer; "
        "measured where the pair names an ancestor.",
    ]
    if settings.search_trials:
        held = sorted({pair.holdout_items for pair in checked})
        notes.append(
            f"Search: {settings.search_trials} trials per pair (space {settings.space}, seed {settings.seed}), its own study "
            f"under searches/<scale>/; it never saw the held-out items ({settings.holdout:.0%} of the benchmark by a hash of "
            f"item ids: {'/'.join(str(h) for h in held)} items). Its best recipe, and both parents for its gain, are "
            "scored on those held-out items only, so its interval is wider than the sweep's."
        )
    if settings.command:
        notes.append(f"Command: {settings.command}")
    return notes


def _absolute_pair(pair: CheckedPair) -> dict:
    spec = pair.spec
    entry = {"label": spec.label, "parents": [str(Path(p).resolve()) for p in spec.parents], "base": str(Path(spec.base).resolve())}
    if spec.ancestor:
        entry["ancestor"] = str(Path(spec.ancestor).resolve())
    entry["params"] = pair.params
    shipped = pair.benchmark in shipped_benchmarks()
    entry["benchmark"] = pair.benchmark if shipped else str(Path(pair.benchmark).resolve())
    return entry


def _write_outputs(folder, settings, checked, rows, kinships, items, pair_summaries, seconds) -> list[str]:
    from evomerge.analysis.plots import format_params

    write_map_csv(rows, folder / "map.csv")
    write_kinship_csv(kinships, folder / "kinship.csv")
    write_items_csv(items, folder / "items.csv")
    figures = draw_all(rows, kinships, folder / "figures")
    scales = ", ".join(f"{pair.spec.label} ({format_params(pair.params)})" for pair in checked)
    write_report(rows, figures, folder / "report.html", title=f"Where merging beats both parents: {scales}", notes=_notes(settings, checked))
    # The pairs as run, with absolute paths: `evomerge map --pairs <out>/pairs.yaml` reruns the map from anywhere.
    pairs_file = {"pairs": [_absolute_pair(pair) for pair in checked]}
    (folder / "pairs.yaml").write_text(yaml.safe_dump(pairs_file, sort_keys=False), encoding="utf-8")
    summary = {
        "settings": {key: value for key, value in asdict(settings).items() if key not in ("pairs", "out", "overwrite")},
        "pairs": pair_summaries,
        "table": summary_rows(rows),
        "wall_s": round(seconds, 2),
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
    return files

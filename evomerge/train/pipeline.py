"""A chain of training stages from one YAML file; every stage's checkpoint is kept.

    model: ./instruct            # the starting model
    out: ./parents               # each stage writes out/<label>, e.g. parents/instruct-CPT-SFT
    stages:
      - {strategy: cpt, data: corpus.jsonl, epochs: 5, lr: 2.0e-5, lr_scheduler: cosine, warmup_ratio: 0.1}
      - {strategy: sft, data: sft.jsonl, epochs: 1, lr: 2.0e-5}
      - {strategy: dpo, data: preferences.jsonl, beta: 0.05, lr: 5.0e-7}
      - {strategy: orpo, data: preferences.jsonl, beta: 0.1, lr: 3.0e-6, from: sft}

A stage trains on the previous stage's output, or on the output of the stage named in `from`
(stages are named by their strategy unless given a `name`), as the paper trained DPO and ORPO each
from the SFT checkpoint. Relative paths are read from the pipeline file's folder. Every data file
is validated before the first stage starts.
"""

from __future__ import annotations

import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Callable, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from evomerge.config import load_yaml_file, validate
from evomerge.errors import EvomergeError
from evomerge.shipped import resolve_pipeline
from evomerge.train.data import load_records
from evomerge.train.trainers import NAMED_TEMPLATES, TrainResult, TrainSettings, check_model_folder, default_label, train

# A stage's label (and so its folder) is its parent's label + its strategy: not a key of its own.
NOT_STAGE_KEYS = ("model", "out", "overwrite", "label")
STAGE_KEYS = {f.name for f in fields(TrainSettings)} - set(NOT_STAGE_KEYS) | {"name", "from"}


class PipelineError(EvomergeError):
    pass


def _stage_model() -> type[BaseModel]:
    """A stage's keys and types: TrainSettings' own fields (less those the pipeline sets), its
    `name`, and `from` (the stage it trains on)."""
    hints = typing.get_type_hints(TrainSettings)
    defined = {}
    for f in fields(TrainSettings):
        if f.name in NOT_STAGE_KEYS:
            continue
        required = f.default is MISSING and f.default_factory is MISSING
        defined[f.name] = (hints[f.name], ... if required else None)
    defined["name"] = (Optional[str], None)
    defined["from_"] = (Optional[str], Field(None, alias="from"))
    return create_model("StageConfig", __config__=ConfigDict(extra="forbid", populate_by_name=False), **defined)


StageConfig = _stage_model()


class PipelineFile(BaseModel):
    """A pipeline file: the starting model, the output root, and the stages in order."""

    model_config = ConfigDict(extra="forbid")
    model: Optional[str] = None
    out: Optional[str] = None
    stages: list[StageConfig]

    @field_validator("stages", mode="before")
    @classmethod
    def _stages(cls, value):
        if not isinstance(value, list) or not value:
            raise ValueError("a pipeline needs 'model', 'out' and a non-empty list of 'stages'")
        for stage in value:
            if not isinstance(stage, dict) or "strategy" not in stage or "data" not in stage:
                raise ValueError("a stage needs 'strategy' and 'data'")
        return value


def load_pipeline(path: Union[str, Path], model: Optional[Union[str, Path]] = None, out: Optional[Union[str, Path]] = None) -> tuple[Path, Path, list[dict]]:
    """(starting model, output root, stages) with paths resolved and every stage checked;
    `model` and `out` replace the file's own (a shipped pipeline on your model); `path` may be a
    shipped pipeline's name (`small_cpu`)."""
    path = resolve_pipeline(path, PipelineError)  # a shipped pipeline's name, or a file
    document = load_yaml_file(path, PipelineError, what="pipeline file")
    if not isinstance(document.data, dict):
        raise PipelineError(f"{path}: a pipeline needs 'model', 'out' and a non-empty list of 'stages'")
    parsed = validate(PipelineFile, document, PipelineError)
    for key, override in (("model", model), ("out", out)):
        if override is None and not isinstance(getattr(parsed, key), str):
            raise PipelineError(f"{path}: '{key}' must be a path")
    folder = path.parent
    model = Path(model).resolve() if model is not None else _resolve(folder, parsed.model)
    check_model_folder(model)
    stages, names = [], set()
    for index, (raw, config) in enumerate(zip(document.data["stages"], parsed.stages)):
        where = document.where(("stages", index))
        stage = {key: value for key, value in config.model_dump(by_alias=True).items() if key in raw}
        stage["name"] = str(stage.get("name") or stage["strategy"])
        if stage["name"] in names:
            raise PipelineError(f"{where}: two stages are named {stage['name']!r}; give one a 'name'")
        if "from" in stage and stage["from"] not in names:
            raise PipelineError(f"{where}: 'from: {stage['from']}' names no earlier stage")
        names.add(stage["name"])
        stage["data"] = str(_resolve(folder, stage["data"]))
        if isinstance(stage.get("chat_template"), str) and stage["chat_template"].lower() not in NAMED_TEMPLATES:
            stage["chat_template"] = str(_resolve(folder, stage["chat_template"]))  # a file or folder beside the pipeline
        load_records(stage["data"], stage["strategy"])  # every data file is checked up front
        stages.append(stage)
    trained_from = set(_parents(stages))
    for stage in stages:
        if stage.get("lora") and not stage.get("merge_lora") and stage["name"] in trained_from:
            raise PipelineError(f"{path}: stage {stage['name']!r} writes a LoRA adapter, which a later stage cannot train from; add merge_lora: true")
    return model, (Path(out).resolve() if out is not None else _resolve(folder, parsed.out)), stages


def run_pipeline(
    path: Union[str, Path],
    *,
    model: Optional[Union[str, Path]] = None,
    out: Optional[Union[str, Path]] = None,
    overwrite: bool = False,
    device: str = "auto",
    on_stage: Optional[Callable[[int, int, dict], None]] = None,
    on_log: Optional[Callable[[int, int, float], None]] = None,
) -> list[TrainResult]:
    model, out_root, stages = load_pipeline(path, model, out)
    outputs: dict[Optional[str], Path] = {None: model}
    results = []
    for index, (stage, parent_name) in enumerate(zip(stages, _parents(stages))):
        parent = outputs[parent_name]
        label = default_label(parent, stage["strategy"])
        options = {k: v for k, v in stage.items() if k not in ("name", "from")}
        options.setdefault("device", device)
        settings = TrainSettings(model=str(parent), out=str(out_root / label), overwrite=overwrite, label=label, **options)
        if on_stage is not None:
            on_stage(index, len(stages), {**stage, "label": label})
        result = train(settings, on_log=on_log)
        outputs[stage["name"]] = result.out
        results.append(result)
    return results


def _parents(stages: list[dict]) -> list[Optional[str]]:
    """The name of the stage each stage trains on: the one named in `from`, else the one before
    (None: the starting model)."""
    return [stage.get("from", stages[index - 1]["name"] if index else None) for index, stage in enumerate(stages)]


def _resolve(folder: Path, value: str) -> Path:
    candidate = Path(value).expanduser()
    return (candidate if candidate.is_absolute() else folder / candidate).resolve()

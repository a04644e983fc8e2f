"""`run_pipeline(file.yaml)`: a chain of stages, each trained on the one before (or the one named
in `from`), every checkpoint kept with its lineage; the shipped pipelines; bad pipelines are
refused before the first stage trains."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from evomerge.errors import EvomergeError
from evomerge.files import LINEAGE_FILE
from evomerge.merge.parents import inspect_parent
from evomerge.train.pipeline import load_pipeline, run_pipeline
from evomerge.train.trainers import DEFAULT_BETA

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "evomerge" / "data" / "recipes" / "train"


def write_pipeline(folder: Path, text: str, name: str = "pipeline.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def lineage(folder: Path) -> dict:
    return json.loads((folder / LINEAGE_FILE).read_text())


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def workdir(tmp_path, train_data) -> Path:
    """A folder with the data files beside the pipeline (relative paths are read from there)."""
    for name, path in train_data.items():
        shutil.copy(path, tmp_path / f"{name}.jsonl")
    return tmp_path


# ----- a chain, and a branch ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain(train_base, train_data, tmp_path_factory):
    """Instruct → SFT → DPO, and ORPO branching from SFT (as the paper did), a few steps each."""
    folder = tmp_path_factory.mktemp("pipeline")
    for name, path in train_data.items():
        shutil.copy(path, folder / f"{name}.jsonl")
    path = write_pipeline(
        folder,
        f"""
model: {train_base}
out: ./parents
stages:
  - {{strategy: sft, data: sft.jsonl, lr: 1.0e-3, max_steps: 3, max_length: 64, device: cpu}}
  - {{strategy: dpo, data: pref.jsonl, lr: 1.0e-3, max_steps: 3, max_length: 64, beta: 0.2, device: cpu}}
  - {{strategy: orpo, data: pref.jsonl, lr: 1.0e-3, max_steps: 3, max_length: 64, from: sft, device: cpu}}
""",
    )
    seen_stages = []
    results = run_pipeline(path, on_stage=lambda index, count, stage: seen_stages.append((index, count, stage["label"])))
    return folder, results, seen_stages


def test_every_stage_checkpoint_is_kept(chain):
    folder, results, _ = chain
    parents = folder / "parents"
    assert sorted(p.name for p in parents.iterdir()) == ["Instruct-SFT", "Instruct-SFT-DPO", "Instruct-SFT-ORPO"]
    assert [r.out for r in results] == [parents / "Instruct-SFT", parents / "Instruct-SFT-DPO", parents / "Instruct-SFT-ORPO"]
    for result in results:
        assert (result.out / "model.safetensors").is_file() and (result.out / LINEAGE_FILE).is_file()
        assert lineage(result.out) == result.lineage


def test_the_lineage_chains_stage_to_stage(chain, train_base, train_data):
    _, (sft, dpo, orpo), _ = chain
    assert lineage(sft.out)["label"] == "Instruct-SFT"
    assert Path(lineage(sft.out)["parent_model"]) == train_base.resolve()
    assert lineage(dpo.out)["label"] == "Instruct-SFT-DPO"
    assert Path(lineage(dpo.out)["parent_model"]) == sft.out.resolve()
    assert lineage(dpo.out)["hyperparameters"]["beta"] == 0.2
    assert lineage(orpo.out)["label"] == "Instruct-SFT-ORPO"
    assert Path(lineage(orpo.out)["parent_model"]) == sft.out.resolve(), "'from: sft' trains on the SFT checkpoint"
    assert lineage(orpo.out)["hyperparameters"]["beta"] == DEFAULT_BETA["orpo"]
    assert lineage(sft.out)["data_sha256"] == sha256(train_data["sft"])
    assert lineage(dpo.out)["data_sha256"] == sha256(train_data["pref"])
    assert all(lineage(r.out)["hyperparameters"]["lr"] == 1.0e-3 for r in (sft, dpo, orpo))
    assert inspect_parent(dpo.out).lineage["label"] == "Instruct-SFT-DPO"


def test_each_stage_trains_on_the_previous_output(chain, train_base):
    _, (sft, dpo, orpo), _ = chain
    base, after_sft, after_dpo, after_orpo = weights(train_base), weights(sft.out), weights(dpo.out), weights(orpo.out)
    for earlier, later in ((base, after_sft), (after_sft, after_dpo), (after_sft, after_orpo), (after_dpo, after_orpo)):
        assert any(not torch.equal(earlier[k], later[k]) for k in earlier)

    # DPO moved from SFT's weights, not from the base's: it is nearer the SFT checkpoint.
    def distance(a, b):
        return sum((a[k] - b[k]).pow(2).sum().item() for k in a)

    assert distance(after_dpo, after_sft) < distance(after_dpo, base)
    assert distance(after_orpo, after_sft) < distance(after_orpo, base)


def test_on_stage_reports_each_stage(chain):
    _, _, seen = chain
    assert seen == [(0, 3, "Instruct-SFT"), (1, 3, "Instruct-SFT-DPO"), (2, 3, "Instruct-SFT-ORPO")]


def test_rerun_without_overwrite_is_refused_and_keeps_the_checkpoints(chain):
    folder, results, _ = chain
    before = {r.out: sha256(r.out / "model.safetensors") for r in results}
    with pytest.raises(EvomergeError) as caught:
        run_pipeline(folder / "pipeline.yaml")
    assert "overwrite" in str(caught.value)
    assert {r.out: sha256(r.out / "model.safetensors") for r in results} == before
    assert not [p for p in (folder / "parents").iterdir() if p.name.startswith(".")]


def test_model_and_out_overrides(train_base, workdir):
    path = write_pipeline(
        workdir,
        "model: ./not-here\nout: ./not-used\nstages:\n  - {strategy: cpt, data: cpt.jsonl, max_steps: 1, max_length: 64}\n",
    )
    out = workdir / "elsewhere"
    (result,) = run_pipeline(path, model=train_base, out=out, device="cpu")
    assert result.out == out.resolve() / "Instruct-CPT"
    assert (result.out / "model.safetensors").is_file()
    assert not (workdir / "not-used").exists()


def test_relative_paths_are_read_from_the_pipeline_folder(train_base, workdir, tmp_path_factory, monkeypatch):
    path = write_pipeline(workdir, f"model: {train_base}\nout: parents\nstages:\n  - {{strategy: sft, data: sft.jsonl, max_steps: 1, max_length: 64}}\n")
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    (result,) = run_pipeline(path, device="cpu")
    assert result.out == (workdir / "parents" / "Instruct-SFT").resolve()
    assert Path(result.lineage["data"]) == (workdir / "sft.jsonl").resolve()


def test_a_lora_stage_merged_can_be_trained_on(train_base, workdir):
    path = write_pipeline(
        workdir,
        f"""model: {train_base}
out: parents
stages:
  - {{strategy: sft, data: sft.jsonl, lora: true, merge_lora: true, lr: 1.0e-2, max_steps: 2, max_length: 64}}
  - {{strategy: dpo, data: pref.jsonl, max_steps: 1, max_length: 64}}
""",
    )
    sft, dpo = run_pipeline(path, device="cpu")
    assert (sft.out / "model.safetensors").is_file() and not (sft.out / "adapter_config.json").exists()
    assert dpo.lineage["label"] == "Instruct-SFT-DPO"


def test_a_last_lora_stage_may_stay_an_adapter(train_base, workdir):
    path = write_pipeline(
        workdir,
        f"model: {train_base}\nout: parents\nstages:\n  - {{strategy: sft, data: sft.jsonl, lora: true, max_steps: 1, max_length: 64}}\n",
    )
    (result,) = run_pipeline(path, device="cpu")
    assert (result.out / "adapter_config.json").is_file()
    assert inspect_parent(result.out).adapter_base.path.resolve() == train_base.resolve()


# ----- the shipped pipelines ------------------------------------------------------------------------


def test_paper_pipeline_has_the_papers_hyperparameters():
    data = yaml.safe_load((SHIPPED / "paper_8b.yaml").read_text())
    stages = {stage.get("name", stage["strategy"]): stage for stage in data["stages"]}
    assert [s["strategy"] for s in data["stages"]] == ["cpt", "sft", "dpo", "orpo"]
    assert stages["cpt"]["lr"] == 2e-5 and stages["cpt"]["lr_scheduler"] == "cosine" and stages["cpt"]["warmup_ratio"] == 0.1
    assert stages["sft"]["lr"] == 2e-5 and stages["sft"]["epochs"] == 1
    assert stages["dpo"]["beta"] == 0.05 and stages["dpo"]["lr"] == 5e-7
    assert stages["orpo"]["beta"] == 0.1 and stages["orpo"]["lr"] == 3e-6
    assert stages["orpo"].get("from") == "sft", "the paper trained ORPO from the SFT checkpoint"
    for stage in data["stages"]:  # numbers, not strings (YAML reads 2e-5 without a dot as a string)
        assert all(isinstance(stage[k], (int, float)) for k in ("lr", "beta", "epochs", "warmup_ratio") if k in stage), stage


@pytest.mark.parametrize("name", ["paper_8b.yaml", "small_cpu.yaml"])
def test_shipped_pipelines_load(name, train_base, tmp_path):
    """Every key is one a stage takes; the small pipeline's example data is valid as shipped."""
    path = SHIPPED / name
    if name == "small_cpu.yaml":
        model, out, stages = load_pipeline("small_cpu", model=train_base, out=tmp_path / "parents")  # by name
        assert model == train_base.resolve() and len(stages) == 4
    else:
        with pytest.raises(EvomergeError, match="not found"):  # its data paths are placeholders
            load_pipeline(path, model=train_base, out=tmp_path / "parents")
    assert not (tmp_path / "parents").exists()


def test_small_cpu_pipeline_runs_on_a_tiny_model(train_base, tmp_path):
    results = run_pipeline(SHIPPED / "small_cpu.yaml", model=train_base, out=tmp_path / "parents", device="cpu")
    labels = [r.lineage["label"] for r in results]
    assert labels == ["Instruct-CPT", "Instruct-CPT-SFT", "Instruct-CPT-SFT-DPO", "Instruct-CPT-SFT-ORPO"]
    assert sorted(p.name for p in (tmp_path / "parents").iterdir()) == sorted(labels)
    for result in results:
        assert result.losses and all(loss == loss for loss in result.losses)


# ----- bad pipelines: refused before the first stage, nothing written ------------------------------


STAGE = "{strategy: sft, data: sft.jsonl, max_steps: 1, max_length: 64}"


def refuse(path: Path, *words, **kwargs) -> str:
    out = path.parent / "parents"
    crash = None
    try:
        run_pipeline(path, device="cpu", **kwargs)
    except EvomergeError as caught:
        message = str(caught)
    except Exception as caught:  # noqa: BLE001
        crash = caught
    else:
        pytest.fail(f"TRAIN BUG: bad pipeline ({', '.join(words)}) was accepted")
    if crash is not None:
        pytest.fail(f"TRAIN BUG: bad pipeline ({', '.join(words)}) crashes with {type(crash).__name__}: {crash}")
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)
    assert not out.exists(), f"a refused pipeline wrote {sorted(p.name for p in out.iterdir())}"
    return message


# One bad pipeline per row: (its model, its stages, words the one-line error holds). WORKDIR is the
# pipeline's folder; "no-weights" is a copy of the model without its weights.
BAD_PIPELINES = {
    "a-later-stage-with-bad-data": ("MODEL", [STAGE, "{strategy: dpo, data: sft.jsonl}"], ["WORKDIR/sft.jsonl:1:", "chosen"]),
    "a-later-stage-with-empty-data": ("MODEL", [STAGE, "{strategy: dpo, data: empty.jsonl}"], ["empty.jsonl", "empty"]),
    "a-later-stage-with-missing-data": ("MODEL", [STAGE, "{strategy: dpo, data: nowhere.jsonl}"], ["nowhere.jsonl"]),
    "from-names-no-earlier-stage": ("MODEL", [STAGE, "{strategy: dpo, data: pref.jsonl, from: cpt}"], ["from", "cpt"]),
    "two-stages-with-one-name": ("MODEL", [STAGE, STAGE], ["sft", "name"]),
    "unknown-stage-key": ("MODEL", ["{strategy: sft, data: sft.jsonl, learning_rate: 0.1}"], ["learning_rate"]),
    "a-lora-adapter-feeds-a-later-stage": ("MODEL", ["{strategy: sft, data: sft.jsonl, lora: true}", "{strategy: dpo, data: pref.jsonl}"], ["merge_lora"]),
    "a-lora-adapter-feeds-a-stage-through-from": (
        "MODEL",
        [
            "{strategy: sft, data: sft.jsonl, name: first}",
            "{strategy: sft, data: sft.jsonl, lora: true, name: adapter}",
            "{strategy: dpo, data: pref.jsonl, from: first}",
            "{strategy: orpo, data: pref.jsonl, from: adapter}",
        ],
        ["'adapter'", "merge_lora"],
    ),
    "unknown-strategy": ("MODEL", ["{strategy: ppo, data: pref.jsonl}"], ["ppo"]),
    "a-model-without-weights": ("no-weights", [STAGE], ["no weights"]),
}


@pytest.mark.parametrize("model, stages, words", list(BAD_PIPELINES.values()), ids=list(BAD_PIPELINES))
def test_a_bad_pipeline_is_refused_before_the_first_stage_trains(train_base, workdir, model, stages, words):
    (workdir / "empty.jsonl").write_text("")
    if model == "no-weights":
        shutil.copytree(train_base, workdir / model)
        (workdir / model / "model.safetensors").unlink()
    model = str(train_base) if model == "MODEL" else model
    path = write_pipeline(workdir, f"model: {model}\nout: parents\nstages:\n" + "".join(f"  - {stage}\n" for stage in stages))
    refuse(path, *(word.replace("WORKDIR", str(workdir)) for word in words))


def test_a_lora_adapter_no_later_stage_trains_on_is_accepted(train_base, workdir):
    path = write_pipeline(
        workdir,
        f"model: {train_base}\nout: parents\nstages:\n  - {{strategy: sft, data: sft.jsonl, name: first}}\n"
        "  - {strategy: sft, data: sft.jsonl, lora: true, name: adapter}\n  - {strategy: dpo, data: pref.jsonl, from: first}\n",
    )
    _, _, stages = load_pipeline(path)
    assert [stage["name"] for stage in stages] == ["first", "adapter", "dpo"]


@pytest.mark.parametrize(
    "text, words",
    [
        ("model: x\nout: y\nstages: []\n", ["stages"]),
        ("model: x\nout: y\n", ["stages"]),
        ("- just a list\n", ["stages"]),
        ("model: [unclosed\nout: y\n", ["YAML"]),
        ("out: y\nstages:\n  - {strategy: sft, data: sft.jsonl}\n", ["model"]),
        ("model: MODEL\nstages:\n  - {strategy: sft, data: sft.jsonl}\n", ["out"]),
        ("model: MODEL\nout: parents\nstages:\n  - {data: sft.jsonl}\n", ["strategy"]),
        ("model: MODEL\nout: parents\nstages:\n  - sft\n", ["strategy"]),
    ],
)
def test_malformed_pipelines(train_base, workdir, text, words):
    path = write_pipeline(workdir, text.replace("MODEL", str(train_base)))
    refuse(path, str(path), *words)


def test_missing_pipeline_file(tmp_path):
    refuse(tmp_path / "none.yaml", "not found")


def test_a_value_of_the_wrong_type(train_base, workdir):
    path = write_pipeline(workdir, f"model: {train_base}\nout: parents\nstages:\n  - {{strategy: sft, data: sft.jsonl, epochs: three}}\n")
    refuse(path, "epochs")


def test_an_exponent_without_a_dot_is_a_number(train_base, workdir):
    """YAML 1.1 (PyYAML) reads `lr: 2e-5` as the string "2e-5"; evomerge recipes coerce such
    numbers (recipe.coerce_number), and a training pipeline takes it too."""
    path = write_pipeline(
        workdir, f"model: {train_base}\nout: parents\nstages:\n  - {{strategy: sft, data: sft.jsonl, lr: 2e-5, max_steps: 1, max_length: 64}}\n"
    )
    (result,) = run_pipeline(path, device="cpu")
    assert result.lineage["hyperparameters"]["lr"] == 2e-5

"""`evomerge train` as a user runs it: one stage (full, LoRA, LoRA merged) or a --pipeline, and one
clean error line (exit 2, nothing in --out) for every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_checks import assert_clean_error
from safetensors.torch import load_file
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.files import write_jsonl
from evomerge.merge.parents import inspect_parent, load_parent
from evomerge.toy.tiny import CHAT_TEMPLATE, make_checkpoint, tiny_config

runner = CliRunner()
FACTS = ["Spider silk is tougher than steel.", "Nacre is made of aragonite tablets.", "Bone contains hydroxyapatite.", "Wood contains lignin."]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-train")
    base = root / "Instruct"
    config = tiny_config("llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, tie_word_embeddings=False)
    make_checkpoint(base, config, seed=0, chat_template=CHAT_TEMPLATE)
    no_weights = root / "no-weights"
    shutil.copytree(base, no_weights)
    (no_weights / "model.safetensors").unlink()
    (root / "empty.jsonl").write_text("")
    return {
        "root": root,
        "base": base,
        "no_weights": no_weights,
        "cpt": write_jsonl(root / "cpt.jsonl", [{"text": t} for t in FACTS] * 4),
        "sft": write_jsonl(root / "sft.jsonl", [{"prompt": f"Q{i}?", "completion": " " + t} for i, t in enumerate(FACTS)] * 4),
        "pref": write_jsonl(root / "pref.jsonl", [{"prompt": f"Q{i}? ", "chosen": "Yes.", "rejected": "No."} for i in range(4)] * 4),
        "empty": root / "empty.jsonl",
    }


def stage(setup, strategy, data, out, *extra):
    return run(
        "train",
        "--strategy",
        strategy,
        "--model",
        setup["base"],
        "--data",
        setup[data],
        "--out",
        out,
        "--epochs",
        "1",
        "--max-length",
        "64",
        "--device",
        "cpu",
        *extra,
    )


# ----- it works ---------------------------------------------------------------------------------------


def test_one_stage(setup, tmp_path):
    out = tmp_path / "sft"
    result = stage(setup, "sft", "sft", out, "--lr", "1e-3", "--seed", "3")
    assert result.exit_code == 0, (result.output, result.exception)
    assert "Instruct-SFT" in result.stdout and str(out) in result.stdout
    assert (out / "model.safetensors").is_file()
    lineage = json.loads((out / "evomerge_lineage.json").read_text())
    assert lineage["label"] == "Instruct-SFT"
    assert lineage["hyperparameters"]["lr"] == 1e-3 and lineage["hyperparameters"]["seed"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_lora_adapter(setup, tmp_path):
    out = tmp_path / "adapter"
    result = stage(setup, "sft", "sft", out, "--lora", "--lora-r", "4", "--lora-alpha", "8", "--lora-targets", "q_proj, v_proj", "--lr", "1e-2")
    assert result.exit_code == 0, (result.output, result.exception)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and set(config["target_modules"]) == {"q_proj", "v_proj"}
    assert config["base_model_name_or_path"] == str(setup["base"].resolve())
    info = inspect_parent(out)
    assert info.adapter_base is not None
    assert load_parent(info).tensors.keys() == load_file(str(setup["base"] / "model.safetensors")).keys()


def test_lora_merged(setup, tmp_path):
    out = tmp_path / "merged"
    result = stage(setup, "dpo", "pref", out, "--lora", "--merge-lora", "--beta", "0.2")
    assert result.exit_code == 0, (result.output, result.exception)
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    lineage = json.loads((out / "evomerge_lineage.json").read_text())
    assert lineage["label"] == "Instruct-DPO" and lineage["hyperparameters"]["beta"] == 0.2


def test_overwrite(setup, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    result = stage(setup, "cpt", "cpt", out, "--overwrite")
    assert result.exit_code == 0, (result.output, result.exception)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()


def test_pipeline_keeps_both_checkpoints_and_the_lineage(setup, tmp_path):
    pipeline = tmp_path / "chain.yaml"
    pipeline.write_text(
        f"model: {setup['base']}\nout: ignored\nstages:\n"
        f"  - {{strategy: sft, data: {setup['sft']}, max_steps: 2, max_length: 64}}\n"
        f"  - {{strategy: orpo, data: {setup['pref']}, max_steps: 2, max_length: 64}}\n"
    )
    out = tmp_path / "parents"
    result = run("train", "--pipeline", pipeline, "--out", out, "--device", "cpu")
    assert result.exit_code == 0, (result.output, result.exception)
    assert sorted(p.name for p in out.iterdir()) == ["Instruct-SFT", "Instruct-SFT-ORPO"]
    assert "Instruct-SFT:" in result.stdout and "Instruct-SFT-ORPO:" in result.stdout
    second = json.loads((out / "Instruct-SFT-ORPO" / "evomerge_lineage.json").read_text())
    assert Path(second["parent_model"]) == (out / "Instruct-SFT").resolve()
    assert (out / "Instruct-SFT" / "model.safetensors").is_file()
    assert not (tmp_path / "ignored").exists()


# ----- bad input: one clean line, exit 2, nothing written ---------------------------------------------


def test_data_with_wrong_fields(setup, tmp_path):
    out = tmp_path / "out"
    assert_clean_error(stage(setup, "dpo", "sft", out), f"{setup['sft']}:1:", "chosen", out=out)


def test_cpt_text_for_sft(setup, tmp_path):
    out = tmp_path / "out"
    assert_clean_error(stage(setup, "sft", "cpt", out), f"{setup['cpt']}:1:", "completion", out=out)


def test_empty_data(setup, tmp_path):
    out = tmp_path / "out"
    assert_clean_error(stage(setup, "sft", "empty", out), str(setup["empty"]), "empty", out=out)


def test_missing_data(setup, tmp_path):
    out = tmp_path / "out"
    result = run("train", "--strategy", "sft", "--model", setup["base"], "--data", tmp_path / "none.jsonl", "--out", out)
    assert_clean_error(result, "none.jsonl", out=out)


def test_model_without_weights(setup, tmp_path):
    out = tmp_path / "out"
    result = run("train", "--strategy", "sft", "--model", setup["no_weights"], "--data", setup["sft"], "--out", out)
    assert_clean_error(result, str(setup["no_weights"]), "no weights", out=out)


def test_missing_model(setup, tmp_path):
    out = tmp_path / "out"
    result = run("train", "--strategy", "sft", "--model", tmp_path / "nowhere", "--data", setup["sft"], "--out", out)
    assert_clean_error(result, "nowhere", out=out)


def test_lora_targets_the_model_lacks(setup, tmp_path):
    out = tmp_path / "out"
    result = stage(setup, "sft", "sft", out, "--lora", "--lora-targets", "q_proj,c_attn")
    assert_clean_error(result, "c_attn", "q_proj", "v_proj", "gate_proj", "down_proj", out=out)


def test_merge_lora_without_lora(setup, tmp_path):
    out = tmp_path / "out"
    assert_clean_error(stage(setup, "sft", "sft", out, "--merge-lora"), "--lora", out=out)


def test_existing_output_without_overwrite(setup, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert_clean_error(stage(setup, "sft", "sft", out), str(out), "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("missing", ["--strategy", "--model", "--data", "--out"])
def test_a_missing_flag(setup, tmp_path, missing):
    values = {"--strategy": "sft", "--model": setup["base"], "--data": setup["sft"], "--out": tmp_path / "out"}
    del values[missing]
    args = [item for pair in values.items() for item in pair]
    assert_clean_error(run("train", *args), missing, out=tmp_path / "out")


def test_unknown_strategy(setup, tmp_path):
    out = tmp_path / "out"
    assert_clean_error(stage(setup, "ppo", "sft", out), "ppo", out=out)


def test_unknown_device(setup, tmp_path):
    out = tmp_path / "out"
    result = run("train", "--strategy", "sft", "--model", setup["base"], "--data", setup["sft"], "--out", out, "--device", "tpu")
    assert_clean_error(result, "tpu", out=out)


def test_missing_pipeline(tmp_path):
    assert_clean_error(run("train", "--pipeline", tmp_path / "none.yaml"), "none.yaml")


def test_malformed_pipeline(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: [unclosed\n")
    assert_clean_error(run("train", "--pipeline", path), str(path), "YAML")


def test_pipeline_with_a_bad_later_stage_writes_nothing(setup, tmp_path):
    path = tmp_path / "chain.yaml"
    path.write_text(
        f"model: {setup['base']}\nout: parents\nstages:\n"
        f"  - {{strategy: sft, data: {setup['sft']}, max_steps: 1}}\n"
        f"  - {{strategy: dpo, data: {setup['empty']}}}\n"
    )
    out = tmp_path / "parents"
    assert_clean_error(run("train", "--pipeline", path, "--device", "cpu"), "empty", out=out)


# Options TRL or peft reject later (or ignore): they must be refused before training, like the rest.
NUMBER_BUGS = [
    (["--epochs", "0"], "--epochs", "zero epochs trains nothing, writes an untrained copy, then crashes printing the loss"),
    (["--epochs", "-1"], "--epochs", "negative epochs: as zero"),
    (["--lr", "-1"], "--lr", "a negative learning rate crashes in torch.optim"),
    (["--lr-scheduler", "bogus"], "bogus", "an unknown scheduler crashes in transformers"),
    (["--lora", "--lora-r", "0"], "--lora-r", "rank 0 crashes in peft"),
    (["--lora", "--lora-targets", ","], "--lora-targets", "no targets crashes in peft"),
    (["--lora", "--lora-targets", "lm_head"], "lm_head", "lm_head, listed as a linear module by the targets error, crashes in TRL"),
]


@pytest.mark.parametrize("extra, word, why", NUMBER_BUGS, ids=[" ".join(e) for e, _, _ in NUMBER_BUGS])
def test_bad_training_options(setup, tmp_path, extra, word, why):
    out = tmp_path / "out"
    result = stage(setup, "sft", "sft", out, *extra)
    if result.exit_code != 2:
        pytest.fail(f"TRAIN BUG: evomerge train {' '.join(extra)} exits {result.exit_code} ({why}): {result.exception!r}; out written: {out.exists()}")
    assert_clean_error(result, word, out=out)


def test_max_length_that_drops_every_preference_pair(setup, tmp_path):
    out = tmp_path / "out"
    data = write_jsonl(
        tmp_path / "long.jsonl", [{"prompt": f"Is spider silk {i} tougher than steel?", "chosen": " Yes.", "rejected": " No."} for i in range(8)]
    )
    result = run("train", "--strategy", "dpo", "--model", setup["base"], "--data", data, "--out", out, "--max-length", "8", "--device", "cpu")
    if result.exit_code != 2:
        pytest.fail(f"TRAIN BUG: --max-length 8 drops every DPO pair, then exits {result.exit_code}: {result.exception!r}")
    assert_clean_error(result, "--max-length", out=out)


def test_pipeline_value_of_the_wrong_type(setup, tmp_path):
    path = tmp_path / "chain.yaml"
    path.write_text(f"model: {setup['base']}\nout: parents\nstages:\n  - {{strategy: sft, data: {setup['sft']}, epochs: three}}\n")
    result = run("train", "--pipeline", path, "--device", "cpu")
    if result.exit_code != 2:
        pytest.fail(f"TRAIN BUG: a pipeline stage with `epochs: three` exits {result.exit_code}: {result.exception!r}")
    assert_clean_error(result, "epochs", out=tmp_path / "parents")

"""`train(TrainSettings(...))` on a tiny Llama on CPU: real TRL trainers, real peft, no mocks.

Each strategy lowers its training loss; DPO and ORPO raise the chosen-over-rejected margin; a seed
makes the saved weights identical; the lineage file chains labels; a LoRA adapter is a parent the
merge engine accepts and equals peft's own merge; bad input leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from evomerge.errors import EvomergeError
from evomerge.files import LINEAGE_FILE
from evomerge.merge.merger import Merger
from evomerge.merge.parents import inspect_parent, load_parent
from evomerge.recipe import Recipe
from evomerge.toy.tiny import make_checkpoint, tiny_config
from evomerge.train.data import DataError, load_records
from evomerge.train.trainers import DEFAULT_BETA, DEFAULT_LR, TrainSettings, default_label, train

LR = 1e-3
EPOCHS = 3
BATCH = 4
MAX_LENGTH = 64


def settings(strategy, model, data, out, **overrides) -> TrainSettings:
    values = dict(epochs=EPOCHS, lr=LR, batch_size=BATCH, max_length=MAX_LENGTH, seed=0, device="cpu")
    values.update(overrides)
    return TrainSettings(strategy=strategy, model=str(model), data=str(data), out=str(out), **values)


def mean(values) -> float:
    return sum(values) / len(values)


def assert_loss_went_down(losses, strategy):
    assert len(losses) >= 6, (strategy, losses)
    assert all(loss == loss and abs(loss) < 1e4 for loss in losses), (strategy, losses)  # finite
    first, last = mean(losses[:3]), mean(losses[-3:])
    assert last < first - 0.02, f"{strategy}: loss did not go down: first {first:.4f}, last {last:.4f}, {losses}"


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def load_model(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


@torch.no_grad()
def preference_margin(model_dir: Path, pairs: list[dict]) -> float:
    """Mean over pairs of log p(chosen | prompt) − log p(rejected | prompt), summed over the
    completion tokens, computed with the model saved in `model_dir`."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = load_model(model_dir)

    def completion_logprob(prompt: str, completion: str) -> float:
        prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        completion_ids = tokenizer(completion, add_special_tokens=False).input_ids
        ids = torch.tensor([[tokenizer.bos_token_id] + prompt_ids + completion_ids])
        logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
        start = 1 + len(prompt_ids)  # position of the first completion token in ids
        targets = ids[0, start:]
        return logprobs[start - 1 :].gather(1, targets[:, None]).sum().item()

    margins = [completion_logprob(p["prompt"], p["chosen"]) - completion_logprob(p["prompt"], p["rejected"]) for p in pairs]
    return mean(margins)


def staging_leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")] if parent.is_dir() else []


# ----- each strategy trains ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(train_base, train_data, tmp_path_factory):
    """Each strategy's run, once per module: {"cpt", "sft", "sft_messages", "dpo", "orpo": TrainResult}."""
    root = tmp_path_factory.mktemp("trained")
    runs = {"cpt": "cpt", "sft": "sft", "sft_messages": "sft_messages", "dpo": "pref", "orpo": "pref"}
    results, logs = {}, {}
    for name, data in runs.items():
        strategy = name.split("_")[0]
        logs[name] = []
        results[name] = train(
            settings(strategy, train_base, train_data[data], root / name),
            on_log=lambda step, total, loss, seen=logs[name]: seen.append((step, total, loss)),
        )
    return results, logs


@pytest.mark.parametrize("name", ["cpt", "sft", "sft_messages", "dpo", "orpo"])
def test_training_loss_goes_down(trained, name):
    results, _ = trained
    assert_loss_went_down(results[name].losses, name)


@pytest.mark.parametrize("name", ["cpt", "sft", "sft_messages", "dpo", "orpo"])
def test_output_is_a_full_model_folder(trained, train_base, name):
    results, _ = trained
    out = results[name].out
    for file in ("config.json", "model.safetensors", LINEAGE_FILE, "tokenizer_config.json"):
        assert (out / file).is_file(), (name, file, sorted(p.name for p in out.iterdir()))
    assert not (out / "adapter_config.json").exists()
    assert not (out / "trainer").exists(), "the trainer's scratch folder must not be shipped"
    trained_weights, base_weights = read_weights(out), read_weights(train_base)
    assert trained_weights.keys() == base_weights.keys()
    assert any(not torch.equal(trained_weights[k], base_weights[k]) for k in base_weights), "weights did not change"
    assert all(torch.isfinite(t).all() for t in trained_weights.values())
    assert staging_leftovers(out.parent, out.name) == []


def test_on_log_reports_every_logged_loss(trained):
    results, logs = trained
    for name, seen in logs.items():
        assert [loss for _, _, loss in seen] == pytest.approx(results[name].losses), name
        steps = [step for step, _, _ in seen]
        assert steps == sorted(steps) and steps[0] >= 1, (name, steps)
        assert all(total == seen[0][1] and total >= step for step, total, _ in seen), (name, seen)


def test_cpt_packs_short_texts_into_blocks(train_base, tmp_path):
    """CPT packs raw text: 16 texts of ~15 tokens fit in 4 blocks of 64 tokens, so one epoch at
    batch size 4 is one step, where 16 unpacked examples would take four."""
    data = tmp_path / "short.jsonl"
    data.write_text("".join(json.dumps({"text": f"Bone is hard {i:x}."}) + "\n" for i in range(16)))
    result = train(settings("cpt", train_base, data, tmp_path / "out", epochs=1))
    assert len(result.losses) == 1, result.losses


@pytest.fixture(scope="module")
def swapped(train_base, train_data, tmp_path_factory):
    """DPO and ORPO on the same pairs with chosen and rejected swapped: the control that shows the
    margin follows the labels (plain likelihood training also shifts it a little)."""
    root = tmp_path_factory.mktemp("swapped")
    records = load_records(train_data["pref"], "dpo")
    data = root / "swapped.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["prompt"], "chosen": r["rejected"], "rejected": r["chosen"]}) + "\n" for r in records))
    return {strategy: train(settings(strategy, train_base, data, root / strategy)) for strategy in ("dpo", "orpo")}


@pytest.mark.parametrize("strategy", ["dpo", "orpo"])
def test_preference_training_raises_the_chosen_margin(trained, swapped, train_base, train_data, strategy):
    results, _ = trained
    pairs = load_records(train_data["pref"], strategy)[:4]  # the four distinct pairs
    before = preference_margin(train_base, pairs)
    after = preference_margin(results[strategy].out, pairs)
    after_swapped = preference_margin(swapped[strategy].out, pairs)
    report = f"{strategy}: margin before {before:.3f}, after {after:.3f}, after training on swapped pairs {after_swapped:.3f}"
    assert after > before + 0.5, report
    assert after > after_swapped + 1.0, report


# ----- determinism ------------------------------------------------------------------------------


def test_same_seed_gives_identical_weights(trained, train_base, train_data, tmp_path):
    results, _ = trained
    again = train(settings("sft", train_base, train_data["sft"], tmp_path / "again"))
    first, second = read_weights(results["sft"].out), read_weights(again.out)
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert different == [], f"same seed, different weights: {different}"
    assert again.losses == results["sft"].losses


def test_another_seed_shuffles_differently(trained, train_base, train_data, tmp_path):
    results, _ = trained
    other = train(settings("sft", train_base, train_data["sft"], tmp_path / "seed1", seed=1))
    first, second = read_weights(results["sft"].out), read_weights(other.out)
    assert any(not torch.equal(first[k], second[k]) for k in first)


# ----- lineage ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain(train_base, train_data, tmp_path_factory):
    """Instruct → SFT → DPO with the default lr and beta (a few steps only)."""
    root = tmp_path_factory.mktemp("chain")
    sft = train(TrainSettings(strategy="sft", model=str(train_base), data=str(train_data["sft"]), out=str(root / "sft"), max_steps=2, device="cpu"))
    dpo = train(TrainSettings(strategy="dpo", model=str(sft.out), data=str(train_data["pref"]), out=str(root / "dpo"), max_steps=2, device="cpu"))
    return sft, dpo


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_lineage_of_a_first_stage(chain, train_base, train_data):
    sft, _ = chain
    lineage = json.loads((sft.out / LINEAGE_FILE).read_text())
    assert lineage == sft.lineage
    assert lineage["label"] == "Instruct-SFT"
    assert Path(lineage["parent_model"]) == train_base.resolve()
    assert lineage["strategy"] == "sft"
    assert lineage["data_sha256"] == sha256(train_data["sft"])
    hyper = lineage["hyperparameters"]
    assert hyper["lr"] == DEFAULT_LR["sft"]
    assert hyper["seed"] == 0 and hyper["max_steps"] == 2 and hyper["batch_size"] == 4
    assert "beta" not in hyper or hyper["beta"] is None  # SFT has no beta
    assert "label" not in hyper, "a name, not a hyperparameter"
    assert lineage["adapter"] is False


def test_lineage_chains_through_a_second_stage(chain, train_data):
    sft, dpo = chain
    lineage = json.loads((dpo.out / LINEAGE_FILE).read_text())
    assert lineage["label"] == "Instruct-SFT-DPO"
    assert Path(lineage["parent_model"]) == sft.out.resolve()
    assert lineage["parent_label"] == "Instruct-SFT"
    assert lineage["strategy"] == "dpo"
    assert lineage["data_sha256"] == sha256(train_data["pref"])
    assert lineage["hyperparameters"]["lr"] == DEFAULT_LR["dpo"]
    assert lineage["hyperparameters"]["beta"] == DEFAULT_BETA["dpo"]
    assert (sft.out / "model.safetensors").is_file(), "the first stage's checkpoint is kept"


def test_a_given_label_names_the_stage_instead_of_the_default(train_base, train_data, tmp_path):
    assert default_label(train_base, "sft") == "Instruct-SFT"
    result = train(settings("sft", train_base, train_data["sft"], tmp_path / "sft", max_steps=1, label="instruct-tuned"))
    assert result.lineage["label"] == "instruct-tuned" and result.lineage["parent_label"] == "Instruct"
    assert json.loads((result.out / LINEAGE_FILE).read_text())["label"] == "instruct-tuned"
    assert default_label(result.out, "dpo") == "instruct-tuned-DPO", "the next stage is named after the given label"


def test_beta_defaults_per_preference_strategy(train_base, train_data, tmp_path):
    assert settings("dpo", train_base, train_data["pref"], tmp_path / "out").beta_value == DEFAULT_BETA["dpo"]
    assert settings("orpo", train_base, train_data["pref"], tmp_path / "out").beta_value == DEFAULT_BETA["orpo"]
    assert settings("orpo", train_base, train_data["pref"], tmp_path / "out", beta=0.3).beta_value == 0.3
    assert settings("sft", train_base, train_data["sft"], tmp_path / "out").beta_value is None


def test_lineage_is_what_the_merge_engine_reads(chain):
    _, dpo = chain
    assert inspect_parent(dpo.out).lineage["label"] == "Instruct-SFT-DPO"


def test_lineage_records_explicit_hyperparameters(trained, train_data):
    results, _ = trained
    orpo = results["orpo"].lineage
    assert orpo["label"] == "Instruct-ORPO"
    assert orpo["hyperparameters"]["lr"] == LR  # given, not the default
    assert orpo["hyperparameters"]["beta"] == DEFAULT_BETA["orpo"]
    assert orpo["hyperparameters"]["epochs"] == EPOCHS
    assert orpo["first_loss"] == results["orpo"].losses[0] and orpo["last_loss"] == results["orpo"].losses[-1]
    assert results["cpt"].lineage["label"] == "Instruct-CPT"
    assert results["cpt"].lineage["data_sha256"] == sha256(train_data["cpt"])


def test_explicit_beta_is_recorded(train_base, train_data, tmp_path):
    result = train(settings("dpo", train_base, train_data["pref"], tmp_path / "dpo", beta=0.3, max_steps=1))
    assert result.lineage["hyperparameters"]["beta"] == 0.3


def test_overwrite_replaces_an_existing_output(train_base, train_data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    result = train(settings("sft", train_base, train_data["sft"], out, max_steps=1, overwrite=True))
    assert result.out == out
    assert not (out / "stale.txt").exists()
    assert (out / "model.safetensors").is_file()
    assert staging_leftovers(tmp_path, "out") == []


def test_an_existing_empty_output_folder_is_fine(train_base, train_data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    train(settings("sft", train_base, train_data["sft"], out, max_steps=1))
    assert (out / "model.safetensors").is_file()


# ----- LoRA -------------------------------------------------------------------------------------

LORA = dict(lora=True, lr=1e-2, epochs=2)


@pytest.fixture(scope="module")
def lora_runs(train_base, train_data, tmp_path_factory):
    """The same LoRA run twice: as an adapter folder, and merged into full weights."""
    root = tmp_path_factory.mktemp("lora")
    adapter = train(settings("sft", train_base, train_data["sft"], root / "adapter", **LORA))
    merged = train(settings("sft", train_base, train_data["sft"], root / "merged", merge_lora=True, **LORA))
    return adapter, merged


@pytest.fixture(scope="module")
def peft_merged(lora_runs, train_base) -> dict[str, torch.Tensor]:
    """base + adapter merged by peft itself, independently of evomerge."""
    from peft import PeftModel

    adapter, _ = lora_runs
    model = PeftModel.from_pretrained(load_model(train_base), str(adapter.out)).merge_and_unload()
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def test_lora_writes_an_adapter_folder(lora_runs, train_base):
    adapter, _ = lora_runs
    out = adapter.out
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(train_base.resolve())
    assert Path(config["base_model_name_or_path"]).is_absolute()
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert config["r"] == 8 and config["lora_alpha"] == 16
    assert adapter.lineage["adapter"] is True and adapter.lineage["label"] == "Instruct-SFT"
    assert_loss_went_down(adapter.losses, "sft+lora")


def test_lora_adapter_is_not_a_no_op(peft_merged, train_base):
    base = read_weights(train_base)
    changed = sorted(k for k in base if not torch.equal(base[k], peft_merged[k]))
    assert changed and all(any(m in k for m in ("q_proj", "k_proj", "v_proj", "o_proj")) for k in changed), changed


def test_lora_adapter_loads_as_a_parent_equal_to_peft_merge(lora_runs, train_base, peft_merged):
    adapter, _ = lora_runs
    info = inspect_parent(adapter.out)
    assert info.adapter_base is not None
    assert info.adapter_base.path.resolve() == train_base.resolve()
    assert info.lineage["label"] == "Instruct-SFT"
    parent = load_parent(info)
    assert parent.tensors.keys() == read_weights(train_base).keys()
    different = [k for k, t in parent.tensors.items() if not torch.equal(t, peft_merged[k])]
    assert different == [], different


def test_lora_adapter_loads_from_another_working_directory(lora_runs, peft_merged, tmp_path, monkeypatch):
    adapter, _ = lora_runs
    monkeypatch.chdir(tmp_path)
    parent = load_parent(inspect_parent(adapter.out.resolve()))
    assert all(torch.equal(t, peft_merged[k]) for k, t in parent.tensors.items())


def test_merge_lora_writes_full_weights_equal_to_peft_merge(lora_runs, peft_merged):
    adapter, merged = lora_runs
    out = merged.out
    assert (out / "model.safetensors").is_file()
    assert not (out / "adapter_config.json").exists()
    assert merged.lineage["adapter"] is False
    assert merged.losses == adapter.losses, "same seed and settings: the same run"
    weights = read_weights(out)
    assert weights.keys() == {k for k in peft_merged if k in weights} and len(weights) > 0
    assert not any("lora_" in k or "base_layer" in k for k in weights), sorted(weights)
    different = [k for k, t in weights.items() if not torch.equal(t, peft_merged[k])]
    assert different == [], different


def test_merge_engine_merges_the_lora_child_with_its_base(lora_runs, train_base, peft_merged):
    adapter, _ = lora_runs
    base_ref, child_ref = str(train_base), str(adapter.out)
    merger = Merger.load([base_ref, child_ref], device="cpu", dtype="float32")

    def slerp(t):
        return Recipe.from_dict(
            {"merge_method": "slerp", "base_model": base_ref, "models": [{"model": base_ref}, {"model": child_ref}], "parameters": {"t": t}}
        )

    base = read_weights(train_base)
    merger.apply(slerp(0.0))
    at_zero = {k: v.clone() for k, v in merger.merged_state_dict().items()}
    assert all(torch.allclose(at_zero[k], base[k], atol=1e-6) for k in base)
    merger.apply(slerp(1.0))
    at_one = {k: v.clone() for k, v in merger.merged_state_dict().items()}
    assert all(torch.allclose(at_one[k], peft_merged[k], atol=1e-5) for k in base)
    merger.apply(slerp(0.5))
    half = merger.merged_state_dict()
    for k in base:
        assert torch.isfinite(half[k]).all()
        if torch.equal(base[k], peft_merged[k]):
            assert torch.allclose(half[k], base[k], atol=1e-6), k
        else:  # strictly between the parents
            assert not torch.allclose(half[k], base[k], atol=1e-7) and not torch.allclose(half[k], peft_merged[k], atol=1e-7), k


def test_lora_options_are_used(train_base, train_data, tmp_path):
    result = train(
        settings("sft", train_base, train_data["sft"], tmp_path / "a", lora=True, lora_r=2, lora_alpha=4, lora_targets=["gate_proj", "down_proj"], max_steps=1)
    )
    config = json.loads((result.out / "adapter_config.json").read_text())
    assert config["r"] == 2 and config["lora_alpha"] == 4
    assert set(config["target_modules"]) == {"gate_proj", "down_proj"}
    assert result.lineage["hyperparameters"]["lora_targets"] == ["gate_proj", "down_proj"]


# ----- bad input: a clear error and nothing left behind -----------------------------------------


@pytest.fixture
def runs(tmp_path) -> Path:
    """The parent folder of outputs of failing runs: nothing may appear in it."""
    path = tmp_path / "runs"
    path.mkdir()
    return path


def assert_refused(run_settings: TrainSettings, *words, error=EvomergeError):
    out = Path(run_settings.out)
    before = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
    crash = result = None
    try:
        result = train(run_settings)
    except error as caught:
        message = str(caught)
    except Exception as caught:  # noqa: BLE001 — any other exception is a crash, not a clear message
        crash = caught
    if crash is not None:
        pytest.fail(f"TRAIN BUG: bad input ({', '.join(words)}) crashes with {type(crash).__name__}: {crash} instead of a clear {error.__name__}")
    if result is not None:
        leftover = sorted(p.name for p in Path(result.out).iterdir())
        pytest.fail(f"TRAIN BUG: bad input ({', '.join(words)}) was accepted and wrote {result.out} {leftover} (losses {result.losses})")
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)
    if before is None:
        assert not out.exists(), f"a failed run left {out}"
    else:
        assert sorted(p.name for p in out.iterdir()) == before, "a failed run touched an existing output"
    assert staging_leftovers(out.parent, out.name) == [], "a failed run left a staging folder"
    if out.parent.is_dir() and before is None:
        assert list(out.parent.iterdir()) == [], sorted(p.name for p in out.parent.iterdir())
    return message


def test_data_with_wrong_fields(train_base, train_data, runs):
    assert_refused(settings("dpo", train_base, train_data["sft"], runs / "out"), f"{train_data['sft']}:1:", "chosen", error=DataError)


def test_sft_data_for_cpt(train_base, train_data, runs):
    assert_refused(settings("cpt", train_base, train_data["sft"], runs / "out"), "text", error=DataError)


def test_empty_data(train_base, runs, tmp_path):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    assert_refused(settings("sft", train_base, data, runs / "out"), str(data), "empty", error=DataError)


def test_missing_data(train_base, runs, tmp_path):
    assert_refused(settings("sft", train_base, tmp_path / "none.jsonl", runs / "out"), "not found", error=DataError)


def test_model_folder_without_weights(train_base, train_data, runs, tmp_path):
    model = tmp_path / "no-weights"
    shutil.copytree(train_base, model)
    (model / "model.safetensors").unlink()
    assert_refused(settings("sft", model, train_data["sft"], runs / "out"), str(model), "no weights")


def test_model_folder_not_found(train_data, runs, tmp_path):
    assert_refused(settings("sft", tmp_path / "nowhere", train_data["sft"], runs / "out"), "not found")


def test_model_folder_without_config(train_data, runs, tmp_path):
    model = tmp_path / "weights-only"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"")
    assert_refused(settings("sft", model, train_data["sft"], runs / "out"), "config.json")


def test_lora_target_the_model_lacks(train_base, train_data, runs):
    message = assert_refused(settings("sft", train_base, train_data["sft"], runs / "out", lora=True, lora_targets=["q_proj", "c_attn"]), "c_attn")
    for real in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert real in message, (real, message)


def test_merge_lora_without_lora(train_base, train_data, runs):
    assert_refused(settings("sft", train_base, train_data["sft"], runs / "out", merge_lora=True), "--merge-lora", "--lora")


def test_existing_non_empty_output_without_overwrite(train_base, train_data, runs):
    out = runs / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert_refused(settings("sft", train_base, train_data["sft"], out), str(out), "overwrite")
    assert (out / "keep.txt").read_text() == "precious"


def test_unknown_strategy(train_base, train_data, runs):
    assert_refused(settings("ppo", train_base, train_data["sft"], runs / "out"), "ppo", "sft")


def test_unknown_device(train_base, train_data, runs):
    assert_refused(settings("sft", train_base, train_data["sft"], runs / "out", device="tpu"), "tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(train_base, train_data, runs):
    assert_refused(settings("sft", train_base, train_data["sft"], runs / "out", device="cuda"), "cuda")


def test_messages_on_a_model_without_a_chat_template_train_with_chatml(train_data, tmp_path):
    """TRL's and the alignment handbook's convention: ChatML, said in one line, saved with the
    output; the vocabulary stays as it was (the output can still be merged with its siblings)."""
    from transformers import AutoTokenizer

    from evomerge.train.trainers import CHATML

    model = tmp_path / "no-template"
    make_checkpoint(model, tiny_config("llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2), seed=0)
    result = train(settings("sft", model, train_data["sft_messages"], tmp_path / "out", max_steps=2))
    assert result.note and "ChatML" in result.note and "\n" not in result.note
    saved = AutoTokenizer.from_pretrained(str(result.out))
    assert saved.chat_template == CHATML
    assert len(saved) == len(AutoTokenizer.from_pretrained(str(model)))
    assert read_weights(result.out)["model.embed_tokens.weight"].shape == read_weights(model)["model.embed_tokens.weight"].shape


def test_chat_template_flag_takes_a_name_a_file_or_a_model_folder(train_base, train_data, tmp_path):
    from transformers import AutoTokenizer

    from evomerge.train.trainers import CHATML, resolve_chat_template

    jinja = tmp_path / "mine.jinja"
    jinja.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    assert resolve_chat_template("chatml") == CHATML
    assert resolve_chat_template(str(jinja)) == jinja.read_text()
    assert resolve_chat_template(str(train_base)) == AutoTokenizer.from_pretrained(str(train_base)).chat_template
    result = train(settings("sft", train_base, train_data["sft_messages"], tmp_path / "out", max_steps=1, chat_template=str(jinja)))
    assert AutoTokenizer.from_pretrained(str(result.out)).chat_template == jinja.read_text()
    assert result.note is None, "the user chose it: nothing to say"


def test_a_bad_chat_template_is_refused(train_base, train_data, runs, tmp_path):
    assert_refused(settings("sft", train_base, train_data["sft_messages"], runs / "out", chat_template="zephyr"), "--chat-template", "chatml")
    assert_refused(settings("sft", train_base, train_data["sft_messages"], runs / "out", chat_template=str(tmp_path)), "no chat template")


# Settings TRL or peft would reject (or silently ignore) must be refused up front, like the rest.


def test_zero_epochs(train_base, train_data, runs):
    assert_refused(settings("sft", train_base, train_data["sft"], runs / "out", epochs=0), "--epochs", "0")


def test_negative_learning_rate(train_base, train_data, runs):
    assert_refused(settings("sft", train_base, train_data["sft"], runs / "out", lr=-1.0), "--lr", "-1.0")


def test_unknown_lr_scheduler(train_base, train_data, runs):
    assert_refused(settings("sft", train_base, train_data["sft"], runs / "out", lr_scheduler="bogus"), "--lr-scheduler", "bogus")


def test_lora_rank_zero(train_base, train_data, runs):
    assert_refused(settings("sft", train_base, train_data["sft"], runs / "out", lora=True, lora_r=0), "--lora-r", "0")


def test_lora_without_targets(train_base, train_data, runs):
    assert_refused(settings("sft", train_base, train_data["sft"], runs / "out", lora=True, lora_targets=[]), "--lora-targets")


def test_lora_on_lm_head(train_base, train_data, runs):
    """lm_head is among the "linear modules" the targets error lists, yet peft refuses it."""
    assert_refused(settings("sft", train_base, train_data["sft"], runs / "out", lora=True, lora_targets=["lm_head"]), "--lora-targets", "lm_head")


def test_max_length_too_short_for_every_preference_pair(train_base, train_data, runs):
    """Every prompt is longer than 8 tokens, so DPO would drop every pair and train on nothing."""
    assert_refused(settings("dpo", train_base, train_data["pref"], runs / "out", max_length=8), "--max-length 8")
